"""Batching encoder work on the MLX thread, between decode steps.

1. Every input of every request waits in one pool per model; a request's
   inputs enter it in one worker job, so inputs that arrive together share passes.
2. Each worker turn runs **one** forward pass (a worker ticker): the pool's
   shortest inputs, sorted by length and padded to the longest of them, up to
   ``max_rows`` inputs and ``max_tokens`` padded tokens. A running chat batch
   decodes one step between two passes, so a large embedding request delays it by
   one bounded pass at a time, never by the whole request.
3. While a chat decodes in the worker's turns, passes are paced by time
   (``runtime.pacing.TimePacer``, as a long prompt's prefill is): a pass may
   take ``EMBED_SHARE / (1 - EMBED_SHARE)`` of the last decode step's time,
   from the seconds per padded token measured over the recent passes (at least
   one input per pass). Embedding then holds at most ``EMBED_SHARE`` of the
   thread's wall time and decode keeps ~``1 - EMBED_SHARE`` of its speed under
   any embedding load; with no chat, passes are full size (``max_tokens``).
   A request arriving while a chat decodes waits one turn, measured, before
   its first pass (sized blind, each request's first pass was all of it: decode
   measured 0.42x). Before a paced pass the model's ``sync()`` waits for the
   decode step's next token, which MLX computes in the background, so the pass
   neither splits the cores with it nor is timed with it.
4. An input that has waited ``AGE_TURNS`` passes goes next (with the inputs
   nearest its length), so a stream of short inputs cannot starve a long one.

No MLX here: the pass itself is the model's ``run(ids, type_ids)``.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs

from mlxhost.runtime.pacing import TimePacer

log = logging.getLogger(__name__)

AGE_TURNS = 4
# While a chat decodes, embedding passes take at most this share of the MLX
# thread's wall time (decode keeps ~0.85x of its speed; the target is 0.8x).
EMBED_SHARE = 0.15
# Less than this much other work in a turn is no running chat (jobs, lingering).
BUSY_TURN_S = 0.005


class Runner(Protocol):
    def run(self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Any:
        """One padded forward pass: a row of output per input."""
        ...

    def sync(self) -> None:
        """Wait for device work already queued (a decode step's next token), so a
        pass runs, and is timed, alone."""
        ...


class Worker(Protocol):
    async def run(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def add_ticker(self, tick: Callable[[], bool]) -> None: ...


@attrs.define(eq=False)
class _Job:
    """One request's inputs; ``rows[i]`` is filled by the pass that ran input i."""

    model: Runner
    size: int
    done: Callable[[list[Any] | None, BaseException | None], None]
    rows: list[Any] = attrs.Factory(list)
    left: int = 0
    cancelled: bool = False
    failed: bool = False


@attrs.frozen(order=True)
class _Item:
    length: int
    seq: int  # arrival order (and a tie-break that keeps the sort stable)
    job: _Job = attrs.field(eq=False, order=False)
    index: int = attrs.field(eq=False, order=False)
    ids: Sequence[int] = attrs.field(eq=False, order=False)
    type_ids: Sequence[int] | None = attrs.field(eq=False, order=False)


@attrs.define
class BatchStats:
    passes: int = 0
    inputs: int = 0
    tokens: int = 0  # real (unpadded) tokens run
    padded_tokens: int = 0
    largest_pass: int = 0
    requests: int = 0
    errors: int = 0


class EncodeBatcher:
    """Pools encoder inputs and runs them as bounded passes, one per worker turn."""

    def __init__(
        self,
        worker: Worker,
        *,
        max_tokens: int = 8192,
        max_rows: int = 128,
        decoding: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``decoding()``: whether a chat batch is decoding in the worker's turns
        (then passes are paced to ``EMBED_SHARE`` of the time); None: judge by the
        time the rest of a turn takes. ``clock``: for the pacing (tests fake it)."""
        self._worker = worker
        self._decoding = decoding
        self.max_tokens = max(1, max_tokens)
        self.max_rows = max(1, max_rows)
        self._pools: dict[int, list[_Item]] = {}  # id(model) -> items sorted by (length, seq)
        self._turn = 0
        self._arrived: dict[int, int] = {}  # seq -> turn it arrived (for aging)
        self._seq = itertools.count()
        self._ticking = False  # worker thread only
        self._clock = clock
        self._tick_ended: float | None = None  # when our last pass ended (clock)
        self._other_s = 0.0  # the rest of the last turn: decode step, jobs
        self._busy = False  # a chat decodes in the turns: passes are paced
        # Pass sizes in padded tokens, per model (by id), from its measured speed.
        self._pacers: dict[int, TimePacer] = {}
        self.stats = BatchStats()
        self._lock = threading.Lock()  # stats are read from the event loop

    async def run(
        self,
        model: Runner,
        ids: Sequence[Sequence[int]],
        type_ids: Sequence[Sequence[int]] | None = None,
    ) -> list[Any]:
        """The model's output row for each input, in input order."""
        if not ids:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(rows: list[Any] | None, error: BaseException | None) -> None:  # worker thread
            loop.call_soon_threadsafe(_settle, future, rows, error)

        job = _Job(model=model, size=len(ids), done=done, rows=[None] * len(ids), left=len(ids))
        await self._worker.run(self._enqueue, job, ids, type_ids)
        try:
            return await future
        finally:
            job.cancelled = True  # a client that left: its other inputs are dropped

    # -- worker thread ------------------------------------------------------------
    def _enqueue(self, job: _Job, ids: Sequence[Sequence[int]],
                 type_ids: Sequence[Sequence[int]] | None) -> None:
        pool = self._pools.setdefault(id(job.model), [])
        for index, seq_ids in enumerate(ids):
            seq = next(self._seq)
            self._arrived[seq] = self._turn
            bisect.insort(pool, _Item(len(seq_ids), seq, job, index, seq_ids,
                                      type_ids[index] if type_ids is not None else None))
        with self._lock:
            self.stats.requests += 1
        if not self._ticking:
            self._ticking = True
            self._worker.add_ticker(self._tick)

    def _tick(self) -> bool:
        """One pass; False once every pool is empty (the ticker is then removed)."""
        self._turn += 1
        for key in [k for k, pool in self._pools.items() if not pool]:
            del self._pools[key]
        if not self._pools:
            self._ticking = False
            self._tick_ended = None
            return False
        # The pool holding the oldest input goes first.
        key = min(self._pools, key=lambda k: min(item.seq for item in self._pools[k]))
        pool = self._pools[key]
        model = pool[0].job.model
        chat = self._decoding is None or self._decoding()
        if chat:
            model.sync()  # the decode step's token in flight is its time, not ours
        now = self._clock()
        if chat and self._tick_ended is None:
            # The rest of a turn is not known yet: measure one before a pass.
            self._tick_ended = now
            return True
        self._other_s = now - self._tick_ended if self._tick_ended is not None and chat else 0.0
        # Told, trust it (a GPU's decode step can take under BUSY_TURN_S); else judge by time.
        self._busy = self._other_s >= BUSY_TURN_S if self._decoding is None else chat
        pacer = self.pacer(key)
        chunk = self.take(pool, pacer.chunk())
        live = [item for item in chunk if not (item.job.cancelled or item.job.failed)]
        if live:
            started = self._clock()
            self._pass(live)
            padded = max(i.length for i in live) * len(live)
            pacer.record(padded, self._clock() - started, padded)
        self._tick_ended = self._clock()
        return True

    def pacer(self, model_key: int) -> TimePacer:
        """The model's pacer with this turn's budget: ``EMBED_SHARE`` of the
        turns' time while other work (a decode step) runs in them, else none
        (full passes of ``max_tokens``)."""
        pacer = self._pacers.get(model_key)
        if pacer is None:
            pacer = self._pacers[model_key] = TimePacer(0.0, self.max_tokens, clock=self._clock)
        if self._busy and not pacer.paced:
            # Full passes' rate (their fixed cost spread thin) would oversize the
            # first paced ones: measure again from one input up.
            pacer.restart()
        share = EMBED_SHARE / (1 - EMBED_SHARE) * max(self._other_s, 1e-6)
        pacer.budget = share if self._busy else 0.0
        return pacer

    def take(self, pool: list[_Item], budget: int | None = None) -> list[_Item]:
        """Remove and return the next pass's items from a length-sorted pool,
        within ``budget`` padded tokens (default ``max_tokens``)."""
        start = 0
        oldest = min(range(len(pool)), key=lambda i: pool[i].seq)
        if self._turn - self._arrived.get(pool[oldest].seq, self._turn) >= AGE_TURNS:
            start = oldest
        end = start
        budget = self.max_tokens if budget is None else budget
        while end < len(pool) and end - start < self.max_rows:
            # Sorted by length: the padded width of [start, end] is pool[end].length.
            if end > start and (end - start + 1) * pool[end].length > budget:
                break
            end += 1
        chunk = pool[start:end]
        del pool[start:end]
        for item in chunk:
            self._arrived.pop(item.seq, None)
        return chunk

    def _pass(self, items: list[_Item]) -> None:
        model = items[0].job.model
        pairs = items[0].type_ids is not None
        try:
            out = model.run([i.ids for i in items], [i.type_ids for i in items] if pairs else None)  # type: ignore[misc]
        except BaseException as exc:
            log.exception("Encoder pass of %d inputs failed", len(items))
            with self._lock:
                self.stats.errors += 1
            for job in {id(i.job): i.job for i in items}.values():
                if not job.failed:
                    job.failed = True
                    job.done(None, exc)
            return
        width = max(i.length for i in items)
        with self._lock:
            stats = self.stats
            stats.passes += 1
            stats.inputs += len(items)
            stats.tokens += sum(i.length for i in items)
            stats.padded_tokens += width * len(items)
            stats.largest_pass = max(stats.largest_pass, len(items))
        for row, item in zip(out, items, strict=True):
            job = item.job
            job.rows[item.index] = row
            job.left -= 1
            if job.left == 0 and not job.failed:
                job.done(job.rows, None)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return attrs.asdict(self.stats)


def _settle(future: asyncio.Future, rows: list[Any] | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(rows)
