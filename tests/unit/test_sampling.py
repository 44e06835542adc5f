"""Per-request sampling on known logits (MLX on CPU, no model)."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxhost.core.types import SamplingParams
from mlxhost.engine.sampling import make_logits_processors, make_sampler

LOGITS = mx.array([[1.0, 3.0, 2.0, -1.0]])


def apply(params: SamplingParams, history: list[int], prompt: int = 2):
    """Run the processors as the decoding loop would: first call with the prompt only."""
    processors = make_logits_processors(params)
    tokens = mx.array(list(range(prompt)))
    out = LOGITS
    for processor in processors:
        processor(tokens, LOGITS)  # the first call marks where generation starts
    seen = mx.array([*range(prompt), *history])
    for processor in processors:
        out = processor(seen, out)
    return out.tolist()[0]


def test_no_knobs_no_processors():
    assert make_logits_processors(SamplingParams(max_tokens=4)) == []


def test_logit_bias_adds_to_the_named_tokens():
    assert apply(SamplingParams(max_tokens=4, logit_bias={0: 5.0, 3: -100.0}), []) == [
        6.0, 3.0, 2.0, -101.0,
    ]


def test_presence_and_frequency_count_generated_tokens_only():
    params = SamplingParams(max_tokens=4, presence_penalty=0.5, frequency_penalty=1.0)
    # Prompt tokens 0 and 1 are not penalized; token 2 was generated twice, 3 once.
    assert apply(params, [2, 2, 3]) == [1.0, 3.0, 2.0 - 0.5 - 2.0, -1.0 - 0.5 - 1.0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    out = apply(SamplingParams(max_tokens=4, repetition_penalty=2.0), [2, 3])
    assert out == pytest.approx([1.0, 3.0, 1.0, -2.0])


def test_top_k_one_is_greedy_at_any_temperature():
    sampler = make_sampler(SamplingParams(max_tokens=4, temperature=1.5, top_k=1))
    logprobs = LOGITS - mx.logsumexp(LOGITS, keepdims=True)
    assert {int(sampler(logprobs).item()) for _ in range(20)} == {1}


def test_min_p_drops_unlikely_tokens():
    sampler = make_sampler(SamplingParams(max_tokens=4, temperature=1.0, min_p=0.5))
    logits = mx.array([[0.0, 5.0, 4.9, -5.0]])
    logprobs = logits - mx.logsumexp(logits, keepdims=True)
    mx.random.seed(0)
    assert {int(sampler(logprobs).item()) for _ in range(50)} <= {1, 2}


def test_unseeded_requests_with_the_same_settings_share_one_sampler():
    """BatchGenerator samples the whole batch in one call only when its
    sequences hold the same sampler object."""
    greedy = make_sampler(SamplingParams(max_tokens=4, temperature=0.0))
    assert make_sampler(SamplingParams(max_tokens=9, temperature=0.0, seed=3)) is greedy
    warm = make_sampler(SamplingParams(max_tokens=4, temperature=0.7, top_k=5))
    assert make_sampler(SamplingParams(max_tokens=4, temperature=0.7, top_k=5)) is warm
    assert warm is not greedy
    seeded = make_sampler(SamplingParams(max_tokens=4, temperature=0.7, seed=1))
    assert seeded is not make_sampler(SamplingParams(max_tokens=4, temperature=0.7, seed=1))
