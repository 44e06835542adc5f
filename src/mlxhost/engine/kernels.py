"""Backend-aware weights and kernel shapes for a loaded model.

Three load-time choices, each reported in ``/health`` (engine ``kernels``) and the log:

* **Weights** (``--weights auto|as-is|bf16``): ``bf16`` replaces every quantized
  layer by a dequantized bf16 one. On CUDA, 4-bit decode of a batch is far
  slower than bf16 (H200, Qwen3-4B shape, mlx-lm ``BatchGenerator`` at 8
  streams: 4-bit 113 tok/s stock, 388 with the 2-D input below, bf16 688), so
  ``auto`` picks bf16 there when batching is on (``--max-batch`` >= 8) and the
  bf16 copy fits in ``BF16_MEMORY_SHARE`` of the device's memory. Elsewhere
  (Metal, whose quantized kernels are good; CPU) ``auto`` keeps the weights
  as they were loaded.
* **2-D quantized matmul input** (``--flat-qmm auto|on|off``): on CUDA
  ``mx.quantized_matmul`` runs a 3-D ``(B, 1, K)`` input (a batched decode
  step) row by row, 4x slower at B=8 than the same rows as a 2-D ``(B, K)``
  input, while for one row the 3-D call is the fast one. With it on,
  quantized linear layers and the tied-embedding LM head reshape inputs of 8
  or more rows to 2-D and back (the same arithmetic; tests check identical
  outputs). ``auto`` measures both shapes on the model's own largest
  quantized projection at load and keeps the faster by a clear margin.
  Fewer rows (2-7, a small batch) run row by row in either shape; ``on`` also
  pads them with zero rows to 8. That wins one call in isolation (4 rows: 66
  us as they are, 26 us padded to 8; H200) but lost end to end (H100, Gemma 3
  4B shape, raw ``BatchGenerator`` at 2 / 4 streams: 206 / 300 tok/s without
  the padding, 82 / 152 with it; docs/benchmarks.md), so ``auto`` never pads.
* **CPU split** (``--cpu-split auto|on|off``, :mod:`runtime.cpu_split`): on a
  Linux CPU with OpenBLAS, a batch's decode steps multiply each large fp32
  weight in one part per core, each on its own MLX stream with one BLAS
  thread, instead of OpenBLAS's own 2-thread split of a few rows. ``auto``
  measures both on the model's largest weight short of its LM head at load.

And one rule for every batch (:func:`skip_unpadded_decode_masks`): a
one-token decode step whose sequences are not left-padded needs no attention
mask, and MLX's fused attention kernels on CUDA take none (with any array mask
a decode step falls back to unfused attention: H100, Qwen3-4B shape 4-bit,
``BatchGenerator`` with one sequence 88.5 tok/s with its all-true mask, 123.6
without; ``bench/gpu/step_probe.py``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from mlxhost.engine.cpu_split import SplitLayers

log = logging.getLogger(__name__)

WEIGHT_POLICIES = ("auto", "as-is", "bf16")
FLAT_QMM_POLICIES = ("auto", "on", "off")
FLAT_MIN_ROWS = 8  # fewer rows: the 3-D call is the fast one (one row: 21 vs 58 us, H200)
BF16_MEMORY_SHARE = 0.5  # auto keeps a bf16 copy only when it leaves half the memory free
BF16_MIN_BATCH = 8  # below this the 4-bit kernels hold their own (H200: 1 stream 155 vs 201)
FLAT_MARGIN = 1.2  # auto flattens only when the 2-D call is this much faster
# --flat-qmm on pads 2-7 rows to 8 (auto does not: docstring above).
PAD_FROM = 2


@attrs.frozen
class KernelChoice:
    """What the engine decided for the loaded model, and why."""

    weights: str  # "as-is" or "bf16"
    flat_qmm: bool
    reason: str
    pad_rows: bool = False  # 2-7 decode rows padded to 8 for the fast kernel (--flat-qmm on only)
    # The weights policy asked for (--weights, or the model's config-file value).
    policy: str = "auto"
    # The flattened layers (to switch to their stock classes for a lone sequence).
    layers: FlatLayers | None = attrs.field(default=None, eq=False, repr=False)
    cpu_split: bool = False  # batched decode steps split large matmuls across the cores
    # The split layers (runtime.cpu_split), on only for a batch's decode steps.
    split: SplitLayers | None = attrs.field(default=None, eq=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, filter=lambda field, _: field.name not in ("layers", "split"))

    def for_step(self, *, alone: bool, prefilling: bool = False, rows: int = 1) -> None:
        """The layers' classes for the coming step: one sequence decoding alone
        (``alone``) or a batch of ``rows`` sequences, and whether the batch
        prefills a prompt in it."""
        if self.layers is not None:
            self.layers.set_flat(not alone)
        if self.split is not None:
            self.split.set_split(not alone and not prefilling and rows <= self.split.max_rows)

    def alone(self, on: bool) -> None:
        """One sequence decodes alone (``on``) or a batch does: the layers' classes for it."""
        self.for_step(alone=on)


