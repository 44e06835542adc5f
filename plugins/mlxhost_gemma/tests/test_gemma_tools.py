"""Gemma tool-call extraction: ```tool_code blocks of Python calls, the bare-call
drift form, streaming."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxhost.core.types import ContentDelta
from mlxhost.families.toolcalls import InvalidToolCall, merge_events, offered_functions
from mlxhost.testing.plugin_kit import PARSER_TOOLS, WEATHER_TOOL, feed, normalize, reply_cases
from mlxhost_gemma.tools import (
    BareCallMatcher,
    find_closing_fence,
    format_call,
    make_parser,
    parse_bare_reply,
    parse_python_calls,
    python_literal,
)

TOOLS = PARSER_TOOLS
FUNCTIONS = offered_functions(TOOLS)


def run(text, pieces=None, tools=TOOLS):
    return normalize(feed(make_parser(tools), [text] if pieces is None else pieces))


def code(*lines):
    return "```tool_code\n" + "\n".join(lines) + "\n```"


def call(name, arguments):
    return ("call", name, arguments)


# --- ```tool_code blocks -----------------------------------------------------


def test_a_clean_call():
    text = code('get_weather(city="Paris", unit="celsius")')
    assert run(text) == [call("get_weather", {"city": "Paris", "unit": "celsius"})]


def test_a_call_inside_prose():
    text = "I'll check the weather.\n\n" + code('get_weather(city="Paris")') + "\nOne moment."
    assert run(text) == [
        ("content", "I'll check the weather."),
        call("get_weather", {"city": "Paris"}),
        ("content", "\nOne moment."),
    ]


def test_several_calls_in_one_block_and_in_two_blocks():
    text = code('get_weather(city="Paris")', "get_time()", 'get_weather(city="Rome")')
    expected = [
        call("get_weather", {"city": "Paris"}),
        call("get_time", {}),
        call("get_weather", {"city": "Rome"}),
    ]
    assert run(text) == expected
    text = (
        code('get_weather(city="Paris")', "get_time()") + "\n\n" + code('get_weather(city="Rome")')
    )
    assert run(text) == expected


def test_a_list_of_calls_and_print_wrapped_calls():
    text = code('[get_weather(city="Paris"), get_time()]')
    assert run(text) == [call("get_weather", {"city": "Paris"}), call("get_time", {})]
    assert run(code('print(get_weather(city="Paris"))')) == [call("get_weather", {"city": "Paris"})]


def test_tool_call_fence_variant():
    assert run("```tool_call\nget_time()\n```") == [call("get_time", {})]


@pytest.mark.parametrize(
    ("source", "arguments"),
    [
        (
            'search(query="x", options={"a": True, "b": False, "c": None})',
            {"a": True, "b": False, "c": None},
        ),
        (
            'search(query="x", options={"a": true, "b": false, "c": null})',
            {"a": True, "b": False, "c": None},
        ),
        (
            'search(query="x", options={"n": -3, "f": 2.5e3, "p": +1, "big": 12345678901234567890})',
            {"n": -3, "f": 2500.0, "p": 1, "big": 12345678901234567890},
        ),
        (
            'search(query="x", options={"list": [1, [2, {"deep": ("t", "u")}]], "empty": {}})',
            {"list": [1, [2, {"deep": ["t", "u"]}]], "empty": {}},
        ),
        ("search(query='x', options={'single': 'quotes'})", {"single": "quotes"}),
    ],
)
def test_literal_values(source, arguments):
    assert run(code(source)) == [call("search", {"query": "x", "options": arguments})]


def test_unicode_and_escaped_quotes_in_arguments():
    source = 'search(query="he said \\"héllo\\" \\\\ 東京 😀\\n", options={"k": \'it\\\'s\'})'
    assert run(code(source)) == [
        call("search", {"query": 'he said "héllo" \\ 東京 😀\n', "options": {"k": "it's"}})
    ]
    source = 'search(query="""multi\nline "quoted" text""")'
    assert run(code(source)) == [call("search", {"query": 'multi\nline "quoted" text'})]


def test_positional_arguments_take_schema_order():
    assert run(code('get_weather("Paris", "celsius")')) == [
        call("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert run(code('get_weather("Paris", unit="celsius")')) == [
        call("get_weather", {"city": "Paris", "unit": "celsius"})
    ]


def test_a_parameter_named_like_a_python_keyword():
    text = code('convert(amount=10, from="USD", to="EUR")')
    assert run(text) == [call("convert", {"amount": 10, "from": "USD", "to": "EUR"})]
    # a string that looks like such an argument is left alone
    text = code('search(query="from=x", options={"s": "class = 1"})')
    assert run(text) == [call("search", {"query": "from=x", "options": {"s": "class = 1"}})]


@pytest.mark.parametrize(
    "source",
    [
        'get_time("positional but no schema")',  # no parameter names to map to
        'get_weather("Paris", "celsius", "extra")',  # more positional args than parameters
        'get_weather("Paris", city="Rome")',  # given twice
        'get_weather(city="Paris"',  # unbalanced
        'get_weather(city=__import__("os").system("true"))',  # never evaluated
        'get_weather(city=f"{x}")',
        "get_weather(city=unknown_name)",
        'get_weather(**{"city": "Paris"})',
        "get_weather(*cities)",
        'get_weather(city={1: "a"})',
        "get_weather(city=1e999)",
        "get_weather(city=b'bytes')",
        'x = get_weather(city="Paris")',
        'tools.get_weather(city="Paris")',
        "get_weather",
        "",
        "   ",
        "import os",
    ],
)
def test_malformed_calls_stay_content(source, caplog):
    text = "Sure.\n" + code(source)
    with caplog.at_level(logging.WARNING):
        assert run(text) == [("content", text)]
    assert "not a valid call" in caplog.text


def test_a_call_to_a_function_not_offered_stays_content(caplog):
    text = code("delete_everything(really=True)")
    with caplog.at_level(logging.WARNING):
        assert run(text) == [("content", text)]
    assert "'delete_everything' was not offered" in caplog.text
    # one unknown call spoils its block: nothing is half-extracted
    text = code('get_weather(city="Paris")', "delete_everything()")
    assert run(text) == [("content", text)]


def test_a_python_block_is_not_a_tool_call():
    text = 'Try this:\n```python\nprint("hello")\nget_weather(city="Paris")\n```\n'
    assert run(text) == [("content", text)]


def test_unclosed_block_at_max_tokens_with_a_complete_call_is_extracted():
    text = 'Checking.\n```tool_code\nget_weather(city="Paris")\n'
    assert run(text) == [("content", "Checking."), call("get_weather", {"city": "Paris"})]
    assert run(text + "``") == [("content", "Checking."), call("get_weather", {"city": "Paris"})]


def test_unclosed_incomplete_block_at_max_tokens_is_content():
    text = 'Checking.\n```tool_code\nget_weather(city="Par'
    assert run(text) == [("content", text)]
    text = '```tool_code\nget_weather(city="Paris")\nget_ti'
    assert run(text) == [("content", text)]


def test_without_tools_everything_is_content():
    text = code('get_weather(city="Paris")')
    assert run(text, tools=()) == [("content", text)]


def test_hallucinated_tool_output_after_a_call_is_content():
    text = code("get_time()") + "\n```tool_output\n09:00\n```"
    assert run(text) == [call("get_time", {}), ("content", "\n```tool_output\n09:00\n```")]


# --- drift: the whole reply is a bare call ------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('get_weather(city="Paris")', [call("get_weather", {"city": "Paris"})]),
        (
            '\n  get_weather(city="Paris", unit="celsius")\n',
            [call("get_weather", {"city": "Paris", "unit": "celsius"})],
        ),
        ('get_weather("Paris")', [call("get_weather", {"city": "Paris"})]),
        ('get_weather(\n    city="Paris",\n)', [call("get_weather", {"city": "Paris"})]),
        (
            'get_weather(city="Paris")\nget_time()',
            [call("get_weather", {"city": "Paris"}), call("get_time", {})],
        ),
        ('get_weather(city=")(")', [call("get_weather", {"city": ")("})]),
    ],
)
def test_drift_bare_call_reply_is_a_call(text, expected):
    assert run(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "get_weather()",  # required city missing
        'get_weather(city="Paris", country="FR")',  # unknown property
        "get_weather(city=75)",  # wrong type
        'get_weather(city="Paris", unit="kelvin")',  # not in enum
        'launch(target="moon")',  # not offered
        'get_weather(city="Paris") would be the call.',
        'I would call get_weather(city="Paris").',
        'get_weather(city="Paris"); get_time()',
        "get_weather is a function.",
        "get the weather yourself",
        "get_weather (city='Paris')",
        "Get_weather(city='Paris')",
    ],
)
def test_drift_forms_that_are_not_calls_stay_content(text):
    assert run(text) == [("content", text)]


def test_prose_starting_like_a_function_name_is_released_as_soon_as_it_differs():
    parser = make_parser(TOOLS)
    assert parser.feed("get") == []
    assert parser.feed(" the") == [ContentDelta("get the")]
    assert parser.feed(" weather") == [ContentDelta(" weather")]


def test_a_bare_call_is_held_until_finish():
    parser = make_parser(TOOLS)
    assert parser.feed("get_weather(") == []
    assert parser.feed('city="Paris")') == []
    assert normalize(parser.finish()) == [call("get_weather", {"city": "Paris"})]


def test_a_bare_call_followed_by_prose_is_released_when_the_prose_starts():
    parser = make_parser(TOOLS)
    assert parser.feed('get_weather(city="Paris")') == []
    assert merge_events(parser.feed(" is it")) == [ContentDelta('get_weather(city="Paris") is it')]


@pytest.mark.parametrize(
    "text",
    [
        'get_weather(city="Paris")',
        'get_weather(city="""x)"y"""\n)\n\nget_time()',
        "search(query='it\\'s (', options={'': ''})",
        'search(query="a", options={"k": [1, (2, 3)], "s": "]}"})',
        'get_weather(city="",)',
    ],
)
def test_bare_call_matcher_accepts_what_the_parser_accepts(text):
    matcher = BareCallMatcher(FUNCTIONS)
    assert all(matcher.feed(char) for char in text)
    assert parse_bare_reply(text, FUNCTIONS)


