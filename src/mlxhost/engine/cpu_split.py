"""Batched decode on a Linux CPU: each large matmul split across the cores.

A batched decode step multiplies one row per sequence by every weight matrix,
and batching pays only if B rows cost about what one row costs. With OpenBLAS
(preloaded by ``mlxhost.cli.blas``) on 2 cores they do not: one row goes through
its parallel ``sgemv`` (both cores stream the weight), 2-16 rows through
``sgemm``, whose 2-thread split of so few rows costs 1.7-2.2x one row
(``python -m bench.blas_rows``). Splitting the weight's output rows into one
part per core instead, each part multiplied on its own MLX CPU stream (MLX runs
each stream on a thread of its own) with OpenBLAS held to one thread, costs
1.0-1.4x up to 8 rows (Qwen2.5-Coder 0.5B fp32, 2 cores, ``BatchGenerator``
decode step: 8 sequences 352 ms split against 490 ms stock, 4 sequences 271 vs
466, one sequence 258; ``python -m bench.cpu_split``). Past 8 rows one-thread
``sgemm`` slows down and OpenBLAS's own threads do better (16 sequences: 511
vs 520 ms), so larger batches keep the stock layers. The parts are slices of the weight
(views, no copy) and the outputs are concatenated, so every output element is
the same dot product. One sequence alone is ~10% faster through the stock
``sgemv`` (258 vs 265 ms) and a 512-token prefill 5% faster through the stock
``sgemm`` with all threads (11.1 vs 11.7 s), so the split layers are on only
for decode steps of a batch of up to 8: :meth:`SplitLayers.set_split` switches the layers'
classes and OpenBLAS's thread count together, after the work in flight is done.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from typing import Any

import attrs

log = logging.getLogger(__name__)

SPLIT_POLICIES = ("auto", "on", "off")
SPLIT_MIN_ROWS = 64  # smaller weights (a few KV-head rows) are left whole
SPLIT_MARGIN = 1.15  # auto splits only when the split matmul is this much faster
# More decode rows than this run stock: one-thread sgemm slows down past 8 rows
# (2 cores, Qwen 0.5B MLP up: 8 rows 3.1 ms split, 12 rows 7.6, 16 rows 6.9,
# stock 16 rows 3.6) while OpenBLAS's own threads do well with 16.
SPLIT_MAX_ROWS = 8
PROBE_ROWS = 8


@attrs.define
class OpenBLAS:
    """OpenBLAS's thread count, through the functions it exports (``None`` from
    :func:`openblas` when the process does not run it)."""

    library: Any
    threads: int  # the count it started with: what the stock layers get back

    def set_threads(self, count: int) -> None:
        self.library.openblas_set_num_threads(int(count))

    def get_threads(self) -> int:
        return int(self.library.openblas_get_num_threads())


_OPENBLAS: list[OpenBLAS | None] = []


def openblas() -> OpenBLAS | None:
    """The process's OpenBLAS (preloaded or linked), or None."""
    if not _OPENBLAS:
        found = None
        try:
            library = ctypes.CDLL(None)
            if hasattr(library, "openblas_set_num_threads") and hasattr(library, "openblas_get_num_threads"):
                found = OpenBLAS(library, int(library.openblas_get_num_threads()))
        except OSError:  # no symbols to look up on this platform
            found = None
        _OPENBLAS.append(found)
    return _OPENBLAS[0]


def _split_matmul(streams: list[Any], x: Any, weight: Any, bias: Any = None) -> Any:
    """``x @ weight.T (+ bias)``, the weight's rows in one part per stream."""
    import mlx.core as mx

    rows = weight.shape[0]
    parts = len(streams)
    outputs = []
    for i, stream in enumerate(streams):
        lo, hi = rows * i // parts, rows * (i + 1) // parts
        with mx.stream(stream):
            if bias is None:
                outputs.append(x @ weight[lo:hi].T)
            else:
                outputs.append(mx.addmm(bias[lo:hi], x, weight[lo:hi].T))
    return mx.concatenate(outputs, axis=-1)


def _split_classes(streams: list[Any]) -> dict[type, type]:
    import mlx.nn as nn

    class SplitLinear(nn.Linear):
        STREAMS = streams

        def __call__(self, x: Any) -> Any:
            return _split_matmul(self.STREAMS, x, self["weight"], self.get("bias"))

    class SplitEmbedding(nn.Embedding):
        STREAMS = streams

        def as_linear(self, x: Any) -> Any:  # a tied LM head
            return _split_matmul(self.STREAMS, x, self["weight"])

    return {nn.Linear: SplitLinear, nn.Embedding: SplitEmbedding}


def splittable(model: Any) -> list[Any]:
    """The model's fp32 ``nn.Linear`` and ``nn.Embedding`` layers (exactly those
    classes: sharded or quantized layers are not touched) big enough to split."""
    import mlx.core as mx
    import mlx.nn as nn

    return [
        module
        for _, module in model.named_modules()
        if type(module) in (nn.Linear, nn.Embedding)
        and module.weight.dtype == mx.float32
        and module.weight.shape[0] >= SPLIT_MIN_ROWS
    ]


