"""Embedding passes paced by time while a chat decodes (``EncodeBatcher`` with
``runtime.pacing.TimePacer``), on a real worker thread with a simulated clock:
every cost is fake, so the sizes do not depend on this machine's speed."""

from __future__ import annotations

import asyncio
import itertools
import threading

import numpy as np

from mlxhost.runtime.embedding.batcher import EMBED_SHARE, EncodeBatcher
from mlxhost.runtime.worker import MLXWorker

STEP_S = 0.5  # one decode step of the chat
FIXED_S = 0.01  # an encoder pass: this plus PER_TOKEN_S a padded token
PER_TOKEN_S = 0.0005
BUDGET_S = EMBED_SHARE / (1 - EMBED_SHARE) * STEP_S


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CostlyEncoder:
    """Stands in for EncoderModel: each pass advances the clock as a slow CPU
    would, and is recorded with the number of chat steps run before it."""

    def __init__(self, clock: Clock, chat: dict) -> None:
        self.clock = clock
        self.chat = chat
        self.passes: list[dict] = []
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1

    def run(self, ids, type_ids=None):
        padded = len(ids) * max(len(x) for x in ids)
        cost = FIXED_S + PER_TOKEN_S * padded
        self.clock.now += cost
        self.passes.append({"rows": len(ids), "padded": padded, "cost": cost,
                            "lengths": [len(x) for x in ids], "after_step": self.chat["steps"]})
        return [np.array([len(x)], dtype=np.float32) for x in ids]


def embed(inputs: list[list[int]], *, chat: bool, max_tokens: int = 2048,
          chat_steps: int | None = None) -> CostlyEncoder:
    """Embed ``inputs`` in one request, with or without a chat decoding meanwhile
    (until the job is done, or for ``chat_steps`` steps)."""
    clock = Clock()
    state = {"steps": 0, "running": chat}
    model = CostlyEncoder(clock, state)
    stop = threading.Event()

    def decode_step() -> bool:  # a running chat's ticker
        if stop.is_set() or state["steps"] == chat_steps:
            state["running"] = False
            return False
        clock.now += STEP_S
        state["steps"] += 1
        return True

    async def scenario() -> None:
        worker = MLXWorker()
        worker.start()
        try:
            batcher = EncodeBatcher(worker, max_tokens=max_tokens, max_rows=128,
                                    decoding=lambda: state["running"], clock=clock)
            if chat:
                await worker.run(lambda: worker.add_ticker(decode_step))
            rows = await batcher.run(model, inputs)
            assert [int(r[0]) for r in rows] == [len(x) for x in inputs]
            stop.set()
        finally:
            worker.stop()

    asyncio.run(scenario())
    return model


def test_while_a_chat_decodes_each_steps_slice_stays_within_the_budget():
    lengths = [8 + (i * 7) % 17 for i in range(200)]  # 8-24 tokens
    inputs = [[1] * n for n in lengths]
    alone = embed(inputs, chat=False)
    beside = embed(inputs, chat=True)

    assert sum(p["rows"] for p in beside.passes) == len(inputs)
    # Every pass beside the chat fits in EMBED_SHARE of the time (the rest is the
    # step it follows), and one pass at most runs between two decode steps.
    for one in beside.passes:
        assert one["cost"] <= BUDGET_S
    steps = [one["after_step"] for one in beside.passes]
    assert all(b > a for a, b in itertools.pairwise(steps))
    # The passes grow from one measured input to about the budget, not stay tiny.
    assert beside.passes[0]["rows"] == 1
    assert max(one["cost"] for one in beside.passes) >= 0.75 * BUDGET_S
    # So the job spreads over many of the chat's steps instead of stalling one:
    # far more passes than alone, each still sorted by length.
    assert len(beside.passes) > 3 * len(alone.passes)
    assert steps[-1] - steps[0] >= len(beside.passes) - 1
    for one in beside.passes:
        assert one["lengths"] == sorted(one["lengths"])
    # A paced pass waited for the decode step's work in flight first.
    assert beside.syncs >= len(beside.passes)


def test_alone_the_job_runs_in_full_batches():
    inputs = [[1] * 16 for _ in range(300)]
    alone = embed(inputs, chat=False, max_tokens=2048)
    # 2048 padded tokens of 16 = 128 rows (the row cap too) a pass.
    assert [p["rows"] for p in alone.passes] == [128, 128, 44]


def test_a_chat_that_ends_gives_the_job_full_batches_again():
    inputs = [[1] * 16 for _ in range(600)]
    model = embed(inputs, chat=True, chat_steps=12)
    beside = [p for p in model.passes if p["after_step"] < 12]
    after = [p for p in model.passes if p["after_step"] == 12]
    assert beside and len(after) >= 4
    assert all(p["cost"] <= BUDGET_S for p in beside)
    # The first pass after the chat's last step may still be paced (that turn
    # had the step in it); from then on, full passes of 128 rows.
    assert [p["rows"] for p in after[1:-1]] == [128] * (len(after) - 2)
    assert sum(p["rows"] for p in model.passes) == len(inputs)
