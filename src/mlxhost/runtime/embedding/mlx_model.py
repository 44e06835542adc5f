"""The forward pass of an embedding or rerank model, on MLX (worker thread only).

The encoders themselves are mlx-embeddings' model code (``mlx_embeddings.models.*``:
BERT, XLM-RoBERTa); pooling, normalization and the cross-encoder
heads are here, because they follow the model's sentence-transformers files
(``facts.EncoderFacts``) and mlx-embeddings' models always mean-pool.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlxhost.core.encoder_facts import EncoderFacts
from mlxhost.core.types import RERANK

# Checkpoint prefixes of the encoder inside a *ForSequenceClassification model.
_ENCODER_PREFIXES = ("bert.", "roberta.")


class EncoderModel:
    """Loaded weights plus ``run(batch)``: one padded, masked forward pass."""

    def __init__(self, folder: Path, config: Mapping[str, Any], facts: EncoderFacts) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.utils import tree_flatten

        self.facts = facts
        self.pad_id = int(config.get("pad_token_id") or 0)
        module = importlib.import_module(
            "mlx_embeddings.models." + str(config["model_type"]).replace("-", "_")
        )
        args = module.ModelArgs.from_dict(dict(config))
        self.encoder = module.Model(args)
        weights: dict[str, Any] = {}
        for path in sorted(folder.glob("*.safetensors")):
            weights.update(mx.load(str(path)))  # type: ignore[arg-type]  # a dict for .safetensors
        if not weights:
            raise FileNotFoundError(f"no *.safetensors in {folder}")
        head = {k: v for k, v in weights.items() if k.startswith("classifier.")}
        body = {}
        for key, value in weights.items():
            if key in head:
                continue
            for prefix in _ENCODER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    break
            body[key] = value
        if hasattr(self.encoder, "sanitize"):
            body = self.encoder.sanitize(body)
        params: list[tuple[str, Any]] = tree_flatten(self.encoder.parameters())  # type: ignore[assignment]
        expected = {k for k, _ in params}
        missing = sorted(k for k in expected - body.keys() if not k.startswith("pooler."))
        if missing:
            raise ValueError(f"{folder}: weights missing for {', '.join(missing[:5])}")
        self.encoder.load_weights([(k, v) for k, v in body.items() if k in expected], strict=False)
        self.head: Any = None
        if facts.kind == RERANK:
            self.head = _classifier(head, nn)
            if self.head is None:
                raise ValueError(f"{folder}: a cross-encoder without classifier weights")
        self.encoder.eval()
        _compile_gelu(self.encoder, nn)
        mx.eval(self.encoder.parameters())
        self.nbytes = sum(v.nbytes for _, v in params)
        self.nbytes += sum(v.nbytes for v in head.values())

    def sync(self) -> None:
        """Wait for MLX work in flight: a decode step leaves its next token
        computing on mlx-lm's generation stream (``async_eval``)."""
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        mx.synchronize(generation_stream)
        mx.synchronize()

    def run(self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]] | None = None) -> Any:
        """Vectors (embedding: ``n x dim``, pooled and normalized as the model says)
        or raw scores (rerank: ``n x labels``), as a float32 numpy array. Inputs are
        right-padded to the longest and masked."""
        import mlx.core as mx
        import numpy as np

        lengths = [len(x) for x in ids]
        width = max(lengths)
        tokens = np.full((len(ids), width), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(ids), width), dtype=np.float32)
        types = np.zeros((len(ids), width), dtype=np.int32)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1.0
            if type_ids is not None:
                types[row, : len(seq)] = type_ids[row]
        mask_mx = mx.array(mask)
        out = self.encoder(
            mx.array(tokens), token_type_ids=mx.array(types), attention_mask=mask_mx
        )
        hidden = out.last_hidden_state.astype(mx.float32)
        if self.head is not None:
            result = self.head(hidden, out.pooler_output)
        else:
            result = pool(hidden, mask_mx, self.facts.pooling, mx.array(lengths))
            if self.facts.normalize:
                result = result / mx.maximum(mx.linalg.norm(result, axis=-1, keepdims=True), 1e-12)
        mx.eval(result)
        return np.array(result.astype(mx.float32))


def _compile_gelu(model: Any, nn: Any) -> None:
    """Exact GELU as one compiled kernel: on the CPU, MLX's uncompiled ``nn.gelu``
    (erf and the multiplies, one pass over memory each) took 85% of MiniLM's
    forward pass; compiled it is ~3x faster, the same values (2e-7 apart)."""
    import mlx.core as mx

    compiled = mx.compile(nn.gelu, shapeless=True)
    for _, module in model.named_modules():
        act = getattr(module, "intermediate_act_fn", None)
        if isinstance(act, nn.GELU) and getattr(act, "_approx", None) == "none":
            module.intermediate_act_fn = compiled


def pool(hidden: Any, mask: Any, mode: str, lengths: Any) -> Any:
    """One vector per row of ``hidden`` (``batch x length x dim``, right-padded)."""
    import mlx.core as mx

    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        return hidden[mx.arange(hidden.shape[0]), lengths - 1]
    summed = (hidden * mask[..., None]).sum(axis=1)
    return summed / mx.maximum(mask.sum(axis=1, keepdims=True), 1e-9)


def _classifier(weights: Mapping[str, Any], nn: Any) -> Any:
    """The cross-encoder's head: BERT's (pooler then ``classifier``) or RoBERTa's
    (``classifier.dense`` then ``classifier.out_proj`` on the first token)."""
    import mlx.core as mx

    def linear(prefix: str) -> Any:
        w = weights[f"{prefix}.weight"]
        layer = nn.Linear(w.shape[1], w.shape[0], bias=f"{prefix}.bias" in weights)
        layer.load_weights([(k[len(prefix) + 1:], v) for k, v in weights.items()
                            if k.startswith(prefix + ".")])
        return layer

    if "classifier.out_proj.weight" in weights:
        dense, out = linear("classifier.dense"), linear("classifier.out_proj")
        return lambda hidden, pooled: out(mx.tanh(dense(hidden[:, 0])))
    if "classifier.weight" in weights:
        out = linear("classifier")
        return lambda hidden, pooled: out(pooled)
    return None


def sigmoid(values: Any) -> list[float]:
    return [1.0 / (1.0 + math.exp(-float(v))) for v in values]
