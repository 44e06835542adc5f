"""Qwen tool-call extraction: <tool_call> blocks, drift forms, streaming."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxhost.core.types import ContentDelta, ToolCallEvent
from mlxhost.families.toolcalls import merge_events, offered_functions
from mlxhost.testing.plugin_kit import PARSER_TOOLS, feed, normalize, reply_cases
from mlxhost_qwen.tools import JsonReplyMatcher, make_parser, parse_json_reply

TOOLS = PARSER_TOOLS
FUNCTIONS = offered_functions(TOOLS)


def block(name, arguments=None):
    payload = {"name": name, "arguments": arguments if arguments is not None else {}}
    return f"<tool_call>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_call>"


def run(text, pieces=None, tools=TOOLS):
    return normalize(feed(make_parser(tools), [text] if pieces is None else pieces))


def calls(name, arguments):
    return ("call", name, arguments)


# --- tagged calls -------------------------------------------------------------


def test_a_clean_call():
    assert run(block("get_weather", {"city": "Paris"})) == [calls("get_weather", {"city": "Paris"})]


def test_a_call_as_the_model_writes_it_with_trailing_newline():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>\n'
    assert run(text) == [calls("get_weather", {"city": "Paris", "unit": "celsius"})]


def test_a_call_inside_prose():
    text = "Let me look that up.\n" + block("get_weather", {"city": "Oslo"}) + "\nOne moment."
    assert run(text) == [
        ("content", "Let me look that up."),
        calls("get_weather", {"city": "Oslo"}),
        ("content", "\nOne moment."),
    ]


def test_several_calls_in_order():
    text = "\n".join(
        [
            block("get_weather", {"city": "Paris"}),
            block("get_time"),
            block("get_weather", {"city": "Rome"}),
        ]
    )
    assert run(text) == [
        calls("get_weather", {"city": "Paris"}),
        calls("get_time", {}),
        calls("get_weather", {"city": "Rome"}),
    ]


def test_call_ids_differ():
    events = feed(make_parser(TOOLS), [block("get_time") + block("get_time")])
    ids = [e.call.id for e in events if isinstance(e, ToolCallEvent)]
    assert len(ids) == 2 and ids[0] != ids[1]


def test_unicode_and_escaped_quotes_in_arguments():
    arguments = {"query": 'he said "héllo" \\ 東京 😀\n\ttab', "options": {}}
    text = block("search", arguments)
    assert run(text) == [calls("search", arguments)]
    # and written with \u escapes by the model
    escaped = '<tool_call>\n{"name": "search", "arguments": {"query": "\\u6771\\u4eac \\"q\\""}}\n</tool_call>'
    assert run(escaped) == [calls("search", {"query": '東京 "q"'})]


def test_nested_json_arguments():
    arguments = {"query": "x", "options": {"a": [1, 2.5, {"b": None, "c": [True, False]}], "d": {}}}
    assert run(block("search", arguments)) == [calls("search", arguments)]


def test_arguments_as_a_json_string_and_parameters_synonym():
    text = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>'
    assert run(text) == [calls("get_weather", {"city": "Paris"})]
    text = '<tool_call>\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n</tool_call>'
    assert run(text) == [calls("get_weather", {"city": "Paris"})]


def test_json_fence_inside_the_tags_and_a_list_of_calls():
    text = '<tool_call>\n```json\n{"name": "get_time", "arguments": {}}\n```\n</tool_call>'
    assert run(text) == [calls("get_time", {})]
    text = '<tool_call>[{"name": "get_time"}, {"name": "get_weather", "arguments": {"city": "X"}}]</tool_call>'
    assert run(text) == [calls("get_time", {}), calls("get_weather", {"city": "X"})]


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "get_weather", "arguments": {"city": "Paris"}',  # unbalanced
        "{'name': 'get_weather'}",  # not JSON
        '{"arguments": {"city": "Paris"}}',  # no name
        '{"name": "get_weather", "arguments": [1]}',  # arguments not an object
        '{"name": "get_weather", "arguments": "{oops"}',  # arguments string not JSON
        "",
        '"get_weather"',
        "```python\nget_weather()\n```",
    ],
)
def test_malformed_blocks_stay_content(body, caplog):
    text = f"Sure.\n<tool_call>\n{body}\n</tool_call>"
    with caplog.at_level(logging.WARNING):
        assert run(text) == [("content", text)]
    assert "not a valid call" in caplog.text


def test_a_call_to_a_function_not_offered_stays_content(caplog):
    text = block("delete_everything", {"really": True})
    with caplog.at_level(logging.WARNING):
        assert run(text) == [("content", text)]
    assert "'delete_everything' was not offered" in caplog.text


def test_a_valid_call_next_to_an_invalid_one():
    bad = block("nope")
    text = block("get_time") + "\n" + bad
    assert run(text) == [calls("get_time", {}), ("content", "\n" + bad)]


def test_a_python_block_is_not_a_call():
    text = "Here is code:\n```python\nprint(get_weather('Paris'))\n```\n"
    assert run(text) == [("content", text)]


def test_unclosed_block_at_max_tokens_with_a_complete_call_is_extracted():
    text = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    assert run(text) == [("content", "Checking."), calls("get_weather", {"city": "Paris"})]
    assert run(text + "</tool_") == [
        ("content", "Checking."),
        calls("get_weather", {"city": "Paris"}),
    ]


def test_unclosed_incomplete_block_at_max_tokens_is_content():
    text = 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    assert run(text) == [("content", text)]


def test_without_tools_everything_is_content():
    text = block("get_weather", {"city": "Paris"})
    assert run(text, tools=()) == [("content", text)]
    json_reply = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert run(json_reply, tools=()) == [("content", json_reply)]


# --- drift: the whole reply is a JSON call ----------------------------------------------

# What the Qwen2.5 0.5B test model answers, offered get_weather, to "What's the
# weather in Paris right now?"
QWEN_05B_REPLY = '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```'


@pytest.mark.parametrize(
    "text",
    [
        QWEN_05B_REPLY,
        QWEN_05B_REPLY + "\n",
        "\n" + QWEN_05B_REPLY,
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '  {"name": "get_weather", "arguments": {"city": "Paris"}}\n',
        '```\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        '```JSON\n{"name": "get_weather", "arguments": {"city": "Paris"}}',  # fence never closed
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
    ],
)
def test_drift_json_reply_is_a_call(text):
    assert run(text) == [calls("get_weather", {"city": "Paris"})]


def test_drift_json_list_of_several_calls():
    text = '```json\n[\n  {"name": "get_weather", "arguments": {"city": "Paris"}},\n  {"name": "get_time", "arguments": {}}\n]\n```'
    assert run(text) == [calls("get_weather", {"city": "Paris"}), calls("get_time", {})]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "arguments": {}}',  # required city missing
        '{"name": "get_weather", "arguments": {"city": "Paris", "country": "FR"}}',  # unknown property
        '{"name": "get_weather", "arguments": {"city": 75}}',  # wrong type
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}',  # not in enum
        '{"name": "launch", "arguments": {}}',  # not offered
        '{"name": "Paris", "population": 2100000}',  # not call-shaped
        '{"city": "Paris"}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}} is what I would call.',
        'I would call {"name": "get_weather", "arguments": {"city": "Paris"}}.',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```\nThat is the call.',
        '```python\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```',
        "[1] Paris is the capital of France.",
        "{ not json at all }",
        "[]",
        "{}",
        '[{"name": "get_weather", "arguments": {"city": "Paris"}}, 3]',
    ],
)
def test_drift_forms_that_are_not_calls_stay_content(text):
    assert run(text) == [("content", text)]


def test_prose_that_merely_mentions_json_streams_as_content():
    parser = make_parser(TOOLS)
    assert parser.feed("You can send ") == [ContentDelta("You can send")]
    events = parser.feed('{"name": "get_weather"} to the API.')
    assert merge_events(events) == [ContentDelta(' {"name": "get_weather"} to the API.')]


def test_a_json_looking_reply_is_held_until_finish_then_decided():
    parser = make_parser(TOOLS)
    assert parser.feed("```json\n") == []
    assert parser.feed('{"name": "get_weather", ') == []
    assert parser.feed('"arguments": {"city": "Paris"}}\n```') == []
    assert normalize(parser.finish()) == [calls("get_weather", {"city": "Paris"})]


def test_a_held_reply_is_released_as_soon_as_it_cannot_be_a_json_call():
    parser = make_parser(TOOLS)
    assert parser.feed("```") == []
    assert merge_events(parser.feed("python\nx")) == [ContentDelta("```python\nx")]
    parser = make_parser(TOOLS)
    assert parser.feed('{"a": 1}') == []
    assert merge_events(parser.feed(" and more")) == [ContentDelta('{"a": 1} and more')]
    parser = make_parser(TOOLS)
    assert parser.feed("{") == []
    assert parser.feed(" x") == [ContentDelta("{ x")]


def test_json_matcher_accepts_what_the_parser_accepts():
    for text in [
        QWEN_05B_REPLY,
        '[{"name": "get_time"}]\n',
        '{"name": "get_time"}\n{"name": "get_time"}',
        '``` json \n{"name": "get_time", "arguments": {"s": "}{][\\"`"}}\n```',
    ]:
        matcher = JsonReplyMatcher(FUNCTIONS)
        assert all(matcher.feed(char) for char in text), text
        assert parse_json_reply(text, FUNCTIONS) is not None


def test_drift_reply_with_a_tool_call_block_after_prose_still_parses_the_block():
    text = "{not json} " + block("get_time")
    assert run(text) == [("content", "{not json}"), calls("get_time", {})]


# --- streaming ----------------------------------------------------------------------------


PROSE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="<`{["), min_size=1, max_size=20
).filter(lambda s: not s.isspace())
ARGUMENTS = st.dictionaries(
    st.text(max_size=5),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=3,
)
CALL = st.builds(
    lambda q, f: ("search", {"query": q, "options": f}), st.text(max_size=15), ARGUMENTS
)


REPLIES = reply_cases(PROSE, CALL.map(lambda c: [c]), lambda calls: block(*calls[0]), max_parts=6)


@settings(max_examples=300, deadline=None)
@given(REPLIES)
def test_random_replies_split_anywhere(case):
    text, expected, pieces = case
    whole = run(text)
    assert whole == expected
    assert run(text, pieces=pieces) == whole


def test_a_closing_marker_inside_a_string_argument_does_not_end_the_block():
    # Found by hypothesis: an argument that itself holds "</tool_call>".
    text = block("search", {"query": "</tool_call>", "options": {}})
    expected = [calls("search", {"query": "</tool_call>", "options": {}})]
    assert run(text) == expected
    assert run(text, pieces=[text[:40], text[40:60], text[60:]]) == expected
