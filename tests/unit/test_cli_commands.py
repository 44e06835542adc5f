"""The everyday commands as a user runs them (``python -m mlxhost.cli.main ...`` in a
subprocess, each with its own Hugging Face cache), against a fake hub that
serves real HTTP (mlxhost.testing.fake_hub): the cache layout is the one
huggingface_hub itself writes. ``ps``/``run`` against a real server, and ``rm``
next to one, are in tests/integration/test_everyday.py."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlxhost.cli.common import human_bytes, human_duration, server_url, table
from mlxhost.cli.run import read_message
from mlxhost.cli.service import (
    LABEL,
    _systemd_word,
    plist_dict,
    render,
    serve_command,
    service_file,
)
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_hub import FakeHub
from mlxhost.testing.server import free_port

WEIGHTS = os.urandom(15_000_000)  # over huggingface_hub's 10 MiB read chunk: resumes show
QWEN_CONFIG = {"model_type": "qwen2", "max_position_embeddings": 2048}
REPOS = {
    "org/tiny-qwen": {
        "config.json": json.dumps(QWEN_CONFIG).encode(),
        "model.safetensors": WEIGHTS,
        "tokenizer.json": b"{}",
        "README.md": b"# not a model file: never downloaded",
    },
    "org/llama": {
        "config.json": json.dumps({"model_type": "llama"}).encode(),
        "model.safetensors": b"\0" * 1000,
    },
    "org/unknown-arch": {
        "config.json": json.dumps({"model_type": "no_such_arch"}).encode(),
        "model.safetensors": b"\0" * 1000,
    },
}


@pytest.fixture
def hub():
    with FakeHub(REPOS, revisions={"v1": "a" * 40}) as fake:
        yield fake


@pytest.fixture
def env(tmp_path, hub):
    """A user's environment: the fake hub online, an empty cache, no config file."""
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
        "HOME": str(tmp_path / "home"),
        "MLXHOST_CONFIG": "",
        "COLUMNS": "120",
    }


def cli(env, *args, stdin: str | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "mlxhost.cli.main", *args], env=env, input=stdin,
        capture_output=True, text=True, timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def one_line_error(result, command: str) -> str:
    """The failure as the user sees it: exit 1 and one line on stderr."""
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlxhost {command}: error: "), result.stderr
    return lines[0]


def repo_dir(env, repo: str) -> Path:
    return Path(env["HF_HUB_CACHE"]) / ("models--" + repo.replace("/", "--"))


# -- pull ------------------------------------------------------------------------------
def test_pull_downloads_the_model_files_with_a_progress_bar_and_resumes(env, hub):
    hub.drop_after["model.safetensors"] = 12_000_000  # the connection drops mid-file
    result = cli(env, "pull", "org/tiny-qwen")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pulled org/tiny-qwen (15.0 MB in ")
    # One bar of bytes and speed, ending full.
    assert "15.0M/15.0M" in result.stderr and "B/s" in result.stderr
    # The dropped file resumed from the last byte it had, not from zero.
    assert hub.ranges("model.safetensors") == ["bytes=10485760-"]
    assert hub.gets("README.md") == 0  # only the files the server needs
    snapshot = repo_dir(env, "org/tiny-qwen") / "snapshots" / ("a" * 40)
    assert (snapshot / "model.safetensors").read_bytes() == WEIGHTS
    assert (snapshot / "model.safetensors").is_symlink()  # the hub's cache layout
    assert (repo_dir(env, "org/tiny-qwen") / "refs" / "main").read_text() == "a" * 40


def test_pull_of_a_cached_model_downloads_nothing(env, hub):
    assert cli(env, "pull", "org/tiny-qwen").returncode == 0
    gets = hub.gets("model.safetensors")
    again = cli(env, "pull", "org/tiny-qwen", "--json")
    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    assert (body["status"], body["family"], body["model"]) == ("up-to-date", "qwen", "org/tiny-qwen")
    assert hub.gets("model.safetensors") == gets
    offline = cli({**env, "HF_HUB_OFFLINE": "1"}, "pull", "org/tiny-qwen")
    assert offline.returncode == 0 and "already downloaded" in offline.stdout
    assert "not checked for updates" in offline.stderr
    gone = cli({**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}, "pull", "org/tiny-qwen")
    assert gone.returncode == 0 and "the hub could not be reached" in gone.stderr


def test_pull_refuses_an_architecture_nothing_loads(env, hub):
    line = one_line_error(cli(env, "pull", "org/unknown-arch"), "pull")
    assert "model_type 'no_such_arch' is an architecture neither mlx-lm nor mlx-vlm can load" in line
    assert "qwen" in line and "gemma" in line
    assert hub.gets("model.safetensors") == 0  # decided on config.json alone
    assert not repo_dir(env, "org/unknown-arch").exists()


def test_pull_takes_any_architecture_mlx_loads_and_ls_lists_it(env, hub):
    result = cli(env, "pull", "org/llama", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["family"] == "generic"
    assert hub.gets("model.safetensors") == 1
    rows = json.loads(cli(env, "ls", "--json").stdout)
    assert [row["family"] for row in rows if row["id"] == "org/llama"] == ["generic"]


def test_pull_with_the_hub_offline_fails_cleanly(env, hub):
    line = one_line_error(cli({**env, "HF_HUB_OFFLINE": "1"}, "pull", "org/tiny-qwen"), "pull")
    assert "HF_HUB_OFFLINE" in line
    assert hub.requests == []


def test_pull_with_the_hub_unreachable_fails_cleanly(env):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = one_line_error(cli({**env, "HF_ENDPOINT": endpoint}, "pull", "org/tiny-qwen"), "pull")
    assert f"cannot reach the Hugging Face hub at {endpoint}" in line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["org/missing"], "no such repo on the hub"),
        (["org/tiny-qwen", "--revision", "v9"], "has no revision 'v9'"),
        (["not a repo"], "is not a hub repo id (org/name) or a model alias"),
    ],
)
def test_pull_errors(env, args, words):
    assert words in one_line_error(cli(env, "pull", *args), "pull")


