"""The KV estimate and the prefix cache's byte count against what MLX really
allocates, with the real test models in this process (no server)."""

from __future__ import annotations

import gc
import json

import pytest

from mlxhost.models.starter.builder import ensure_test_model
from mlxhost.runtime.memory import KVLayout

# (test model, prompt tokens): Gemma's goes past its 512-token sliding window, in
# two prefill chunks, so its rotating layers must have stopped growing.
CASES = [("qwen", 300), ("gemma", 700)]


def _tokens(n: int) -> list[int]:
    return [(i * 7919) % 30_000 + 100 for i in range(n)]


@pytest.fixture(scope="module")
def gemma_engine():
    """The MLX engine with Gemma loaded (batching on), shared by this module's tests."""
    from mlxhost.engine.mlx_engine import MLXEngine
    from mlxhost.models.registry import folder_info

    engine = MLXEngine(max_batch=4, warmup=False)
    engine.load(folder_info(ensure_test_model("gemma")))
    yield engine
    engine.unload()


@pytest.mark.parametrize(("name", "prompt"), CASES)
def test_kv_estimate_matches_the_cache_mlx_allocates(name, prompt, request):
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model

    folder = ensure_test_model(name)
    if name == "gemma":
        model = request.getfixturevalue("gemma_engine").loaded.model
    else:
        model, _ = load_model(folder)
        mx.eval(model.parameters())
    layout = KVLayout.from_config(json.loads((folder / "config.json").read_text()))
    assert layout is not None
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    cache = make_prompt_cache(model)
    tokens = mx.array([_tokens(prompt)])
    for start in range(0, prompt, 512):  # prefill as the engine does, a chunk at a time
        model(tokens[:, start : start + 512], cache=cache)
        mx.eval([c.state for c in cache])
    generated = 4
    for _ in range(generated):  # then decode a few tokens
        logits = model(mx.array([[123]]), cache=cache)
        mx.eval(logits, [c.state for c in cache])
        del logits
    gc.collect()
    mx.clear_cache()
    allocated = mx.get_active_memory() - before
    held = sum(c.nbytes for c in cache)
    estimate = layout.bytes_for(prompt + generated)
    assert abs(estimate - held) <= 0.1 * held, (estimate, held)
    assert abs(estimate - allocated) <= 0.1 * allocated, (estimate, allocated)
    del cache
    gc.collect()
    mx.clear_cache()


def test_prefix_cache_counts_the_bytes_mlx_holds(gemma_engine):
    """Sequences decoded in a batch hand their KV to the prefix cache: what the
    cache counts is what stays allocated (not the batch's padded arrays)."""
    import mlx.core as mx

    from mlxhost.core.types import SamplingParams
    from mlxhost.runtime.engine import PreparedPrompt

    engine = gemma_engine
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    errors: list[BaseException] = []

    def emit(step, error):
        if error is not None:
            errors.append(error)

    for k, length in enumerate((60, 200, 330)):
        prompt = PreparedPrompt(tokens=tuple(t + k for t in _tokens(length)))
        engine.join(prompt, SamplingParams(max_tokens=4, temperature=0.0), emit)
    while engine.step():
        pass
    assert not errors
    engine.batches.drop()  # the idle batch's last logits are workspace, not cache
    gc.collect()
    mx.clear_cache()
    held = mx.get_active_memory() - before
    assert engine.prefix_cache is not None
    counted = engine.prefix_cache.stats().bytes
    assert len(engine.prefix_cache) == 3
    assert counted == engine.memory().prefix_cache
    assert abs(counted - held) <= 0.1 * held, (counted, held)
