"""Fallback engine: MLX (imported lazily, on the worker thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlxhost.families.hookspecs import hookimpl
from mlxhost.settings.table import Settings


@hookimpl(trylast=True)
def mlxhost_make_engine(settings: Settings):
    return make_mlx_engine(settings)


def make_mlx_engine(settings: Settings, sharder: Any = None) -> Any:
    """The MLX engine as the settings say; ``sharder``: a rank of a distributed group."""
    import logging

    from mlxhost.engine.mlx_engine import MLXEngine

    log = logging.getLogger(__name__)
    if settings.prefix_cache_disk_bytes is not None and not settings.prefix_cache_dir:
        log.warning("--prefix-cache-disk-mib is set without --prefix-cache-dir: no disk tier")
    if settings.prefix_cache_dir and settings.prefix_cache_bytes == 0:
        log.warning("--prefix-cache-dir is set but the prefix cache is off (--prefix-cache-mib 0): "
                    "no disk tier either")
    cache_dir = settings.prefix_cache_dir
    if cache_dir and sharder is not None:
        # Each rank caches its own slice of the KV: one folder per rank, so no
        # rank ever reads another's (rank 0 has no group yet; followers do).
        group = getattr(sharder, "group", None)
        cache_dir = str(Path(cache_dir) / f"rank-{group.rank() if group is not None else 0}")
    return MLXEngine(
        prefix_cache_dir=cache_dir,
        prefix_cache_disk_bytes=settings.prefix_cache_disk_bytes,
        sharder=sharder,
        prefix_cache_bytes=settings.prefix_cache_bytes,
        warmup=settings.warmup,
        max_batch=settings.max_batch,  # 0: auto
        prefill_chunk=max(1, settings.prefill_chunk),
        prefill_step_ms=max(0, settings.prefill_step_ms),
        kv_bits=settings.kv_bits,
        kv_group_size=settings.kv_group_size,
        speculative=settings.speculative,
        weights=settings.weights,
        flat_qmm=settings.flat_qmm,
        cpu_split=settings.cpu_split,
    )
