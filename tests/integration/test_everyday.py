"""Everyday use against one real ``mlxhost serve`` (Qwen 0.5B test model) started
from a config file: ``ps``, ``ls``, ``rm`` next to it, ``run PROMPT``, the
interactive ``run`` in a pseudo-terminal, ``run`` starting its own server, the
config file's defaults reaching the real model, and the status page in headless
Chromium (Selenium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.server import free_port

QWEN = TEST_MODELS["qwen"].repo_id
GEMMA = TEST_MODELS["gemma"].repo_id
SYSTEM_PROMPT = "You are a careful assistant. Answer every question in one short sentence, plainly."
CONFIG = f"""
[server]
max_batch = 4

[models.coder]
repo = "{QWEN}"
aliases = ["coder2"]
temperature = 0.0          # greedy: answers repeat, so they can be compared
system_prompt = "{SYSTEM_PROMPT}"
weights = "as-is"
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def server(start_server, config_file):
    with start_server("--config", str(config_file), "--model", "coder") as running:
        yield running


@pytest.fixture(scope="module")
def env(hf_hub_cache, config_file, tmp_path_factory) -> dict[str, str]:
    """The CLI's environment: the test cache, no hub, the same config file."""
    return {
        **os.environ,
        "HF_HUB_CACHE": str(hf_hub_cache),
        "HF_HUB_OFFLINE": "1",
        "MLXHOST_CONFIG": str(config_file),
        "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("xdg")),
    }


def cli(env, *args, stdin: str | None = None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "mlxhost.cli.main", *args], env=env, input=stdin,
        capture_output=True, text=True, timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )


def api_answer(server, prompt: str, max_tokens: int, **extra) -> dict:
    body = {"model": "coder", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


# -- the config file reached the real server ------------------------------------------------
def test_config_file_settings_and_model_defaults_apply(server):
    health = server.health()
    assert health["model"] == QWEN  # --model coder: the alias from the file
    assert health["batch"]["max"] == 4  # [server] max_batch
    assert health["kernels"]["policy"] == "as-is"  # [models.coder] weights
    # Sampling: the file's temperature 0 for requests that send none (any seed, one answer) ...
    texts = {api_answer(server, "Name a fruit.", 8, seed=seed)["choices"][0]["message"]["content"]
             for seed in (1, 2, 3)}
    assert len(texts) == 1
    # ... and the request's own temperature when it sends one.
    hot = {api_answer(server, "Name a fruit.", 8, seed=seed, temperature=2.0)["choices"][0]["message"]["content"]
           for seed in (1, 2, 3, 4)}
    assert len(hot) > 1
    # The system prompt: a conversation without one gets exactly the configured one.
    def prompt_tokens(messages):
        body = {"model": "coder2", "messages": messages, "max_tokens": 1}
        return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300).json()["usage"]["prompt_tokens"]

    user = {"role": "user", "content": "Hi"}
    implicit = prompt_tokens([user])
    assert implicit == prompt_tokens([{"role": "system", "content": SYSTEM_PROMPT}, user])
    assert implicit > prompt_tokens([{"role": "system", "content": "Hi."}, user]) + 10


# -- ps / ls / rm ----------------------------------------------------------------------
def test_ps_shows_the_running_server(server, env):
    result = cli(env, "ps", "--url", server.url)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert re.search(rf"^server +{re.escape(server.url)} \(ok, up \d+", text, re.M), text
    window = httpx.get(f"{server.url}/v1/models/{QWEN}", timeout=30).json()["context_window"]
    assert re.search(rf"^model +{re.escape(QWEN)} \(context window {window:,}\)", text, re.M), text
    assert re.search(r"^sequences +0 running, 0 waiting \(batch max 4, peak \d+\)", text, re.M), text
    assert re.search(r"^memory +rss \d+(\.\d)? [MG]B, MLX active \d+(\.\d)? [MG]B", text, re.M), text
    assert re.search(r"^keep-alive +", text, re.M), text
    body = json.loads(cli(env, "ps", "--url", server.url, "--json").stdout)
    assert (body["model"], body["context_window"], body["url"]) == (QWEN, window, server.url)
    assert body["memory"]["process"]["rss"] > 100_000_000  # a loaded model, in bytes


def test_ls_lists_the_test_models_with_config_aliases(env):
    rows = {row["id"]: row for row in json.loads(cli(env, "ls", "--json").stdout)}
    assert rows[QWEN]["aliases"] == ["coder", "coder2"]
    assert rows[QWEN]["family"] == "qwen" and rows[QWEN]["size_bytes"] > 1_000_000_000
    assert GEMMA in rows


def test_rm_refuses_the_model_the_server_has_loaded(server, env, hf_hub_cache):
    result = cli(env, "rm", "coder", "-y", "--url", server.url)
    assert result.returncode == 1
    assert f"{QWEN} is loaded by the server at {server.url}" in result.stderr
    assert (hf_hub_cache / ("models--" + QWEN.replace("/", "--"))).is_dir()


