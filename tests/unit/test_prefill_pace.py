"""runtime.prefill_pace: prefill chunks sized by time, and a running stream that
keeps decoding while a long prompt prefills (TextBatch on the tiny fp32 model,
with a simulated clock so the sizes do not depend on this machine's speed)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from mlxhost.engine.prefill_pace import FIRST_CHUNK, GROWTH, MIN_CHUNK, PrefillPacer


def settle(pacer: PrefillPacer, fixed: float, per_token: float, rows: int = 1, steps: int = 30) -> list[int]:
    """Chunk sizes over ``steps`` steps when a step's prefill costs
    ``fixed + per_token × tokens``."""
    sizes = []
    for _ in range(steps):
        size = pacer.chunk(rows)
        sizes.append(size)
        pacer.record(size * rows, fixed + per_token * size * rows, size)
    return sizes


def test_chunks_settle_where_a_step_takes_the_budget():
    pacer = PrefillPacer(0.25, 512)
    sizes = settle(pacer, fixed=0.05, per_token=0.005)
    assert sizes[0] == FIRST_CHUNK
    assert abs(sizes[-1] - 40) <= 1  # 0.05 + 0.005 x 40 = 0.25 s
    # Rows prefill side by side: the same budget split between them.
    two = settle(PrefillPacer(0.25, 512), fixed=0.05, per_token=0.005, rows=2)
    assert abs(two[-1] - 20) <= 1


def test_a_fast_machine_gets_big_chunks_within_the_cap_and_growth():
    pacer = PrefillPacer(0.25, 512)
    sizes = settle(pacer, fixed=0.001, per_token=0.00001)
    assert sizes[-1] == 512
    assert all(b <= a * GROWTH for a, b in itertools.pairwise(sizes))


def test_a_slow_machine_keeps_the_minimum_chunk():
    sizes = settle(PrefillPacer(0.25, 512), fixed=1.0, per_token=0.05)
    assert sizes[-1] == MIN_CHUNK


def test_the_rate_follows_the_recent_chunks():
    pacer = PrefillPacer(0.25, 4096)
    settle(pacer, fixed=0.0, per_token=0.001)  # 1,000 tok/s
    assert pacer.chunk() == 250
    settle(pacer, fixed=0.0, per_token=0.01, steps=8)  # the context grew: 100 tok/s
    assert pacer.chunk() == 25


def test_no_budget_means_fixed_chunks():
    pacer = PrefillPacer(0.0, 300)
    assert settle(pacer, fixed=5.0, per_token=1.0, steps=3) == [300, 300, 300]
    assert pacer.stats()["next_chunk"] == 300


# -- a running stream while a long prompt prefills ---------------------------------
mx = pytest.importorskip("mlx.core")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CostlyModel:
    """The tiny model, with every forward pass advancing ``clock`` as a slow CPU
    would: 50 ms a pass plus 10 ms a token (rows x length)."""

    def __init__(self, model: Any, clock: Clock) -> None:
        self._model = model
        self._clock = clock

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        self._clock.now += 0.05 + 0.01 * inputs.size
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def tokens_while_prefilling(model: Any, prompt_length: int, budget: float) -> tuple[int, list[int]]:
    """Start stream A; join a ``prompt_length``-token prompt B; count A's tokens
    that arrive after B joined and before B's first token. Also the chunk sizes
    B's prefill used."""
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler
    from mlxhost.testing.tiny_text import TokenNames

    clock = Clock()
    pacer = PrefillPacer(budget, 512, clock=clock)
    batch = TextBatch(
        CostlyModel(model, clock), eos=set(), max_batch=8, prefill_step=512, detokenizer=TokenNames,
        fetch_prefix=lambda tokens: (None, 0), store_prefix=lambda fed, cache: None,
        token_logprob=lambda *a: None, pacer=pacer,
    )
    events: list[str] = []
    a = SamplingParams(max_tokens=10_000, temperature=0.0)
    b = SamplingParams(max_tokens=1, temperature=0.0)
    batch.join((5, 6, 7), a, make_sampler(a), [], lambda step, error: events.append("A"))
    while "A" not in events:
        batch.step()
    events.clear()
    long_prompt = tuple((11 * k) % 500 + 1 for k in range(prompt_length))
    batch.join(long_prompt, b, make_sampler(b), [], lambda step, error: events.append("B"))
    chunks = []
    while "B" not in events:
        batch.step()
        chunks.append(batch._generator.prefill_step_size)
    return events.index("B"), chunks