def test_pull_a_config_alias_and_a_revision(env, tmp_path, hub):
    config = tmp_path / "config.toml"
    config.write_text('[models.tiny]\nrepo = "org/tiny-qwen"\ncontext_window = 1024\n')
    result = cli(env, "pull", "tiny", "--revision", "v1", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "org/tiny-qwen"
    assert "no main revision was cached" in json.loads(result.stdout)["note"]
    # The pulled revision is what the server will serve (and ls lists, with the alias).
    listed = json.loads(cli(env, "ls", "--json", "--config", str(config)).stdout)
    row = next(r for r in listed if r["id"] == "org/tiny-qwen")
    assert row["aliases"] == ["tiny"] and row["context_window"] == 1024


# -- ls / models -----------------------------------------------------------------------
def test_ls_lists_downloaded_models_with_their_facts(env):
    empty = cli(env, "ls")
    assert empty.returncode == 0 and "No downloaded models" in empty.stdout
    assert cli(env, "pull", "org/tiny-qwen").returncode == 0
    result = cli(env, "ls")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ALIASES", "FAMILY", "SIZE", "CONTEXT", "CAPABILITIES"]
    assert len(rows) == 1
    assert rows[0].split() == ["org/tiny-qwen", "-", "qwen", "15.0", "MB", "2,048", "tools"]
    body = json.loads(cli(env, "ls", "--json").stdout)
    assert body == [{
        "id": "org/tiny-qwen", "aliases": [], "family": "qwen",
        "size_bytes": body[0]["size_bytes"], "context_window": 2048, "capabilities": ["tools"],
        "tool_format": "qwen plugin", "tool_path": "plugin", "downloaded": True, "path": body[0]["path"], "source": "cache",
    }]
    # Blobs on disk: the weights, the config and the tokenizer, each once.
    assert body[0]["size_bytes"] == len(WEIGHTS) + len(json.dumps(QWEN_CONFIG)) + 2
    # models is ls --all: registered models that are not downloaded too.
    every = cli(env, "models").stdout
    assert "STATE" in every.splitlines()[0]
    assert "mlx-community/Qwen3-VL-4B-Instruct-4bit" in every and "not downloaded" in every
    assert {r["id"] for r in json.loads(cli(env, "ls", "--all", "--json").stdout)} >= {
        "org/tiny-qwen", "mlx-community/gemma-3-4b-it-4bit"}


# -- rm --------------------------------------------------------------------------------
@pytest.fixture
def health_stub():
    """A server that answers /health as mlxhost does, with a given model loaded."""
    state = {"model": None}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = json.dumps({"status": "ok", "model": state["model"], "loading": None}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_rm_asks_refuses_a_loaded_model_and_deletes(env, health_stub):
    state, url = health_stub
    assert cli(env, "pull", "org/tiny-qwen").returncode == 0
    folder = repo_dir(env, "org/tiny-qwen")
    no = cli(env, "rm", "org/tiny-qwen", "--url", url, stdin="n\n")
    question, error = no.stderr.splitlines()
    assert question.startswith(f"Delete org/tiny-qwen (15.0 MB, {folder})? [y/N]")
    assert (no.returncode, error) == (1, "mlxhost rm: error: not deleted")
    assert folder.exists()
    state["model"] = "org/tiny-qwen"
    loaded = one_line_error(cli(env, "rm", "org/tiny-qwen", "-y", "--url", url), "rm")
    assert f"org/tiny-qwen is loaded by the server at {url}" in loaded
    assert folder.exists()
    state["model"] = "mlx-community/something-else"
    yes = cli(env, "rm", "org/tiny-qwen", "--url", url, stdin="y\n")
    assert yes.returncode == 0, yes.stderr
    assert yes.stdout.strip() == "deleted org/tiny-qwen (15.0 MB)"
    assert not folder.exists()
    assert "no such model" in one_line_error(cli(env, "rm", "org/tiny-qwen", "-y"), "rm")
    assert "is not downloaded" in one_line_error(cli(env, "rm", "qwen", "-y"), "rm")


def test_rm_never_deletes_a_folder_model(env, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN_CONFIG))
    config = tmp_path / "config.toml"
    config.write_text(f'[models.mine]\npath = "{folder}"\n')
    line = one_line_error(cli(env, "rm", "mine", "-y", "--config", str(config)), "rm")
    assert "not a Hugging Face cache entry" in line
    assert (folder / "config.json").exists()


# -- ps --------------------------------------------------------------------------------
def test_ps_without_a_server_is_a_one_line_error(env):
    port = free_port()
    line = one_line_error(cli(env, "ps", "--url", f"http://127.0.0.1:{port}"), "ps")
    assert f"no mlxhost server answers at http://127.0.0.1:{port}" in line
    # The configured address is the default.
    config = Path(env["XDG_CONFIG_HOME"]) / "mlxhost" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f"[server]\nport = {port}\n")
    assert f"127.0.0.1:{port}" in one_line_error(cli(env, "ps"), "ps")