def test_parse_python_calls_strict_checks_schemas():
    assert parse_python_calls('get_weather(city="X", extra=1)', FUNCTIONS)[0].name == "get_weather"
    with pytest.raises(InvalidToolCall):
        parse_python_calls('get_weather(city="X", extra=1)', FUNCTIONS, strict=True)


# --- streaming ----------------------------------------------------------------------------


# --- literals round-trip ------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(alphabet=st.characters(codec="utf-8"), max_size=6), inner, max_size=4
        )
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["query", "options", "extra", "from"]), JSON_VALUES, max_size=4)
)
def test_format_call_and_parse_round_trip(arguments):
    source = format_call("search", arguments)
    (parsed,) = parse_python_calls(source, FUNCTIONS)
    assert parsed.name == "search"
    assert json.loads(parsed.arguments) == json.loads(json.dumps(arguments))


def test_python_literal():
    assert python_literal({"a": [True, None, 1.5, 'x"y']}) == '{"a": [True, None, 1.5, "x\\"y"]}'
    with pytest.raises(TypeError):
        python_literal(object())


PROSE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="`"), min_size=1, max_size=20
).filter(lambda s: s.strip() and not s.lstrip()[0].isalpha() and s.lstrip()[0] != "_")
CALLS = st.lists(
    st.builds(
        lambda q, o: ("search", {"query": q, "options": o}),
        st.text(max_size=10),
        st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3),
    ),
    min_size=1,
    max_size=3,
)


