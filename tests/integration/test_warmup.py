"""The GPU load path (warm-up, --max-batch auto), run on CPU with the backend
reported as CUDA: the real engine and the Gemma 270M test model, no server."""

from __future__ import annotations

from mlxhost.engine import batch, kernels, warmup
from mlxhost.engine.mlx_engine import MLXEngine
from mlxhost.engine.prefix import cache as prefix_cache
from mlxhost.models.registry import folder_info
from mlxhost.models.starter.builder import ensure_test_model


def test_gpu_load_warms_the_cache_hit_paths_and_measures_the_batch_size(monkeypatch, tmp_path):
    """Solo and batched prompts that extend earlier ones hit the warm-up's own
    prefix cache (so CUDA compiles those kernels at load, not at a user's first
    multi-turn request), the server's prefix cache stays empty, and
    --max-batch auto measures decode steps to choose the batch size."""
    monkeypatch.setattr(kernels, "backend", lambda: "cuda")
    monkeypatch.setattr(warmup, "GPU_WARMUP_LENGTHS", (8, 40))  # shorter than on a GPU: CPU time
    monkeypatch.setattr(batch, "AUTO_BATCH", 3)  # the provisional limit the warm-up batches with
    monkeypatch.setattr(batch, "AUTO_BATCH_CAP", 4)
    hits: list[tuple[int, int]] = []  # (id of the cache, tokens reused)
    real_fetch = prefix_cache.PrefixCache.fetch_nearest

    def fetch(self, model_id, tokens, **kwargs):
        fetched = real_fetch(self, model_id, tokens, **kwargs)
        if fetched.cache is not None:
            hits.append((id(self), len(tokens) - len(fetched.remaining)))
        return fetched

    measured: list[int] = []
    real_step = batch.decode_step_seconds

    def step(model, size, steps=4):
        measured.append(size)
        return real_step(model, size, steps)

    monkeypatch.setattr(prefix_cache.PrefixCache, "fetch_nearest", fetch)
    monkeypatch.setattr(batch, "decode_step_seconds", step)
    # An empty folder for remembered batch sizes: one a previous run stored would skip the measurement.
    engine = MLXEngine(warmup=True, prefix_cache_bytes=64 * 2**20, max_batch=0, weights="as-is",
                       batch_probe_dir=tmp_path / "batch-probe")
    try:
        engine.load(folder_info(ensure_test_model("gemma")))
        served = engine.prefix_cache
        assert served is not None and served.stats().entries == 0 and served.stats().hits == 0
        assert hits and all(cache != id(served) for cache, _ in hits)
        # The solo prompt that extends the first, and every turn-2 join of the
        # batches of 1 and of 3, reused KV.
        assert len(hits) >= 1 + 1 + 3 and all(reused > 0 for _, reused in hits)
        # Sizes 1, 2, ... were timed, up to the cap or the first that did not pay.
        assert measured[:2] == [1, 2] and measured == [1, 2, 4][: len(measured)]
        chosen = engine.batch_limit()
        assert chosen in measured and chosen == engine.max_batch
        assert engine.stats()["batch"]["chosen"].startswith("auto, measured")
    finally:
        engine.unload()
