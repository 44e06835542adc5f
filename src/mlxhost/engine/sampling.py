"""Per-request sampling: the sampler and logits processors for one generation.

The sampler (temperature, top_p, top_k, min_p) is mlx-lm's filter chain in a
:class:`Sampler` that also exposes the distribution it draws from (for prompt
lookup's rejection sampling).
The logits processors are our own so their meaning matches the APIs':

- ``logit_bias`` (token id -> bias, OpenAI's -100..100) is added to the logits;
- ``presence_penalty`` / ``frequency_penalty`` (OpenAI, -2..2) count the tokens
  *generated so far* (not the prompt): ``logit -= presence * (count > 0) +
  frequency * count``;
- ``repetition_penalty`` (CTRL / Hugging Face style, > 0, 1 = off) divides a
  positive logit (multiplies a negative one) of every token already generated.

A processor is called before each sampled token with the tokens the decoding
loop has seen (which may include part of the prompt) and the logits; the first
call's length marks where generation starts. ``request_processors`` adds the
grammar (``engine.constrain``) and the thinking budget (``engine.reasoning_processor``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from mlxhost.core.types import SamplingParams, TokenLogprob
from mlxhost.engine.constrain import grammar_processor
from mlxhost.engine.reasoning_processor import thinking_processor

LogitsProcessor = Callable[[Any, Any], Any]


class Sampler:
    """Draws the next token from log probabilities (a callable, as mlx-lm's samplers).

    ``transform`` is the whole of what the request's sampling does to the
    distribution (mlx-lm's filter chain: top_p, min_p, top_k, in its order,
    then 1 / temperature): the token is drawn from ``softmax(transform(x))``.
    Prompt lookup's rejection sampling (engine.speculative) reads the target
    distribution from the same ``transform``, so the two cannot drift apart.
    ``key()`` is the next random key: a seeded sampler splits its own key (never
    the global RNG, so seeded requests stay reproducible inside a batch); an
    unseeded one answers None (MLX's global random state)."""

    def __init__(self, params: SamplingParams) -> None:
        import mlx.core as mx
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        top_p = params.top_p if params.top_p < 1.0 else 0.0
        filters: list[Callable[[Any], Any]] = []
        if 0 < top_p < 1.0:
            filters.append(lambda x: apply_top_p(x, top_p))
        if params.min_p:
            filters.append(lambda x: apply_min_p(x, params.min_p, 1))
        if params.top_k > 0:
            filters.append(lambda x: apply_top_k(x, params.top_k))
        self._filters = filters
        self._scale = 1 / params.temperature
        self._key = None if params.seed is None else mx.random.key(params.seed)

    def transform(self, logprobs: Any) -> Any:
        """The logits of the distribution tokens are drawn from (rows: ``(..., vocab)``)."""
        for step in self._filters:
            logprobs = step(logprobs)
        return logprobs * self._scale

    def key(self) -> Any:
        if self._key is None:
            return None
        import mlx.core as mx

        self._key, draw = mx.random.split(self._key)
        return draw

    def __call__(self, logprobs: Any) -> Any:
        import mlx.core as mx

        return mx.random.categorical(self.transform(logprobs), key=self.key())


def make_sampler(params: SamplingParams) -> Callable[[Any], Any]:
    """mlx-lm's greedy sampler at temperature 0, else a :class:`Sampler`."""
    if params.temperature == 0:
        from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

        return mlx_make_sampler(temp=0.0)
    if params.seed is not None:
        return Sampler(params)
    top_p = params.top_p if params.top_p < 1.0 else 0.0
    return _shared_sampler(params.temperature, top_p, params.min_p, params.top_k)


@lru_cache(maxsize=64)
def _shared_sampler(temperature: float, top_p: float, min_p: float, top_k: int) -> Sampler:
    """One sampler object per unseeded setting: ``BatchGenerator`` samples a
    batch whose sequences share one sampler object in one call, and one call
    per sequence otherwise (8 small graphs a step instead of one at 8 streams)."""
    return Sampler(SamplingParams(max_tokens=1, temperature=temperature, top_p=top_p or 1.0, min_p=min_p, top_k=top_k))


class _Generated:
    """The tokens generated so far, from the ``tokens`` a processor is given."""

    def __init__(self) -> None:
        self._start: int | None = None

    def of(self, tokens: Any) -> Any:
        length = 0 if tokens is None else int(tokens.shape[-1])
        if self._start is None:
            self._start = length
        return None if tokens is None else tokens[..., self._start :]


def make_logits_processors(params: SamplingParams) -> list[LogitsProcessor]:
    import mlx.core as mx

    processors: list[LogitsProcessor] = []
    if params.logit_bias:
        ids = mx.array(list(params.logit_bias.keys()))
        values = mx.array(list(params.logit_bias.values()), dtype=mx.float32)

        def bias(tokens: Any, logits: Any) -> Any:
            return logits.at[..., ids].add(values.astype(logits.dtype))

        processors.append(bias)
    presence, frequency = params.presence_penalty, params.frequency_penalty
    if presence or frequency:
        generated = _Generated()

        def penalties(tokens: Any, logits: Any) -> Any:
            seen = generated.of(tokens)
            if seen is None or seen.size == 0:
                return logits
            counts = mx.zeros((logits.shape[-1],), dtype=mx.float32).at[seen.reshape(-1)].add(1.0)
            penalty = presence * (counts > 0).astype(mx.float32) + frequency * counts
            return logits - penalty.astype(logits.dtype)

        processors.append(penalties)
    repetition = params.repetition_penalty
    if repetition is not None and repetition != 1.0:
        generated_r = _Generated()

        def repeat(tokens: Any, logits: Any) -> Any:
            seen = generated_r.of(tokens)
            if seen is None or seen.size == 0:
                return logits
            ids = seen.reshape(-1)
            selected = logits[..., ids]
            scaled = mx.where(selected > 0, selected / repetition, selected * repetition)
            return _put(logits, ids, scaled)

        processors.append(repeat)
    return processors


def request_processors(params: SamplingParams, grammar_tokenizer: Callable[[], Any]) -> list[LogitsProcessor]:
    """Every logits processor a request asks for; ``grammar_tokenizer()`` gives the
    model's llguidance tokenizer (built only when a grammar needs it)."""
    processors = make_logits_processors(params)
    grammar = params.grammar

    def answer() -> list[LogitsProcessor]:
        if grammar is None:
            return []
        return [grammar_processor(grammar_tokenizer(), grammar)]

    if params.thinking is not None:
        # The budget closes the thought; the grammar starts with the answer.
        processors.append(thinking_processor(params.thinking, answer))
    else:
        processors.extend(answer())
    return processors


def token_logprob(tokenizer: Any, token: int, logprobs: Any, top: int) -> TokenLogprob:
    """The sampled token's log probability and the ``top`` most likely tokens
    (from the step's normalized log probabilities)."""
    import mlx.core as mx

    def text(token: int) -> str:
        return str(tokenizer.decode([token]))

    values = logprobs.reshape(-1)
    alternatives: tuple[tuple[str, float], ...] = ()
    if top > 0:
        ids = mx.argpartition(-values, kth=top - 1)[:top]
        chosen = values[ids]
        mx.eval(ids, chosen)
        pairs: list[tuple[int, float]] = list(zip(ids.tolist(), chosen.tolist()))  # type: ignore[arg-type]
        ranked = sorted(pairs, key=lambda item: -item[1])
        alternatives = tuple((text(i), float(v)) for i, v in ranked)
    return TokenLogprob(text(token), float(values[token].item()), alternatives)


def _put(logits: Any, ids: Any, values: Any) -> Any:
    """``logits`` with ``logits[..., ids] = values`` (duplicates in ids are fine:
    they carry the same value)."""
    out = logits
    out[..., ids] = values
    return out
