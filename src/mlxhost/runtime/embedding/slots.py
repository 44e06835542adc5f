"""Side slots: embedding and rerank models loaded beside the chat model.

They never take the generation slot (``runtime.Runtime``): each loads into a
slot of its own, up to ``max_models`` at once, on the MLX thread, counted by the
memory governor (``MemoryGovernor.admit_side``: a model that cannot fit is a
400, one that fits once running requests finish a 503, never an OOM). Each has
its own keep-alive: idle that long, it is unloaded (a slot needed for another
model takes the least recently used idle one first).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs

from mlxhost.core.encoder_facts import EncoderFacts, encoder_facts
from mlxhost.core.errors import Busy, InvalidRequest, MlxhostError, ModelLoadFailed
from mlxhost.core.types import ModelInfo
from mlxhost.core.units import first_keep_alive, format_duration
from mlxhost.runtime.embedding.batcher import EncodeBatcher
from mlxhost.runtime.memory import MemoryGovernor, weights_on_disk

log = logging.getLogger(__name__)

# Activations of one pass, per padded token, per hidden unit, beyond the weights:
# hidden states, the MLP's intermediate (4x) and attention scores, in float32.
_PASS_FACTOR = 4 * 16


def pass_bytes(config: Any, max_tokens: int) -> int:
    """Working memory of one bounded pass (``max_tokens`` padded tokens), roughly."""
    hidden = config.get("hidden_size") if isinstance(config.get("hidden_size"), int) else 1024
    return max_tokens * hidden * _PASS_FACTOR


@attrs.define(eq=False)
class SideModel:
    info: ModelInfo
    facts: EncoderFacts
    model: Any  # mlxhost.runtime.embedding.mlx_model.EncoderModel (touched on the worker only)
    tokenizer: Any  # a ``tokenizers.Tokenizer`` (thread-safe, no MLX)
    nbytes: int
    loaded_at: float
    keep_alive: float
    holders: int = 0
    requests: int = 0
    last_used: float = attrs.Factory(time.time)
    unloads_at: float | None = None
    timer: asyncio.TimerHandle | None = None


class SideSlots:
    """The loaded side models; ``hold(info)`` loads one (or finds it) for a request."""

    def __init__(
        self,
        worker: Any,
        governor: MemoryGovernor,
        *,
        max_models: int = 2,
        keep_alive: float = math.inf,
        max_tokens: int = 8192,
        max_rows: int = 128,
        load: Callable[[ModelInfo, EncoderFacts], Any] | None = None,
        decoding: Callable[[], bool] | None = None,
    ) -> None:
        """``load(info, facts)`` builds the model on the worker (default: MLX);
        ``max_tokens``/``max_rows`` bound one forward pass; ``decoding()`` says
        whether a chat batch decodes in the worker's turns (``EncodeBatcher``)."""
        self._worker = worker
        self._governor = governor
        self.max_models = max(1, max_models)
        self.keep_alive = keep_alive
        self.batcher = EncodeBatcher(worker, max_tokens=max_tokens, max_rows=max_rows,
                                     decoding=decoding)
        self._tasks: set[asyncio.Task] = set()  # keep-alive unloads in flight
        self._load_model = load or _load_mlx
        self.loaded: dict[str, SideModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.loads = 0
        self.unloads = 0
        self.load_seconds = 0.0
        self.last_error: str | None = None

    @asynccontextmanager
    async def hold(self, info: ModelInfo, *, keep_alive: float | None = None) -> AsyncIterator[SideModel]:
        """The model loaded and held (not unloaded) until the block ends; then its
        keep-alive (``keep_alive`` > the model's > the server's) starts."""
        lock = self._locks.setdefault(info.id, asyncio.Lock())
        async with lock:
            side = self.loaded.get(info.id)
            if side is not None and side.info != info:  # a new version on disk
                await self._unload(side)
                side = None
            if side is None:
                side = await self._load(info)
            side.holders += 1
            self._cancel_timer(side)
        side.requests += 1
        try:
            yield side
        finally:
            side.holders -= 1
            side.last_used = time.time()
            chosen = first_keep_alive(keep_alive, info.keep_alive, self.keep_alive)
            side.keep_alive = chosen
            if side.holders == 0 and self.loaded.get(info.id) is side:
                self._arm(side)

    async def _load(self, info: ModelInfo) -> SideModel:
        if info.path is None:
            raise ModelLoadFailed(f"Model '{info.id}' has no files on disk to load.")
        try:
            facts = encoder_facts(info.path, info.config)
        except ValueError as exc:
            raise InvalidRequest(f"Model '{info.id}': {exc}", param="model") from None
        if len(self.loaded) >= self.max_models:
            idle = [s for s in self.loaded.values() if s.holders == 0]
            if not idle:
                raise Busy(
                    f"All {self.max_models} embedding/rerank slots (--embed-max-models) hold "
                    "models with requests running. Retry shortly.",
                )
            await self._unload(min(idle, key=lambda s: s.last_used))
        estimate = weights_on_disk(info.path) + pass_bytes(info.config, self.batcher.max_tokens)
        self._governor.admit_side(info.id, estimate)
        started = time.perf_counter()
        try:
            model, tokenizer = await self._worker.run(self._load_model, info, facts)
        except MlxhostError:
            self._governor.release_side(info.id)
            raise
        except Exception as exc:
            self._governor.release_side(info.id)
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("Loading %s failed", info.id)
            raise ModelLoadFailed(f"Model '{info.id}' failed to load: {exc}") from exc
        seconds = time.perf_counter() - started
        nbytes = int(getattr(model, "nbytes", 0)) or weights_on_disk(info.path)
        # The measured weights replace the files' size in the ledger.
        self._governor.side[info.id] = nbytes + pass_bytes(info.config, self.batcher.max_tokens)
        side = SideModel(info=info, facts=facts, model=model, tokenizer=tokenizer, nbytes=nbytes,
                         loaded_at=time.time(), keep_alive=first_keep_alive(info.keep_alive, self.keep_alive))
        self.loaded[info.id] = side
        self.loads += 1
        self.load_seconds += seconds
        self.last_error = None
        log.info("%s model %s ready beside the chat model in %.1fs (%d MB)",
                 facts.kind.capitalize(), info.id, seconds, nbytes >> 20)
        return side

    async def _unload(self, side: SideModel) -> None:
        self._cancel_timer(side)
        if self.loaded.get(side.info.id) is side:
            del self.loaded[side.info.id]
        try:
            await self._worker.run(_drop, side)
        except Exception:
            log.exception("Unloading %s failed", side.info.id)
        self._governor.release_side(side.info.id)
        self.unloads += 1

    async def unload(self, model_id: str) -> bool:
        """Unload ``model_id`` once idle (keep_alive 0); False if it is not loaded."""
        side = self.loaded.get(model_id)
        if side is None:
            return False
        async with self._locks.setdefault(model_id, asyncio.Lock()):
            if side.holders == 0 and self.loaded.get(model_id) is side:
                await self._unload(side)
        return True

    async def close(self) -> None:
        for side in list(self.loaded.values()):
            await self._unload(side)

    # -- keep-alive ---------------------------------------------------------------
    def _cancel_timer(self, side: SideModel) -> None:
        if side.timer is not None:
            side.timer.cancel()
            side.timer = None
        side.unloads_at = None

    def _arm(self, side: SideModel) -> None:
        self._cancel_timer(side)
        if math.isinf(side.keep_alive):
            return
        delay = max(0.0, side.keep_alive)
        side.unloads_at = time.time() + delay
        loop = asyncio.get_running_loop()
        side.timer = loop.call_later(delay, self._start_expiry, side)

    def _start_expiry(self, side: SideModel) -> None:
        task = asyncio.get_running_loop().create_task(self._expire(side))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, side: SideModel) -> None:
        async with self._locks.setdefault(side.info.id, asyncio.Lock()):
            if side.holders or self.loaded.get(side.info.id) is not side:
                return
            await self._unload(side)
            log.info("Unloaded %s: idle for %s (keep-alive)", side.info.id,
                     format_duration(side.keep_alive))

    # -- reporting ----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """For /health (``side_models``), /api/ps and ``mlxhost ps``."""
        now = time.time()
        models = []
        for side in self.loaded.values():
            models.append({
                "model": side.info.id,
                "kind": side.facts.kind,
                "bytes": side.nbytes,
                "max_tokens": side.facts.max_tokens,
                "dimensions": side.facts.dimensions,
                "running": side.holders,
                "requests": side.requests,
                "keep_alive": format_duration(side.keep_alive),
                "unloads_in": round(max(0.0, side.unloads_at - now), 3) if side.unloads_at else None,
                "loaded_at": side.loaded_at,
            })
        return {
            "max": self.max_models,
            "models": models,
            "loads": self.loads,
            "unloads": self.unloads,
            "last_error": self.last_error,
            "batch": {**self.batcher.snapshot(), "max_tokens": self.batcher.max_tokens,
                      "max_rows": self.batcher.max_rows},
        }


def load_tokenizer(folder: Any) -> Any:
    """The fast tokenizer of a model folder, with truncation and padding off (we
    check lengths and pad ourselves)."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _load_mlx(info: ModelInfo, facts: EncoderFacts) -> tuple[Any, Any]:
    """Worker thread: the MLX encoder and its tokenizer."""
    from mlxhost.runtime.embedding.mlx_model import EncoderModel

    assert info.path is not None
    tokenizer = load_tokenizer(info.path)
    return EncoderModel(info.path, info.config, facts), tokenizer


def _drop(side: SideModel) -> None:
    """Worker thread: free the model's arrays."""
    side.model = None
    try:
        import sys

        mx = sys.modules.get("mlx.core")
        if mx is not None:
            mx.clear_cache()
    except Exception:
        log.debug("mx.clear_cache failed", exc_info=True)
