"""The family tool-call grammars (tool_choice required / named) compile, and the
core asks for one only when a call is forced."""

from __future__ import annotations

import pytest

from mlxhost.core.domain import FunctionTool, NamedToolChoice
from mlxhost.engine.constrain import lark_grammar
from mlxhost.families.toolcalls import forced_tools

TOOLS = (
    FunctionTool(name="get_weather", parameters={
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                         "units": {"enum": ["c", "f"]}},
        "required": ["city"]}),
    FunctionTool(name="now", parameters=None),
    FunctionTool(name="flags", parameters={"type": "object", "properties": {"on": {"type": "boolean"}}}),
)


def test_forced_tools():
    assert forced_tools(TOOLS, "auto") == ()
    assert forced_tools(TOOLS, "none") == ()
    assert forced_tools(TOOLS, "required") == TOOLS
    assert forced_tools(TOOLS, NamedToolChoice("now")) == (TOOLS[1],)


@pytest.mark.parametrize("family", ["qwen", "gemma"])
def test_family_grammars_compile(family):
    if family == "qwen":
        from mlxhost_qwen.tools import call_grammar
    else:
        from mlxhost_gemma.tools import call_grammar
    for tools in (TOOLS, TOOLS[:1], TOOLS[1:2]):
        text = call_grammar(tools, "required")
        assert lark_grammar(text)
        for tool in tools:
            assert tool.name in text


def test_gemma_grammar_puts_required_arguments_first():
    from mlxhost_gemma.tools import call_grammar

    text = call_grammar(TOOLS[:1], "required")
    assert 'call0: "get_weather(" "city=" STRING' in text
    assert '"days=" INTEGER' in text


# --- tool_choice "auto" with a strict tool: text free, calls constrained --------

STRICT = FunctionTool(name="get_weather", strict=True, parameters={
    "type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}},
    "required": ["city"], "additionalProperties": False})
LOOSE = FunctionTool(name="now", parameters={"type": "object", "properties": {"tz": {"type": "string"}}})
OPEN, CLOSE, EOS = 256, 257, 258  # <tool_call>, </tool_call>, EOS: special tokens beyond the bytes


@pytest.fixture(scope="module")
def ll_tokenizer():
    """A byte-level llguidance tokenizer with Qwen's tool-call markers as special tokens."""
    import typing

    import llguidance

    class Bytes:
        eos_token_id = EOS
        bos_token_id = None
        tokens: typing.ClassVar = [bytes([i]) for i in range(256)] + [b"<tool_call>", b"</tool_call>", b""]
        special_token_ids: typing.ClassVar = [OPEN, CLOSE, EOS]

        def __call__(self, text):
            return list(text.encode())

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(Bytes()))


def _allowed_after(ll_tokenizer, grammar_text: str, tokens: list[int]) -> set[int]:
    """The tokens the grammar allows next, once ``tokens`` were generated."""
    import llguidance
    import llguidance.numpy as llnp
    import numpy as np

    matcher = llguidance.LLMatcher(ll_tokenizer, lark_grammar(grammar_text))
    assert matcher.consume_tokens(tokens), matcher.get_error()
    mask = llnp.allocate_token_bitmask(1, ll_tokenizer.vocab_size)
    llnp.fill_next_token_bitmask(matcher, mask)
    return set(np.unpackbits(mask[0].view(np.uint8), bitorder="little").nonzero()[0].tolist())


def test_enforced_call_tools_under_auto_only_with_a_strict_tool():
    from mlxhost.families.toolcalls import enforced_call_tools

    assert enforced_call_tools((LOOSE,), "auto") == ()
    assert enforced_call_tools((STRICT, LOOSE), "auto") == (STRICT, LOOSE)
    assert enforced_call_tools((STRICT, LOOSE), "none") == ()
    assert enforced_call_tools((STRICT, LOOSE), NamedToolChoice("now")) == (LOOSE,)


def test_qwen_auto_grammar_leaves_text_free_and_constrains_strict_arguments(ll_tokenizer):
    from mlxhost_qwen.tools import call_grammar

    grammar = call_grammar((STRICT, LOOSE), "auto")
    text = list(b"It is sunny")
    free = _allowed_after(ll_tokenizer, grammar, text)
    assert {ord("x"), ord("{"), OPEN, EOS} <= free  # any text, a call, or the end
    head = [*text, OPEN, *b'\n{"name": "get_weather", "arguments": {"city": "']
    assert _allowed_after(ll_tokenizer, grammar, head) == {ord("P"), ord("T")}
    # The loose tool's arguments are any object, but its name must be offered.
    loose = [OPEN, *b'\n{"name": "now", "arguments": {"anything": 1']
    assert {ord(","), ord("}")} <= _allowed_after(ll_tokenizer, grammar, loose)
    assert ord("x") not in _allowed_after(ll_tokenizer, grammar, [OPEN, *b'\n{"name": "'])
    done = [*head, *b'Paris"}}\n', CLOSE]
    assert {ord(" "), EOS, OPEN} <= _allowed_after(ll_tokenizer, grammar, done)


def test_gemma_auto_grammar_constrains_a_call_once_its_fence_opens(ll_tokenizer):
    from mlxhost_gemma.tools import call_grammar

    grammar = call_grammar((STRICT, LOOSE), "auto")
    assert {ord("a"), ord("`"), EOS} <= _allowed_after(ll_tokenizer, grammar, list(b"Let me see. "))
    opened = list(b"Let me see.\n```tool_code\nget_weather(city=")
    assert _allowed_after(ll_tokenizer, grammar, opened) == {ord('"')}
    assert _allowed_after(ll_tokenizer, grammar, list(b"```tool_code\n")) == {ord("g"), ord("n")}
    # The loose tool takes any keyword arguments.
    assert ord("z") in _allowed_after(ll_tokenizer, grammar, list(b"```tool_code\nnow("))


def test_qwen_auto_grammar_constrains_a_bare_call_reply(ll_tokenizer):
    from mlxhost_qwen.tools import call_grammar

    grammar = call_grammar((STRICT, LOOSE), "auto")
    bare = list(b'{"name": "get_weather", "arguments": {"city": "')
    assert _allowed_after(ll_tokenizer, grammar, bare) == {ord("P"), ord("T")}
    # Text that does not open with a brace stays free, braces included.
    assert ord("x") in _allowed_after(ll_tokenizer, grammar, list(b'Use {"city": "'))
