"""What kind of encoder a model folder holds, read once from its files (no MLX).

An **embedding** model is recognised by a sentence-transformers ``modules.json``
(a ``Pooling`` module), or by an encoder architecture (``BertModel``,
``XLMRobertaModel``); a **rerank** model (a cross-encoder)
by a ``*ForSequenceClassification`` encoder architecture. Pooling (mean, CLS,
last token) and normalization follow the sentence-transformers files; without
them, encoders mean-pool and normalize.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from mlxhost.core.types import EMBEDDING, RERANK

# model_type of the encoders the MLX forward pass runs (mlx-embeddings' model code;
# its ModernBERT takes other inputs and weight names: not wired up yet).
ENCODER_TYPES = frozenset({"bert", "xlm-roberta"})
# Cross-encoders: classification heads on these encoders.
RERANK_TYPES = frozenset({"bert", "xlm-roberta"})
POOLING_MODES = ("mean", "cls", "last")


@attrs.frozen
class EncoderFacts:
    """How an embedding or rerank model turns tokens into one vector or score."""

    kind: str  # EMBEDDING or RERANK
    pooling: str = "mean"  # mean | cls | last (embedding models)
    normalize: bool = True
    # The most tokens one input may have (special tokens included).
    max_tokens: int = 512
    dimensions: int | None = None  # the vector's length (hidden size)
    # Trained with a Matryoshka loss: a prefix of the vector, renormalized, is an
    # embedding too, so ``dimensions`` may shorten it.
    matryoshka: bool = False
    num_labels: int = 1  # rerank: the classifier's outputs


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _architectures(config: Mapping[str, Any]) -> list[str]:
    value = config.get("architectures")
    return [a for a in value if isinstance(a, str)] if isinstance(value, list) else []


def kind_from_config(config: Mapping[str, Any]) -> str | None:
    """EMBEDDING, RERANK or None (a generative model, or one we cannot run), from
    ``config.json`` alone (``mlxhost pull`` decides before the weights move)."""
    model_type = config.get("model_type")
    if model_type not in ENCODER_TYPES:
        return None
    architectures = _architectures(config)
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return RERANK if model_type in RERANK_TYPES else None
    if not architectures or any(a.endswith("Model") for a in architectures):
        return EMBEDDING
    return None  # ForMaskedLM and other heads: not an embedding model by themselves


def model_kind(folder: Path | None, config: Mapping[str, Any]) -> str | None:
    """EMBEDDING, RERANK or None for a model folder (``modules.json`` first)."""
    if folder is not None and _pooling_module(folder) is not None:
        return EMBEDDING if config.get("model_type") in ENCODER_TYPES else None
    return kind_from_config(config)


def _modules(folder: Path) -> list[dict[str, Any]]:
    modules = _read(folder / "modules.json")
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


def _pooling_module(folder: Path) -> dict[str, Any] | None:
    for module in _modules(folder):
        if str(module.get("type", "")).endswith(".Pooling"):
            return module
    return None


def pooling_mode(pooling: Mapping[str, Any]) -> str:
    """sentence-transformers' pooling config as one of POOLING_MODES (ValueError otherwise)."""
    mode = pooling.get("pooling_mode")
    if isinstance(mode, str):
        named = {"mean": "mean", "cls": "cls", "lasttoken": "last", "last": "last"}.get(mode)
        if named is None:
            raise ValueError(f"pooling mode {mode!r} is not supported (mean, cls, lasttoken)")
        return named
    flags = [name for key, name in (("pooling_mode_mean_tokens", "mean"),
                                    ("pooling_mode_cls_token", "cls"),
                                    ("pooling_mode_lasttoken", "last")) if pooling.get(key)]
    others = [k for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                          "pooling_mode_weightedmean_tokens") if pooling.get(k)]
    if others or len(flags) > 1:
        raise ValueError(f"pooling {sorted(others + flags)} is not supported (one of mean, cls, lasttoken)")
    return flags[0] if flags else "mean"


def mentions_matryoshka(folder: Path) -> bool:
    """The model card or sentence-transformers config says it was trained for it."""
    st_config = _read(folder / "config_sentence_transformers.json")
    if isinstance(st_config, dict) and st_config.get("matryoshka_dims"):
        return True
    try:
        card = (folder / "README.md").read_text(errors="replace").lower()
    except OSError:
        return False
    return "matryoshka" in card or "mrl" in card.split()


def encoder_facts(folder: Path, config: Mapping[str, Any]) -> EncoderFacts:
    """The facts of an embedding or rerank folder (ValueError if it is neither)."""
    kind = model_kind(folder, config)
    if kind is None:
        raise ValueError(f"{folder} is not an embedding or rerank model")
    window = config.get("max_position_embeddings")
    max_tokens = window if isinstance(window, int) and window > 0 else 512
    if config.get("model_type") == "xlm-roberta":
        max_tokens -= 2  # RoBERTa positions start after the padding index
    st = _read(folder / "sentence_bert_config.json")
    if isinstance(st, dict) and isinstance(st.get("max_seq_length"), int):
        max_tokens = min(max_tokens, st["max_seq_length"])
    hidden = config.get("hidden_size")
    if kind == RERANK:
        labels = config.get("id2label")
        num_labels = len(labels) if isinstance(labels, dict) and labels else 1
        return EncoderFacts(kind, pooling="cls", normalize=False, max_tokens=max_tokens,
                            num_labels=int(config.get("num_labels") or num_labels))
    module = _pooling_module(folder)
    pooling, normalize = "mean", True
    if module is not None:
        normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in _modules(folder))
        settings = _read(folder / str(module.get("path", "")) / "config.json")
        pooling = pooling_mode(settings if isinstance(settings, dict) else {})
        if isinstance(settings, dict) and isinstance(settings.get("word_embedding_dimension"), int):
            hidden = settings["word_embedding_dimension"]
    return EncoderFacts(
        EMBEDDING, pooling=pooling, normalize=normalize, max_tokens=max_tokens,
        dimensions=hidden if isinstance(hidden, int) else None,
        matryoshka=mentions_matryoshka(folder),
    )
