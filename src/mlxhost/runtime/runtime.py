"""The runtime: the only owner of the engine and the MLX worker thread.

The service asks it for a :class:`ModelSession` on a model (``session(info)``)
and, through the session, prepares prompts, reserves KV memory and generates
token streams. The runtime decides when work runs (the scheduler's order,
swapping models between sessions, up to ``max_batch`` sessions decoding
together), whether a request's KV fits (``runtime.memory``), and when an idle
model is unloaded (keep-alive).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs

from mlxhost.core.errors import EngineError, GroupLost, MlxhostError, ModelLoadFailed
from mlxhost.core.types import (
    EMBEDDING,
    RERANK,
    LoadedModel,
    ModelInfo,
    ReasoningFormat,
    RenderedPrompt,
    SamplingParams,
    TokenStep,
    ToolParserFactory,
)
from mlxhost.core.units import first_keep_alive, format_bytes, format_duration
from mlxhost.runtime.embedding.slots import SideSlots
from mlxhost.runtime.engine import Engine, PreparedPrompt
from mlxhost.runtime.memory import (
    KVLayout,
    MemoryGovernor,
    Reservation,
    process_memory,
    resolve_budget,
    weights_on_disk,
    workspace_bytes,
)
from mlxhost.runtime.scheduler import SlotScheduler
from mlxhost.runtime.worker import LoopOutbox, MLXWorker

T = TypeVar("T")
log = logging.getLogger(__name__)


@attrs.frozen
class RuntimeStatus:
    """What ``/health`` reports of the runtime."""

    alive: bool
    model: str | None
    loading: str | None  # the model whose weights are loading
    warming: str | None  # the model whose weights are in, warming up (kernels, batch probe)
    last_error: str | None
    swaps: int
    loads: int
    waiting: int
    running: int
    engine: dict[str, Any]
    memory: dict[str, Any] = attrs.Factory(dict)
    keep_alive: dict[str, Any] = attrs.Factory(dict)
    # Embedding / rerank models loaded beside the chat model (mlxhost.runtime.embedding.slots).
    side_models: dict[str, Any] = attrs.Factory(dict)


class ModelSession:
    """A request's hold on the loaded model: prepare prompts, generate tokens."""

    def __init__(self, runtime: Runtime, model: LoadedModel) -> None:
        self._runtime = runtime
        self.model = model

    async def prepare(self, prompt: RenderedPrompt) -> PreparedPrompt:
        runtime = self._runtime
        return await runtime.unless_lost(runtime._worker.run(runtime._engine.prepare, prompt))

    async def count_tokens(self, prompt: RenderedPrompt) -> int:
        return (await self.prepare(prompt)).num_tokens

    def generate(self, prompt: PreparedPrompt, params: SamplingParams) -> AsyncIterator[TokenStep]:
        """The token stream; leaving it early stops generation between two tokens."""
        return self._runtime._generate(prompt, params)

    @property
    def memory_tokens(self) -> int | None:
        """The longest sequence (prompt + completion) this model can hold in the
        memory budget with nothing else running; None: no limit known."""
        return self._runtime.memory.tokens_fitting()

    def check_memory(self, prompt_tokens: int, max_tokens: int, *, explicit: bool) -> None:
        """MemoryExceeded (400) when prompt + max_tokens can never fit in memory."""
        self._runtime.memory.check(prompt_tokens, max_tokens, explicit=explicit)

    @asynccontextmanager
    async def reserve(self, prompt: PreparedPrompt, params: SamplingParams) -> AsyncIterator[Reservation]:
        """Hold KV memory for prompt + max_tokens while the generation runs; waits
        (bounded, then 503) while running requests hold the memory it needs."""
        runtime = self._runtime
        reservation = await runtime.memory.reserve(
            prompt.num_tokens + params.max_tokens, batched=runtime._engine.batchable(prompt)
        )
        try:
            yield reservation
        finally:
            runtime.memory.release(reservation)


