"""The plugin kit's checks, for the Gemma family."""

from __future__ import annotations

from mlxhost.testing.plugin_kit import (
    PARSER_TOOLS,
    FamilyApiTests,
    FamilyPluginTests,
    feed,
    normalize,
)
from mlxhost_gemma.plugin import plugin
from mlxhost_gemma.tools import format_call, make_parser, tool_output_block


def code(*lines):
    return "```tool_code\n" + "\n".join(lines) + "\n```"


TAGGED = 'Checking.\n\n```tool_code\nget_weather("Paris")\n```\n'
BARE = 'get_weather(city="Paris")\nget_time()\n'
REPLY = (
    "Sure — checking “both”.\n\n"
    + code(
        'get_weather(city="São Paulo", unit="celsius")',
        'search("say \\"hi\\" ```", options={"n": [1, None]})',
    )
    + "\nThen: "
    + code("nope()")
    + "\n```tool_c"
)


class TestGemmaFamily(FamilyPluginTests, FamilyApiTests):
    plugin = plugin
    expected_first_prompt = "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    image_marker = "<start_of_image>"
    sample_replies = (
        REPLY,
        TAGGED,
        BARE,  # the bare-call drift form
        "Sure: ```python\nprint(1)\n``` done.",
        "No call here, just prose about get_weather.",
    )
    stream_tokens = ("```tool_code", "```", "```tool_c", "`", "get_weather", "get_time")
    stream_tokens += ("(", ")", '"', "'", "\n", " ", "city=", '"Paris"', "x", "[", "]", ",")
    stream_tokens += ("\\", "tool_output")
    # Prose streams, a fence prefix is held; a fence that is not tool_code is released.
    stream_steps = (
        (
            ("Let me check", [("content", "Let me check")]),
            (".\n\n```tool_c", [("content", ".")]),
            ("ode\nget_time(", []),
            (")\n```\n", [("call", "get_time", {})]),
            (None, []),
        ),
        (("Code: ```", [("content", "Code:")]), ("py", [("content", " ```py")])),
    )
    api_replies = (('get_weather(city="Paris")', None), (TAGGED, "Checking."))

    def generated_call_text(self, name, arguments):
        return f"```tool_code\n{format_call(name, arguments)}\n```"

    def tool_result_text(self, text):
        return tool_output_block(text)


def test_the_streamed_samples_give_these_events():
    def run(text):
        return normalize(feed(make_parser(PARSER_TOOLS), [text]))

    assert run(REPLY) == [
        ("content", "Sure — checking “both”."),
        ("call", "get_weather", {"city": "São Paulo", "unit": "celsius"}),
        ("call", "search", {"query": 'say "hi" ```', "options": {"n": [1, None]}}),
        ("content", "\nThen: " + code("nope()") + "\n```tool_c"),
    ]
    assert run(BARE) == [("call", "get_weather", {"city": "Paris"}), ("call", "get_time", {})]
