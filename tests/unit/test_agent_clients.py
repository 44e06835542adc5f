"""Claude Code and Codex with their default settings, on the fake engine: the
overflow wording each API's clients act on, Anthropic tool search, the
Responses API's namespace and hosted tools, and the clients' recorded request
bodies (tests/unit/data/clients, captured from Claude Code 2.1.197 and Codex
0.171.0 against a stub server, ids and paths scrubbed)."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import anthropic
import pytest
from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.api.formats import openai_responses
from mlxhost.api.formats.anthropic import parse_messages_request
from mlxhost.api.formats.openai_responses import ResponseStore, items_to_messages, parse_request
from mlxhost.core.types import ContentDelta, ToolCall, ToolCallEvent
from mlxhost.families.hookspecs import hookimpl
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings
from mlxhost.testing.fake_engine import make_fake_model
from mlxhost.testing.http import live, parse_sse

DATA = Path(__file__).parent / "data" / "clients"
WINDOW = 32768
ANTHROPIC_OVERFLOW = re.compile(
    r"^input length and `max_tokens` exceed context limit: (\d+) \+ (\d+) > (\d+), "
    r"decrease input length or `max_tokens` and try again$"
)


def recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.fixture
def wide_model(tmp_path) -> str:
    """A fake model with the Qwen test model's 32,768-token window (1 token a byte)."""
    return str(make_fake_model(tmp_path / "Wide-Model", context_window=WINDOW))


@pytest.fixture
def wide(make_client, fake_models, wide_model):
    with make_client(extra_models=[*fake_models, wide_model]) as client:
        yield client