def test_a_bad_config_file_stops_every_command(env, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 1\n")
    for command in (["ls"], ["ps"], ["pull", "org/tiny-qwen"], ["serve"]):
        result = cli(env, *command, "--config", str(config))
        assert result.returncode == 2, (command, result.stderr)
        assert f"{config}:2: server.prot: unknown key (did you mean port?)" in result.stderr


# -- run (pieces that need no server) ------------------------------------------------------
def test_run_reads_multiline_messages():
    def feed(*lines):
        pending = list(lines)

        def read(prompt):
            if not pending:
                raise EOFError  # as input() does at the end of input
            return pending.pop(0)

        return read

    assert read_message(feed("hello")) == "hello"
    assert read_message(feed('"""', "line one", "line two", '"""')) == "line one\nline two"
    assert read_message(feed('"""first', "second", 'third"""')) == "first\nsecond\nthird"
    assert read_message(feed('"""one line"""')) == "one line"
    assert read_message(feed("a \\", "b")) == "a \nb"
    with pytest.raises(EOFError):
        read_message(feed())


def test_run_without_a_model_on_disk_fails_before_starting_a_server(env):
    url = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(cli({**env, "HF_HUB_OFFLINE": "1"}, "run", "qwen", "Hi", "--url", url), "run")
    assert "mlx-community/Qwen3-VL-4B-Instruct-4bit is not downloaded" in line
    assert "mlxhost pull qwen" in line
    remote = one_line_error(cli(env, "run", "qwen", "Hi", "--url", "http://192.0.2.1:9"), "run")
    assert "no mlxhost server answers at http://192.0.2.1:9" in remote


# -- service ---------------------------------------------------------------------------
def test_systemd_unit_is_valid(tmp_path):
    env = {"HOME": str(tmp_path), "HF_HOME": "/data/hf cache", "PATH": os.environ.get("PATH", "")}
    unit = render("linux", str(tmp_path / "config.toml"), ["--model", "qwen", "--port", "8080"], env).decode()
    assert "ExecStart=" + " ".join([sys.executable, "-m", "mlxhost.cli.main", "serve"]) in unit
    assert f"--config {tmp_path / 'config.toml'} --model qwen --port 8080" in unit
    assert f"StandardOutput=append:{tmp_path}/.local/state/mlxhost/log/mlxhost.log" in unit
    assert 'Environment="HF_HOME=/data/hf cache"' in unit
    assert "WantedBy=default.target" in unit
    path = tmp_path / "mlxhost.service"
    path.write_text(unit)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # structure only: sections and the keys systemd needs
        sections = [line for line in unit.splitlines() if line.startswith("[")]
        assert sections == ["[Unit]", "[Service]", "[Install]"]
        return
    verified = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), verified
    # The validator does catch mistakes: a misspelled key is reported.
    broken = tmp_path / "broken" / "mlxhost.service"
    broken.parent.mkdir()
    broken.write_text(unit.replace("Restart=", "Restrat="))
    complaint = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True)
    assert "Restrat" in complaint.stdout + complaint.stderr


