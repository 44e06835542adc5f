"""Qwen prompts with tools: our render (bundled Qwen3-VL template, tokenizer=None)
against the exact text the reference template gives.

The expected strings were produced once by rendering the reference
``qwen3-vl-4b-instruct/chat_template.json`` with plain jinja2 (trim_blocks,
lstrip_blocks, tojson = json.dumps) on the same conversation in Hugging Face's
shape (tool-call arguments as dicts); the tests do not read that file.
"""

from __future__ import annotations

import attrs
import pytest

from mlxhost.core.domain import NamedToolChoice
from mlxhost.families.templating import TemplateError
from mlxhost.testing.plugin_kit import (
    STRING,
    WEATHER_TOOL,
    assistant,
    function_tool,
    messages_from_openai,
    openai_call,
    tool_result,
)
from mlxhost_qwen.template import CHAT_TEMPLATE, render

WEATHER = WEATHER_TOOL  # description, one required string parameter
TIME = function_tool("get_time", None, {"tz": STRING})


def prompt(messages, tools=(), tokenizer=None, tool_choice="auto"):
    """The prompt text for OpenAI-shaped messages."""
    return render(messages_from_openai(messages), tools, tokenizer, tool_choice).text


TOOLS_SECTION_1 = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather for a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    assistant("", openai_call("get_weather", '{"city": "Paris"}')),
    tool_result("call_1", '{"temperature": 21}'),
    {"role": "user", "content": "Thanks!"},
]

EXPECTED = (
    "<|im_start|>system\nYou are terse.\n\n"
    + TOOLS_SECTION_1
    + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    "</tool_call><|im_end|>\n"
    '<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>\n'
    "<|im_start|>user\nThanks!<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_tool_conversation_renders_as_the_reference_template_does():
    assert prompt(CONVERSATION, [WEATHER]) == EXPECTED


PARALLEL = [
    {"role": "user", "content": "Weather and time in Tōkyō?"},
    assistant(
        "Let me check.",
        openai_call("get_weather", '{"city":"Tōkyō"}', "call_1"),
        openai_call("get_time", '{"tz": "Asia/Tokyo"}', "call_2"),
    ),
    tool_result("call_1", "sunny"),
    tool_result("call_2", [{"type": "text", "text": "09:00"}]),
]

EXPECTED_PARALLEL_REQUIRED = (
    "<|im_start|>system\nYou must call at least one of the provided functions in your reply.\n\n"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n'
    '{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", '
    '"properties": {"tz": {"type": "string"}}}}}\n'
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nWeather and time in Tōkyō?<|im_end|>\n"
    "<|im_start|>assistant\nLet me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Tōkyō"}}\n</tool_call>\n<tool_call>\n'
    '{"name": "get_time", "arguments": {"tz": "Asia/Tokyo"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n<tool_response>\n09:00\n"
    "</tool_response><|im_end|>\n<|im_start|>assistant\n"
)


def test_parallel_calls_and_results_with_tool_choice_required():
    weather = attrs.evolve(WEATHER, description=None)
    assert prompt(PARALLEL, [weather, TIME], None, "required") == EXPECTED_PARALLEL_REQUIRED


def test_named_tool_choice_adds_one_line_to_the_system_message():
    text = prompt(CONVERSATION, [WEATHER], None, NamedToolChoice("get_weather"))
    assert text.startswith(
        "<|im_start|>system\nYou are terse.\n\nYou must call the function `get_weather` in your reply."
        "\n\n# Tools\n"
    )
    assert (
        text.replace("\n\nYou must call the function `get_weather` in your reply.", "") == EXPECTED
    )


def test_auto_tool_choice_adds_nothing():
    assert prompt(CONVERSATION, [WEATHER], None, "auto") == EXPECTED
    assert render(messages_from_openai(CONVERSATION), [WEATHER]).text == EXPECTED  # the default


def test_without_tools_there_is_no_tool_section_nor_instruction():
    text = prompt(CONVERSATION, (), None, "required")
    assert "# Tools" not in text and "You must call" not in text
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")
    # earlier calls and results are still in Qwen's own format
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert "<tool_response>\n" in text


def test_a_tokenizer_template_is_preferred():
    class Tokenizer:
        chat_template = "{{ messages[0].content }}|{{ tools | length }}"
        bos_token = None

    assert prompt([{"role": "user", "content": "hi"}], [WEATHER], Tokenizer()) == "hi|1"


def test_bundled_template_is_the_qwen3_vl_one():
    assert "<tool_response>" in CHAT_TEMPLATE and "<|vision_start|>" in CHAT_TEMPLATE


def test_the_template_still_refuses_what_it_refuses():
    class Tokenizer:
        chat_template = "{{ raise_exception('no') }}"

    with pytest.raises(TemplateError):
        prompt([{"role": "user", "content": "hi"}], (), Tokenizer())
