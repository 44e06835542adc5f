"""How a model marks its thinking, read from its vocabulary once per load.

``<think>``-style markers come from mlx-lm's own inference (``TokenizerWrapper``
knows ``<think>``, ``<longcat_think>``, ``<|think:start|>``, Gemma 4's
``<|channel>thought`` … ``<channel|>`` and the XTML form); harmony (gpt-oss) is
recognised by its ``<|channel|>`` / ``<|message|>`` tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mlxhost.core.types import Harmony, ReasoningFormat, ThinkTags

log = logging.getLogger(__name__)

HARMONY_TOKENS = ("<|channel|>", "<|message|>", "<|start|>", "<|end|>")
# Single-token thinking markers (mlx-lm's list) and Gemma 4's channel tokens.
THINK_PAIRS = (("<think>", "</think>"), ("<longcat_think>", "</longcat_think>"),
               ("<|think:start|>", "<|think:end|>"), ("<|channel>", "<channel|>"))


def _encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in tokenizer.encode(text, add_special_tokens=False))


def harmony_format(tokenizer: Any) -> Harmony:
    return Harmony(
        analysis_ids=_encode(tokenizer, "<|channel|>analysis<|message|>"),
        end_ids=_encode(tokenizer, "<|end|>"),
        final_ids=_encode(tokenizer, "<|channel|>final<|message|>"),
        close_ids=_encode(tokenizer, "<|end|><|start|>assistant<|channel|>final<|message|>"),
    )


def reasoning_format_of(tokenizer: Any) -> ReasoningFormat | None:
    """The model's thinking markers (None: its vocabulary has none)."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    vocab = tokenizer.get_vocab()
    if all(token in vocab for token in HARMONY_TOKENS):
        return harmony_format(tokenizer)
    from mlx_lm.tokenizer_utils import _infer_thinking

    try:
        start, end, start_ids, end_ids = _infer_thinking(tokenizer)
    except Exception:  # an unusual tokenizer: no split rather than no load
        log.warning("Could not read thinking markers from the tokenizer", exc_info=True)
        return None
    if start is None:
        return None
    return ThinkTags(start=start, end=end, start_ids=tuple(start_ids), end_ids=tuple(end_ids))


def thinking_kind_on_disk(folder: Path | None) -> str | None:
    """"harmony" or "think" when the model's tokenizer files declare thinking
    markers (its ``tokenizer_config.json`` added tokens), before any load; None otherwise."""
    if folder is None:
        return None
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None
    decoder = config.get("added_tokens_decoder") if isinstance(config, dict) else None
    tokens = {t.get("content") for t in (decoder or {}).values() if isinstance(t, dict)}
    if all(token in tokens for token in HARMONY_TOKENS):
        return "harmony"
    if any(pair[0] in tokens and pair[1] in tokens for pair in THINK_PAIRS):
        return "think"
    return None


def levels_of_kind(kind: str | None) -> tuple[str, ...]:
    if kind is None:
        return ()
    return ("low", "medium", "high") if kind == "harmony" else ("none", "low", "medium", "high")
