"""Memory: the budget, what a request's KV cache costs, and the governor that
admits a request only when it fits.

The model (docs/operations.md, "Memory"):

    weights + workspace + KV of the running sequences + prefix cache  <=  budget

* **budget**: ``--max-memory`` (bytes, or a fraction of the device's memory:
  Metal's recommended working set, CUDA's memory, else RAM), also handed to
  MLX (``mx.set_memory_limit``, the wired limit on Metal, a cache limit);
* **weights**: the loaded model's arrays, measured at load;
* **workspace**: one prefill chunk's activations (an estimate from the config);
* **KV**: estimated from the model's config (:class:`KVLayout`) for each
  running request's prompt + ``max_tokens``, as MLX allocates it (256-token
  steps; sliding-window layers stop at their window). Sequences decoding in
  one batch share padded arrays, so a batch of n costs n times its longest
  sequence;
* **prefix cache**: the bytes its stored KV arrays hold; it is shrunk (least
  recently used first) before a request has to wait;
* **side models**: embedding and rerank models loaded beside the chat model
  (``mlxhost.runtime.embedding.slots``), their weights and one pass's activations. One
  is admitted only when it fits beside the rest (:meth:`MemoryGovernor.admit_side`).

A request that cannot fit even alone (nothing running, prefix cache empty) is
refused at once (:class:`~mlxhost.core.errors.MemoryExceeded`, a 400 saying how
many tokens would fit); one that fits once others finish waits, in arrival
order, up to ``--memory-wait`` seconds (then 503 with ``Retry-After``).

No MLX in this module: the engine measures (``Engine.memory``) and the
governor decides, so the arithmetic is tested without a model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from mlxhost.core.errors import Busy, MemoryExceeded
from mlxhost.core.model_config import language_fact, positive_int
from mlxhost.core.units import format_bytes

log = logging.getLogger(__name__)

# mlx-lm's KVCache (and BatchKVCache) grow their buffers this many tokens at a time.
ALLOC_STEP = 256
# Bytes per element of the dtypes a KV cache is kept in (the activations' dtype).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# Quantized checkpoints (mlx-community) compute in bf16 unless the config says otherwise.
DEFAULT_DTYPE = "bfloat16"
# Default budget as a fraction of the device's memory, where --max-memory is not given.
DEFAULT_FRACTION = {"metal": 1.0, "cuda": 0.9, "cpu": 0.75}

# -- the KV cache a model needs ----------------------------------------------
@attrs.frozen
class KVLayout:
    """The KV cache of one sequence, per layer, from the model's ``config.json``."""

    kv_heads: int
    head_dim: int
    dtype: str
    # One entry per layer: its sliding window in tokens, or None for full attention.
    windows: tuple[int | None, ...]
    # --kv-bits: full-attention layers hold keys and values quantized (a scale and
    # a bias per group); sliding-window layers stay full precision (runtime.kv_quant).
    kv_bits: int | None = None
    kv_group_size: int = 64

    def quantized(self, bits: int | None, group_size: int = 64) -> KVLayout:
        return attrs.evolve(self, kv_bits=bits or None, kv_group_size=group_size)

    @property
    def full_layer_bytes_per_token(self) -> int:
        """Keys and values of one token in one full-attention layer, as stored."""
        if not self.kv_bits:
            return self.layer_bytes_per_token
        per_value = self.kv_bits / 8 + 2 * self.dtype_bytes / self.kv_group_size
        return int(2 * self.kv_heads * self.head_dim * per_value)

    @property
    def num_layers(self) -> int:
        return len(self.windows)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES.get(self.dtype, 2)

    @property
    def layer_bytes_per_token(self) -> int:
        """Keys and values of one token in one layer."""
        return 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def bytes_per_token(self) -> int:
        """Keys and values of one token in every layer (no window reached), as stored."""
        return sum(
            self.full_layer_bytes_per_token if w is None else self.layer_bytes_per_token
            for w in self.windows
        )

    def bytes_for(self, tokens: int, *, step: int = ALLOC_STEP) -> int:
        """KV bytes of a ``tokens``-long sequence as MLX allocates them: buffers grow
        ``step`` tokens at a time; a sliding-window layer holds at most its window."""
        if tokens <= 0:
            return 0
        held = -(-tokens // step) * step if step > 1 else tokens
        full, windowed = self.full_layer_bytes_per_token, self.layer_bytes_per_token
        return sum(full * held if w is None else windowed * min(held, w) for w in self.windows)

    def tokens_within(self, nbytes: int, *, step: int = ALLOC_STEP, limit: int = 1 << 31) -> int:
        """The longest sequence whose KV fits in ``nbytes`` (``limit`` if any length does)."""
        if nbytes < self.bytes_for(1, step=step):
            return 0
        if self.bytes_for(limit, step=step) <= nbytes:
            return limit
        low, high = 1, limit  # bytes_for(low) fits, bytes_for(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            if self.bytes_for(middle, step=step) <= nbytes:
                low = middle
            else:
                high = middle
        return low

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KVLayout | None:
        """The layout, or None when the config lacks the sizes (then nothing is budgeted).

        Layers, KV heads and head dim come from the language model's config
        (``text_config`` for VLMs); ``head_dim`` defaults to hidden size / heads.
        Sliding windows: ``sliding_window_pattern`` (every n-th layer global, the
        rest windowed, as mlx-lm's Gemma 3 builds its caches) or ``layer_types``
        (``sliding_attention``). The dtype is the config's ``torch_dtype``/``dtype``,
        else bfloat16.
        """
        layers = positive_int(language_fact(config, "num_hidden_layers"))
        heads = positive_int(language_fact(config, "num_attention_heads"))
        if layers is None or heads is None:
            return None
        kv_heads = positive_int(language_fact(config, "num_key_value_heads")) or heads
        head_dim = positive_int(language_fact(config, "head_dim"))
        if head_dim is None:
            hidden = positive_int(language_fact(config, "hidden_size"))
            if hidden is None:
                return None
            head_dim = hidden // heads
        dtype = language_fact(config, "torch_dtype") or language_fact(config, "dtype") or DEFAULT_DTYPE
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            dtype = DEFAULT_DTYPE
        window = positive_int(language_fact(config, "sliding_window"))
        pattern = positive_int(language_fact(config, "sliding_window_pattern"))
        layer_types = language_fact(config, "layer_types")
        windows: list[int | None]
        if window is not None and pattern is not None:
            windows = [None if i % pattern == pattern - 1 else window for i in range(layers)]
        elif window is not None and isinstance(layer_types, list) and len(layer_types) == layers:
            windows = [window if kind == "sliding_attention" else None for kind in layer_types]
        else:
            windows = [None] * layers
        return cls(kv_heads=kv_heads, head_dim=head_dim, dtype=dtype, windows=tuple(windows))


def workspace_bytes(config: Mapping[str, Any], *, prefill_chunk: int, max_batch: int) -> int:
    """Transient memory of one step, roughly: one prefill chunk's activations
    (hidden states, attention projections, the MLP) plus one row of logits per
    sequence. Attention scores are not counted: Metal and CUDA compute them in a
    fused kernel; MLX's CPU fallback materializes chunk x heads x length floats."""
    layout = KVLayout.from_config(config)
    dtype_bytes = layout.dtype_bytes if layout else 2
    hidden = positive_int(language_fact(config, "hidden_size")) or 0
    intermediate = positive_int(language_fact(config, "intermediate_size")) or 4 * hidden
    vocab = positive_int(language_fact(config, "vocab_size")) or 0
    return prefill_chunk * (4 * hidden + 3 * intermediate) * dtype_bytes + max_batch * vocab * 4


def weights_on_disk(path: Path | None) -> int:
    """Bytes of a model folder's ``*.safetensors`` (the weights' size before loading)."""
    if path is None:
        return 0
    try:
        return sum(f.stat().st_size for f in path.glob("*.safetensors"))
    except OSError:
        return 0


# -- the device and the process -----------------------------------------------
@attrs.frozen
class DeviceMemory:
    """What the device offers: its memory in bytes and where the figure comes from."""

    total: int
    kind: str  # "metal", "cuda" or "cpu"
    source: str  # e.g. "max_recommended_working_set_size"

    @property
    def default_fraction(self) -> float:
        return DEFAULT_FRACTION.get(self.kind, 0.75)


def resolve_budget(setting: int | float | None, device: DeviceMemory | None) -> int | None:
    """``--max-memory`` in bytes: as given, a fraction of the device, or the platform default."""
    if isinstance(setting, int) and not isinstance(setting, bool):
        return setting
    if device is None:
        return None
    fraction = device.default_fraction if setting is None else float(setting)
    return int(device.total * fraction)


def ram_bytes() -> int | None:
    """Physical memory of this machine (POSIX), or None."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def process_memory() -> dict[str, int]:
    """This process's resident memory: ``rss`` now and ``rss_peak`` (bytes), where known.

    Linux reads /proc; elsewhere psutil if installed; the peak also comes from
    getrusage (kilobytes on Linux, bytes on macOS).
    """
    figures: dict[str, int] = {}
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for key, name in (("VmRSS", "rss"), ("VmHWM", "rss_peak")):
        found = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
        if found:
            figures[name] = int(found.group(1)) * 1024
    if "rss" not in figures:
        try:
            import psutil  # type: ignore[import-untyped]

            figures["rss"] = int(psutil.Process().memory_info().rss)
        except Exception:
            pass
    if "rss_peak" not in figures:
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            figures["rss_peak"] = peak if sys.platform == "darwin" else peak * 1024
        except Exception:
            pass
    return figures


# -- the governor ---------------------------------------------------------------
@attrs.define(eq=False)
class Reservation:
    """KV memory held for one running request (prompt + max_tokens tokens)."""

    tokens: int
    batched: bool


@attrs.define(eq=False)
class _Waiter:
    reservation: Reservation
    future: asyncio.Future
    counted: bool = False  # counted in ``waited`` (it found no room)


class MemoryGovernor:
    """Admits a request only when weights + workspace + running KV + prefix cache
    fit the budget (see the module docstring). Lives on the event loop; the
    prefix cache is read and shrunk through the callables the runtime gives it
    (shrinking runs on the MLX thread)."""

    def __init__(
        self,
        *,
        wait_timeout: float | None = 600.0,
        prefix_bytes: Callable[[], int] = lambda: 0,
        shrink_prefix: Callable[[int], Awaitable[Any]] | None = None,
    ) -> None:
        self.wait_timeout = wait_timeout
        self.budget: int | None = None
        self.device: DeviceMemory | None = None
        self.model: str | None = None
        self.layout: KVLayout | None = None
        self.batches = False
        self.weights = 0
        self.workspace = 0
        self._prefix_bytes = prefix_bytes
        self._shrink_prefix = shrink_prefix
        self._held: list[Reservation] = []
        # Side models (embedding / rerank) by id: the bytes each holds.
        self.side: dict[str, int] = {}
        self._queue: deque[_Waiter] = deque()
        self._draining: asyncio.Task | None = None
        # Figures for /health and /metrics.
        self.admitted = 0
        self.admitted_peak = 0  # most requests holding KV at once
        self.waited = 0  # requests that had to wait for memory
        self.refused = 0  # never fit: 400
        self.timed_out = 0  # waited too long: 503
        self.prefix_shrinks = 0  # times the prefix cache was shrunk to admit a request

    # -- the loaded model ---------------------------------------------------------
    def set_model(
        self, model: str, layout: KVLayout | None, weights: int, workspace: int, *, batches: bool = False
    ) -> None:
        """``batches``: requests for this model decode in the batch, whose KV stays
        full precision with --kv-bits (``layout`` is the quantized format)."""
        self.model, self.layout, self.weights, self.workspace = model, layout, weights, workspace
        self.batches = batches

    def clear_model(self) -> None:
        self.model, self.layout, self.weights, self.workspace = None, None, 0, 0

    @property
    def active(self) -> bool:
        """Whether requests are budgeted (a budget and a KV layout are known)."""
        return self.budget is not None and self.layout is not None

    # -- arithmetic -----------------------------------------------------------------
    def kv_bytes(self, tokens: int) -> int:
        return self.layout.bytes_for(tokens) if self.layout else 0

    def kv_in_use(self, extra: Reservation | None = None) -> int:
        """KV of the running requests (and ``extra``): a batch's arrays are padded to
        its longest sequence, so n batched sequences cost n times the longest."""
        held = [*self._held, extra] if extra is not None else self._held
        batched = [r.tokens for r in held if r.batched]
        alone = sum(self.kv_bytes(r.tokens) for r in held if not r.batched)
        # The batch holds full-precision KV even with --kv-bits (runtime.kv_quant).
        full = self.layout.quantized(None) if self.layout is not None else None
        longest = full.bytes_for(max(batched)) if batched and full is not None else 0
        return alone + len(batched) * longest

    def tokens_fitting(self, weights: int | None = None, workspace: int | None = None,
                       layout: KVLayout | None = None) -> int | None:
        """The longest sequence that fits with nothing else running and the prefix
        cache empty (the loaded model's, unless the figures are given); None: no limit."""
        if layout is None and self.layout is not None:
            layout = self.layout.quantized(None) if self.batches else self.layout
        if self.budget is None or layout is None:
            return None
        room = self.budget - (self.weights if weights is None else weights) - (
            self.workspace if workspace is None else workspace
        ) - self.side_bytes
        return layout.tokens_within(max(0, room))

    def check(self, prompt_tokens: int, max_tokens: int, *, explicit: bool) -> None:
        """MemoryExceeded if prompt + max_tokens can never fit, even alone."""
        fitting = self.tokens_fitting()
        if fitting is None or prompt_tokens + max_tokens <= fitting:
            return
        self.refused += 1
        assert self.budget is not None
        raise MemoryExceeded(
            tokens=prompt_tokens + max_tokens,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens if explicit else None,
            fitting=fitting,
            needed=(self.layout.quantized(None) if self.batches and self.layout else self.layout).bytes_for(
                prompt_tokens + max_tokens) if self.layout else 0,
            budget=self.budget,
            weights=self.weights,
            workspace=self.workspace,
        )

    # -- admission --------------------------------------------------------------------
    async def reserve(self, tokens: int, *, batched: bool) -> Reservation:
        """Hold KV memory for a ``tokens``-long sequence, waiting (in arrival order)
        until it fits; Busy (503) after ``wait_timeout`` seconds."""
        reservation = Reservation(tokens, batched)
        if not self.active:
            self._admit(reservation)
            return reservation
        if not self._queue and self._prefix_bytes() <= self._room(reservation):
            self._admit(reservation)  # fits as things are: no wait, no shrink
            return reservation
        waiter = _Waiter(reservation, asyncio.get_running_loop().create_future())
        self._queue.append(waiter)
        self._kick()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.wait_timeout)
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled():
                self.release(reservation)  # admitted just as we gave up
            else:
                waiter.future.cancel()
                if waiter in self._queue:
                    self._queue.remove(waiter)
                self._kick()  # the next waiter may fit now
            if isinstance(exc, asyncio.TimeoutError):
                self.timed_out += 1
                raise Busy(
                    f"Timed out after {self.wait_timeout:.0f}s waiting for memory: the running "
                    f"requests hold {format_bytes(self.kv_in_use())} of KV cache. Retry shortly.",
                    retry_after=self._retry_after(),
                ) from None
            raise
        return reservation

    def release(self, reservation: Reservation) -> None:
        if reservation in self._held:
            self._held.remove(reservation)
            self._kick()

    def _admit(self, reservation: Reservation) -> None:
        self._held.append(reservation)
        self.admitted += 1
        self.admitted_peak = max(self.admitted_peak, len(self._held))

    def _room(self, reservation: Reservation) -> int:
        """Bytes left for the prefix cache once ``reservation`` runs (negative: no room)."""
        assert self.budget is not None
        return (self.budget - self.weights - self.workspace - self.side_bytes
                - self.kv_in_use(reservation))

    # -- side models ------------------------------------------------------------------
    @property
    def side_bytes(self) -> int:
        return sum(self.side.values())

    def admit_side(self, model: str, nbytes: int) -> None:
        """Count a side model's ``nbytes`` if they fit beside the chat model's weights,
        workspace, the running requests' KV and the other side models. Never fits
        (even with no request running): MemoryExceeded-like 400
        (:class:`~mlxhost.core.errors.SideModelTooLarge`); fits once requests finish: 503."""
        if self.budget is None:
            self.side[model] = nbytes
            return
        others = sum(v for k, v in self.side.items() if k != model)
        fixed = self.budget - self.weights - self.workspace - others
        if nbytes > fixed:
            from mlxhost.core.errors import SideModelTooLarge

            self.refused += 1
            raise SideModelTooLarge(model, nbytes, max(0, fixed), self.budget, self.weights + others)
        if nbytes > fixed - self.kv_in_use():
            raise Busy(
                f"The model '{model}' needs {format_bytes(nbytes)} beside the loaded models; "
                f"the running requests hold {format_bytes(self.kv_in_use())} of KV cache "
                "until they finish. Retry shortly.",
                retry_after=self._retry_after(),
            )
        self.side[model] = nbytes

    def release_side(self, model: str) -> None:
        if self.side.pop(model, None) is not None:
            self._kick()

    def _kick(self) -> None:
        if (self._queue or self.active) and (self._draining is None or self._draining.done()):
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """Admit waiters from the head of the queue while they fit, shrinking the
        prefix cache first where that makes room."""
        while self._queue:
            waiter = self._queue[0]
            if waiter.future.done():  # gave up
                self._queue.popleft()
                continue
            if not self.active:
                self._queue.popleft()
                self._admit(waiter.reservation)
                waiter.future.set_result(None)
                continue
            room = self._room(waiter.reservation)
            if room < 0:
                for queued in self._queue:
                    if not queued.counted and not queued.future.done():
                        queued.counted = True
                        self.waited += 1
                        log.info(
                            "Memory: a request of %d tokens waits (running KV %s, budget %s)",
                            queued.reservation.tokens, format_bytes(self.kv_in_use()),
                            format_bytes(self.budget or 0),
                        )
                return  # a release kicks the queue again
            cached = self._prefix_bytes()
            if cached > room and self._shrink_prefix is not None:
                self.prefix_shrinks += 1
                log.info(
                    "Memory: shrinking the prefix cache from %s to %s to admit a request",
                    format_bytes(cached), format_bytes(room),
                )
                try:
                    await self._shrink_prefix(room)
                except Exception:  # never leave a request waiting over the cache
                    log.exception("Memory: shrinking the prefix cache failed")
                if self._queue and self._queue[0] is waiter and self._room(waiter.reservation) < 0:
                    continue  # something else took the room meanwhile: look again
            if not self._queue or self._queue[0] is not waiter:
                continue
            self._queue.popleft()
            if waiter.future.done():
                continue
            self._admit(waiter.reservation)
            waiter.future.set_result(None)
        await self._trim_prefix()

    async def _trim_prefix(self) -> None:
        """Keep the prefix cache within what the running requests leave (a finished
        request's KV moves into it; sliding-window snapshots add copies)."""
        if not self.active or self._shrink_prefix is None or self._queue:
            return
        assert self.budget is not None
        room = self.budget - self.weights - self.workspace - self.side_bytes - self.kv_in_use()
        if self._prefix_bytes() > max(0, room):
            try:
                await self._shrink_prefix(max(0, room))
            except Exception:
                log.exception("Memory: shrinking the prefix cache failed")

    def _retry_after(self) -> int:
        return max(1, min(60, len(self._held) + len(self._queue)))

    # -- reporting ------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return sum(1 for w in self._queue if not w.future.done())

    @property
    def running(self) -> int:
        return len(self._held)

    def stats(self) -> dict[str, Any]:
        """The ledger, for /health."""
        kv = self.kv_in_use()
        cached = self._prefix_bytes()
        figures: dict[str, Any] = {
            "budget": self.budget,
            "budget_source": self.device.source if self.device else None,
            "weights": self.weights,
            "workspace": self.workspace,
            "side_models": self.side_bytes,
            "kv_reserved": kv,
            "prefix_cache": cached,
            "free": None,
            "kv_bytes_per_token": self.layout.bytes_per_token if self.layout else None,
            "max_tokens_alone": self.tokens_fitting(),
            "requests_holding": len(self._held),
            "requests_waiting": self.waiting,
            "admitted": self.admitted,
            "admitted_peak": self.admitted_peak,
            "waited": self.waited,
            "refused": self.refused,
            "timed_out": self.timed_out,
            "prefix_shrinks": self.prefix_shrinks,
        }
        if self.budget is not None:
            figures["free"] = (self.budget - self.weights - self.workspace - self.side_bytes
                               - kv - cached)
        return figures