def test_a_running_stream_keeps_decoding_while_a_long_prompt_prefills():
    from mlxhost.testing.tiny_text import tiny_qwen3

    model = tiny_qwen3()
    short, _ = tokens_while_prefilling(model, 200, budget=0.25)
    long, chunks = tokens_while_prefilling(model, 400, budget=0.25)
    assert short > 1
    assert long > short  # the stream's share grows with the prompt, it is never paused
    assert max(chunks) < 64  # ~20-token chunks (0.05 + 0.01 x 20 = 0.25 s)
    # Fixed 512-token chunks (no budget): the whole prompt in one step, the stream waits.
    fixed, _ = tokens_while_prefilling(model, 400, budget=0.0)
    assert fixed <= 3 < short


def test_a_lone_prompt_prefills_in_the_largest_chunks():
    """Pacing is for the streams that wait: alone, a long prompt goes in
    ``max_chunk`` pieces even with a budget (16-token chunks made Claude Code's
    21k-token first prompt take most of an hour)."""
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler
    from mlxhost.testing.tiny_text import TokenNames, tiny_qwen3

    clock = Clock()
    calls: list[int] = []

    class Counting(CostlyModel):
        def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(inputs.shape[-1])
            return super().__call__(inputs, *args, **kwargs)

    pacer = PrefillPacer(0.25, 512, clock=clock)
    batch = TextBatch(
        Counting(tiny_qwen3(), clock), eos=set(), max_batch=8, prefill_step=512,
        detokenizer=TokenNames, fetch_prefix=lambda tokens: (None, 0),
        store_prefix=lambda fed, cache: None, token_logprob=lambda *a: None, pacer=pacer,
    )
    events: list[str] = []
    params = SamplingParams(max_tokens=1, temperature=0.0)
    prompt = tuple((7 * k) % 500 + 1 for k in range(1200))
    batch.join(prompt, params, make_sampler(params), [], lambda step, error: events.append("B"))
    while not events:
        batch.step()
    assert batch.alone == 1
    assert calls[:2] == [512, 512]  # paced, these would be ~20-token chunks
    assert sum(calls) == 1200


def test_a_prompt_left_alone_in_the_batch_stops_being_paced():
    """B joins while A decodes (paced chunks); once A is done, B's remaining
    prompt goes in the largest chunks."""
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler
    from mlxhost.testing.tiny_text import TokenNames, tiny_qwen3

    clock = Clock()
    batch = TextBatch(
        CostlyModel(tiny_qwen3(), clock), eos=set(), max_batch=8, prefill_step=512,
        detokenizer=TokenNames, fetch_prefix=lambda tokens: (None, 0),
        store_prefix=lambda fed, cache: None, token_logprob=lambda *a: None,
        pacer=PrefillPacer(0.25, 512, clock=clock),
    )
    events: list[str] = []
    a = SamplingParams(max_tokens=4, temperature=0.0)
    b = SamplingParams(max_tokens=1, temperature=0.0)
    batch.join((5, 6, 7), a, make_sampler(a), [], lambda step, error: events.append("A"))
    while "A" not in events:
        batch.step()
    prompt = tuple((11 * k) % 500 + 1 for k in range(1500))
    batch.join(prompt, b, make_sampler(b), [], lambda step, error: events.append("B"))
    chunks: list[tuple[int, int]] = []  # (A's tokens so far, B's chunk)
    while "B" not in events:
        batch.step()
        chunks.append((events.count("A"), batch._generator.prefill_step_size))
    while_a = [size for count, size in chunks if count < 4]
    after_a = [size for count, size in chunks[:-1] if count == 4]
    assert while_a and max(while_a) < 64
    assert after_a and after_a[-1] == 512