def test_systemd_quoting():
    assert _systemd_word("plain") == "plain"
    assert _systemd_word("a b") == '"a b"'
    assert _systemd_word('say "hi"') == '"say \\"hi\\""'
    assert _systemd_word("100%") == "100%%" and _systemd_word("$HOME") == "$$HOME"


def test_launchd_plist_round_trips(tmp_path):
    env = {"HOME": str(tmp_path), "HF_HUB_CACHE": "/Volumes/models/hub"}
    data = render("macos", None, ["--model", "gemma"], env)
    parsed = plistlib.loads(data)
    command = serve_command(None, ["--model", "gemma"])
    log_file = tmp_path / "Library" / "Logs" / "mlxhost" / "mlxhost.log"
    assert parsed == plist_dict(command, log_file, {"PYTHONUNBUFFERED": "1", "HF_HUB_CACHE": "/Volumes/models/hub"})
    assert parsed["Label"] == LABEL and parsed["RunAtLoad"] is True
    assert parsed["ProgramArguments"][-2:] == ["--model", "gemma"]
    assert plistlib.dumps(parsed, sort_keys=False) == data  # a stable round trip
    assert service_file("macos", env) == tmp_path / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    if shutil.which("plutil"):  # macOS's own validator
        path = tmp_path / "agent.plist"
        path.write_bytes(data)
        assert subprocess.run(["plutil", "-lint", str(path)], capture_output=True).returncode == 0


def test_service_install_status_uninstall_without_starting(env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[server]\nport = 8181\n")
    env = {**env, "MLXHOST_CONFIG": str(config)}
    unit = Path(env["XDG_CONFIG_HOME"]) / "systemd" / "user" / "mlxhost.service"
    installed = cli(env, "service", "install", "--no-start", "--platform", "linux", "--", "--model", "qwen")
    assert installed.returncode == 0, installed.stderr
    text = unit.read_text()
    assert f"serve --config {config} --model qwen" in text  # the same config file
    assert (Path(env["XDG_STATE_HOME"]) / "mlxhost" / "log").is_dir()
    status = json.loads(cli(env, "service", "status", "--json", "--platform", "linux").stdout)
    assert status["installed"] is True and status["file"] == str(unit)
    assert status["url"] == "http://127.0.0.1:8181" and status["server"] is None
    printed = cli(env, "service", "install", "--print", "--platform", "macos")
    assert plistlib.loads(printed.stdout.encode())["Label"] == LABEL
    removed = cli(env, "service", "uninstall", "--platform", "linux")
    assert removed.returncode == 0 and f"removed {unit}" in removed.stdout
    assert not unit.exists()


# -- formatting ------------------------------------------------------------------------
def test_formatting_helpers():
    assert human_bytes(None) == "n/a" and human_bytes(999) == "999 B"
    assert human_bytes(15_000_000) == "15.0 MB" and human_bytes(2_500_000_000) == "2.5 GB"
    assert human_duration(5) == "5s" and human_duration(125) == "2m 5s"
    assert human_duration(7380) == "2h 3m" and human_duration(90000) == "1d 1h"
    assert table(["A", "BB"], [["xxx", "y"]]) == "A    BB\nxxx  y"
    assert server_url(Settings(host="0.0.0.0", port=9)) == "http://127.0.0.1:9"
    assert server_url(Settings(host="::1", port=9)) == "http://[::1]:9"
    assert server_url(Settings(), "http://box:1/") == "http://box:1"
