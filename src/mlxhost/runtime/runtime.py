"""The runtime: the only owner of the engine and the MLX worker thread.

The service asks it for a :class:`ModelSession` on a model (``session(info)``)
and, through the session, prepares prompts and generates token streams. The
runtime decides when work runs: today one session at a time (the slot
scheduler's order, swapping models between sessions); a batching runtime can
keep the same interface and run several sessions' sequences together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs

from mlxhost.errors import EngineError, MlxhostError, ModelLoadFailed
from mlxhost.runtime.engine import Engine, PreparedPrompt
from mlxhost.runtime.scheduler import SlotScheduler
from mlxhost.runtime.worker import LoopOutbox, MLXWorker
from mlxhost.types import (
    LoadedModel,
    ModelInfo,
    RenderedPrompt,
    SamplingParams,
    TokenStep,
    ToolParserFactory,
)

log = logging.getLogger(__name__)


@attrs.frozen
class RuntimeStatus:
    """What ``/health`` reports of the runtime."""

    alive: bool
    model: str | None
    loading: str | None
    last_error: str | None
    swaps: int
    waiting: int
    running: int
    engine: dict[str, Any]


class ModelSession:
    """A request's hold on the loaded model: prepare prompts, generate tokens."""

    def __init__(self, runtime: Runtime, model: LoadedModel) -> None:
        self._runtime = runtime
        self.model = model

    async def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        return await self._runtime._worker.run(self._runtime._engine.prepare, prompt)

    async def count_tokens(self, prompt: RenderedPrompt) -> int:
        return (await self.prepare(prompt)).num_tokens

    def generate(self, prompt: PreparedPrompt, params: SamplingParams) -> AsyncIterator[TokenStep]:
        """The token stream; leaving it early stops generation between two tokens."""
        return self._runtime._generate(prompt, params)


