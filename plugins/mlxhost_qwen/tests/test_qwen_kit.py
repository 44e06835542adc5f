"""The plugin kit's checks, for the Qwen family."""

from __future__ import annotations

import json

from mlxhost.testing.plugin_kit import (
    PARSER_TOOLS,
    FamilyApiTests,
    FamilyPluginTests,
    feed,
    normalize,
)
from mlxhost_qwen.plugin import plugin
from mlxhost_qwen.tools import make_parser


def block(name, arguments=None):
    payload = {"name": name, "arguments": arguments if arguments is not None else {}}
    return f"<tool_call>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_call>"


CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TAGGED = f"Checking.\n<tool_call>\n{CALL}\n</tool_call>"
# What the Qwen2.5 0.5B test model answers, offered get_weather, to "What's the
# weather in Paris right now?"
DRIFT = f"```json\n{CALL}\n```"
REPLY = (
    "Sure — checking “both”.\n"
    + block("get_weather", {"city": "São Paulo", "unit": "celsius"})
    + "\n"
    + block("search", {"query": 'say "hi" \\o/ <tag>', "options": {"n": [1, {"x": None}]}})
    + "\nAnd a bad one: "
    + block("nope")
    + "\n<tool"
)


class TestQwenFamily(FamilyPluginTests, FamilyApiTests):
    plugin = plugin
    model_type = "qwen3"
    expected_first_prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    image_marker = "<|vision_start|><|image_pad|><|vision_end|>"
    sample_replies = (
        REPLY,
        TAGGED,
        DRIFT,
        CALL,  # the bare-JSON drift form
        'I would send {"name": "get_weather"} to the API.',
        "<tool_call>\nnot json\n</tool_call> then prose",
    )
    stream_tokens = ("<tool_call>", "</tool_call>", "<tool", "{", "}", "[", "]", "```", "json")
    stream_tokens += ('"name"', ":", '"get_time"', '"arguments"', " ", "\n", "x", '"', "\\")
    # Prose streams before finish, a marker prefix is held, and released when it
    # turns out not to be a marker.
    stream_steps = (
        (
            ("Hello", [("content", "Hello")]),
            (" there <tool", [("content", " there")]),
            ("_call>\n", []),
            ('{"name": "get_time", "arguments": {}}', []),
            ("\n</tool_call>", [("call", "get_time", {})]),
            (None, []),
        ),
        (("a <tool", [("content", "a")]), ("box> b", [("content", " <toolbox> b")])),
    )
    api_replies = ((DRIFT, None), (TAGGED, "Checking."))

    def generated_call_text(self, name, arguments):
        return block(name, arguments)

    def tool_result_text(self, text):
        return f"<tool_response>\n{text}\n</tool_response>"


def test_the_streamed_samples_give_these_events():
    expected = normalize(feed(make_parser(PARSER_TOOLS), [REPLY]))
    assert [e[0] for e in expected] == ["content", "call", "call", "content"]
    assert expected[-1] == ("content", "\nAnd a bad one: " + block("nope") + "\n<tool")
    drift = normalize(feed(make_parser(PARSER_TOOLS), [DRIFT]))
    assert drift == [("call", "get_weather", {"city": "Paris"})]
