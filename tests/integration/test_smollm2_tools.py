"""Tools on SmolLM2-135M-Instruct, whose template has no tool syntax: the generic
family's default format (tool list in the system turn, calls as
``<tool_call>{"name", "arguments"}</tool_call>``), enforced by a grammar when
tool_choice forces a call, over each API's official client."""

from __future__ import annotations

import json

import httpx

from mlxhost.models.starter.builder import TEST_MODELS
from mlxhost.testing.tools import QUESTION, WEATHER_TOOL

SMOL = TEST_MODELS["smollm2"].repo_id
NO_ARGS_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "The current time", "parameters": {"type": "object", "properties": {}}}}


def test_reported_as_generic_with_tools(smol_server, smol_client):
    entry = {m.id: m for m in smol_client.models.list().data}[SMOL]
    assert entry.model_extra["family"] == "generic"
    assert "tools" in entry.model_extra["capabilities"]
    show = httpx.post(f"{smol_server.url}/api/show", json={"model": SMOL}, timeout=60).json()
    assert "tools" in show["capabilities"]


def test_tools_offered_the_reply_is_content_or_a_valid_call(smol_client):
    reply = smol_client.chat.completions.create(
        model=SMOL, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0, max_tokens=60)
    choice = reply.choices[0]
    if choice.finish_reason == "tool_calls":
        (call,) = choice.message.tool_calls
        assert call.function.name == "get_weather"
        json.loads(call.function.arguments)
    else:
        assert "<tool_call>" not in (choice.message.content or "") or choice.finish_reason == "length"


def test_named_tool_choice_forces_a_call_with_schema_arguments(smol_client):
    reply = smol_client.chat.completions.create(
        model=SMOL, messages=QUESTION, tools=[WEATHER_TOOL, NO_ARGS_TOOL], temperature=0, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and isinstance(arguments["city"], str)
    assert set(arguments) <= set(WEATHER_TOOL["function"]["parameters"]["properties"])


def test_required_tool_choice_streams_a_call_without_markers_in_content(smol_client):
    stream = smol_client.chat.completions.create(
        model=SMOL, messages=QUESTION, tools=[NO_ARGS_TOOL], temperature=0, max_tokens=60,
        tool_choice="required", stream=True)
    content, names, arguments, finish = "", "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for part in choice.delta.tool_calls or []:
                names += (part.function.name or "") if part.function else ""
                arguments += (part.function.arguments or "") if part.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert names == "get_time" and json.loads(arguments) == {}
    assert "<tool_call" not in content


def test_anthropic_forced_tool_use(smol_server):
    import anthropic

    client = anthropic.Anthropic(base_url=smol_server.url, api_key="x")
    message = client.messages.create(
        model=SMOL, max_tokens=80, messages=[{"role": "user", "content": QUESTION[-1]["content"]}],
        tools=[{"name": "get_weather", "description": WEATHER_TOOL["function"]["description"],
                "input_schema": WEATHER_TOOL["function"]["parameters"]}],
        tool_choice={"type": "tool", "name": "get_weather"})
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str)


def test_tool_choice_naming_a_tool_not_offered_is_a_400(smol_client):
    import openai
    import pytest

    with pytest.raises(openai.BadRequestError) as caught:
        smol_client.chat.completions.create(
            model=SMOL, messages=QUESTION, tools=[WEATHER_TOOL], max_tokens=5,
            tool_choice={"type": "function", "function": {"name": "launch_rockets"}})
    assert "launch_rockets" in str(caught.value)