class Runtime:
    def __init__(
        self,
        engine: Engine,
        *,
        tool_parser_for: Callable[[ModelInfo], ToolParserFactory],
        max_waiting: int = 64,
        wait_timeout: float | None = None,
        max_batch: int = 1,
    ) -> None:
        self._engine = engine
        self._load_lock = asyncio.Lock()  # sessions that join a batch share one load
        self._ticking = False  # the batch ticker is registered (worker thread only)
        self._outbox: LoopOutbox | None = None  # batch steps back to the event loop
        self._worker = MLXWorker()
        self._tool_parser_for = tool_parser_for
        self.current: LoadedModel | None = None
        self.loading: str | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self.scheduler = SlotScheduler(
            lambda: self.current.id if self.current else None,
            max_waiting=max_waiting,
            wait_timeout=wait_timeout,
            capacity=max_batch,
        )

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()

    async def close(self) -> None:
        """Unload the model and stop the worker."""
        if self._worker.alive:
            try:
                await self._worker.run(self._engine.unload)
            finally:
                self._worker.stop()

    def stop(self) -> None:
        self._worker.stop()

    def status(self) -> RuntimeStatus:
        return RuntimeStatus(
            alive=self._worker.alive,
            model=self.current.id if self.current else None,
            loading=self.loading,
            last_error=self.last_error,
            swaps=self.swaps,
            waiting=self.scheduler.waiting,
            running=self.scheduler.running,
            engine=self._engine.stats(),
        )

    # -- sessions ----------------------------------------------------------------
    @asynccontextmanager
    async def session(self, info: ModelInfo) -> AsyncIterator[ModelSession]:
        """Hold the model (its files already on disk: ``registry.ensure_local``).

        A session for another model waits until the sessions in flight end, so a
        swap never kills a request in flight (see ``scheduler`` for the order).
        """
        await self.scheduler.acquire(info.id)
        try:
            yield ModelSession(self, await self._ensure_loaded(info))
        finally:
            self.scheduler.release()

    async def preload(self, info: ModelInfo) -> None:
        async with self.session(info):
            pass

    async def _ensure_loaded(self, info: ModelInfo) -> LoadedModel:
        async with self._load_lock:
            return await self._load(info)

    async def _load(self, info: ModelInfo) -> LoadedModel:
        if self.current is not None and self.current.info == info:
            return self.current
        previous = self.current
        self.current = None
        self.loading = info.id
        started = time.perf_counter()
        try:
            if info.path is None:
                raise ModelLoadFailed(f"Model '{info.id}' has no files on disk to load.")
            # engine.load unloads the previous model first (once).
            tokenizer = await self._worker.run(self._engine.load, info)
        except MlxhostError as exc:
            self.last_error = exc.message
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("Loading %s failed", info.id)
            raise ModelLoadFailed(f"Model '{info.id}' failed to load: {exc}") from exc
        finally:
            self.loading = None
        self.current = LoadedModel(
            info=info,
            tokenizer=tokenizer,
            tool_parser=self._tool_parser_for(info),
            loaded_at=time.time(),
        )
        self.last_error = None
        if previous is not None:
            self.swaps += 1
        log.info(
            "Model %s ready in %.1fs (context window %d)%s",
            info.id,
            time.perf_counter() - started,
            info.context_window,
            f", swapped out {previous.id}" if previous else "",
        )
        return self.current

    async def _generate(
        self, prompt: PreparedPrompt, params: SamplingParams
    ) -> AsyncIterator[TokenStep]:
        """Engine failures become an EngineError for this request and a reload for the next."""
        engine = self._engine
        steps: AsyncIterator[TokenStep]
        if engine.batchable(prompt):
            steps = self._batched(prompt, params)
        else:
            if self.scheduler.capacity > 1:
                why = "an image prompt" if prompt.extras else "not a batching model"
                log.info("Generation runs alone (%s): a running batch pauses meanwhile", why)
            steps = self._worker.stream(
                lambda should_stop: engine.generate(prompt, params, should_stop)
            )
        try:
            async for step in steps:
                yield step
        except (MlxhostError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            log.exception("Generation failed; the model will be reloaded")
            self.last_error = f"generation failed: {type(exc).__name__}: {exc}"
            self.current = None
            raise EngineError(f"Generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            await steps.aclose()  # type: ignore[attr-defined]  # an async generator

    async def _batched(self, prompt: PreparedPrompt, params: SamplingParams) -> AsyncIterator[TokenStep]:
        """This sequence's steps from the running batch (joined between two steps)."""
        outbox = self._outbox_for(asyncio.get_running_loop())
        steps: asyncio.Queue = asyncio.Queue()

        def emit(step: TokenStep | None, error: BaseException | None) -> None:  # worker thread
            outbox.put(steps.put_nowait, (step, error))

        uid = await self._worker.run(self._join, prompt, params, emit)
        done = False
        try:
            while True:
                step, error = await steps.get()
                if error is not None:
                    done = True
                    raise error
                assert step is not None
                done = step.finish is not None
                yield step
                if done:
                    return
        finally:
            if not done:  # the consumer left: only this sequence stops
                await asyncio.shield(self._worker.run(self._engine.leave, uid))

    def _outbox_for(self, loop: asyncio.AbstractEventLoop) -> LoopOutbox:
        """The batch's way back to ``loop`` (one per loop; the app runs one)."""
        if self._outbox is None or self._outbox.loop is not loop:
            self._outbox = LoopOutbox(loop)
        return self._outbox

    def _join(self, prompt: PreparedPrompt, params: SamplingParams, emit: Any) -> int:
        """Worker thread: add the sequence, and the batch ticker if it is not running."""
        uid = self._engine.join(prompt, params, emit)
        if not self._ticking:
            self._ticking = True
            self._worker.add_ticker(self._tick)
        return uid

    def _tick(self) -> bool:
        try:
            going = self._engine.step()
        except Exception:
            log.exception("Batch step failed")  # its sequences got the error
            going = False
        if not going:
            self._ticking = False
        return going