def backend() -> str:
    """``cuda``, ``metal`` or ``cpu``: where MLX runs by default."""
    import mlx.core as mx

    if mx.default_device().type != mx.DeviceType.gpu:
        return "cpu"
    return "metal" if mx.metal.is_available() else "cuda"


def quantized_modules(model: Any) -> list[tuple[str, Any]]:
    import mlx.nn as nn

    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    ]


def bf16_bytes(model: Any) -> int:
    """Bytes the quantized layers would take as bf16 (2 bytes per weight)."""
    total = 0
    for _, module in quantized_modules(model):
        rows, packed = module.weight.shape
        total += rows * packed * 32 // module.bits * 2
    return total


def device_memory() -> int | None:
    import mlx.core as mx

    try:
        info = mx.device_info()
    except Exception:  # older MLX or a backend without it
        return None
    for key in ("memory_size", "total_memory", "max_recommended_working_set_size"):
        if info.get(key):
            return int(info[key])
    return None


def choose_weights(policy: str, model: Any, *, max_batch: int, on: str | None = None) -> tuple[str, str]:
    """(``as-is`` or ``bf16``, why) for ``policy`` on this model and backend."""
    if policy not in WEIGHT_POLICIES:
        raise ValueError(f"weights policy must be one of {', '.join(WEIGHT_POLICIES)}, not {policy!r}")
    if not quantized_modules(model):
        return "as-is", "the checkpoint is not quantized"
    if policy != "auto":
        return policy, f"--weights {policy}"
    on = on or backend()
    if on != "cuda":
        return "as-is", f"auto: {on} keeps quantized weights"
    if max_batch < BF16_MIN_BATCH:
        return "as-is", f"auto: batches of {max_batch} < {BF16_MIN_BATCH} keep quantized weights"
    need, memory = bf16_bytes(model), device_memory()
    if memory is None or need > memory * BF16_MEMORY_SHARE:
        have = "unknown" if memory is None else f"{memory / 2**30:.0f} GiB"
        return "as-is", f"auto: a bf16 copy ({need / 2**30:.1f} GiB) does not fit beside {have}"
    return "bf16", f"auto: CUDA batches decode faster in bf16 ({need / 2**30:.1f} GiB)"


def dequantize(model: Any) -> None:
    """Replace every quantized layer with a bf16 one, in place."""
    import mlx.core as mx
    from mlx_lm.utils import dequantize_model

    names = [name for name, _ in quantized_modules(model)]
    dequantize_model(model)
    # A dequantized weight takes its scales' dtype (bf16 in mlx-community
    # builds, fp16 in some older ones): make it bf16; other weights stay as they are.
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        if module.weight.dtype != mx.bfloat16:
            module.weight = module.weight.astype(mx.bfloat16)
    mx.eval(model.parameters())


