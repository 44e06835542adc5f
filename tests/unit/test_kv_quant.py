"""runtime.kv_quant: quantized KV caches on tiny real mlx-lm models (CPU): which
layers are quantized, dequantizing for the batch, the disk tier across a
restart, and the memory governor's quantized estimate."""

from __future__ import annotations

import pytest

from mlxhost.runtime import kv_quant
from mlxhost.runtime.memory import KVLayout, MemoryExceeded, MemoryGovernor

mx = pytest.importorskip("mlx.core")


def tiny_gemma3():
    """A tiny random Gemma 3 text model: 2 of every 3 layers are sliding-window."""
    from mlx_lm.models import gemma3_text

    args = gemma3_text.ModelArgs(
        model_type="gemma3_text", hidden_size=64, num_hidden_layers=3, intermediate_size=128,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, vocab_size=256,
        sliding_window=16, sliding_window_pattern=3,
    )
    model = gemma3_text.Model(args)
    mx.eval(model.parameters())
    return model


def prefill(model, cache, tokens):
    model(mx.array(tokens)[None], cache=cache)
    mx.eval([c.state for c in cache])


def test_gemma_rotating_layers_stay_full_precision():
    from mlx_lm.models.cache import make_prompt_cache

    model = tiny_gemma3()
    cache = kv_quant.quantized(make_prompt_cache(model), kv_quant.KVQuant(8))
    kinds = [type(c).__name__ for c in cache]
    assert kinds == ["RotatingKVCache", "RotatingKVCache", "QuantizedKVCache"]
    assert kv_quant.kept_full(cache) == {"RotatingKVCache": 2}
    prefill(model, cache, list(range(1, 40)))  # past the window: still runs
    assert cache[2].offset == 39 and cache[2].bits == 8


def test_quantized_keys_dequantize_close_to_full_precision():
    from mlx_lm.models.cache import make_prompt_cache

    from mlxhost.testing.tiny_text import tiny_qwen3

    model = tiny_qwen3()
    tokens = [(7 * k) % 500 + 1 for k in range(40)]
    full = make_prompt_cache(model)
    prefill(model, full, tokens)
    for bits, tolerance in ((8, 0.05), (4, 0.5)):
        quant = kv_quant.quantized(make_prompt_cache(model), kv_quant.KVQuant(bits, 32))
        prefill(model, quant, tokens)
        back = kv_quant.full_precision(quant)
        assert [type(c).__name__ for c in back] == ["KVCache"] * len(back)
        assert back[0].offset == 40
        error = mx.abs(back[0].keys[..., :40, :] - full[0].keys[..., :40, :]).max().item()
        scale = mx.abs(full[0].keys[..., :40, :]).max().item()
        assert error <= tolerance * scale
        assert kv_quant.quantized(back, None) is back  # None: as it is


def test_quantized_entries_survive_a_restart_of_the_disk_tier(tmp_path):
    from mlx_lm.models.cache import make_prompt_cache

    from mlxhost.engine.prefix.cache import MLXCacheAdapter
    from mlxhost.engine.prefix.disk import DiskTier, MLXCodec
    from mlxhost.testing.tiny_text import tiny_qwen3

    model = tiny_qwen3()
    tokens = tuple((3 * k) % 500 + 1 for k in range(30))
    cache = kv_quant.quantized(make_prompt_cache(model), kv_quant.KVQuant(4, 32))
    prefill(model, cache, list(tokens))
    identity = {"model": "m", "kv": "4-bit (group 32)"}
    first = DiskTier(tmp_path, 1 << 30, MLXCodec(), MLXCacheAdapter())
    first.activate("m", identity)
    assert first.spill("m", tokens, None, cache)
    first.close()

    restarted = DiskTier(tmp_path, 1 << 30, MLXCodec(), MLXCacheAdapter())
    restarted.activate("m", identity)
    found = restarted.nearest("m", (*tokens, 9, 9), None)
    assert found is not None and found[1] == len(tokens)
    loaded = restarted.load(*found)
    assert loaded is not None and type(loaded[0]).__name__ == "QuantizedKVCache"
    assert loaded[0].offset == len(tokens) and loaded[0].bits == 4
    for a, b in zip(loaded[0].keys, cache[0].keys):
        assert mx.array_equal(a[..., : len(tokens), :], b[..., : len(tokens), :])
    # It extends like any cache: the next token's logits match the original's.
    step = mx.array([[7]])
    assert mx.allclose(model(step, cache=loaded), model(step, cache=cache), atol=1e-5)
    restarted.close()


def test_the_governor_counts_the_quantized_size():
    layout = KVLayout(kv_heads=2, head_dim=64, dtype="bfloat16", windows=(None,) * 24)
    eight, four = layout.quantized(8), layout.quantized(4)
    budget = 2 << 30
    full_tokens = layout.tokens_within(budget)
    assert eight.tokens_within(budget) >= 1.8 * full_tokens
    assert four.tokens_within(budget) >= 3.2 * full_tokens
    # Sliding-window layers stay full precision.
    windowed = KVLayout(kv_heads=2, head_dim=64, dtype="bfloat16", windows=(8, None))
    assert windowed.quantized(8).bytes_for(8, step=1) == (
        windowed.layer_bytes_per_token * 8 + windowed.quantized(8).full_layer_bytes_per_token * 8
    )

    # A request that fits only quantized: refused in full precision, admitted quantized.
    governor = MemoryGovernor()
    governor.budget = 1000 + layout.bytes_for(3000)
    governor.set_model("m", layout, weights=1000, workspace=0)
    with pytest.raises(MemoryExceeded):
        governor.check(4000, 500, explicit=True)
    governor.set_model("m", eight, weights=1000, workspace=0)
    governor.check(4000, 500, explicit=True)
    # ... unless the model decodes in a batch, whose KV stays full precision.
    governor.set_model("m", eight, weights=1000, workspace=0, batches=True)
    with pytest.raises(MemoryExceeded):
        governor.check(4000, 500, explicit=True)


def test_the_lone_sequence_quantizes_and_the_batch_dequantizes():
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.batch import TextBatch
    from mlxhost.engine.sampling import make_sampler
    from mlxhost.testing.tiny_text import TokenNames, tiny_qwen3

    stored = []
    batch = TextBatch(
        tiny_qwen3(), eos=set(), max_batch=4, prefill_step=64, detokenizer=TokenNames,
        fetch_prefix=lambda tokens: (None, 0), store_prefix=lambda fed, cache: stored.append(cache),
        token_logprob=lambda *a: None, kv=kv_quant.KVQuant(8, 32),
    )
    got: dict[int, list[int]] = {1: [], 2: []}
    params = SamplingParams(max_tokens=6, temperature=0.0)
    batch.join((5, 6, 7, 8), params, make_sampler(params), [],
               lambda step, error: got[1].append(step.token))
    batch.step()
    batch.step()
    assert type(batch._solo.cache[0]).__name__ == "QuantizedKVCache"
    batch.join((9, 10, 11), params, make_sampler(params), [], lambda step, error: got[2].append(step.token))
    while batch.step():
        pass
    assert len(got[1]) == 6 and len(got[2]) == 6
    assert stored  # both stored their KV (the engine quantizes it again on insert)