# -- overflow: "the prompt alone does not fit" vs "prompt + max_tokens does not" -------
def test_anthropic_words_the_two_overflows_apart(client, fake_models):
    small = fake_models[1]  # 128-token window
    body = {"model": small, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    match = ANTHROPIC_OVERFLOW.match(error["message"])
    assert match, error["message"]
    prompt, max_tokens, window = map(int, match.groups())
    assert (max_tokens, window) == (500, 128) and prompt < window
    # What Claude Code does with it: retry at once with the room left.
    retry = client.post("/v1/messages", json={**body, "max_tokens": window - prompt})
    assert retry.status_code == 200, retry.text

    long = {**body, "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 300}]}
    too_long = client.post("/v1/messages", json=long).json()["error"]["message"]
    assert re.fullmatch(r"prompt is too long: (\d+) tokens > 128 maximum", too_long), too_long
    assert int(too_long.split()[4]) > 300


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses", "/v1/completions"])
def test_openai_endpoints_word_the_two_overflows_apart(client, fake_models, path):
    small = fake_models[1]
    if path == "/v1/completions":
        fits, alone = {"prompt": "hi", "max_tokens": 500}, {"prompt": "x" * 300, "max_tokens": 5}
    elif path == "/v1/responses":
        fits = {"input": "hi", "max_output_tokens": 500}
        alone = {"input": "x" * 300, "max_output_tokens": 5, "truncation": "disabled"}
    else:
        fits = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 500}
        alone = {"messages": [{"role": "user", "content": "x" * 300}], "max_tokens": 5}
    error = client.post(path, json={"model": small, **fits}).json()["error"]
    match = re.fullmatch(
        r"This model's maximum context length is 128 tokens\. However, you requested (\d+) "
        r"tokens \((\d+) in the messages, 500 in the completion\)\. Please reduce the length "
        r"of the messages or completion\.", error["message"])
    assert match, error["message"]
    assert int(match.group(1)) == int(match.group(2)) + 500
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    error = client.post(path, json={"model": small, **alone}).json()["error"]
    assert re.fullmatch(
        r"This model's maximum context length is 128 tokens\. However, your messages resulted "
        r"in \d+ tokens\. Please reduce the length of the messages\.", error["message"]
    ), error["message"]


def test_ollama_caps_generation_at_the_room_left(client, fake_models, fake_plugin):
    small = fake_models[1]
    body = {"model": small, "stream": False, "options": {"num_predict": 500},
            "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    prompt = response.json()["prompt_eval_count"]
    assert fake_plugin.params[-1].max_tokens == 128 - prompt
    too_long = client.post("/api/chat", json={**body, "messages": [{"role": "user", "content": "x" * 300}]})
    assert too_long.status_code == 400
    assert "resulted in" in too_long.json()["error"]


def test_clamp_max_tokens_setting_caps_the_openai_endpoints(make_client, fake_models, fake_plugin):
    with make_client(clamp_max_tokens=True) as client:
        body = {"model": fake_models[1], "max_tokens": 500,
                "messages": [{"role": "user", "content": "hi"}]}
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        prompt = response.json()["usage"]["prompt_tokens"]
        assert fake_plugin.params[-1].max_tokens == 128 - prompt


def test_every_4xx_is_logged_with_its_reason_in_one_line(client, fake_models, caplog):
    caplog.set_level(logging.WARNING, logger="mlxhost.api.errors")
    body = {"model": fake_models[1], "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/messages", json=body).status_code == 400
    assert client.post("/v1/chat/completions", json={"model": "nope", "messages": []}).status_code in (400, 404)
    lines = [r.getMessage() for r in caplog.records if r.name == "mlxhost.api.errors"]
    assert len(lines) == 2, lines
    # The API's own wording, as the client got it (Anthropic's sentence, not OpenAI's).
    assert lines[0].startswith("POST /v1/messages -> 400: input length and `max_tokens` exceed")
    assert "+ 500 >" in lines[0]
    assert all("\n" not in line for line in lines)


# -- Anthropic tool search ----------------------------------------------------------
def _tool(name: str, **extra) -> dict:
    return {"name": name, "description": f"the {name} tool",
            "input_schema": {"type": "object", "properties": {}}, **extra}


def test_deferred_tools_stay_out_until_a_tool_reference_names_them():
    tools = [_tool("Read"), _tool("ToolSearch"), _tool("mcp__db__query", defer_loading=True),
             _tool("mcp__db__drop", defer_loading=True)]
    first = {"model": "m", "max_tokens": 8, "tools": tools,
             "messages": [{"role": "user", "content": "find the db tool"}]}
    chat, _ = parse_messages_request(first)
    assert [t.name for t in chat.tools] == ["Read", "ToolSearch"]
    later = copy.deepcopy(first)
    later["messages"] += [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "ToolSearch", "input": {"query": "db"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [
            {"type": "tool_reference", "tool_name": "mcp__db__query"}]}]},
    ]
    chat, _ = parse_messages_request(later)
    assert [t.name for t in chat.tools] == ["Read", "ToolSearch", "mcp__db__query"]
    result = chat.messages[-1]
    assert result.role == "tool" and "mcp__db__query" in result.text
    # count_tokens parses the same way, so it counts what generation renders.
    counted, _ = parse_messages_request(later, count_only=True)
    assert counted.tools == chat.tools


def test_tool_reference_results_are_answered(client, fake_models):
    body = {"model": fake_models[0], "max_tokens": 8,
            "tools": [_tool("ToolSearch"), _tool("Later", defer_loading=True)],
            "messages": [
                {"role": "user", "content": "go"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "ToolSearch", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "content": [{"type": "tool_reference", "tool_name": "Later"}]}]},
            ]}
    assert client.post("/v1/messages", json=body).status_code == 200
    assert client.post("/v1/messages/count_tokens", json=body).status_code == 200


# -- Responses: namespaces and hosted tools -------------------------------------------
def test_namespace_tools_flatten_and_hosted_tools_are_left_out(monkeypatch, caplog):
    monkeypatch.setattr(openai_responses, "_warned", set())
    caplog.set_level(logging.WARNING, logger="mlxhost.api.formats.openai_responses")
    body = {"model": "m", "input": "hi", "tools": [
        {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
        {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
            {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}]},
        {"type": "web_search", "external_web_access": False},
        {"type": "image_generation"},
    ]}
    for _ in range(2):
        parsed = parse_request(body, ResponseStore())
    assert [t.name for t in parsed.chat.tools] == ["exec_command", "multi_agent_v1__close_agent"]
    assert parsed.tools.wire_call("multi_agent_v1__close_agent") == {
        "name": "close_agent", "namespace": "multi_agent_v1"}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "image_generation, web_search" in warnings[0]
    # Codex sends the call back with its namespace: the prompt shows the flat name.
    messages = items_to_messages([{"type": "function_call", "call_id": "c", "name": "close_agent",
                                   "namespace": "multi_agent_v1", "arguments": "{}"}])
    assert messages[0].tool_calls[0].name == "multi_agent_v1__close_agent"


