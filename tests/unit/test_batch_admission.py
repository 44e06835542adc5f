"""Which waiting prompts join the batch's prefill (``runtime.batch.admit``): short
prompts are not padded to a long prompt's chunk unless waiting costs more."""

from __future__ import annotations

from mlxhost.engine.batch import PATIENCE_STEPS, PREFILL_BUDGET_CHUNKS, admit

CHUNK = 512


def test_everything_goes_in_when_nothing_prefills():
    assert admit([40, 30, 12], [], CHUNK) == [0, 1, 2]
    assert admit([900, 2000], [], CHUNK) == [0, 1]


def test_short_prompts_go_before_a_long_one_arriving_with_them():
    # the long one would pad each short prompt to a full chunk
    assert admit([900, 40, 30], [], CHUNK) == [1, 2]


def test_long_prompt_waits_while_short_prompts_prefill():
    assert admit([900], [40, 30], CHUNK) == []
    assert admit([900], [], CHUNK) == [0]


def test_short_prompts_wait_for_a_long_prefill_nearly_done():
    # 7 short prompts padded to 512 each cost more than the 1.5 chunks left
    assert admit([40] * 7, [768], CHUNK) == []


def test_short_prompts_join_a_long_prefill_with_many_steps_left():
    # padding 3 prompts (3 chunks) is cheaper than waiting 60 chunks
    assert admit([40, 30, 12], [30_000], CHUNK) == [0, 1, 2]


def test_long_prompts_join_a_running_long_prefill():
    assert admit([2000], [30_000], CHUNK) == [0]


def test_short_prompts_join_other_short_prompts_in_flight():
    assert admit([40], [25], CHUNK) == [0]


def test_a_prompt_held_long_enough_goes_in_anyway():
    held = PATIENCE_STEPS - 1
    assert admit([40] * 7, [2000], CHUNK, [held] * 7) == []
    assert admit([40] * 7, [2000], CHUNK, [PATIENCE_STEPS] + [held] * 6) == [0]
    assert admit([900], [40], CHUNK, [PATIENCE_STEPS]) == [0]


def test_many_short_prompts_prefill_together():
    # 16 short prompts pad to 16 x 64 tokens: far within the budget
    assert admit([64] * 16, [], CHUNK) == list(range(16))
    assert admit([64] * 15, [64], CHUNK) == list(range(15))


def test_long_prompts_go_in_a_budget_at_a_time():
    first = admit([2000] * 12, [], CHUNK)
    assert first == list(range(PREFILL_BUDGET_CHUNKS))
    # the rest wait until the running long prefill has room, oldest first
    assert admit([2000] * 4, [1500] * PREFILL_BUDGET_CHUNKS, CHUNK, [PATIENCE_STEPS] * 4) == []
    assert admit([2000] * 4, [1500] * (PREFILL_BUDGET_CHUNKS - 2), CHUNK) == [0, 1]


def test_one_prompt_always_goes_in_when_nothing_prefills():
    assert admit([100_000], [], 100) == [0]