REPLIES = reply_cases(PROSE, CALLS, lambda calls: code(*(format_call(n, a) for n, a in calls)))


@settings(max_examples=300, deadline=None)
@given(REPLIES)
def test_random_replies_split_anywhere(case):
    text, expected, pieces = case
    assert run(text) == expected
    assert run(text, pieces=pieces) == expected


def test_a_fence_inside_a_string_or_comment_does_not_close_the_block():
    text = code(
        'search(query="```python\\nprint(1)\\n```", options={"md": """\n```\n"""})  # ``` here'
    )
    assert run(text) == [
        call("search", {"query": "```python\nprint(1)\n```", "options": {"md": "\n```\n"}})
    ]


def test_a_stray_apostrophe_does_not_swallow_the_rest_of_the_reply():
    text = code("get_weather(city='Paris)") + "\nThe end."
    assert run(text) == [("content", text)]
    assert find_closing_fence("\nget_time(x='a)\n```\nmore") == 16


def test_parser_asks_to_stop_once_a_tool_code_block_closes():
    parser = make_parser([WEATHER_TOOL])
    parser.feed('```tool_code\nget_weather(city="Paris")\n')
    assert not parser.stop_requested
    events = parser.feed("```")
    assert parser.stop_requested
    assert [type(e).__name__ for e in events] == ["ToolCallEvent"]


def test_an_unknown_escape_in_a_string_argument_parses_without_a_warning():
    # The compiler warns of "\\`" in a literal; on a server that is noise on
    # stderr for every such reply. Python keeps the backslash, and so does the call.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (call,) = parse_python_calls('get_weather(city="a\\`b")', FUNCTIONS)
    assert not caught, [str(w.message) for w in caught]
    assert json.loads(call.arguments) == {"city": "a\\`b"}
