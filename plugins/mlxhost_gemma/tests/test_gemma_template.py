"""Gemma prompts with tools: the tool section in the first user turn, earlier
calls as ```tool_code, results as ```tool_output in user turns."""

from __future__ import annotations

import json

import pytest

from mlxhost.templating import TemplateError
from mlxhost_gemma.template import render
from mlxhost_gemma.tools import make_parser, python_signature, tool_prompt

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"city": "Paris", "unit": "celsius"}',
                },
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
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
    assert render(CONVERSATION, None, [WEATHER], "auto") == EXPECTED
    assert render(CONVERSATION, None, [WEATHER]) == EXPECTED


def test_required_and_named_tool_choice_add_one_line():
    required = render(CONVERSATION, None, [WEATHER], "required")
    line = "You must call at least one of the provided functions in your reply."
    assert required == EXPECTED.replace(TOOL_SECTION, TOOL_SECTION + "\n\n" + line)
    named = render(
        CONVERSATION, None, [WEATHER], {"type": "function", "function": {"name": "get_weather"}}
    )
    line = "You must call the function `get_weather` in your reply."
    assert named == EXPECTED.replace(TOOL_SECTION, TOOL_SECTION + "\n\n" + line)


def test_tools_without_a_system_message_go_into_the_first_user_turn():
    prompt = render(CONVERSATION[1:2], None, [WEATHER])
    assert (
        prompt
        == f"<bos><start_of_turn>user\n{TOOL_SECTION}\n\nWeather in Paris?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_without_tools_no_tool_section_but_history_keeps_its_form():
    prompt = render(CONVERSATION)
    assert prompt == (
        "<bos><start_of_turn>user\nYou are terse.\n\nWeather in Paris?<end_of_turn>\n"
        '<start_of_turn>model\n```tool_code\nget_weather(city="Paris", unit="celsius")\n```<end_of_turn>\n'
        '<start_of_turn>user\n```tool_output\n{"temperature": 21}\n```\n\nAnd in Fahrenheit?<end_of_turn>\n'
        "<start_of_turn>model\n"
    )


def test_parallel_calls_with_content_and_several_results():
    messages = [
        {"role": "user", "content": "Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "rainy"}]},
    ]
    assert render(messages) == (
        "<bos><start_of_turn>user\nParis and Rome?<end_of_turn>\n"
        "<start_of_turn>model\nChecking both.\n\n"
        '```tool_code\nget_weather(city="Paris")\nget_weather(city="Rome")\n```<end_of_turn>\n'
        "<start_of_turn>user\n```tool_output\nsunny\n```\n\n```tool_output\nrainy\n```<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_invalid_arguments_in_history_are_rejected():
    messages = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
            ],
        },
    ]
    with pytest.raises(TemplateError, match="arguments must be a JSON object"):
        render(messages)


def test_consecutive_user_messages_keep_a_blank_line_between_them():
    prompt = render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert prompt == "<bos><start_of_turn>user\na\n\nb<end_of_turn>\n<start_of_turn>model\n"


def test_images_are_kept_in_place():
    content = [
        {"type": "text", "text": "What is"},
        {"type": "image_url", "image_url": {"url": "x"}},
    ]
    prompt = render([{"role": "user", "content": content}])
    assert (
        prompt
        == "<bos><start_of_turn>user\nWhat is<start_of_image><end_of_turn>\n<start_of_turn>model\n"
    )


def test_the_call_the_prompt_shows_is_the_call_the_parser_reads():
    prompt = render(CONVERSATION, None, [WEATHER])
    start = prompt.index("<start_of_turn>model\n") + len("<start_of_turn>model\n")
    reply = prompt[start : prompt.index("<end_of_turn>", start)]
    parser = make_parser([WEATHER])
    (event,) = parser.feed(reply) + parser.finish()
    assert event.call.name == "get_weather"
    assert json.loads(event.call.arguments) == {"city": "Paris", "unit": "celsius"}


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
    ping = {"type": "function", "function": {"name": "ping"}}
    prompt = tool_prompt([WEATHER, ping], None)
    assert "def get_weather(" in prompt and "def ping():" in prompt
    assert prompt.endswith("```")
