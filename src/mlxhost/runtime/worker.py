"""The MLX worker: one thread owns all MLX work; callers await its results."""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_DONE = object()
_STOP = object()
# Between two ticks: at most this many jobs, each followed by a wait this long
# for the next (an event-loop round trip; a decode step takes 10-500 ms).
MAX_JOBS_PER_TURN = 64
JOB_LINGER_S = 0.003
# Idle this long (no job, no ticker) before ``on_idle`` runs.
IDLE_AFTER_S = 0.05


class MLXWorker:
    """Runs submitted callables, one at a time, on a dedicated thread.

    Between jobs it also calls its *tickers* (``add_ticker``), one call each per
    turn, while they return True: a batch's decode step is a ticker, so jobs
    (tokenizing a new request, a cancellation) run between two batch steps.
    """

    def __init__(
        self,
        name: str = "mlx-worker",
        *,
        on_idle: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """``on_idle()`` runs on the thread once it has had nothing to do for
        ``IDLE_AFTER_S`` (then it waits for the next job); ``on_stop()`` runs on the
        thread last, at ``stop()`` (a distributed rank 0 parks and releases its
        followers with them)."""
        self._on_idle = on_idle
        self._on_stop = on_stop
        self._jobs: queue.Queue = queue.Queue()
        self._tickers: list[Callable[[], bool]] = []  # touched only on the worker thread
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def add_ticker(self, tick: Callable[[], bool]) -> None:
        """Call ``tick()`` once per turn until it returns False. Worker thread only."""
        if threading.current_thread() is not self._thread:
            raise RuntimeError("add_ticker is called on the worker thread (from a job)")
        self._tickers.append(tick)

    def _loop(self) -> None:
        while True:
            if self._run_jobs() is _STOP:
                if self._on_stop is not None:
                    try:
                        self._on_stop()
                    except BaseException:
                        log.exception("MLX worker stop hook failed")
                _release_mlx_streams()
                return
            for tick in list(self._tickers):
                try:
                    going = tick()
                except BaseException:  # a ticker reports its own errors too
                    log.exception("MLX worker ticker failed")
                    going = False
                if not going:
                    self._tickers.remove(tick)

    def _run_jobs(self) -> object:
        """Run the jobs queued now (waiting for one when no ticker runs).

        Every queued job runs before the next tick, and after a job a short
        *linger* lets a follow-up job arrive (a request's join right after its
        prepare, the next of several requests sent together), so requests that
        arrive together join the batch in the same step and are prefilled as
        one batch instead of one step each.
        """
        ran = 0
        while ran < MAX_JOBS_PER_TURN:
            try:
                if ran == 0 and not self._tickers and self._on_idle is not None:
                    job = self._wait_idle()
                elif ran == 0:
                    job = self._jobs.get(block=not self._tickers)
                else:
                    job = self._jobs.get(timeout=JOB_LINGER_S)
            except queue.Empty:
                return None
            if job is _STOP:
                return _STOP
            try:
                job()
            except BaseException:  # a job reports its own errors; never kill the thread
                log.exception("MLX worker job failed")
            ran += 1
        return None

    def _wait_idle(self) -> Any:
        try:
            return self._jobs.get(timeout=IDLE_AFTER_S)
        except queue.Empty:
            pass
        assert self._on_idle is not None
        try:
            self._on_idle()
        except BaseException:
            log.exception("MLX worker idle hook failed")
        return self._jobs.get()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the worker thread and return its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)

        self._jobs.put(job)
        return await future

    async def stream(
        self, make_items: Callable[[Callable[[], bool]], Iterator[T]]
    ) -> AsyncIterator[T]:
        """Iterate ``make_items(should_stop)`` on the worker, yielding items here.

        Leaving the ``async for`` early (client gone, error) sets the stop flag,
        so the worker stops between two items and the next job can start.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        finished = threading.Event()

        def job() -> None:
            try:
                if stop.is_set():  # cancelled while queued
                    return
                for item in make_items(stop.is_set):
                    loop.call_soon_threadsafe(items.put_nowait, (item, None))
                    if stop.is_set():
                        break
            except BaseException as exc:
                loop.call_soon_threadsafe(items.put_nowait, (_DONE, exc))
            else:
                loop.call_soon_threadsafe(items.put_nowait, (_DONE, None))
            finally:
                finished.set()

        self._jobs.put(job)
        try:
            while True:
                item, error = await items.get()
                if error is not None:
                    raise error
                if item is _DONE:
                    return
                yield item
        finally:
            stop.set()
            # Hold the caller (and so the generation lock) until the worker has
            # really stopped: the next job must not overlap this one.
            await asyncio.shield(loop.run_in_executor(None, finished.wait))


class LoopOutbox:
    """Hands calls from the worker thread to an event loop, one wake-up per burst.

    A batch step emits a token for every running sequence; one
    ``call_soon_threadsafe`` each would wake the loop (and make it compete for
    the GIL with the worker) once per sequence. Here the first call of a burst
    schedules a drain and the rest ride along. ``deque`` appends and pops are
    atomic, and a call appended while a drain runs is either drained by it or
    (when it found the deque empty first) schedules the next one.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop, soon (any thread)."""
        self._calls.append((fn, args))
        if len(self._calls) == 1:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        while self._calls:
            fn, args = self._calls.popleft()
            fn(*args)


def _release_mlx_streams() -> None:
    """Free this thread's MLX streams while it is still an ordinary Python thread.

    Left to the thread's C++ destructors, they can run while the interpreter
    finalizes and abort the process ("terminate called without an active
    exception", ml-explore/mlx#3126); MLX asks threads to call this before they end.
    """
    mx = sys.modules.get("mlx.core")  # a worker that never touched MLX has nothing to free
    if mx is not None and hasattr(mx, "clear_streams"):
        try:
            mx.clear_streams()
        except Exception:  # never let cleanup turn a clean stop into an error
            log.debug("mx.clear_streams() failed", exc_info=True)


def _set_result(future: asyncio.Future, result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