@attrs.define(eq=False)
class SplitLayers:
    """The layers :func:`split_layers` prepared, switchable between their stock
    classes (all OpenBLAS threads) and the split ones (one thread per stream)."""

    layers: list[tuple[Any, type, type]]  # module, stock class, split class
    streams: list[Any]
    blas: OpenBLAS
    split: bool = False
    max_rows: int = SPLIT_MAX_ROWS  # larger batches keep the stock layers

    def __len__(self) -> int:
        return len(self.layers)

    def set_split(self, on: bool) -> None:
        """Split classes (``on``) or the stock ones; a no-op when already so."""
        if on == self.split:
            return
        self._settle()
        self.blas.set_threads(1 if on else self.blas.threads)
        for module, stock, split in self.layers:
            module.__class__ = split if on else stock
        self.split = on

    def _settle(self) -> None:
        """Wait for the work in flight: no BLAS call may run while the count changes."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        for stream in (generation_stream, mx.default_stream(mx.cpu), *self.streams):
            mx.synchronize(stream)


# Made once per thread, not per load: MLX runs a thread per stream, and a stream
# belongs to the thread that made it ("There is no Stream(cpu, N) in current
# thread" elsewhere). The server has one MLX thread, so one set.
_STREAMS = threading.local()


def _streams(parts: int) -> list[Any]:
    import mlx.core as mx

    made: list[Any] = _STREAMS.__dict__.setdefault("made", [])
    while len(made) < parts:
        made.append(mx.new_stream(mx.cpu))
    return made[:parts]


def split_layers(model: Any, blas: OpenBLAS, parts: int) -> SplitLayers:
    """Prepare the model's splittable layers (left on their stock classes)."""
    streams = _streams(parts)
    classes = _split_classes(streams)
    layers = [(module, type(module), classes[type(module)]) for module in splittable(model)]
    return SplitLayers(layers, streams, blas)


def split_is_faster(layers: SplitLayers, rows: int = PROBE_ROWS, repeats: int = 10) -> tuple[bool, str]:
    """Time ``rows`` decode rows through the largest split linear layer (an MLP
    projection: a few ms; the LM head would take seconds) both ways."""
    import mlx.core as mx
    import mlx.nn as nn

    modules = [layer[0] for layer in layers.layers]
    # The model's head and embedding are its largest matmuls by far: skip those.
    biggest = max(m.weight.size for m in modules)
    inner = [m for m in modules if not isinstance(m, nn.Embedding) and m.weight.size < biggest]
    module = max(inner or modules, key=lambda m: m.weight.size)
    x = mx.random.normal((rows, 1, module.weight.shape[1]))
    mx.eval(x)
    call = (lambda m: m.as_linear(x)) if isinstance(module, nn.Embedding) else (lambda m: m(x))

    def timed() -> float:
        mx.eval(call(module))  # warm this shape and thread count
        started = time.perf_counter()
        for _ in range(repeats):
            mx.eval(call(module))
        return (time.perf_counter() - started) / repeats

    whole = timed()
    layers.set_split(True)
    try:
        parted = timed()
    finally:
        layers.set_split(False)
    rows_shape = "x".join(str(n) for n in module.weight.shape)
    return whole > parted * SPLIT_MARGIN, (
        f"{rows} rows through {rows_shape}: whole {whole * 1e3:.2f} ms with "
        f"{layers.blas.threads} BLAS threads, split in {len(layers.streams)} {parted * 1e3:.2f} ms"
    )


def choose(policy: str, model: Any, *, on: str, max_batch: int) -> tuple[SplitLayers | None, str]:
    """The split layers to switch on for batched decode steps (or None), and why."""
    if policy not in SPLIT_POLICIES:
        raise ValueError(f"cpu-split policy must be one of {', '.join(SPLIT_POLICIES)}, not {policy!r}")
    if policy == "off":
        return None, "--cpu-split off"
    if on != "cpu":
        return None, f"{on}: no CPU split"
    blas = openblas()
    if blas is None:
        return None, "no OpenBLAS in this process"
    if blas.threads < 2:
        return None, "OpenBLAS runs one thread"
    if max_batch < 2:
        return None, "no batches"
    if not splittable(model):
        return None, "no fp32 layers to split"
    layers = split_layers(model, blas, blas.threads)
    if policy == "on":
        return layers, f"--cpu-split on ({len(layers)} layers in {blas.threads})"
    try:
        faster, measured = split_is_faster(layers)
    except Exception:  # a failed measurement must not fail the load
        log.exception("Measuring the CPU split failed")
        return None, "auto: the measurement failed"
    return (layers if faster else None), f"auto: {'on' if faster else 'off'} ({measured})"
