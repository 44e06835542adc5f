"""A tiny random fp32 Qwen3 (real mlx-lm model code, any backend) and a
detokenizer stand-in, for tests that drive ``runtime.batch.TextBatch`` directly."""

from __future__ import annotations

from typing import Any


def tiny_qwen3(tie: bool = True) -> Any:
    import mlx.core as mx
    from mlx_lm.models import qwen3

    args = qwen3.ModelArgs(
        model_type="qwen3", hidden_size=128, num_hidden_layers=2, intermediate_size=256,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        vocab_size=512, max_position_embeddings=512, rope_theta=10000.0,
        tie_word_embeddings=tie,
    )
    mx.random.seed(0)
    model = qwen3.Model(args)
    mx.eval(model.parameters())
    return model


class TokenNames:
    """Stands in for mlx-lm's streaming detokenizer: token 5 reads ``<5>``."""

    def __init__(self) -> None:
        self.last_segment = ""

    def reset(self) -> None:
        pass

    def add_token(self, token: int) -> None:
        self.last_segment = f"<{token}>"

    def finalize(self) -> None:
        self.last_segment = ""
