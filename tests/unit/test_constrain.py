"""Constrained decoding: grammar compilation errors and the mask on known logits."""

from __future__ import annotations

import json
import typing

import mlx.core as mx
import pytest

from mlxhost.core.errors import InvalidRequest
from mlxhost.engine.constrain import grammar_processor, json_grammar


@pytest.fixture(scope="module")
def ll_tokenizer():
    """A tiny byte-level llguidance tokenizer: token i is the byte i, token 256 is EOS."""
    import llguidance

    class Bytes:
        eos_token_id = 256
        bos_token_id = None
        tokens: typing.ClassVar = [bytes([i]) for i in range(256)] + [b""]
        special_token_ids: typing.ClassVar = [256]

        def __call__(self, text):
            return list(text)

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(Bytes()))


def test_invalid_schema_is_a_400_naming_the_field():
    with pytest.raises(InvalidRequest) as caught:
        json_grammar({"type": "no-such-type"}, "response_format.json_schema.schema")
    assert caught.value.param == "response_format.json_schema.schema"


def test_grammars_are_cached_by_schema():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert json_grammar(schema, "x") is json_grammar(dict(schema), "x")


def allowed(process, history: list[int]) -> set[int]:
    logits = mx.zeros((1, 257))
    out = process(mx.array(history), logits)
    return {i for i, v in enumerate(out.reshape(-1).tolist()) if v != float("-inf")}


@pytest.mark.parametrize("unpack", ["numpy", "mx"])
def test_the_mask_allows_only_what_the_grammar_allows(ll_tokenizer, unpack):
    grammar = json_grammar({"type": "object", "properties": {"a": {"type": "integer"}},
                            "required": ["a"], "additionalProperties": False}, "x")
    process = grammar_processor(ll_tokenizer, grammar, unpack=unpack)
    first = allowed(process, [7, 7])  # the prompt (two tokens): nothing generated yet
    assert ord("{") in first and ord("a") not in first
    text = '{"a":'
    sofar = [7, 7]
    for char in text:  # feed the reply token by token, as the decoding loop does
        sofar.append(ord(char))
        step = allowed(process, sofar)
    assert ord("1") in step and ord('"') not in step
    for char in "12}":
        sofar.append(ord(char))
        step = allowed(process, sofar)
    assert step == {256}  # complete: only EOS
    assert json.loads(bytes(sofar[2:]).decode()) == {"a": 12}


@pytest.mark.parametrize("unpack", ["numpy", "mx"])
def test_logits_past_the_vocabulary_are_masked(ll_tokenizer, unpack):
    """Models whose output layer is wider than the tokenizer (padding rows)."""
    process = grammar_processor(ll_tokenizer, json_grammar({"type": "object"}, "x"), unpack=unpack)
    out = process(mx.array([7]), mx.zeros((1, 300))).reshape(-1).tolist()
    assert out[ord("{")] == 0 and all(v == float("-inf") for v in out[257:])
