"""The single model slot: one model in memory, swapped under the generation lock."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pluggy

from mlxhost.errors import MlxhostError, ModelLoadFailed
from mlxhost.registry import ModelRegistry
from mlxhost.runtime.engine import Engine
from mlxhost.runtime.locate import locate_model
from mlxhost.runtime.scheduler import SlotScheduler
from mlxhost.runtime.worker import MLXWorker
from mlxhost.settings import Settings
from mlxhost.types import ModelInfo, ModelSpec, ToolParserFactory

log = logging.getLogger(__name__)


@attrs.frozen
class LoadedModel:
    """The model in the slot, with every hook answer that describes it resolved once."""

    info: ModelInfo
    context_window: int
    tool_parser: ToolParserFactory
    loaded_at: float

    @property
    def spec(self) -> ModelSpec:
        return self.info.spec


def resolve_context_window(
    pm: pluggy.PluginManager, settings: Settings, info: ModelInfo
) -> int | None:
    """Settings override, else the context-limit hook, else the plugin's declared value."""
    if settings.context_window:
        return settings.context_window
    if info.id in settings.context_windows:
        return settings.context_windows[info.id]
    return pm.hook.mlxhost_context_limit(model=info) or info.spec.context_window


class ModelSlot:
    """Holds at most one loaded model.

    ``use(spec)`` takes the generation lock (see ``scheduler`` for the order),
    swapping models if needed: a request for another model waits until
    in-flight generation finishes, so a swap never kills a request in flight.
    """

    def __init__(
        self,
        *,
        worker: MLXWorker,
        engine: Engine,
        registry: ModelRegistry,
        pm: pluggy.PluginManager,
        settings: Settings,
    ) -> None:
        self._worker = worker
        self._engine = engine
        self._registry = registry
        self._pm = pm
        self._settings = settings
        self.current: LoadedModel | None = None
        self.scheduler = SlotScheduler(
            lambda: self.current.spec.id if self.current else None,
            max_waiting=settings.max_queue,
            wait_timeout=settings.queue_timeout,
        )
        self.loading: str | None = None
        self.swaps = 0
        self.last_error: str | None = None

    @asynccontextmanager
    async def use(self, spec: ModelSpec) -> AsyncIterator[LoadedModel]:
        """Hold the slot (the generation lock) with ``spec`` loaded."""
        await self.scheduler.acquire(spec.id)
        try:
            yield await self._ensure_loaded(spec)
        finally:
            self.scheduler.release()

    def mark_suspect(self, reason: str) -> None:
        """After an engine failure: reload the model on the next request."""
        self.last_error = reason
        self.current = None

    async def _ensure_loaded(self, spec: ModelSpec) -> LoadedModel:
        if self.current is not None and self.current.spec.id == spec.id:
            return self.current
        previous = self.current
        self.current = None
        self.loading = spec.id
        started = time.perf_counter()
        try:
            tokenizer, path = await self._worker.run(self._load_on_worker, spec)
        except MlxhostError as exc:
            self.last_error = exc.message
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("Loading %s failed", spec.id)
            raise ModelLoadFailed(f"Model '{spec.id}' failed to load: {exc}") from exc
        finally:
            self.loading = None
        self._registry.forget_config(spec)  # a download may have just brought it
        info = attrs.evolve(self._registry.info(spec), path=path, tokenizer=tokenizer)
        window = resolve_context_window(self._pm, self._settings, info)
        self.current = LoadedModel(
            info=info,
            context_window=window or 4096,
            tool_parser=self._pm.hook.mlxhost_tool_call_parser(model=info),
            loaded_at=time.time(),
        )
        self.last_error = None
        if previous is not None:
            self.swaps += 1
        log.info(
            "Model %s ready in %.1fs (context window %d)%s",
            spec.id,
            time.perf_counter() - started,
            self.current.context_window,
            f", swapped out {previous.spec.id}" if previous else "",
        )
        return self.current

    def _load_on_worker(self, spec: ModelSpec) -> tuple[Any, Any]:
        # Unload first so two models never sit in memory together.
        self._engine.unload()
        path = locate_model(spec.id, spec.path)
        config = self._registry.config_of(spec) or _read_config(path)
        return self._engine.load(spec.id, path, config), path

    async def preload(self, spec: ModelSpec) -> None:
        async with self.use(spec):
            pass

    async def close(self) -> None:
        await self._worker.run(self._engine.unload)


def _read_config(path) -> dict:
    import json

    return json.loads((path / "config.json").read_text())
