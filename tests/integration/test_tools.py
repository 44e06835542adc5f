"""Tool calls end to end with the real Qwen 0.5B model and the official client."""

from __future__ import annotations

import json

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.tools import QUESTION, WEATHER_TOOL

QWEN = TEST_MODELS["qwen"].repo_id



def test_tool_call_non_streaming(client):
    response = client.chat.completions.create(
        model=QWEN, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=60
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"].lower() == "paris"
    assert "<tool_call>" not in (choice.message.content or "")
    assert "get_weather" not in (choice.message.content or "")


def test_tool_call_streaming(client):
    stream = client.chat.completions.create(
        model=QWEN, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=60, stream=True
    )
    calls: dict[int, dict] = {}
    content, finish = "", None
    for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for part in delta.tool_calls or []:
                entry = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = part.id or entry["id"]
                if part.function and part.function.name:
                    entry["name"] += part.function.name
                if part.function and part.function.arguments:
                    entry["arguments"] += part.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"])["city"].lower() == "paris"
    assert "{" not in content and "tool_call" not in content


def test_tool_result_gives_a_text_answer(client):
    first = client.chat.completions.create(
        model=QWEN, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=60
    )
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
    ]
    second = client.chat.completions.create(
        model=QWEN, messages=messages, tools=[WEATHER_TOOL], temperature=0, max_tokens=40
    )
    choice = second.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert not choice.message.tool_calls
    text = choice.message.content.lower()
    assert "18" in text or "sunny" in text


def test_tool_choice_none_hides_tools(client):
    response = client.chat.completions.create(
        model=QWEN, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="none",
        temperature=0, max_tokens=30,
    )
    assert not response.choices[0].message.tool_calls
    assert response.choices[0].finish_reason in ("stop", "length")


JOKE = [{"role": "user", "content": "Tell me a joke."}]


def test_tool_choice_required_is_enforced_by_grammar(client):
    """A prompt that asks for no tool still gets a call whose arguments fit the schema."""
    from mlxhost.families.toolcalls import schema_errors

    response = client.chat.completions.create(
        model=QWEN, messages=JOKE, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=60
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert schema_errors(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"]) == []
    stream = client.chat.completions.create(
        model=QWEN, messages=JOKE, tools=[WEATHER_TOOL], tool_choice="required", temperature=0, max_tokens=60,
        stream=True,
    )
    names, finish = [], None
    for chunk in stream:
        for delta_call in chunk.choices[0].delta.tool_calls or []:
            if delta_call.function and delta_call.function.name:
                names.append(delta_call.function.name)
        finish = chunk.choices[0].finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"


def test_named_tool_choice_calls_that_function(client):
    clock = {"type": "function", "function": {
        "name": "get_time", "description": "The current time in a timezone.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                       "required": ["timezone"]}}}
    response = client.chat.completions.create(
        model=QWEN, messages=QUESTION, tools=[WEATHER_TOOL, clock], temperature=0, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    assert isinstance(json.loads(call.function.arguments)["timezone"], str)


def _city_tool(strict: bool) -> dict:
    return {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.", "strict": strict,
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["paris-fr", "tokyo-jp"]}},
                       "required": ["city"], "additionalProperties": False}}}


def test_strict_tool_arguments_are_enforced_under_auto(client):
    """A city outside the enum: unconstrained, the model writes a call the schema
    rejects (returned as text); with ``strict`` the same request, still under
    "auto", gets a call whose arguments fit the schema, streaming and not."""
    from mlxhost.families.toolcalls import schema_errors

    madrid = [{"role": "user", "content": "Is it raining in Madrid?"}]
    schema = _city_tool(True)["function"]["parameters"]
    loose = client.chat.completions.create(
        model=QWEN, messages=madrid, tools=[_city_tool(False)], temperature=0, max_tokens=60
    ).choices[0]
    assert not loose.message.tool_calls and "madrid" in (loose.message.content or "").lower()
    strict = client.chat.completions.create(
        model=QWEN, messages=madrid, tools=[_city_tool(True)], temperature=0, max_tokens=60
    ).choices[0]
    assert strict.finish_reason == "tool_calls", strict.message.content
    (call,) = strict.message.tool_calls
    assert schema_errors(json.loads(call.function.arguments), schema) == []
    arguments, finish = "", None
    for chunk in client.chat.completions.create(
        model=QWEN, messages=madrid, tools=[_city_tool(True)], temperature=0, max_tokens=60, stream=True
    ):
        for part in chunk.choices[0].delta.tool_calls or []:
            arguments += (part.function.arguments or "") if part.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and schema_errors(json.loads(arguments), schema) == []
    # Under "auto" the reply may still be text: a strict tool does not force a call.
    haiku = client.chat.completions.create(
        model=QWEN, messages=[{"role": "user", "content": "Write a haiku about the sea."}],
        tools=[_city_tool(True)], temperature=0, max_tokens=30,
    ).choices[0]
    assert haiku.message.content and not haiku.message.tool_calls


def test_gemma_required_tool_choice_gives_a_parsable_tool_code_call(start_server):
    from openai import OpenAI

    gemma = TEST_MODELS["gemma"].repo_id
    with start_server("--model", gemma) as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)
        response = client.chat.completions.create(
            model=gemma, messages=QUESTION, tools=[WEATHER_TOOL], tool_choice="required",
            temperature=0, max_tokens=40,
        )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
