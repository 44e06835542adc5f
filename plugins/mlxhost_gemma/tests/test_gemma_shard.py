"""The Gemma plugin's ``mlxhost_shard_model``: tensor parallel for ``gemma3_text``,
which mlx-lm cannot shard. A group of one rank (all MLX offers in one process)
splits nothing, so the logits must not change; the real two-rank split runs in
tests/integration/test_distributed.py."""

from __future__ import annotations

import pytest

from mlxhost.distributed.sharding import NotShardable, shard_model
from mlxhost.families.plugins import make_plugin_manager


def tiny_gemma():
    import mlx.core as mx
    from mlx_lm.models.gemma3_text import Model, ModelArgs

    mx.random.seed(0)
    args = ModelArgs(
        model_type="gemma3_text", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        num_attention_heads=4, head_dim=16, num_key_value_heads=1, vocab_size=97,
        query_pre_attn_scalar=16, sliding_window=8, sliding_window_pattern=2,
    )
    model = Model(args)
    mx.eval(model.parameters())
    return model


def test_mlxhost_shard_model_splits_gemma3_text_layers():
    import mlx.core as mx
    from mlx.nn.layers.distributed import AllToShardedLinear, ShardedToAllLinear

    model = tiny_gemma()
    tokens = mx.array([[1, 5, 9, 3]])
    before = model(tokens)
    pm = make_plugin_manager()
    group = mx.distributed.init()
    answer = pm.hook.mlxhost_shard_model(
        model=model, config={"model_type": "gemma3_text"}, group=group, pipeline=False
    )
    assert answer is True
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, AllToShardedLinear) and isinstance(attn.o_proj, ShardedToAllLinear)
    assert isinstance(model.model.layers[1].mlp.down_proj, ShardedToAllLinear)
    assert mx.allclose(model(tokens), before).item()
    # Not Gemma's: the plugin leaves it alone; no pipeline stages for Gemma.
    assert pm.hook.mlxhost_shard_model(
        model=model, config={"model_type": "qwen2"}, group=group, pipeline=False
    ) is None
    assert pm.hook.mlxhost_shard_model(
        model=model, config={"model_type": "gemma3_text"}, group=group, pipeline=True
    ) is None


def test_a_model_nothing_can_split_is_a_clear_error():
    import mlx.core as mx

    with pytest.raises(NotShardable, match=r"'gemma3_text' cannot be split pipeline parallel.*Options:"):
        shard_model(tiny_gemma(), {"model_type": "gemma3_text"}, mx.distributed.init(),
                    pipeline=True, hook=None)
