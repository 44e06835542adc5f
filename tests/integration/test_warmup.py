"""The GPU warm-up's paths, run on CPU with the backend reported as CUDA: the
real engine and the Gemma 270M test model, no server."""

from __future__ import annotations

from mlxhost.registry import folder_info
from mlxhost.runtime import kernels, mlx_engine, prefix_cache
from mlxhost.runtime.mlx_engine import MLXEngine
from mlxhost.starter.builder import ensure_test_model


def test_gpu_warmup_compiles_the_cache_hit_paths_in_a_cache_of_its_own(monkeypatch):
    """Solo and batched prompts that extend earlier ones hit the warm-up's own
    prefix cache (so CUDA compiles those kernels at load, not at a user's first
    multi-turn request), and the server's prefix cache stays empty."""
    monkeypatch.setattr(kernels, "backend", lambda: "cuda")
    monkeypatch.setattr(mlx_engine, "GPU_WARMUP_LENGTHS", (8, 40))  # shorter than on a GPU: CPU time
    hits: list[tuple[int, int]] = []  # (id of the cache, tokens reused)
    real_fetch = prefix_cache.PrefixCache.fetch_nearest

    def fetch(self, model_id, tokens, **kwargs):
        fetched = real_fetch(self, model_id, tokens, **kwargs)
        if fetched.cache is not None:
            hits.append((id(self), len(tokens) - len(fetched.remaining)))
        return fetched

    monkeypatch.setattr(prefix_cache.PrefixCache, "fetch_nearest", fetch)
    engine = MLXEngine(warmup=True, prefix_cache_bytes=64 * 2**20, max_batch=3, weights="as-is")
    try:
        engine.load(folder_info(ensure_test_model("gemma")))
        served = engine.prefix_cache
        assert served is not None and served.stats().entries == 0 and served.stats().hits == 0
        assert hits and all(cache != id(served) for cache, _ in hits)
        # The solo prompt that extends the first, and every turn-2 join of the
        # batches of 1 and of 3, reused KV.
        assert len(hits) >= 1 + 1 + 3 and all(reused > 0 for _, reused in hits)
    finally:
        engine.unload()