# -- run ---------------------------------------------------------------------------------
def test_run_with_a_prompt_prints_one_answer(server, env):
    expected = api_answer(server, "What is 2+2?", 8)["choices"][0]["message"]["content"]
    result = cli(env, "run", "coder", "What is 2+2?", "--max-tokens", "8", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + ("" if expected.endswith("\n") else "\n")
    # Pipe-friendly: the prompt from stdin, only the answer on stdout.
    piped = cli(env, "run", "coder", "--max-tokens", "8", "--url", server.url, stdin="What is 2+2?")
    assert piped.returncode == 0 and piped.stdout == result.stdout
    # PROMPT and piped text: the text follows the prompt after a blank line.
    both = cli(env, "run", "coder", "Answer this:", "--max-tokens", "8", "--url", server.url,
               stdin="What is 3+3?")
    joined = api_answer(server, "Answer this:\n\nWhat is 3+3?", 8)["choices"][0]["message"]["content"]
    assert both.returncode == 0 and both.stdout.strip() == joined.strip()


def test_run_interactive_in_a_terminal(server, env, tmp_path):
    import pexpect
    from PIL import Image

    image = tmp_path / "dot.png"
    Image.new("RGB", (8, 8), "red").save(image)
    child = pexpect.spawn(
        sys.executable, ["-m", "mlxhost.cli.main", "run", "coder", "--url", server.url,
                         "--max-tokens", "6", "--verbose"],
        env=env, encoding="utf-8", timeout=300, dimensions=(40, 200),
    )
    stats = r"\[(\d+) prompt \+ (\d+) completion tokens"
    try:
        child.expect("Chatting with coder")
        child.expect(">>> ")
        child.sendline("What is 2+2?")
        child.expect(stats)
        first = int(child.match.group(1))
        child.expect(">>> ")
        child.sendline("And 3+3?")  # the history goes along: a longer prompt
        child.expect(stats)
        assert int(child.match.group(1)) > first
        child.expect(">>> ")
        child.sendline("/reset")
        child.expect(r"\(conversation cleared\)")
        child.expect(">>> ")
        child.sendline("What is 2+2?")  # as the first turn again
        child.expect(stats)
        assert int(child.match.group(1)) == first
        child.expect(">>> ")
        child.sendline('"""')  # a multi-line message
        child.expect(r"\.\.\. ")
        child.sendline("Name one colour,")
        child.expect(r"\.\.\. ")
        child.sendline('then stop."""')
        child.expect(stats)
        child.expect(">>> ")
        child.sendline(f"/image {image}")
        child.expect(r"\(attached .*dot\.png")
        child.expect(">>> ")
        child.sendline("What colour is this?")  # a text-only model: the server's 400, shown
        child.expect(r"error: .*does not accept images")
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_run_starts_a_server_when_none_answers(env):
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(env, "run", GEMMA, "Say hello.", "--max-tokens", "4", "--url", url)
    assert result.returncode == 0, result.stderr
    assert "starting one for this session" in result.stderr
    assert result.stdout.strip()
    with pytest.raises(httpx.ConnectError):  # it left with the session
        httpx.get(f"{url}/health", timeout=5)


# -- the page in a real browser -----------------------------------------------------------
@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    # No skip: CI installs them (scripts/setup.sh), and a page never tried is not tested.
    assert chromium and driver_path, "install Debian's chromium and chromium-driver (scripts/setup.sh does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The test run preloads OpenBLAS for MLX (scripts/test.sh); in Chromium it crashes the renderer.
    clean_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    driver = webdriver.Chrome(service=Service(driver_path, env=clean_env), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_status_page_lists_models_and_streams_a_chat(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(browser, 300)
    browser.get(server.url + "/")
    # Status figures from /health, the models from /v1/models.
    wait.until(lambda d: d.find_element(By.ID, "status").text == "ok")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#models tr[data-model="{QWEN}"]'))
    row = browser.find_element(By.CSS_SELECTOR, f'#models tr[data-model="{QWEN}"]')
    window = httpx.get(f"{server.url}/v1/models/{QWEN}", timeout=30).json()["context_window"]
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells == [QWEN, "coder, coder2", "qwen", "fim, tools", f"{window:,}", "loaded"]
    assert browser.find_elements(By.CSS_SELECTOR, f'#models tr[data-model="{GEMMA}"]')
    figure = browser.find_element(By.CSS_SELECTOR, 'dd[data-figure="loaded model"]')
    assert figure.text == QWEN
    assert browser.find_element(By.CSS_SELECTOR, 'dd[data-figure="batch"]').text.startswith("max 4")
    # The chat: the loaded model is chosen; a text model takes no image.
    assert Select(browser.find_element(By.ID, "chat-model")).first_selected_option.get_attribute("value") == QWEN
    assert not browser.find_element(By.ID, "image").is_enabled()
    browser.find_element(By.ID, "max-tokens").send_keys("8")
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("What is 2+2?")
    browser.find_element(By.ID, "send").click()
    reply = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant"))
    wait.until(lambda d: reply.get_attribute("data-state") != "streaming")
    assert reply.get_attribute("data-state") == "done"
    # Streamed: the answer arrived in several pieces, and it is the model's answer.
    assert int(reply.get_attribute("data-chunks")) >= 2
    expected = api_answer(server, "What is 2+2?", 8)["choices"][0]["message"]["content"]
    assert reply.text == expected.strip()
    usage = browser.find_element(By.CSS_SELECTOR, ".usage").text
    assert re.fullmatch(r"\d+ prompt \+ 8 completion tokens", usage), usage
    screenshot = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")
    assert console_errors(browser) == []
