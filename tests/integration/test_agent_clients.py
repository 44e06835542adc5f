"""Claude Code's and Codex's defaults against a real server (Qwen 0.5B, 32,768-token
window), through the official SDKs: the overflow sentence Claude Code retries on,
its model names, tool search in count_tokens, keep-alive during a real prefill,
and Codex's recorded tool list (namespace and web_search tools).

With the real clients installed (``claude`` and ``codex`` on PATH), the last two
tests run them end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from mlxhost.models.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id
DATA = Path(__file__).parent.parent / "unit" / "data" / "clients"
KEEPALIVE = 1.0
# Each read of a waiting stream must bring bytes within this bound (generous: a
# shared 2-core machine); the keep-alive comes every KEEPALIVE seconds.
BOUND = 10 * KEEPALIVE
OVERFLOW = re.compile(r"input length and `max_tokens` exceed context limit: (\d+) \+ (\d+) > (\d+), "
                      r"decrease input length or `max_tokens` and try again")


@pytest.fixture(scope="module")
def server(start_server):
    with start_server("--model", QWEN, "--stand-in-for", "claude-*",
                      "--stream-keepalive", str(KEEPALIVE)) as server:
        yield server


@pytest.fixture
def claude(server):
    return anthropic.Anthropic(base_url=server.url, api_key="dummy", max_retries=0, timeout=600)


def test_claude_code_max_tokens_retry(claude):
    """Claude Code's default model name and a max_tokens that does not fit: the
    sentence it parses, then its retry with the room left answers."""
    messages = [{"role": "user", "content": "Reply with exactly: hello"}]
    # A system prompt of ~1,000 tokens, so that prompt + 32,000 exceeds the 32,768 window.
    system = "You are a helpful assistant who follows instructions exactly. " * 100
    with (pytest.raises(anthropic.BadRequestError) as failed,
          claude.messages.stream(model="claude-opus-4-8", max_tokens=32000, system=system,
                                 messages=messages)):
        pass
    match = OVERFLOW.fullmatch(failed.value.body["error"]["message"])
    assert match, failed.value.body
    prompt, max_tokens, window = map(int, match.groups())
    assert (max_tokens, window) == (32000, 32768)
    with claude.messages.stream(model="claude-opus-4-8", max_tokens=window - prompt, system=system,
                                messages=messages, extra_body={"temperature": 0}) as stream:
        message = stream.get_final_message()
    assert message.model == QWEN and message.stop_reason == "end_turn"
    assert "hello" in message.content[0].text.lower()


def _tool(name: str, **extra) -> dict:
    return {"name": name, "description": f"Run the {name} action on the database.",
            "input_schema": {"type": "object", "properties": {"sql": {"type": "string"}}}, **extra}


def test_count_tokens_counts_what_tool_search_renders(claude):
    ask = [{"role": "user", "content": "Query the database."}]
    found = [*ask,
             {"role": "assistant", "content": [
                 {"type": "tool_use", "id": "toolu_1", "name": "ToolSearch", "input": {"query": "db"}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                 {"type": "tool_reference", "tool_name": "mcp__db__query"}]}]}]

    def count(tools, messages):
        return claude.messages.count_tokens(model=QWEN, tools=tools, messages=messages).input_tokens

    search = _tool("ToolSearch")
    deferred = _tool("mcp__db__query", defer_loading=True)
    assert count([search, deferred], ask) == count([search], ask)
    loaded = count([search, deferred], found)
    assert loaded == count([search, _tool("mcp__db__query")], found)
    assert loaded > count([search], found)


def test_keepalive_during_a_real_prefill(server):
    """A prompt of ~2,000 tokens prefills for many seconds on CPU: keep-alives keep
    coming (after message_start: empty text deltas), then the answer."""
    body = {"model": QWEN, "max_tokens": 4, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": "Summarize: " + "the quick brown fox " * 400}]}
    keepalives, text = 0, ""
    timeout = httpx.Timeout(60, read=BOUND)
    with httpx.stream("POST", f"{server.url}/v1/messages", json=body, timeout=timeout) as response:
        assert response.status_code == 200
        for line in response.iter_lines():  # every read within BOUND, or httpx.ReadTimeout
            if not line.startswith("data: "):
                continue
            event = json.loads(line[len("data: "):])
            delta = event.get("delta", {})
            if event["type"] == "content_block_delta" and delta.get("text") == "":
                keepalives += 1
            elif event["type"] == "content_block_delta":
                text += delta["text"]
    assert keepalives >= 1 and text  # keep-alives during the prefill, then the answer


def _codex_tools_sample() -> list[dict]:
    """Codex's recorded tools, one of each kind: a function, the namespace (two of its
    functions) and web_search. The whole list (~5,000 tokens: 2.5 minutes of prefill
    on 2 CPU cores) is parsed by the unit tests and sent by the real Codex below."""
    tools = json.loads((DATA / "codex_0.171.0.json").read_text())["tools"]
    function = next(t for t in tools if t["type"] == "function")
    namespace = next(t for t in tools if t["type"] == "namespace")
    hosted = next(t for t in tools if t["type"] == "web_search")
    return [function, {**namespace, "tools": namespace["tools"][:2]}, hosted]


def test_codex_recorded_tools_through_the_openai_sdk(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="dummy", max_retries=0, timeout=600)
    stream = client.responses.create(
        model=QWEN, input="Reply with exactly: hello", tools=_codex_tools_sample(),
        tool_choice="auto", parallel_tool_calls=True, store=False, stream=True,
        include=["reasoning.encrypted_content"], reasoning={"summary": "auto"},
        extra_body={"temperature": 0, "max_output_tokens": 16},
    )
    kinds = [event.type for event in stream]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")


# -- the real clients, when installed ------------------------------------------------
def _binary(name: str) -> str | None:
    return os.environ.get(f"MLXHOST_{name.upper()}_BIN") or shutil.which(name)


@pytest.mark.skipif(_binary("claude") is None, reason="Claude Code (npm @anthropic-ai/claude-code) is not installed")
def test_claude_code_end_to_end(server, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "ANTHROPIC_BASE_URL": server.url, "ANTHROPIC_API_KEY": "dummy"}
    done = subprocess.run([_binary("claude"), "-p", "Reply with exactly: hello"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()


@pytest.mark.skipif(_binary("codex") is None, reason="Codex CLI (npm @openai/codex) is not installed")
def test_codex_end_to_end(server, tmp_path):
    home = tmp_path / ".codex"
    home.mkdir()
    (home / "config.toml").write_text(
        f'model = "{QWEN}"\nmodel_provider = "mlxhost"\n\n[model_providers.mlxhost]\n'
        f'name = "mlxhost"\nbase_url = "{server.url}/v1"\nwire_api = "responses"\n')
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CODEX_HOME": str(home)}
    done = subprocess.run([_binary("codex"), "exec", "--skip-git-repo-check", "Reply with exactly: hello"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip()
