"""Tensor parallel Gemma 3: mlx-lm's ``gemma3_text`` model has no ``shard()``.

The decoder layers split as mlx-lm splits Llama-style ones
(``mlxhost.distributed.sharding.shard_attention_mlp``): query heads and MLP rows
per rank, an ``all_sum`` after ``o_proj`` and ``down_proj``. Gemma 3 270M has
one key/value head, which stays whole on every rank. The embedding (tied to the
output layer) stays whole too, as in mlx-lm's shards. For ``gemma3`` (the
vision-language checkpoints) only the text tower is split; the vision tower and
projector stay replicated on every rank, so every rank computes the image
embeddings itself (they are small next to the text tower).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def shard(model: Any, config: Mapping[str, Any], group: Any, pipeline: bool) -> bool | None:
    if pipeline:
        return None  # no pipeline stages for Gemma: the error names tensor parallel
    from mlxhost.distributed.sharding import shard_attention_mlp

    kind = config.get("model_type")
    if kind == "gemma3_text":
        shard_attention_mlp(model.model.layers, group)
        return True
    if kind == "gemma3":
        shard_attention_mlp(model.language_model.model.layers, group)
        return True
    return None