class Runtime:
    def __init__(
        self,
        engine: Engine,
        *,
        tool_parser_for: Callable[[ModelInfo], ToolParserFactory],
        reasoning_for: Callable[[ModelInfo, Any], ReasoningFormat | None] | None = None,
        max_waiting: int = 64,
        wait_timeout: float | None = None,
        max_batch: int = 1,
        prefill_chunk: int = 512,
        kv_quant: tuple[int | None, int | None] = (None, None),
        keep_alive: float = math.inf,
        memory_wait: float | None = 600.0,
        on_load: Callable[[str, float], None] | None = None,
        on_idle: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        side_models: Mapping[str, Any] | None = None,
    ) -> None:
        """``keep_alive``: seconds an idle model stays loaded (inf: forever; a
        request or the model's facts may say otherwise); ``memory_wait``: seconds a
        request may wait for memory; ``on_load(model, seconds)`` after each load;
        ``on_idle`` / ``on_stop``: the worker's hooks (``MLXWorker``);
        ``side_models``: keyword arguments of the embedding/rerank slots
        (``SideSlots``: max_models, keep_alive, max_tokens)."""
        self._engine = engine
        self._load_lock = asyncio.Lock()  # sessions that join a batch share one load
        self._ticking = False  # the batch ticker is registered (worker thread only)
        self._outbox: LoopOutbox | None = None  # batch steps back to the event loop
        self._worker = MLXWorker(on_idle=on_idle, on_stop=on_stop)
        # Set when a distributed group lost a rank (``fail_group``): every request fails.
        self.lost: str | None = None
        self.exit_status = 0  # the server's, once it stops (a fatal start-up sets it)
        self._lost_event: asyncio.Event | None = None
        self._tool_parser_for = tool_parser_for
        # (model, tokenizer) -> its thinking markers, once per load.
        self._reasoning_for = reasoning_for
        self.current: LoadedModel | None = None
        self.loading: str | None = None
        self.warming: str | None = None
        self.swaps = 0
        self.loads = 0
        self.last_error: str | None = None
        self._on_load = on_load
        self._max_batch = max_batch
        self._prefill_chunk = prefill_chunk
        self._kv_quant = kv_quant
        self.memory = MemoryGovernor(
            wait_timeout=memory_wait,
            prefix_bytes=lambda: engine.memory().prefix_cache,
            shrink_prefix=lambda max_bytes: self._worker.run(engine.shrink_prefix_cache, max_bytes),
        )
        # Idle unload: the keep-alive of the latest session (request > model > server).
        self.keep_alive = keep_alive
        self._keep_alive_now = keep_alive
        self.unloads_at: float | None = None  # wall-clock time of the next idle unload
        self.unloading: str | None = None  # the model being unloaded now
        self.idle_unloads = 0
        self.last_unloaded: str | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task | None = None
        # Embedding and rerank models: their own slots beside the generation slot,
        # on the same MLX thread and memory budget.
        self.side = SideSlots(self._worker, self.memory, decoding=lambda: self._ticking, **{
            "keep_alive": keep_alive, **(side_models or {})})
        self.scheduler = SlotScheduler(
            lambda: self.current.id if self.current else None,
            max_waiting=max_waiting,
            wait_timeout=wait_timeout,
            capacity=max_batch,
        )

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._worker.start()

    async def open(
        self, max_memory: int | float | None = None, *, setup: Callable[[], None] | None = None
    ) -> None:
        """Start the worker and set the memory budget (``--max-memory``: bytes, a
        fraction of the device's memory, or None for the platform default).
        ``setup()`` runs on the worker first (a distributed rank 0 joins its group);
        its errors propagate."""
        self.start()
        if setup is not None:
            await self._worker.run(setup)
        governor = self.memory
        try:
            governor.device = await self._worker.run(self._engine.device_memory)
            governor.budget = resolve_budget(max_memory, governor.device)
            if governor.budget is not None:
                await self._worker.run(self._engine.set_memory_limit, governor.budget)
        except Exception:  # the server still serves, unbudgeted
            log.exception("Could not set the memory budget")
            return
        if governor.budget is not None:
            device = governor.device
            if isinstance(max_memory, int) or device is None:
                source = "--max-memory"
            else:
                fraction = device.default_fraction if max_memory is None else max_memory
                source = f"{fraction:g} of {format_bytes(device.total)}, {device.source}"
            log.info("Memory budget %s (%s)", format_bytes(governor.budget), source)

    async def close(self) -> None:
        """Unload the model and stop the worker."""
        self._cancel_idle()
        if self._worker.alive:
            try:
                await self.side.close()
                await self._worker.run(self._engine.unload)
                await self._worker.run(self._engine.close)
            finally:
                self._worker.stop()

    def stop(self) -> None:
        self._worker.stop()

    def watch_group(self) -> None:
        """Distributed: from now on each generation also waits for ``fail_group``."""
        self._lost_event = asyncio.Event()

    def fail_group(self, reason: str) -> None:
        """A rank is gone (event loop): fail every request in flight and every new one
        with 503; the worker may be stuck in a collective, so nothing waits for it."""
        if self.lost is not None:
            return
        self.lost = reason
        self.last_error = f"distributed group lost: {reason}"
        if self._lost_event is not None:
            self._lost_event.set()

    def status(self) -> RuntimeStatus:
        return RuntimeStatus(
            alive=self._worker.alive and self.lost is None,
            model=self.current.id if self.current else None,
            loading=self.loading,
            warming=self.warming,
            last_error=self.last_error,
            swaps=self.swaps,
            loads=self.loads,
            waiting=self.scheduler.waiting,
            running=self.scheduler.running,
            engine=self._engine.stats(),
            memory=self.memory_status(),
            keep_alive=self.keep_alive_status(),
            side_models=self.side.status(),
        )

    def memory_status(self) -> dict[str, Any]:
        """The governor's ledger beside what MLX's allocator and the OS measure."""
        measured = self._engine.memory()
        figures = self.memory.stats()
        figures["mlx"] = {
            "active": measured.active,
            "cache": measured.cache,
            "peak": measured.peak,
            "limit": measured.limit,
        }
        figures["process"] = process_memory()
        return figures

    def keep_alive_status(self) -> dict[str, Any]:
        seconds = self._keep_alive_now
        unloads_at = self.unloads_at
        return {
            "seconds": None if math.isinf(seconds) else seconds,
            "duration": format_duration(seconds),
            # When the idle model will be unloaded; None while requests run or never.
            "unloads_at": _iso(unloads_at) if unloads_at is not None else None,
            "unloads_in": round(max(0.0, unloads_at - time.time()), 3) if unloads_at else None,
            "unloading": self.unloading,
            "idle_unloads": self.idle_unloads,
            "last_unloaded": self.last_unloaded,
        }

    # -- sessions ----------------------------------------------------------------
    @asynccontextmanager
    async def session(
        self, info: ModelInfo, *, keep_alive: float | None = None
    ) -> AsyncIterator[ModelSession]:
        """Hold the model (its files already on disk: ``registry.ensure_local``).

        A session for another model waits until the sessions in flight end, so a
        swap never kills a request in flight (see ``scheduler`` for the order).
        ``keep_alive``: how long the model stays loaded once idle after this
        session (seconds; None: the model's default, else the server's).
        """
        self._cancel_idle()
        if self.lost is not None:
            raise GroupLost(self.lost)
        await self.unless_lost(self.scheduler.acquire(info.id))
        try:
            model = await self.unless_lost(self._ensure_loaded(info))
            self._keep_alive_now = first_keep_alive(keep_alive, info.keep_alive, self.keep_alive)
            yield ModelSession(self, model)
        finally:
            self.scheduler.release()
            self._arm_idle()

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

        def warming() -> None:  # worker thread: the weights are in, the warm-up starts
            self.loading, self.warming = None, info.id

        try:
            if info.path is None:
                raise ModelLoadFailed(f"Model '{info.id}' has no files on disk to load.")
            # engine.load unloads the previous model first (once).
            tokenizer = await self._worker.run(self._engine.load, info, warming)
        except MlxhostError as exc:
            self.last_error = exc.message
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("Loading %s failed", info.id)
            raise ModelLoadFailed(f"Model '{info.id}' failed to load: {exc}") from exc
        finally:
            self.loading = self.warming = None
        self.current = LoadedModel(
            info=info,
            tokenizer=tokenizer,
            tool_parser=self._tool_parser_for(info),
            loaded_at=time.time(),
            reasoning=self._reasoning_for(info, tokenizer) if self._reasoning_for else None,
        )
        self.last_error = None
        if previous is not None:
            self.swaps += 1
        self.loads += 1
        seconds = time.perf_counter() - started
        chosen = self._engine.batch_limit()
        if chosen:  # --max-batch auto: the engine measured this model
            self._max_batch = self.scheduler.capacity = chosen
        config = info.config
        self.memory.set_model(
            info.id,
            self._kv_layout(info),
            self._engine.memory().weights,
            workspace_bytes(config, prefill_chunk=self._prefill_chunk, max_batch=self._max_batch),
            batches=self._max_batch > 1 and "vision_config" not in config,
        )
        if self._on_load is not None:
            self._on_load(info.id, seconds)
        log.info(
            "Model %s ready in %.1fs (context window %d%s)%s",
            info.id,
            seconds,
            info.context_window,
            f", {self.memory.tokens_fitting()} tokens fit in memory"
            if self.memory.active else "",
            f", swapped out {previous.id}" if previous else "",
        )
        return self.current

    def _kv_layout(self, info: ModelInfo) -> KVLayout | None:
        """The model's KV as the engine stores it (quantized with --kv-bits)."""
        from mlxhost.runtime import kv_quant

        layout = KVLayout.from_config(info.config)
        quant = kv_quant.for_model(info.defaults, *self._kv_quant)
        return layout.quantized(quant.bits, quant.group_size) if layout and quant else layout

    def memory_window(self, info: ModelInfo) -> int | None:
        """The effective window of a model: min(context window, the tokens one
        request can hold in the memory budget); None without a budget or KV sizes.
        For a model not loaded, its weights are its safetensors' size on disk."""
        governor = self.memory
        if governor.budget is None:
            return None
        if info.capabilities & {EMBEDDING, RERANK}:
            return info.context_window  # an encoder keeps no KV cache: its window is its limit
        if self.current is not None and self.current.info == info and governor.layout:
            fitting = governor.tokens_fitting()
        else:
            layout = self._kv_layout(info)
            if layout is not None and self._max_batch > 1 and "vision_config" not in info.config:
                layout = layout.quantized(None)  # the batch holds full-precision KV
            if layout is None or info.path is None:
                return None
            workspace = workspace_bytes(
                info.config, prefill_chunk=self._prefill_chunk, max_batch=self._max_batch
            )
            fitting = governor.tokens_fitting(weights_on_disk(info.path), workspace, layout)
        return None if fitting is None else min(info.context_window, fitting)

    # -- idle unload ---------------------------------------------------------------
    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.unloads_at = None

    def _arm_idle(self) -> None:
        """Once no request holds or waits for the model, unload it after its keep-alive."""
        self._cancel_idle()
        if self.scheduler.running or self.scheduler.waiting or self.current is None:
            return
        delay = self._keep_alive_now
        if math.isinf(delay):
            return
        deadline = self.unloads_at = time.time() + max(0.0, delay)
        self._idle_timer = asyncio.get_running_loop().call_later(
            max(0.0, delay), self._idle, deadline
        )

    def _idle(self, deadline: float) -> None:
        self._idle_timer = None
        self._idle_task = asyncio.get_running_loop().create_task(self._unload_if_idle(deadline))

    async def _unload_if_idle(self, deadline: float) -> None:
        async with self._load_lock:
            if self.unloads_at != deadline:  # a session came (and maybe went) meanwhile
                return
            self.unloads_at = None
            model = self.current
            if self.scheduler.running or self.scheduler.waiting or model is None:
                return
            self.current = None  # a request arriving now reloads it (after this lock)
            self.unloading = model.id
            try:
                await self._worker.run(self._engine.unload)
            except Exception:
                log.exception("Unloading %s failed", model.id)
            finally:
                self.unloading = None
            self.memory.clear_model()
            self.idle_unloads += 1
            self.last_unloaded = model.id
            log.info(
                "Unloaded %s: idle for %s (keep-alive)",
                model.id, format_duration(self._keep_alive_now),
            )

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
            async for step in self._until_lost(steps):
                yield step
        except (MlxhostError, asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            if self.lost is not None:
                raise GroupLost(self.lost) from exc
            log.exception("Generation failed; the model will be reloaded")
            self.last_error = f"generation failed: {type(exc).__name__}: {exc}"
            self.current = None
            raise EngineError(f"Generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if self.lost is None:  # else the worker may never answer: leave it be
                await steps.aclose()  # type: ignore[attr-defined]  # an async generator

    async def unless_lost(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or GroupLost as soon as ``fail_group`` runs: the
        worker may be stuck in a collective with a hung rank, and a request
        waiting on it (a load, a prompt, a join, the queue) gets its 503 now."""
        lost = self._lost_event
        if lost is None:
            return await awaitable
        if lost.is_set():
            raise GroupLost(self.lost or "a rank was lost")
        task = asyncio.ensure_future(awaitable)
        waiting = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            waiting.cancel()
        if task.done():
            return task.result()
        task.cancel()  # its worker call stays behind; rank 0 is leaving
        raise GroupLost(self.lost or "a rank was lost")

    async def _until_lost(self, steps: AsyncIterator[TokenStep]) -> AsyncIterator[TokenStep]:
        """``steps``, or GroupLost as soon as ``fail_group`` runs (distributed only)."""
        if self._lost_event is None:
            async for step in steps:
                yield step
            return
        iterator = steps.__aiter__()
        while True:
            try:
                step = await self.unless_lost(iterator.__anext__())
            except StopAsyncIteration:
                return
            yield step

    async def _batched(self, prompt: PreparedPrompt, params: SamplingParams) -> AsyncIterator[TokenStep]:
        """This sequence's steps from the running batch (joined between two steps)."""
        outbox = self._outbox_for(asyncio.get_running_loop())
        steps: asyncio.Queue = asyncio.Queue()

        def emit(step: TokenStep | None, error: BaseException | None) -> None:  # worker thread
            outbox.put(steps.put_nowait, (step, error))

        uid = await self.unless_lost(self._worker.run(self._join, prompt, params, emit))
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


def _iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")
