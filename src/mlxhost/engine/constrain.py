"""Constrained decoding with llguidance: a grammar mask applied before sampling.

A request's grammar (compiled once per schema, :func:`json_grammar`) becomes a
logits processor (:func:`grammar_processor`) holding an ``LLMatcher``: before
each sampled token it feeds the matcher the token sampled since its previous
call, asks for the bitmask of allowed next tokens and sets every other logit to
``-inf``. The mask is computed while the step that produced the logits still
runs (``mx.async_eval`` first), which keeps it off the critical path.
llguidance's MLX kernel is Metal-only, so the mask is unpacked with
numpy and applied with plain ``mx.where`` on every backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal

from mlxhost.core.errors import InvalidRequest
from mlxhost.engine.new_tokens import NewTokens

# Any JSON object (response_format json_object).
ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


@lru_cache(maxsize=64)
def _compile(kind: Literal["json_schema", "lark"], text: str) -> str:
    """An llguidance grammar from a JSON schema or a Lark grammar (its text); ValueError if invalid."""
    import llguidance

    grammar = llguidance.grammar_from(kind, text)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise ValueError(error)
    return grammar


def json_grammar(schema: Mapping[str, Any], param: str) -> str:
    """The llguidance grammar for JSON matching ``schema``; an unsupported or
    invalid schema is a 400 naming ``param``. Compiled grammars are cached by schema."""
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"'{param}' is not a JSON schema: {exc}", param=param) from None
    try:
        return _compile("json_schema", text)
    except ValueError as exc:
        raise InvalidRequest(
            f"'{param}' is not a JSON schema this server can enforce: {exc}", param=param
        ) from None


def lark_grammar(text: str) -> str:
    """The llguidance grammar of a Lark grammar (cached by its text); ValueError if invalid."""
    return _compile("lark", text)


class GuidanceTokenizers:
    """The llguidance tokenizer of each loaded model (building one takes ~1 s)."""

    def __init__(self) -> None:
        self._cache: dict[int, Any] = {}

    def of(self, hf_tokenizer: Any, vocab_size: int, eos: set[int]) -> Any:
        key = id(hf_tokenizer)
        if key not in self._cache:
            import llguidance.hf

            self._cache.clear()  # one model at a time
            self._cache[key] = llguidance.hf.from_tokenizer(
                hf_tokenizer, n_vocab=vocab_size, eos_token=sorted(eos)
            )
        return self._cache[key]


def grammar_processor(
    ll_tokenizer: Any,
    grammar: str,
    *,
    overlap: bool = True,
    unpack: Literal["auto", "numpy", "mx"] = "auto",
    context_first: bool = True,
) -> Callable[[Any, Any], Any]:
    """A logits processor enforcing ``grammar`` (fresh matcher per generation).

    ``overlap=False`` waits for the step before computing the mask (what the
    mask costs on the critical path); ``context_first=False`` schedules the
    token context after the pass (reading it then waits for the pass).
    ``unpack`` says where the packed bitmask (one bit per token) becomes one
    flag per token: in numpy on the CPU, or with ``mx`` ops on the model's
    device (an 8x smaller upload); ``auto``: ``mx`` on a GPU (H100: 0.90 of
    unconstrained vs 0.81 with numpy), numpy on the CPU. All are measured by
    ``bench/constrained.py``; the defaults are the faster ones."""
    import llguidance
    import llguidance.numpy as llnp
    import mlx.core as mx
    import numpy as np

    if unpack == "auto":
        unpack = "mx" if mx.default_device().type == mx.DeviceType.gpu else "numpy"
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    vocab = ll_tokenizer.vocab_size
    bitmask = llnp.allocate_token_bitmask(1, vocab)
    bits = np.arange(32, dtype=np.uint32)
    mx_bits = mx.arange(32, dtype=mx.uint32)
    new_tokens = NewTokens()

    def allowed_flags(size: int) -> Any:
        """One bool per logit: the grammar's mask, False past the tokenizer's vocabulary."""
        words = bitmask[0].view(np.uint32)
        if unpack == "mx":
            flags = ((mx.array(words)[:, None] >> mx_bits) & 1).reshape(-1)[:size].astype(mx.bool_)
            if flags.shape[0] < size:  # the model's head is larger than the vocabulary
                flags = mx.concatenate([flags, mx.zeros((size - flags.shape[0],), dtype=mx.bool_)])
            return flags
        allowed = ((words[:, None] >> bits) & 1).astype(bool).reshape(-1)[:size]
        if allowed.shape[0] < size:
            allowed = np.concatenate([allowed, np.zeros(size - allowed.shape[0], bool)])
        return mx.array(allowed)

    def process(tokens: Any, logits: Any) -> Any:
        # Start this step's forward pass now: MLX runs it on its own stream
        # while the matcher computes the mask below, so the mask costs only
        # what it takes beyond the step (no-op if the logits are evaluated).
        # The token context is scheduled first: a stream runs in order, so a
        # context scheduled after the forward pass (or any new op on it, such
        # as a slice) would wait for the whole pass before the mask could start.
        if tokens is not None and context_first:
            mx.async_eval(tokens)
        if overlap:
            mx.async_eval(logits)
        else:
            mx.eval(logits)
        new = new_tokens.take(tokens)
        if new:
            if matcher.is_stopped():
                # The grammar is complete and EOS was sampled; the decoding loop
                # computes one step ahead, whose token is never used.
                return logits
            matcher.consume_tokens(new)
        if matcher.is_error():
            raise RuntimeError(f"grammar matcher: {matcher.get_error()}")
        llnp.fill_next_token_bitmask(matcher, bitmask)
        flags = allowed_flags(logits.shape[-1])
        return mx.where(flags, logits, mx.array(-float("inf"), dtype=logits.dtype))

    return process
