"""The Anthropic Messages adapter against the fake engine."""

from __future__ import annotations

import json

import pytest
from litestar.testing import TestClient

from mlxhost.api.app import create_app
from mlxhost.api.formats.anthropic import parse_messages_request
from mlxhost.core.domain import ChatRequest, ImagePart, NamedToolChoice, text_message
from mlxhost.core.types import ContentDelta, ToolCall, ToolCallEvent
from mlxhost.families.builtin import claude_code
from mlxhost.families.hookspecs import hookimpl
from mlxhost.families.plugins import make_plugin_manager
from mlxhost.settings.table import Settings


def post(client, model, **body):
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hi"}], **body}
    return client.post("/v1/messages", json=body)


def test_create_message(client, fake_models):
    response = post(client, fake_models[0])
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["id"].startswith("msg_")
    assert body["content"] == [{"type": "text", "text": "Hello from the fake engine."}]
    assert body["stop_reason"] == "end_turn" and body["stop_sequence"] is None
    assert body["usage"]["output_tokens"] == len("Hello from the fake engine.")
    assert "cache_read_input_tokens" in body["usage"]


def test_max_tokens_and_stop_sequence(client, fake_models):
    body = post(client, fake_models[0], max_tokens=3).json()
    assert body["stop_reason"] == "max_tokens" and body["content"][0]["text"] == "Hel"
    body = post(client, fake_models[0], stop_sequences=["fake"]).json()
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == "fake"


def test_conversion_to_domain():
    request, stream = parse_messages_request({
        "model": "m", "max_tokens": 5, "stream": True,
        "system": [{"type": "text", "text": "Be brief."}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "x"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [
            {"role": "system", "content": "More system."},
            {"role": "user", "content": [
                {"type": "text", "text": "Look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True}]},
        ],
    })
    assert stream
    roles = [m.role for m in request.messages]
    assert roles == ["system", "system", "user", "assistant", "tool"]
    assert request.messages[0].text == "Be brief."
    image = request.messages[2].content[1]
    assert isinstance(image, ImagePart) and image.url == "data:image/png;base64,AAAA"
    assert request.messages[3].tool_calls == (ToolCall("get_weather", '{"city": "Paris"}', "toolu_1"),)
    assert request.messages[4].tool_call_id == "toolu_1" and request.messages[4].text == "Error: boom"
    assert request.tools[0].parameters == {"type": "object"}
    assert request.tool_choice == NamedToolChoice("get_weather")
    assert request.max_tokens == 5
    for wire, domain_choice in (("auto", "auto"), ("any", "required"), ("none", "none")):
        req, _ = parse_messages_request({"model": "m", "max_tokens": 1, "tool_choice": {"type": wire},
                                         "messages": [{"role": "user", "content": "x"}]})
        assert req.tool_choice == domain_choice


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"messages": "hi"}, "messages"),
        ({"top_k": -5}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages.0.content.0.type"),
    ],
)
def test_invalid_requests_in_anthropic_shape(client, fake_models, change, param):
    body = {"model": fake_models[0], "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}], **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = client.post("/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert param in error["error"]["message"]
    assert post(client, fake_models[0]).status_code == 200  # still up


def test_unknown_model_and_unknown_path(client):
    response = post(client, "no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    response = client.post("/v1/messages/nope", json={})
    assert response.status_code in (404, 405)
    assert response.json()["type"] == "error"


def test_prompt_too_long(client, fake_models):
    response = post(client, fake_models[1], messages=[{"role": "user", "content": "x" * 500}])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("prompt is too long: ") and error["message"].endswith("128 maximum")


def test_count_tokens_matches_usage(client, fake_models):
    messages = [{"role": "user", "content": "Count me"}]
    count = client.post("/v1/messages/count_tokens", json={"model": fake_models[0], "messages": messages})
    assert count.status_code == 200
    body = post(client, fake_models[0], messages=messages).json()
    assert count.json() == {"input_tokens": body["usage"]["input_tokens"]}


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


def test_streaming_event_order(client, fake_models):
    response = post(client, fake_models[0], stream=True)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello from the fake engine."
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == len(text)


def test_streaming_error_before_first_byte_is_http_error(client):
    response = post(client, "no-such-model", stream=True)
    assert response.status_code == 404 and response.json()["type"] == "error"


class CallParser:
    """Turns the text 'CALL' into a get_weather tool call."""

    stop_requested = False

    def feed(self, text):
        return [ToolCallEvent(ToolCall("get_weather", '{"city": "Paris"}', "call_1"))] if text == "C" else []

    def finish(self):
        return [ContentDelta("")]


class ToolPlugin:
    @hookimpl
    def mlxhost_tool_call_parser(self, model):
        return lambda tools: CallParser()


@pytest.fixture
def tool_client(fake_plugin, fake_models):
    fake_plugin.reply = "C"
    app = create_app(Settings(extra_models=fake_models), make_plugin_manager(extra=[fake_plugin, ToolPlugin()]))
    with TestClient(app) as test_client:
        yield test_client


def test_tool_use_response_and_stream(tool_client, fake_models):
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    body = post(tool_client, fake_models[0], tools=tools).json()
    assert body["stop_reason"] == "tool_use"
    assert body["content"] == [{"type": "tool_use", "id": "toolu_call_1", "name": "get_weather",
                                "input": {"city": "Paris"}}]
    events = _events(post(tool_client, fake_models[0], tools=tools, stream=True).text)
    names = [n for n, _ in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    assert events[2][1]["content_block"]["type"] == "tool_use"
    assert json.loads(events[3][1]["delta"]["partial_json"]) == {"city": "Paris"}
    assert events[5][1]["delta"]["stop_reason"] == "tool_use"


def test_claude_code_nonce_is_dropped():
    request = ChatRequest(model="m", messages=(
        text_message("system", "x-anthropic-billing-header: cc_version=1; cch=abc123;\nYou are Claude Code."),
        text_message("user", "hi"),
    ))
    changed = claude_code.mlxhost_normalize_request(request)
    assert changed is not None and changed.messages[0].text == "You are Claude Code."
    assert changed.messages[1] == request.messages[1]
    assert claude_code.mlxhost_normalize_request(changed) is None


def test_claude_code_nonce_does_not_reach_the_prompt(client, fake_models, fake_plugin):
    for nonce in ("aaa", "bbb"):
        system = f"x-anthropic-billing-header: cch={nonce};\nYou are helpful."
        assert post(client, fake_models[0], system=system).status_code == 200
    first, second = fake_plugin.prompts[-2:]
    assert first.text == second.text and "billing" not in first.text


def test_strict_tools_reach_the_domain():
    request, _ = parse_messages_request({
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "a", "input_schema": {"type": "object"}, "strict": True},
                  {"name": "b", "input_schema": {"type": "object"}}],
    })
    assert [tool.strict for tool in request.tools] == [True, None]
