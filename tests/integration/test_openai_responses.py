"""The Responses API end to end: the official client against a real server
(SmolLM2 135M, the fast default; Qwen 0.5B where a tool is offered)."""

from __future__ import annotations

import openai
import pytest

from mlxhost.models.starter.builder import TEST_MODELS

QWEN = TEST_MODELS["qwen"].repo_id
SMOL = TEST_MODELS["smollm2"].repo_id

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": False,
}


def test_text_response(smol_client):
    response = smol_client.responses.create(
        model=SMOL, input="Say hello.", instructions="Be brief.", temperature=0, max_output_tokens=12
    )
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.usage.output_tokens >= 1
    assert smol_client.responses.retrieve(response.id).id == response.id


def test_stream_event_order(smol_client):
    stream = smol_client.responses.create(
        model=SMOL, input="Count to three.", temperature=0, max_output_tokens=8, stream=True
    )
    events = list(stream)
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
    ]
    assert "response.output_text.delta" in types
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].response.output_text == deltas


def test_function_call_round_trip(client):
    response = client.responses.create(
        model=QWEN,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather",
             "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"},
        ],
        temperature=0,
        max_output_tokens=24,
    )
    assert response.output_text


def test_previous_response_id(smol_client):
    first = smol_client.responses.create(
        model=SMOL, input="My name is Alice. Reply OK.", temperature=0, max_output_tokens=8
    )
    second = smol_client.responses.create(
        model=SMOL, input="What is my name?", previous_response_id=first.id,
        temperature=0, max_output_tokens=8,
    )
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens
    assert smol_client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        smol_client.responses.retrieve(first.id)


def test_unknown_model_is_404_and_server_stays_up(smol_client):
    with pytest.raises(openai.NotFoundError) as info:
        smol_client.responses.create(model="no-such/model", input="hi")
    assert info.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as info:
        smol_client.responses.create(model=SMOL, input="hi", previous_response_id="resp_missing")
    assert info.value.body["param"] == "previous_response_id"
    assert smol_client.responses.create(model=SMOL, input="hi", max_output_tokens=4).output
