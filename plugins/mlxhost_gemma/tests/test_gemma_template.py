"""Gemma prompts with tools: the tool section in the first user turn, earlier
calls as ```tool_code, results as ```tool_output in user turns."""

from __future__ import annotations

import pytest

from mlxhost.core.domain import FunctionTool, NamedToolChoice
from mlxhost.families.templating import TemplateError
from mlxhost.testing.plugin_kit import (
    UNIT,
    assistant,
    function_tool,
    messages_from_openai,
    openai_call,
    tool_result,
)
from mlxhost_gemma.template import render
from mlxhost_gemma.tools import python_signature, tool_prompt

WEATHER = function_tool(
    "get_weather",
    "Get the current weather for a city.",
    {"city": {"type": "string", "description": "City name."}, "unit": UNIT},
    required=["city"],
)


def prompt(messages, tools=(), tool_choice="auto"):
    """The prompt text for OpenAI-shaped messages (no tokenizer)."""
    return render(messages_from_openai(messages), None, tools, tool_choice).text


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    assistant(None, openai_call("get_weather", '{"city": "Paris", "unit": "celsius"}')),
    tool_result("call_1", '{"temperature": 21}'),
    {"role": "user", "content": "And in Fahrenheit?"},
]

TOOL_SECTION = '''You have access to the Python functions defined below. To call functions, reply with a single ```tool_code block holding one call per line, written in Python with keyword arguments, like this:
```tool_code
function_name(argument="value", other_argument=42)
```
Only call the functions defined below. Each result comes back to you in a ```tool_output block; use the results to answer the user. When no function is needed, answer directly.

```python
def get_weather(city: str, unit: str = None):
    """Get the current weather for a city.

    Args:
        city: City name.
        unit: One of: "celsius", "fahrenheit".
    """
```'''

EXPECTED = (
    "<bos><start_of_turn>user\n"
    "You are terse.\n\n" + TOOL_SECTION + "\n\n"
    "Weather in Paris?<end_of_turn>\n"
    "<start_of_turn>model\n"
    '```tool_code\nget_weather(city="Paris", unit="celsius")\n```<end_of_turn>\n'
    "<start_of_turn>user\n"
    '```tool_output\n{"temperature": 21}\n```\n\n'
    "And in Fahrenheit?<end_of_turn>\n"
    "<start_of_turn>model\n"
)


def test_tool_conversation_renders_exactly():
    assert prompt(CONVERSATION, [WEATHER], "auto") == EXPECTED
    assert render(messages_from_openai(CONVERSATION), None, [WEATHER]).text == EXPECTED


def test_required_and_named_tool_choice_add_one_line():
    required = prompt(CONVERSATION, [WEATHER], "required")
    line = "You must call at least one of the provided functions in your reply."
    assert required == EXPECTED.replace(TOOL_SECTION, TOOL_SECTION + "\n\n" + line)
    named = prompt(CONVERSATION, [WEATHER], NamedToolChoice("get_weather"))
    line = "You must call the function `get_weather` in your reply."
    assert named == EXPECTED.replace(TOOL_SECTION, TOOL_SECTION + "\n\n" + line)


def test_tools_without_a_system_message_go_into_the_first_user_turn():
    assert (
        prompt(CONVERSATION[1:2], [WEATHER])
        == f"<bos><start_of_turn>user\n{TOOL_SECTION}\n\nWeather in Paris?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_without_tools_no_tool_section_but_history_keeps_its_form():
    assert prompt(CONVERSATION) == (
        "<bos><start_of_turn>user\nYou are terse.\n\nWeather in Paris?<end_of_turn>\n"
        '<start_of_turn>model\n```tool_code\nget_weather(city="Paris", unit="celsius")\n```<end_of_turn>\n'
        '<start_of_turn>user\n```tool_output\n{"temperature": 21}\n```\n\nAnd in Fahrenheit?<end_of_turn>\n'
        "<start_of_turn>model\n"
    )


def test_parallel_calls_with_content_and_several_results():
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        assistant(
            "Checking both.",
            openai_call("get_weather", '{"city": "Paris"}', "a"),
            openai_call("get_weather", '{"city": "Rome"}', "b"),
        ),
        tool_result("a", "sunny"),
        tool_result("b", [{"type": "text", "text": "rainy"}]),
    ]
    assert prompt(messages) == (
        "<bos><start_of_turn>user\nParis and Rome?<end_of_turn>\n"
        "<start_of_turn>model\nChecking both.\n\n"
        '```tool_code\nget_weather(city="Paris")\nget_weather(city="Rome")\n```<end_of_turn>\n'
        "<start_of_turn>user\n```tool_output\nsunny\n```\n\n```tool_output\nrainy\n```<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_invalid_arguments_in_history_are_rejected():
    messages = [
        {"role": "user", "content": "x"},
        assistant(None, openai_call("f", "{oops", "a")),
    ]
    with pytest.raises(TemplateError, match="arguments must be a JSON object"):
        prompt(messages)


def test_consecutive_user_messages_keep_a_blank_line_between_them():
    text = prompt([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert text == "<bos><start_of_turn>user\na\n\nb<end_of_turn>\n<start_of_turn>model\n"


def test_images_are_kept_in_place():
    content = [
        {"type": "text", "text": "What is"},
        {"type": "image_url", "image_url": {"url": "x"}},
    ]
    assert (
        prompt([{"role": "user", "content": content}])
        == "<bos><start_of_turn>user\nWhat is<start_of_image><end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        ({"name": "ping"}, "def ping():\n    ..."),
        (
            {
                "name": "f",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "a": {"type": "array", "items": {"type": "integer"}},
                        "b": {"type": ["string", "null"], "default": "x"},
                        "c": {"anyOf": [{"type": "number"}, {"type": "boolean"}]},
                        "d": {},
                    },
                    "required": ["a"],
                },
            },
            'def f(a: list[int], b: str | None = "x", c: float | bool = None, d=None):\n    ...',
        ),
        (
            {
                "name": "g",
                "description": 'Say """hi"""',
                "parameters": {
                    "type": "object",
                    "properties": {
                        "opt": {"type": "boolean"},
                        "req": {"type": "object", "description": "Line one\nline two"},
                    },
                    "required": ["req"],
                },
            },
            (
                "def g(*, opt: bool = None, req: dict):\n"
                '    """Say \\"\\"\\"hi\\"\\"\\"\n\n'
                "    Args:\n"
                "        req: Line one\n"
                "            line two\n"
                '    """'
            ),
        ),
    ],
)
def test_python_signature(function, expected):
    assert python_signature(function) == expected


def test_tool_prompt_lists_every_function():
    text = tool_prompt([WEATHER, FunctionTool(name="ping")], "auto")
    assert "def get_weather(" in text and "def ping():" in text
    assert text.endswith("```")