# -- 2-D input for quantized matmuls ------------------------------------------
def _flat_call(call: Any, self: Any, x: Any) -> Any:
    if x.ndim > 2:
        rows = 1
        for size in x.shape[:-1]:
            rows *= size
        if rows >= FLAT_MIN_ROWS:
            return call(self, x.reshape(rows, x.shape[-1])).reshape(*x.shape[:-1], -1)
        pad_from = self.PAD_FROM
        if pad_from is not None and pad_from <= rows:
            # Fewer rows than the fast kernel takes: zero rows make it up (each
            # output row depends on its own input row only), then they are dropped.
            import mlx.core as mx

            flat = x.reshape(rows, x.shape[-1])
            padded = mx.concatenate([flat, mx.zeros((FLAT_MIN_ROWS - rows, x.shape[-1]), dtype=x.dtype)])
            return call(self, padded)[:rows].reshape(*x.shape[:-1], -1)
    return call(self, x)


def _flat_classes(pad_from: int | None) -> dict[type, type]:
    import mlx.nn as nn

    class FlatQuantizedLinear(nn.QuantizedLinear):
        PAD_FROM = pad_from

        def __call__(self, x: Any) -> Any:
            return _flat_call(nn.QuantizedLinear.__call__, self, x)

    class FlatQuantizedEmbedding(nn.QuantizedEmbedding):
        PAD_FROM = pad_from

        def as_linear(self, x: Any) -> Any:
            return _flat_call(nn.QuantizedEmbedding.as_linear, self, x)

    return {nn.QuantizedLinear: FlatQuantizedLinear, nn.QuantizedEmbedding: FlatQuantizedEmbedding}


_FLAT: dict[int | None, dict[type, type]] = {}


@attrs.define(eq=False)
class FlatLayers:
    """The layers :func:`flatten_quantized_inputs` changed, switchable back.

    One sequence decoding alone sends one row, which the stock 3-D call runs
    fastest anyway, and that decode is bound by the CPU (H100, Qwen3-4B shape
    4-bit: ~5 ms a token for 0.75 ms of weight reads; py-spy: 67% launching
    the step's kernels in ``mx.async_eval``, 25% building the graph in Python),
    where the wrapper's few microseconds in each of ~250 quantized calls a
    token show (one request's decode 159-194 tok/s with it, 192-220 with
    ``--flat-qmm off``, bench/results/gpu-h100-solo-probe.json). So the batch
    switches the layers to their stock classes while one sequence runs alone.
    """

    layers: list[tuple[Any, type, type]]  # module, stock class, flat class
    flat: bool = True

    def __len__(self) -> int:
        return len(self.layers)

    def set_flat(self, on: bool) -> None:
        """Flat classes (``on``) or the stock ones; a no-op when already so."""
        if on == self.flat:
            return
        for module, stock, flat in self.layers:
            module.__class__ = flat if on else stock
        self.flat = on


def flatten_quantized_inputs(model: Any, *, pad_from: int | None = None) -> FlatLayers:
    """Give the model's quantized layers 2-D inputs from 8 rows up (and, with
    ``pad_from``, inputs of ``pad_from``..7 rows padded to 8); returns them."""
    if pad_from not in _FLAT:
        _FLAT[pad_from] = _flat_classes(pad_from)
    classes = _FLAT[pad_from]
    changed = []
    for _, module in quantized_modules(model):
        stock = type(module)
        base = next((b for b in stock.__mro__ if b in classes), None)
        if base is not None:
            module.__class__ = classes[base]  # same layout, one method differs
            changed.append((module, stock, classes[base]))
    return FlatLayers(changed)


