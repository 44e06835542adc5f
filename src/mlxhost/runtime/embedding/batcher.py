"""Batching encoder work on the MLX thread, between decode steps.

1. Every input of every request waits in one pool per model; a request's
   inputs enter it in one worker job, so inputs that arrive together share passes.
2. Each worker turn runs **one** forward pass (a worker ticker): the pool's
   shortest inputs, sorted by length and padded to the longest of them, up to
   ``max_rows`` inputs and ``max_tokens`` padded tokens. A running chat batch
   decodes one step between two passes, so a large embedding request delays it by
   one bounded pass at a time, never by the whole request.
3. While other work runs in the worker's turns (a chat decoding), a pass is
   also bounded in time: at most ``CHAT_SHARE`` of the rest of the turn, from the
   measured seconds per padded token (at least one input per pass). So decode
   keeps ~1/(1 + CHAT_SHARE) of its speed under any embedding load, and an idle
   server runs full-size passes.
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

log = logging.getLogger(__name__)

AGE_TURNS = 4
# A pass may take this fraction of the time the rest of a worker turn takes
# (a decode step): 0.2 keeps decode at ~0.83x of its speed under embedding load.
CHAT_SHARE = 0.2
# Less than this much other work in a turn is no running chat (jobs, lingering).
BUSY_TURN_S = 0.005


class Runner(Protocol):
    def run(self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Any:
        """One padded forward pass: a row of output per input."""
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
    ) -> None:
        """``decoding()``: whether a chat batch is decoding in the worker's turns
        (then passes are held to ``CHAT_SHARE`` of the rest of a turn); None: judge
        by the time the rest of a turn takes."""
        self._worker = worker
        self._decoding = decoding
        self.max_tokens = max(1, max_tokens)
        self.max_rows = max(1, max_rows)
        self._pools: dict[int, list[_Item]] = {}  # id(model) -> items sorted by (length, seq)
        self._turn = 0
        self._arrived: dict[int, int] = {}  # seq -> turn it arrived (for aging)
        self._seq = itertools.count()
        self._ticking = False  # worker thread only
        self._tick_ended: float | None = None  # when our last pass ended (perf_counter)
        self._other_s = 0.0  # the rest of the last turn: decode step, jobs
        # Measured seconds per padded token (EMA), per model (by id).
        self._token_s: dict[int, float] = {}
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
        now = time.perf_counter()
        self._other_s = now - self._tick_ended if self._tick_ended is not None else 0.0
        if self._decoding is not None and not self._decoding():
            self._other_s = 0.0  # jobs and the event loop's GIL, not a chat to protect
        for key in [k for k, pool in self._pools.items() if not pool]:
            del self._pools[key]
        if not self._pools:
            self._ticking = False
            self._tick_ended = None
            return False
        # The pool holding the oldest input goes first.
        key = min(self._pools, key=lambda k: min(item.seq for item in self._pools[k]))
        pool = self._pools[key]
        chunk = self.take(pool, self.token_budget(key))
        live = [item for item in chunk if not (item.job.cancelled or item.job.failed)]
        if live:
            started = time.perf_counter()
            self._pass(live)
            ended = time.perf_counter()
            padded = max(i.length for i in live) * len(live)
            rate = (ended - started) / padded
            old = self._token_s.get(key)
            self._token_s[key] = rate if old is None else 0.7 * old + 0.3 * rate
        self._tick_ended = time.perf_counter()
        return True

    def token_budget(self, model_key: int) -> int:
        """Padded tokens for the next pass of a model: ``max_tokens``, or while
        other work shares the turns, what fits in ``CHAT_SHARE`` of it (one input,
        to measure, before this model's speed is known)."""
        if self._other_s < BUSY_TURN_S:
            return self.max_tokens
        token_s = self._token_s.get(model_key)
        if token_s is None:
            return 1
        return max(1, min(self.max_tokens, int(CHAT_SHARE * self._other_s / token_s)))

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
