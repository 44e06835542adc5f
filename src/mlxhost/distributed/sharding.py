"""Splitting a loaded (lazy) model over the ranks of a distributed group.

In order: a family plugin's ``mlxhost_shard_model`` hook (for architectures
mlx-lm cannot shard, or to shard differently); else mlx-lm's own methods:
``model.shard(group)`` (tensor parallel) or ``model.model.pipeline(group)``
(pipeline parallel, ``--pipeline``); else :class:`NotShardable`, naming the
architecture and what would work. Runs on every rank, on the weights before
they are evaluated, so each rank reads only its part into memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlxhost.core.errors import MlxhostError


class NotShardable(MlxhostError):
    status_code = 400
    code = "model_not_shardable"


# (model, group, pipeline) -> True when it sharded the model (a plugin hook's answer).
ShardHook = Callable[[Any, Any, bool], "bool | None"]


def model_type(config: Mapping[str, Any]) -> str:
    return str(config.get("model_type") or "unknown")


def shard_model(
    model: Any, config: Mapping[str, Any], group: Any, *, pipeline: bool, hook: ShardHook | None
) -> str:
    """Shard ``model`` in place for ``group``; returns how (for the log and /health)."""
    kind = model_type(config)
    mode = "pipeline" if pipeline else "tensor parallel"
    if hook is not None and hook(model, group, pipeline):
        return f"{mode} (plugin)"
    if pipeline:
        inner: Any = getattr(model, "model", None)
        if callable(getattr(inner, "pipeline", None)):
            inner.pipeline(group)
            return f"{mode} (mlx-lm)"
    elif callable(getattr(model, "shard", None)):
        model.shard(group)
        return f"{mode} (mlx-lm)"
    raise NotShardable(_why(model, kind, pipeline))


def _why(model: Any, kind: str, pipeline: bool) -> str:
    other = (
        "tensor parallel (drop --pipeline)"
        if callable(getattr(model, "shard", None))
        else "pipeline parallel (--pipeline)"
        if callable(getattr(getattr(model, "model", None), "pipeline", None))
        else None
    )
    wanted = "pipeline parallel (--pipeline)" if pipeline else "tensor parallel"
    options = ["run it on one machine (no --ranks / --hostfile)"]
    if other:
        options.insert(0, other)
    options.append("a family plugin implementing mlxhost_shard_model for it (docs/plugins.md)")
    return (
        f"Model architecture '{kind}' cannot be split {wanted}: neither mlx-lm nor a "
        f"plugin shards it that way. Options: {'; '.join(options)}."
    )


def shard_attention_mlp(layers: Any, group: Any) -> None:
    """Tensor-parallel Megatron split of standard decoder layers
    (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``), as mlx-lm's
    ``shard()`` methods do: q/k/v and gate/up split by output rows, o/down by
    input columns followed by an ``all_sum``. Key/value heads are split when their
    count divides by the group size; a single key/value head (multi-query
    attention, e.g. Gemma 3 270M) stays whole on every rank, since each rank's
    query heads all read it. For family plugins."""
    from mlx.nn.layers.distributed import shard_linear

    size = group.size()
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        if attn.n_heads % size:
            raise NotShardable(f"{attn.n_heads} attention heads do not split over {size} ranks")
        split_kv = attn.n_kv_heads % size == 0
        if not split_kv and attn.n_kv_heads != 1:
            raise NotShardable(
                f"{attn.n_kv_heads} key/value heads neither split over {size} ranks nor are one"
            )
        attn.q_proj = shard_linear(attn.q_proj, "all-to-sharded", group=group)
        if split_kv:
            attn.k_proj = shard_linear(attn.k_proj, "all-to-sharded", group=group)
            attn.v_proj = shard_linear(attn.v_proj, "all-to-sharded", group=group)
            attn.n_kv_heads //= size
        attn.o_proj = shard_linear(attn.o_proj, "sharded-to-all", group=group)
        attn.n_heads //= size
        if hasattr(attn, "repeats"):
            attn.repeats = attn.n_heads // attn.n_kv_heads
        mlp.gate_proj = shard_linear(mlp.gate_proj, "all-to-sharded", group=group)
        mlp.up_proj = shard_linear(mlp.up_proj, "all-to-sharded", group=group)
        mlp.down_proj = shard_linear(mlp.down_proj, "sharded-to-all", group=group)


class Sharder:
    """The engine's ``sharder(model, config)`` on one rank: the plugin hook, then
    mlx-lm. Its ``group`` (``mx.distributed.Group``) is set once the rank has joined."""

    def __init__(self, pm: Any, pipeline: bool) -> None:
        self._pm = pm
        self.pipeline = pipeline
        self.group: Any = None

    def __call__(self, model: Any, config: Mapping[str, Any]) -> str:
        if self.group is None:
            raise RuntimeError("the distributed group is not joined yet")

        def hook(model: Any, group: Any, pipeline: bool) -> bool | None:
            answer = self._pm.hook.mlxhost_shard_model(
                model=model, config=config, group=group, pipeline=pipeline
            )
            return bool(answer) if answer is not None else None

        return shard_model(model, config, self.group, pipeline=self.pipeline, hook=hook)
