"""The warm-up after a load: a few short prompts, so the first request does not
pay one-time costs.

On CUDA, MLX compiles kernels per shape on first use (measured on an H100:
44-72 s for the first request after a load without this, 0.07-0.11 s with 8-
and 64-token prompts first). On CPU the one-time cost is per process, not per
model (raw mlx-lm: Qwen 0.5B's first request 3.6 s vs 1.6 s later after
start-up, but no extra on the first request after a swap, `python -m bench`),
so 8 tokens once, at the first load. On GPU, with batching on, the batch path is
warmed too.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mlxhost.core.types import SamplingParams
from mlxhost.engine import kernels
from mlxhost.engine.prefix.cache import MLXCacheAdapter, PrefixCache
from mlxhost.engine.prefix.session import PrefixCaching
from mlxhost.runtime.engine import Engine, PreparedPrompt

log = logging.getLogger(__name__)

# Prompt lengths the GPU warm-up runs alone (each extends the one before).
GPU_WARMUP_LENGTHS = (8, 64, 512)
# The warm-up's own prefix cache (GPU): a few short prompts' KV.
WARMUP_CACHE_BYTES = 256 * 1024 * 1024


class WarmUp:
    """Runs the warm-up through the engine's own entry points (``generate``,
    ``join``/``step``); remembers that CPU needs it only once per process."""

    def __init__(self) -> None:
        self._warmed_cpu = False

    def run(self, engine: Engine, tokenizer: Any, prefix: PrefixCaching, *, max_batch: int, vision: bool) -> float:
        """Seconds it took (0 when nothing was left to warm)."""
        import mlx.core as mx

        on_gpu = kernels.backend() != "cpu"
        if not on_gpu and self._warmed_cpu:
            return 0.0
        self._warmed_cpu = not on_gpu
        started = time.perf_counter()
        lengths = GPU_WARMUP_LENGTHS if on_gpu else (8,)
        # Real token ids, as a request would send (not mx.arange: other dtypes,
        # other kernels).
        text = "The quick brown fox jumps over the lazy dog. " * 64
        ids = tokenizer.encode(text, add_special_tokens=False) or [0]
        # Keep the warm-up out of the real prefix cache; on GPU give it one of
        # its own, so prompts that extend an earlier one compile the cache-hit
        # path too (a first hit cost 42 s of kernel compilation on an H100).
        stand_in = None
        if on_gpu and prefix.cache is not None:
            stand_in = PrefixCache(MLXCacheAdapter(), max_bytes=WARMUP_CACHE_BYTES)
        try:
            with prefix.set_aside(stand_in):
                for length in lengths:
                    tokens = (ids * (length // len(ids) + 1))[:length]
                    prompt = PreparedPrompt(tokens=tuple(tokens))
                    params = SamplingParams(max_tokens=2, temperature=0.0)
                    for _ in engine.generate(prompt, params, lambda: False):
                        pass
                if on_gpu and max_batch > 1 and not vision:
                    _warm_batches(engine, ids, max_batch)
        except Exception:  # a warm-up failure must not fail the load; requests will tell
            log.exception("Warm-up failed")
        finally:
            mx.clear_cache()
        return time.perf_counter() - started


def _warm_batches(engine: Engine, ids: list[int], max_batch: int) -> None:
    """The batch path has kernels of its own (batched attention masks, B-row
    matmuls): run a batch of one and a batch of up to 8 through it, or the
    first requests pay the compilation (H200, Qwen3-4B shape: 5.9 tok/s on
    the first single request without this, against 160 later)."""
    params = SamplingParams(max_tokens=2, temperature=0.0)
    errors: list[BaseException] = []

    def emit(step: Any, error: BaseException | None) -> None:
        if error is not None:
            errors.append(error)

    for size in sorted({1, min(max_batch, 8)}):
        # Turn 1, then turn 2 extending each prompt: with the warm-up's own
        # prefix cache, turn 2 joins with cached prefixes of unequal lengths.
        for extra in (0, 8):
            for k in range(size):
                tokens = (ids[k:] + ids)[: 16 + 8 * k + extra]
                engine.join(PreparedPrompt(tokens=tuple(tokens)), params, emit)
            while engine.step():
                pass
    if errors:
        raise errors[0]