def test_tool_choice_forcing_a_hosted_tool_is_a_400_naming_it(client, fake_models):
    body = {"model": fake_models[0], "input": "hi", "tools": [{"type": "web_search"}],
            "tool_choice": {"type": "web_search"}}
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 400
    assert "web_search" in response.json()["error"]["message"]


class NamespacedCall:
    """A tool parser that turns '@' into a call of Codex's namespaced close_agent."""

    def __init__(self) -> None:
        self.stop_requested = False

    def feed(self, text):
        if "@" not in text:
            return [ContentDelta(text)]
        return [ToolCallEvent(ToolCall("multi_agent_v1__close_agent", '{"id":"a1"}', "call_1"))]

    def finish(self):
        return []


class NamespacedCallPlugin:
    @hookimpl
    def mlxhost_tool_call_parser(self, model):
        return lambda tools: NamespacedCall()


@pytest.fixture
def codex_server(fake_plugin, fake_models, wide_model):
    fake_plugin.reply = "@"
    pm = make_plugin_manager(extra=[fake_plugin, NamespacedCallPlugin()])
    with TestClient(create_app(Settings(extra_models=[*fake_models, wide_model]), pm)) as client:
        yield client


def test_codex_recorded_request_is_answered_with_the_namespaced_call(codex_server, wide_model):
    body = recorded("codex_0.171.0.json")
    body["model"] = Path(wide_model).name  # the folder's name: an alias of a start-up folder
    assert {t["type"] for t in body["tools"]} == {"function", "namespace", "web_search"}
    response = codex_server.post("/v1/responses", json=body)
    assert response.status_code == 200, response.text[:500]
    events = parse_sse(response.text)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == [{"type": "function_call", "id": done[0]["id"], "call_id": "call_1",
                     "name": "close_agent", "namespace": "multi_agent_v1",
                     "arguments": '{"id":"a1"}', "status": "completed"}]


# -- Claude Code's recorded request ---------------------------------------------------
def test_claude_code_recorded_request_gets_the_retry_wording_then_an_answer(
    fake_plugin, fake_models, wide_model
):
    body = recorded("claude_code_2.1.197.json")
    body["model"] = wide_model
    body["max_tokens"] = 32000  # the Claude Code asked for 32,000 on a 32k window
    extra = {k: body.pop(k) for k in ("context_management", "output_config", "thinking")}
    body.pop("stream")
    with live(fake_plugin, [*fake_models, wide_model]) as url:
        claude = anthropic.Anthropic(base_url=url, api_key="dummy", max_retries=0)
        # Streamed, as Claude Code asks.
        with (pytest.raises(anthropic.BadRequestError) as failed,
              claude.messages.stream(**body, extra_body=extra)):
            pass
        match = ANTHROPIC_OVERFLOW.match(failed.value.body["error"]["message"])
        assert match, failed.value.body
        prompt, _, window = map(int, match.groups())
        assert window == WINDOW
        body["max_tokens"] = window - prompt
        with claude.messages.stream(**body, extra_body=extra) as stream:
            kinds = [event.type for event in stream]
            message = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert message.stop_reason == "end_turn" and message.content[0].text


def test_claude_code_defaults_resolve_with_stand_in_for(make_client, fake_models, wide_model):
    with make_client(extra_models=fake_models, model=wide_model, stand_in_for=["claude-*"]) as client:
        body = {"model": "claude-opus-4-8", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        response = client.post("/v1/messages", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == str(Path(wide_model).resolve())
        assert client.post("/v1/messages", json={**body, "model": "gpt-4o"}).status_code == 404


def test_output_config_json_schema_constrains_the_reply():
    body = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "title?"}],
            "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": {
                "type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}}}}
    chat, _ = parse_messages_request(body)
    assert chat.json_format is not None and chat.json_format.schema["required"] == ["title"]
