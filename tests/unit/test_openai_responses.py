from __future__ import annotations

import json

import pytest
from openai.types.responses import Response as OpenAIResponse

from mlxhost.api.formats.openai_responses import ResponseStore, Stored, items_to_messages
from mlxhost.core import domain
from mlxhost.core.errors import InvalidRequest


@pytest.fixture
def post(fake_models):
    def send(client, **body):
        body.setdefault("model", fake_models[0])
        return client.post("/v1/responses", json=body)

    return send


def sse_events(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


def test_text_response_parses_with_openai_client(client, fake_plugin, post):
    fake_plugin.reply = "Hello"
    response = post(client, input="Hi", instructions="Be brief.")
    assert response.status_code == 200, response.text
    body = response.json()
    parsed = OpenAIResponse.model_validate(body)
    assert parsed.output_text == "Hello"
    assert body["id"].startswith("resp_")
    assert body["status"] == "completed"
    assert body["usage"]["output_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["input_tokens"] + 5
    assert "Be brief." in fake_plugin.prompts[-1].text


def test_max_output_tokens_incomplete(client, fake_plugin, post):
    fake_plugin.reply = "Hello world"
    body = post(client, input="Hi", max_output_tokens=3).json()
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    OpenAIResponse.model_validate(body)


def test_input_items_to_messages():
    messages = items_to_messages([
        {"type": "message", "role": "developer", "content": "dev"},
        {"role": "system", "content": [{"type": "input_text", "text": "sys"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
        ]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": "two"},
    ])
    assert [m.role for m in messages] == ["developer", "system", "user", "assistant", "tool", "tool"]
    assert isinstance(messages[2].content[1], domain.ImagePart)
    assert messages[2].content[1].where == "input[2].content[1]"
    assistant = messages[3]
    assert assistant.text == "ok"
    assert [c.id for c in assistant.tool_calls] == ["c1", "c2"]
    assert messages[4].tool_call_id == "c1" and messages[4].text == "one"


def test_function_call_without_text_is_own_assistant_message():
    messages = items_to_messages([
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ])
    assert messages[1].role == "assistant" and messages[1].tool_calls[0].name == "f"


def test_bad_item_names_field():
    with pytest.raises(InvalidRequest) as info:
        items_to_messages([{"type": "message", "role": "user", "content": [{"type": "input_file"}]}])
    assert info.value.param == "input[0].content[0].type"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice.type"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"temperature": 5}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"input": 3}, "input"),
        ({"stream": "yes"}, "stream"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"max_tool_calls": 1}, "max_tool_calls"),
        ({"previous_response_id": 5}, "previous_response_id"),
    ],
)
def test_rejections_name_the_field(client, body, param, post):
    body = {"input": "hi", **body}
    response = post(client, **body)
    assert response.status_code == 400, response.text
    # The schema check may name the offending part itself ("include[0]").
    found = response.json()["error"]["param"]
    assert found == param or found.startswith((param + "[", param + "."))


def test_codex_style_fields_are_accepted(client, post):
    response = post(client, input=[{"type": "reasoning", "summary": []},
                                   {"role": "user", "content": "hi"}],
                    include=["reasoning.encrypted_content"], reasoning={"effort": "low"},
                    store=False, parallel_tool_calls=False, prompt_cache_key="k",
                    metadata={"a": "b"}, user="u", truncation="disabled")
    assert response.status_code == 200, response.text


def test_text_format_json_schema_is_constrained(client, fake_plugin, post):
    fake_plugin.reply = '{"a": 1}'
    fmt = {"type": "json_schema", "name": "thing", "strict": True,
           "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}
    response = post(client, input="json please", text={"format": fmt})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"]["format"]["type"] == "json_schema"
    assert json.loads(body["output"][0]["content"][0]["text"]) == {"a": 1}


def test_missing_input(client, post):
    response = client.post("/v1/responses", json={"model": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


def test_unknown_model_is_openai_404(client, post):
    response = post(client, model="no-such/model", input="hi")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "model"


def test_tools_and_tool_choice_reach_the_prompt(client, fake_plugin, post):
    tool = {"type": "function", "name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {}}, "strict": False}
    body = post(client, input="hi", tools=[tool], tool_choice="auto").json()
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["parameters"] == tool["parameters"]
    assert post(client, input="hi", tools=[tool], tool_choice="none").status_code == 200
    response = post(client, input="hi", tools=[tool],
                    tool_choice={"type": "function", "name": "get_weather"})
    assert response.status_code == 200, response.text


def test_previous_response_id_continues(client, fake_plugin, post):
    fake_plugin.reply = "FIRSTANSWER"
    first = post(client, input="question one").json()
    fake_plugin.reply = "ok"
    second = post(client, input="question two", previous_response_id=first["id"]).json()
    prompt = fake_plugin.prompts[-1].text
    assert prompt.index("question one") < prompt.index("FIRSTANSWER") < prompt.index("question two")
    assert second["previous_response_id"] == first["id"]
    fake_plugin.reply = "x"
    post(client, input="question three", previous_response_id=second["id"])
    assert "question one" in fake_plugin.prompts[-1].text


def test_unknown_previous_response_id(client, post):
    response = post(client, input="hi", previous_response_id="resp_nope")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["param"] == "previous_response_id"
    assert "resp_nope" in error["message"]


def test_get_and_delete(client, post):
    body = post(client, input="hi").json()
    got = client.get(f"/v1/responses/{body['id']}")
    assert got.status_code == 200 and got.json() == body
    deleted = client.delete(f"/v1/responses/{body['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": body["id"], "object": "response.deleted", "deleted": True}
    missing = client.get(f"/v1/responses/{body['id']}")
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.delete(f"/v1/responses/{body['id']}").status_code == 404


def test_store_false_is_not_stored(client, post):
    body = post(client, input="hi", store=False).json()
    assert body["store"] is False
    assert client.get(f"/v1/responses/{body['id']}").status_code == 404
    response = post(client, input="again", previous_response_id=body["id"])
    assert response.status_code == 404


def test_store_is_bounded_lru():
    store = ResponseStore(size=2)
    for key in ("a", "b"):
        store.put(Stored(response={"id": key}, items=[]))
    assert store.get("a") is not None  # a is now the most recent
    store.put(Stored(response={"id": "c"}, items=[]))
    assert store.get("b") is None
    assert store.get("a") is not None and store.get("c") is not None
    assert len(store) == 2


def test_stream_event_order(client, fake_plugin, post):
    fake_plugin.reply = "Hey"
    response = post(client, input="hi", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    types = [e["type"] for e in events]
    assert types == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = events[-1]["response"]
    assert OpenAIResponse.model_validate(done).output_text == "Hey"
    assert client.get(f"/v1/responses/{done['id']}").json()["output"] == done["output"]


def test_stream_incomplete(client, fake_plugin, post):
    fake_plugin.reply = "Hello world"
    events = sse_events(post(client, input="hi", stream=True, max_output_tokens=2).text)
    assert events[-1]["type"] == "response.incomplete"


def test_stream_error_before_first_byte_is_http_error(client, post):
    response = post(client, model="no-such/model", input="hi", stream=True)
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "model"


@pytest.fixture
def tool_client(fake_plugin, fake_models):
    """The fake engine with a parser that turns each '@' into a get_weather call."""
    from litestar.testing import TestClient

    from mlxhost.api.app import create_app
    from mlxhost.core.types import ContentDelta, ToolCall, ToolCallEvent
    from mlxhost.families.hookspecs import hookimpl
    from mlxhost.families.plugins import make_plugin_manager
    from mlxhost.settings.table import Settings

    class AtIsACall:
        def __init__(self):
            self.stop_requested = False
            self.calls = 0

        def feed(self, text):
            if "@" not in text:
                return [ContentDelta(text)]
            self.calls += 1
            return [ToolCallEvent(ToolCall("get_weather", '{"city":"Paris"}', f"call_{self.calls}"))]

        def finish(self):
            return []

    class Plugin:
        @hookimpl
        def mlxhost_tool_call_parser(self, model):
            return lambda tools: AtIsACall()

    fake_plugin.reply = "Hm@"
    pm = make_plugin_manager(extra=[fake_plugin, Plugin()])
    with TestClient(create_app(Settings(extra_models=fake_models), pm)) as client:
        yield client


def test_function_call_output_and_continuation(tool_client, post):
    body = post(tool_client, input="weather?").json()
    parsed = OpenAIResponse.model_validate(body)
    assert [item["type"] for item in body["output"]] == ["message", "function_call"]
    call = body["output"][1]
    assert call["id"].startswith("fc_") and call["call_id"] == "call_1"
    assert call["name"] == "get_weather" and call["arguments"] == '{"city":"Paris"}'
    assert parsed.output_text == "Hm"
    follow = post(tool_client, previous_response_id=body["id"], input=[
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"},
    ])
    assert follow.status_code == 200, follow.text


def test_stream_function_call_events(tool_client, post):
    events = sse_events(post(tool_client, input="weather?", stream=True).text)
    types = [e["type"] for e in events]
    assert types[-6:] == [
        "response.output_item.done",  # the message before the call
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["output"][1]["type"] == "function_call"
    OpenAIResponse.model_validate(events[-1]["response"])


def test_failure_mid_stream_is_failed_event(client, fake_plugin, post):
    fake_plugin.reply = "Hello world"
    fake_plugin.fail_after = 2
    events = sse_events(post(client, input="hi", stream=True).text)
    types = [e["type"] for e in events]
    assert types[-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["error"]["message"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    fake_plugin.fail_after = None
    assert post(client, input="hi").status_code == 200


def test_function_tools_are_strict_unless_they_say_not():
    from mlxhost.api.formats.openai_responses import parse_request

    def parsed_tools(**extra):
        tool = {"type": "function", "name": "f", "parameters": {"type": "object"}, **extra}
        return parse_request({"model": "m", "input": "hi", "tools": [tool]}, ResponseStore()).chat.tools

    assert [t.strict for t in parsed_tools()] == [True]
    assert [t.strict for t in parsed_tools(strict=False)] == [False]
