"""The shared tool-call machinery (mlxhost.families.toolcalls), with a toy call format.

The toy format: ``<call>{"name": ..., "arguments": {...}}</call>``, and (when a
test asks for it) a whole reply ``!name`` as a bare call of an offered function.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxhost.core.domain import FunctionTool, NamedToolChoice
from mlxhost.core.types import ContentDelta, ToolCall, ToolCallEvent
from mlxhost.families.toolcalls import (
    ContentOnlyParser,
    InvalidToolCall,
    ToolCallStreamParser,
    call_arguments,
    content_events,
    fits_schema,
    make_tool_call,
    merge_events,
    new_call_id,
    offered_functions,
    schema_errors,
    tool_choice_instruction,
)

FUNCTIONS = {"ping": {}, "add": {"type": "object", "properties": {"a": {"type": "integer"}}}}


def parse_toy_block(body: str, closed: bool) -> list[ToolCall]:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidToolCall(str(exc)) from None
    if not isinstance(data, dict) or data.get("name") not in FUNCTIONS:
        raise InvalidToolCall("unknown function")
    return [make_tool_call(data["name"], call_arguments(data.get("arguments")))]


class BangMatcher:
    """Whole reply ``!name``: could be while it is ``!`` + a prefix of a name."""

    def __init__(self) -> None:
        self.text = ""

    def feed(self, text: str) -> bool:
        self.text += text
        stripped = self.text.lstrip()
        if not stripped:
            return True
        return stripped[0] == "!" and any(n.startswith(stripped[1:].rstrip()) for n in FUNCTIONS)

    def parse(self, text: str) -> list[ToolCall] | None:
        name = text.strip()[1:]
        return [make_tool_call(name, {})] if name in FUNCTIONS else None


def make_parser(whole: bool = False) -> ToolCallStreamParser:
    return ToolCallStreamParser(
        [("<call>", "</call>"), ("<<", ">>")],
        parse_toy_block,
        whole=BangMatcher() if whole else None,
        name="toy",
    )


def feed_pieces(parser, pieces):
    events = []
    for piece in pieces:
        events.extend(parser.feed(piece))
    return events + parser.finish()


def normalized(events):
    """Merged events with call ids left out (they are random)."""
    out = []
    for event in merge_events(events):
        if isinstance(event, ToolCallEvent):
            out.append(("call", event.call.name, json.loads(event.call.arguments)))
        else:
            out.append(("content", event.text))
    return out


def content(events) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def run(text: str, *, whole: bool = False, pieces: list[str] | None = None):
    return normalized(feed_pieces(make_parser(whole), pieces or [text]))


# --- helpers -----------------------------------------------------------------


def test_call_ids_are_fresh_call_hex():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)


def test_make_tool_call_writes_json_text_keeping_unicode():
    call = make_tool_call("f", {"city": "Zürich", "q": 'say "hi"'})
    assert json.loads(call.arguments) == {"city": "Zürich", "q": 'say "hi"'}
    assert "Zürich" in call.arguments
    assert call.id.startswith("call_")


def test_offered_functions_indexes_schemas_by_name():
    tools = [FunctionTool("a", parameters={"type": "object"}), FunctionTool("b")]
    assert offered_functions(tools) == {"a": {"type": "object"}, "b": {}}
    assert offered_functions(None) == {}


def test_call_arguments_accepts_objects_and_json_strings():
    assert call_arguments({"a": 1}) == {"a": 1}
    assert call_arguments('{"a": 1}') == {"a": 1}
    assert call_arguments(None) == {} == call_arguments("")
    for bad in ("[1]", "{oops", 3, [1]):
        with pytest.raises(InvalidToolCall):
            call_arguments(bad)


def test_tool_choice_instruction():
    assert tool_choice_instruction("auto") is None
    assert tool_choice_instruction("none") is None
    assert "at least one" in tool_choice_instruction("required")
    named = NamedToolChoice("get_weather")
    assert (
        tool_choice_instruction(named) == "You must call the function `get_weather` in your reply."
    )


def test_merge_events_joins_neighbouring_content():
    call = make_tool_call("f", {})
    events = [
        ContentDelta("a"),
        ContentDelta("b"),
        ContentDelta(""),
        ToolCallEvent(call),
        ContentDelta("c"),
    ]
    assert merge_events(events) == [ContentDelta("ab"), ToolCallEvent(call), ContentDelta("c")]
    assert content_events("") == [] and content_events("x") == [ContentDelta("x")]


# --- schema fit ----------------------------------------------------------------

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
        },
        "note": {"type": ["string", "null"]},
        "either": {"anyOf": [{"type": "boolean"}, {"type": "integer"}]},
    },
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "arguments",
    [
        {"city": "Paris"},
        {"city": "Paris", "days": 3, "unit": "celsius", "tags": ["a"], "note": None},
        {"city": "Paris", "days": 3.0, "where": {"lat": 48.8, "lon": 2}},
        {"city": "Paris", "either": True},
        {"city": "Paris", "either": 4},
    ],
)
def test_arguments_that_fit(arguments):
    assert schema_errors(arguments, WEATHER) == []
    assert fits_schema(arguments, WEATHER)


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, "missing required property 'city'"),
        ({"city": "Paris", "country": "FR"}, "unknown property 'country'"),
        ({"city": 3}, "arguments.city: expected string"),
        ({"city": "Paris", "days": 2.5}, "expected integer"),
        ({"city": "Paris", "days": True}, "expected integer"),
        ({"city": "Paris", "unit": "kelvin"}, "is not one of"),
        ({"city": "Paris", "tags": ["a", 1]}, "arguments.tags[1]"),
        ({"city": "Paris", "where": {"lat": 1}}, "missing required property 'lon'"),
        ({"city": "Paris", "note": 1}, "expected string or null"),
        ({"city": "Paris", "either": "x"}, "matches none of anyOf"),
        ([], "expected object"),
    ],
)
def test_arguments_that_do_not_fit(arguments, problem):
    errors = schema_errors(arguments, WEATHER)
    assert any(problem in e for e in errors), errors
    assert not fits_schema(arguments, WEATHER)


def test_schema_without_constraints_accepts_anything():
    assert fits_schema({"anything": [1, {"x": None}]}, {})
    assert fits_schema({"x": 1}, {"type": "object"})
    assert fits_schema({"x": 1}, {"type": "object", "properties": {}})
    assert fits_schema({"x": 1}, {"additionalProperties": {"type": "integer"}})
    assert not fits_schema({"x": "1"}, {"additionalProperties": {"type": "integer"}})
    assert fits_schema(1, {"type": "number"}) and not fits_schema(True, {"type": "number"})


# --- the state machine -------------------------------------------------------------


def test_plain_text_streams_out_as_it_comes():
    parser = make_parser()
    assert parser.feed("Hello") == [ContentDelta("Hello")]
    assert parser.feed(", world.") == [ContentDelta(", world.")]
    assert parser.finish() == []


def test_a_clean_call():
    assert run('<call>{"name": "ping"}</call>') == [("call", "ping", {})]


def test_calls_inside_prose_keep_the_prose_and_drop_the_layout_whitespace():
    text = 'Checking.\n\n<call>{"name": "add", "arguments": {"a": 1}}</call>\nDone.\n'
    assert run(text) == [
        ("content", "Checking."),
        ("call", "add", {"a": 1}),
        ("content", "\nDone.\n"),
    ]


def test_several_calls_in_order_and_trailing_whitespace_after_a_call_dropped():
    text = '<call>{"name": "ping"}</call>\n<call>{"name": "add", "arguments": {"a": 2}}</call>\n'
    assert run(text) == [("call", "ping", {}), ("call", "add", {"a": 2})]


def test_a_second_marker_pair_is_recognized():
    assert run('x <<{"name": "ping"}>> y') == [
        ("content", "x"),
        ("call", "ping", {}),
        ("content", " y"),
    ]


def test_a_marker_prefix_is_held_then_released_when_it_is_not_a_marker():
    parser = make_parser()
    assert parser.feed("a <ca") == [ContentDelta("a")]
    assert parser.feed("t> b") == [ContentDelta(" <cat> b")]
    assert parser.finish() == []


def test_content_before_a_block_goes_out_before_the_block_is_complete():
    parser = make_parser()
    assert parser.feed("Let me see. <call>") == [ContentDelta("Let me see.")]
    assert parser.feed('{"name": "pi') == []
    events = parser.feed('ng"}</call>')
    assert [type(e) for e in events] == [ToolCallEvent]


def test_malformed_blocks_are_returned_as_content_with_a_warning(caplog):
    for text in ('<call>{"name": "ping"</call>', '<call>{"name": "rm_rf"}</call>', "<call></call>"):
        with caplog.at_level(logging.WARNING, logger="mlxhost.families.toolcalls"):
            caplog.clear()
            assert run("Hi " + text + " bye") == [("content", "Hi " + text + " bye")]
        assert "not a valid call" in caplog.text


def test_unclosed_block_at_the_end_is_a_call_when_complete():
    assert run('ok <call>{"name": "ping"}') == [("content", "ok"), ("call", "ping", {})]
    # cut inside the closing marker
    assert run('<call>{"name": "ping"}</ca') == [("call", "ping", {})]


def test_unclosed_incomplete_block_is_content():
    text = 'ok <call>{"name": "pi'
    assert run(text) == [("content", text)]


def test_a_partial_marker_at_the_end_is_content():
    assert run("see <cal") == [("content", "see <cal")]


def test_whitespace_only_reply_is_kept():
    assert run("\n \n") == [("content", "\n \n")]


def test_whole_reply_form_is_held_and_decided_at_finish():
    parser = make_parser(whole=True)
    assert parser.feed(" !pi") == []
    assert parser.feed("ng ") == []
    assert normalized(parser.finish()) == [("call", "ping", {})]


def test_whole_reply_form_is_released_as_soon_as_it_cannot_be_one():
    parser = make_parser(whole=True)
    assert parser.feed("!pi") == []
    assert parser.feed("zza") == [ContentDelta("!pizza")]
    assert parser.feed(' <call>{"name": "ping"}</call>') != []
    assert parser.finish() == []


def test_whole_reply_that_fails_to_parse_is_content_and_markers_still_count():
    assert run("!") == [("content", "!")]
    assert run("!pi") == [("content", "!pi")]


def test_feed_after_finish_is_an_error():
    parser = make_parser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")
    assert parser.finish() == []


def test_markers_must_be_given():
    with pytest.raises(ValueError):
        ToolCallStreamParser([], parse_toy_block)


def test_content_only_parser():
    parser = ContentOnlyParser()
    assert parser.feed("<call>") == [ContentDelta("<call>")]
    assert parser.feed("") == [] and parser.finish() == []


# --- split invariance --------------------------------------------------------------

SEGMENTS = st.one_of(
    st.text(alphabet='ab <>/{}!\n"', max_size=12),
    st.sampled_from(
        [
            '<call>{"name": "ping"}</call>',
            '<call>{"name": "add", "arguments": {"a": 7}}</call>',
            '<<{"name": "ping"}>>',
            '<call>{"name": "nope"}</call>',
            "<call>{broken</call>",
            "<call>",
            "</call>",
            "<cal",
            "!ping",
            " \n",
        ]
    ),
)


@st.composite
def split_text(draw, segments=SEGMENTS):
    text = "".join(draw(st.lists(segments, max_size=8)))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return text, pieces


@settings(max_examples=400, deadline=None)
@given(split_text(), st.booleans())
def test_any_split_gives_the_same_events_as_feeding_whole(case, whole):
    text, pieces = case
    assert "".join(pieces) == text
    expected = feed_pieces(make_parser(whole), [text])
    got = feed_pieces(make_parser(whole), pieces)
    assert normalized(got) == normalized(expected)
    assert content(got) == content(expected)
    if not any(isinstance(e, ToolCallEvent) for e in expected):
        assert content(expected) == text  # nothing lost when nothing was a call


def test_every_single_split_point_and_one_character_at_a_time():
    text = 'Hi!\n<call>{"name": "add", "arguments": {"a": 1}}</call>\n<<{"name": "ping"}>> end <ca'
    expected = run(text)
    assert expected == [
        ("content", "Hi!"),
        ("call", "add", {"a": 1}),
        ("call", "ping", {}),
        ("content", " end <ca"),
    ]
    for cut in range(len(text) + 1):
        assert run(text, pieces=[text[:cut], text[cut:]]) == expected
    assert run(text, pieces=list(text)) == expected


def test_find_close_outside_json_strings():
    from mlxhost.families.toolcalls import find_close_outside_json_strings as find

    close = "</tool_call>"
    assert find('{"a": "</tool_call>"}</tool_call>', close) == len('{"a": "</tool_call>"}')
    assert find('{"a": "x\\"</tool_call>"}\n</tool_call>', close) == len('{"a": "x\\"</tool_call>"}\n')
    assert find('{"a": "</tool_call>', close) == -1  # still inside the string
    # Prose before the JSON cannot open a string.
    assert find('say "hi </tool_call>', close) == len('say "hi ')
