"""Tool-call formats of the generic family: a corpus of calls in each model family's
own format, streamed in random pieces; unknown tools stay content; forced-call
grammars accept the format's own calls; detection agrees with mlx-lm."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxhost.core.domain import FunctionTool
from mlxhost.core.types import ContentDelta, ToolCallEvent
from mlxhost.families.tool_formats import (
    FORMATS,
    detect_tool_format,
    forced_call_grammar,
    make_format_parser,
)
from mlxhost.families.toolcalls import merge_events, strict_parameters
from mlxhost.testing.plugin_kit import feed, pieces_at

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

WEATHER = FunctionTool(
    name="get_weather",
    description="Weather for a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
NO_ARGS = FunctionTool(name="get_time", description="The time", parameters={"type": "object", "properties": {}})
TOOLS = (WEATHER, NO_ARGS)
PARIS = {"city": "Paris", "days": 3}

# format -> [(reply text, expected content, expected calls)]
CORPUS: dict[str, list[tuple[str, str, list[tuple[str, dict]]]]] = {
    "json_tools": [
        ('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
         "Sure.", [("get_weather", PARIS)]),
        ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n<tool_call>\n'
         '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
         "", [("get_time", {}), ("get_weather", PARIS)]),
    ],
    "qwen3_coder": [
        ("Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
         "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
         "Let me check.", [("get_weather", PARIS)]),
    ],
    "glm47": [
        ("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
         "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>", "", [("get_weather", PARIS)]),
    ],
    "mistral": [
        ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]',
         "", [("get_weather", PARIS)]),
        ('Checking. [TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "days": 3}get_time[ARGS]{}',
         "Checking.", [("get_weather", PARIS), ("get_time", {})]),
    ],
    "pythonic": [
        ('<|tool_call_start|>[get_weather(city="Paris", days=3)]<|tool_call_end|>Done.',
         "Done.", [("get_weather", PARIS)]),
        ("<|tool_call_start|>[get_weather(city='Paris', days=3), get_time()]<|tool_call_end|>",
         "", [("get_weather", PARIS), ("get_time", {})]),
    ],
    "gemma4": [
        ('<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>',
         "", [("get_weather", PARIS)]),
    ],
    "function_gemma": [
        ("<start_function_call>call:get_weather{city:<escape>Paris<escape>,days:3}<end_function_call>",
         "", [("get_weather", PARIS)]),
    ],
    "kimi_k2": [
        ("<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
         '{"city": "Paris", "days": 3}<|tool_call_end|><|tool_calls_section_end|>', "", [("get_weather", PARIS)]),
    ],
    "minimax_m2": [
        ('Ok.\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n'
         '<parameter name="days">3</parameter>\n</invoke>\n</minimax:tool_call>', "Ok.", [("get_weather", PARIS)]),
    ],
    "llama3_json": [
        ('{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}', "", [("get_weather", PARIS)]),
        ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}',
         "", [("get_weather", PARIS)]),
    ],
    "phi4_mini": [
        ('<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}<|/tool_call|>',
         "", [("get_weather", PARIS)]),
    ],
    "default": [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
         "", [("get_weather", PARIS)]),
        ('{"name": "get_time", "arguments": {}}', "", [("get_time", {})]),
    ],
}

CASES = [(fmt, *case) for fmt, cases in CORPUS.items() for case in cases]


def outcome(events):
    merged = merge_events(events)
    content = "".join(e.text for e in merged if isinstance(e, ContentDelta))
    calls = [(e.call.name, json.loads(e.call.arguments)) for e in merged if isinstance(e, ToolCallEvent)]
    return content.strip(), calls


def test_every_format_has_a_corpus():
    assert set(CORPUS) == set(FORMATS)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES)
def test_calls_in_the_formats_own_syntax(fmt, text, content, calls):
    parser = make_format_parser(FORMATS[fmt], TOOLS)
    assert outcome(feed(parser, [text])) == (content, calls)


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(CASES), data=st.data())
def test_random_pieces_give_the_same_events_and_never_leak_a_marker(case, data):
    fmt, text, content, calls = case
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=12))
    parser = make_format_parser(FORMATS[fmt], TOOLS)
    events = feed(parser, pieces_at(text, cuts))
    # Content is exactly the expected text: no half marker reached the client.
    assert outcome(events) == (content, calls)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), CASES)
def test_a_call_of_a_tool_not_offered_is_content(fmt, text, content, calls):
    parser = make_format_parser(FORMATS[fmt], (FunctionTool(name="other", parameters=None),))
    events = feed(parser, [text])
    assert not any(isinstance(e, ToolCallEvent) for e in events)
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == text


def test_no_tools_offered_means_content_only():
    parser = make_format_parser(FORMATS["json_tools"], ())
    assert outcome(feed(parser, ["<tool_call>{}</tool_call>"])) == ("<tool_call>{}</tool_call>", [])


# -- detection ----------------------------------------------------------------


@pytest.mark.parametrize(("template", "expected"), [
    ("qwen3-coder.jinja", "qwen3_coder"),
    ("gemma-4.jinja", "gemma4"),
    ("glm-4.6.jinja", "glm47"),
    ("lfm2.5-8b-a1b.jinja", "pythonic"),
    ("minimax-m2.jinja", "minimax_m2"),
    ("mistral-small-3.1-24b-instruct-2503.jinja", "mistral"),
    ("llama-3.2-json.jinja", "llama3_json"),
    ("phi-4-mini-instruct.jinja", "phi4_mini"),
])
def test_detection_from_real_templates_agrees_with_mlx_lm(template, expected):
    from mlx_lm.tokenizer_utils import _infer_tool_parser

    text = (TEMPLATES / template).read_text()
    assert detect_tool_format(text, ()) == expected

    class Tokenizer:
        chat_template = text

        @staticmethod
        def get_vocab():
            return {}

    # Where mlx-lm knows the format, it names the same one.
    theirs = _infer_tool_parser(Tokenizer)
    assert theirs in (expected, None)
    assert (theirs is None) == (expected in ("llama3_json", "phi4_mini"))


def test_lfm_vocabulary_alone_names_pythonic():
    assert detect_tool_format("{{ messages }}", {"<|tool_call_start|>", "<|tool_call_end|>"}) == "pythonic"


# -- forced calls ---------------------------------------------------------------


def test_strict_parameters_admit_only_declared_properties():
    assert strict_parameters({"type": "object", "properties": {}}) == {
        "type": "object", "properties": {}, "additionalProperties": False}
    assert strict_parameters(None)["additionalProperties"] is False
    nested = strict_parameters({"type": "object", "properties": {
        "o": {"type": "object", "properties": {"a": {"type": "string"}}}}})
    assert nested["properties"]["o"]["additionalProperties"] is False
    # A schema that allows more keeps allowing it.
    assert strict_parameters({"type": "object", "additionalProperties": True})["additionalProperties"] is True


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    from mlxhost.testing.tiny_archs import QWEN_TOKENIZER, TEST_MODELS

    folder = TEST_MODELS / QWEN_TOKENIZER
    if not (folder / "tokenizer.json").is_file():
        pytest.skip("the Qwen test model is not built")
    import llguidance.hf

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.ll = llguidance.hf.from_tokenizer(tokenizer, n_vocab=len(tokenizer))  # built once (~1 s)
    return tokenizer


def accepts(tokenizer, grammar: str, text: str) -> bool:
    """Whether ``text``, tokenized as the model would write it, is a complete match."""
    import llguidance

    from mlxhost.engine.constrain import lark_grammar

    matcher = llguidance.LLMatcher(tokenizer.ll, lark_grammar(grammar))
    ok = matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False))
    return bool(ok) and not matcher.is_error() and matcher.is_accepting()


# The one call each forced grammar is checked against (the layout the grammar writes).
FORCED = {fmt: text for fmt, text in {
    "json_tools": CORPUS["json_tools"][0][0].removeprefix("Sure.\n"),
    "default": CORPUS["default"][0][0],
    "qwen3_coder": CORPUS["qwen3_coder"][0][0].removeprefix("Let me check.\n"),
    "glm47": CORPUS["glm47"][0][0],
    "mistral": CORPUS["mistral"][0][0],
    "pythonic": '<|tool_call_start|>[get_weather(city="Paris", days=3)]<|tool_call_end|>',
    "gemma4": CORPUS["gemma4"][0][0],
    "function_gemma": CORPUS["function_gemma"][0][0],
    "kimi_k2": CORPUS["kimi_k2"][0][0],
    "minimax_m2": CORPUS["minimax_m2"][0][0].removeprefix("Ok.\n"),
    "llama3_json": CORPUS["llama3_json"][0][0],
    "phi4_mini": CORPUS["phi4_mini"][0][0],
}.items()}


@pytest.mark.parametrize("fmt", sorted(FORCED))
def test_forced_grammar_accepts_the_formats_own_call(fmt, qwen_tokenizer):
    special = set(qwen_tokenizer.get_added_vocab())
    grammar = forced_call_grammar(FORMATS[fmt], (WEATHER,), special)
    assert grammar is not None
    assert accepts(qwen_tokenizer, grammar, FORCED[fmt])
    # ... and the parser reads what the grammar allows back as the call.
    assert outcome(feed(make_format_parser(FORMATS[fmt], (WEATHER,)), [FORCED[fmt]]))[1] == [
        ("get_weather", PARIS)]
    # An undeclared argument is refused.
    extra = FORCED[fmt].replace("Paris", "Paris", 1)
    if '"days": 3' in extra:
        assert not accepts(qwen_tokenizer, grammar, extra.replace('"days": 3', '"days": 3, "x": 1'))


# A call of get_time without arguments, and one with its schema as arguments (the old fault).
NO_ARGS_CALLS = {
    "json_tools": ('<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
                   '<tool_call>\n{"name": "get_time", "arguments": {"properties": {}, "type": "object"}}'
                   "\n</tool_call>"),
    "phi4_mini": ('<|tool_call|>{"name": "get_time", "arguments": {}}<|/tool_call|>',
                  '<|tool_call|>{"name": "get_time", "arguments": {"type": "object"}}<|/tool_call|>'),
    "llama3_json": ('{"name": "get_time", "parameters": {}}',
                    '{"name": "get_time", "parameters": {"properties": {}}}'),
    "mistral": ('[TOOL_CALLS][{"name": "get_time", "arguments": {}}]',
                '[TOOL_CALLS][{"name": "get_time", "arguments": {"type": "object"}}]'),
    "kimi_k2": ("<|tool_calls_section_begin|><|tool_call_begin|>functions.get_time:0"
                "<|tool_call_argument_begin|>{}<|tool_call_end|><|tool_calls_section_end|>",
                "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_time:0"
                '<|tool_call_argument_begin|>{"type": "object"}<|tool_call_end|><|tool_calls_section_end|>'),
    "pythonic": ("<|tool_call_start|>[get_time()]<|tool_call_end|>",
                 "<|tool_call_start|>[get_time(properties={})]<|tool_call_end|>"),
    "gemma4": ("<|tool_call>call:get_time{}<tool_call|>",
               "<|tool_call>call:get_time{properties:{}}<tool_call|>"),
    "function_gemma": ("<start_function_call>call:get_time{}<end_function_call>",
                       "<start_function_call>call:get_time{type:object}<end_function_call>"),
    "qwen3_coder": ("<tool_call>\n<function=get_time>\n</function>\n</tool_call>",
                    "<tool_call>\n<function=get_time>\n<parameter=type>\nobject\n</parameter>\n"
                    "</function>\n</tool_call>"),
    "glm47": ("<tool_call>get_time\n</tool_call>",
              "<tool_call>get_time\n<arg_key>type</arg_key>\n<arg_value>object</arg_value>\n</tool_call>"),
    "minimax_m2": ('<minimax:tool_call>\n<invoke name="get_time">\n</invoke>\n</minimax:tool_call>',
                   '<minimax:tool_call>\n<invoke name="get_time">\n<parameter name="type">object'
                   "</parameter>\n</invoke>\n</minimax:tool_call>"),
}
NO_ARGS_CALLS["default"] = NO_ARGS_CALLS["json_tools"]


@pytest.mark.parametrize("fmt", sorted(NO_ARGS_CALLS))
def test_a_forced_call_of_a_no_argument_tool_has_no_arguments(fmt, qwen_tokenizer):
    """LangChain's test_tool_calling_with_no_arguments: the schema {"type": "object",
    "properties": {}} once came back as the arguments."""
    assert set(NO_ARGS_CALLS) == set(FORMATS)
    special = set(qwen_tokenizer.get_added_vocab())
    grammar = forced_call_grammar(FORMATS[fmt], (NO_ARGS,), special)
    assert grammar is not None
    good, bad = NO_ARGS_CALLS[fmt]
    assert accepts(qwen_tokenizer, grammar, good)
    assert not accepts(qwen_tokenizer, grammar, bad)
    assert outcome(feed(make_format_parser(FORMATS[fmt], (NO_ARGS,)), [good]))[1] == [("get_time", {})]


def test_function_gemma_cannot_spell_an_object_argument():
    tool = FunctionTool(name="f", parameters={"type": "object", "properties": {"o": {"type": "object"}}})
    assert forced_call_grammar(FORMATS["function_gemma"], (tool,), ()) is None


@pytest.mark.parametrize("fmt", ["json_tools", "default", "phi4_mini", "kimi_k2", "mistral"])
def test_strict_tools_under_auto_constrain_only_the_calls(fmt, qwen_tokenizer):
    from mlxhost.families.tool_formats import strict_calls_grammar

    special = set(qwen_tokenizer.get_added_vocab())
    strict = attrs.evolve(WEATHER, strict=True)
    grammar = strict_calls_grammar(FORMATS[fmt], (strict, NO_ARGS), special)
    assert grammar is not None
    assert accepts(qwen_tokenizer, grammar, "Just text, no call.")
    call = "Checking. " + FORCED[fmt]
    assert accepts(qwen_tokenizer, grammar, call)
    assert not accepts(qwen_tokenizer, grammar, call.replace('"days": 3', '"days": "three"'))


def test_strict_tools_under_auto_are_not_constrained_where_each_argument_is_spelled_out():
    from mlxhost.families.tool_formats import strict_calls_grammar

    assert strict_calls_grammar(FORMATS["qwen3_coder"], (attrs.evolve(WEATHER, strict=True),), ()) is None


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), [c for c in CASES if "get_weather" in c[1]])
def test_a_strict_tools_call_that_does_not_fit_its_schema_is_content(fmt, text, content, calls):
    strict = attrs.evolve(WEATHER, strict=True, parameters={**WEATHER.parameters, "additionalProperties": False,
                                                            "required": ["city", "unit"]})
    events = feed(make_format_parser(FORMATS[fmt], (strict, NO_ARGS)), [text])
    assert "get_weather" not in [e.call.name for e in events if isinstance(e, ToolCallEvent)]