def flat_is_faster(model: Any, rows: int = FLAT_MIN_ROWS, repeats: int = 20) -> tuple[bool, str]:
    """Time ``rows`` decode rows through the largest quantized projection as
    3-D vs 2-D input: flatten?"""
    import mlx.core as mx
    import mlx.nn as nn

    layers = [m for _, m in quantized_modules(model) if isinstance(m, nn.QuantizedLinear)]
    if not layers:
        return False, "no quantized linear layers"
    layer = max(layers, key=lambda m: m.weight.size)
    k = layer.weight.shape[1] * 32 // layer.bits
    x3 = mx.random.normal((rows, 1, k)).astype(layer.scales.dtype)
    x2 = x3.reshape(rows, k)

    def timed(x: Any) -> float:
        mx.eval(nn.QuantizedLinear.__call__(layer, x))  # compile / warm this shape
        started = time.perf_counter()
        for _ in range(repeats):
            mx.eval(nn.QuantizedLinear.__call__(layer, x))
        return (time.perf_counter() - started) / repeats

    three, two = timed(x3), timed(x2)
    return three > two * FLAT_MARGIN, f"{rows} rows: 3-D {three * 1e6:.0f} us, 2-D {two * 1e6:.0f} us"


def apply(
    model: Any, *, weights: str, flat_qmm: str, max_batch: int, cpu_split: str = "auto"
) -> KernelChoice:
    """Apply the weight and kernel-shape policies to a freshly loaded model."""
    from mlxhost.engine import cpu_split as split_policy

    if flat_qmm not in FLAT_QMM_POLICIES:
        raise ValueError(f"flat-qmm policy must be one of {', '.join(FLAT_QMM_POLICIES)}, not {flat_qmm!r}")
    chosen, why = choose_weights(weights, model, max_batch=max_batch)
    if chosen == "bf16":
        dequantize(model)
    flat = pad = False
    layers = None
    if quantized_modules(model):
        if flat_qmm == "auto":
            if max_batch >= PAD_FROM:
                flat, measured = flat_is_faster(model)
            else:
                measured = "no batches"
            why += f"; 2-D qmm input {'on' if flat else 'off'} ({measured})"
        else:
            flat = pad = flat_qmm == "on"
            why += f"; --flat-qmm {flat_qmm}"
        layers = flatten_quantized_inputs(model, pad_from=PAD_FROM if pad else None) if flat else None
    on = backend()
    split, split_why = split_policy.choose(cpu_split, model, on=on, max_batch=max_batch)
    if on == "cpu":
        why += f"; CPU split {split_why}"
    return KernelChoice(
        weights=chosen, flat_qmm=flat, pad_rows=pad, reason=why, policy=weights, layers=layers,
        cpu_split=split is not None, split=split,
    )


def skip_unpadded_decode_masks() -> None:
    """Make mlx-lm's ``BatchKVCache`` return no mask for a one-token step when
    no sequence in it is left-padded (the mask would be all true: the same
    attention, but CUDA's fused kernels refuse any mask). Idempotent; patches
    the class once per process, since ``BatchGenerator`` builds its caches
    itself.

    Whether a cache is padded is read once per change of its ``left_padding``
    (sequences joining or leaving), not per step: reading it waits for the GPU.
    """
    from mlx_lm.models.cache import BatchKVCache

    if getattr(BatchKVCache, "_mlxhost_unpadded_masks", False):
        return
    import mlx.core as mx

    masked = BatchKVCache.make_mask

    def get_padding(self: Any) -> Any:
        return self.__dict__["_left_padding"]

    def set_padding(self: Any, value: Any) -> None:
        self.__dict__["_left_padding"] = value
        self.__dict__["_padded"] = None  # unknown until the next one-token step asks

    def make_mask(self: Any, N: int, return_array: bool = False, **kwargs: Any) -> Any:
        if N == 1 and not return_array and kwargs.get("window_size") is None:
            padded = self.__dict__.get("_padded")
            if padded is None:
                padded = self.__dict__["_padded"] = bool(mx.any(self.left_padding > 0).item())
            if not padded:
                return None
        return masked(self, N, return_array=return_array, **kwargs)

    BatchKVCache.left_padding = property(get_padding, set_padding)  # type: ignore[assignment]
    BatchKVCache.make_mask = make_mask  # type: ignore[method-assign]
    BatchKVCache._mlxhost_unpadded_masks = True  # type: ignore[attr-defined]
