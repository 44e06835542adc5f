"""Fill-in-the-middle for Qwen2.5-Coder (legacy completions with ``suffix``)."""

from __future__ import annotations

from typing import Any

from mlxhost.core.types import LoadedModel

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")


def _knows(tokenizer: Any, token: str) -> bool:
    vocab = None
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        vocab = getattr(tokenizer, "vocab", None)
    if isinstance(vocab, dict):
        return token in vocab
    try:
        token_id = tokenizer.convert_tokens_to_ids(token)
    except Exception:
        return False
    unknown = getattr(tokenizer, "unk_token_id", None)
    return isinstance(token_id, int) and token_id != unknown


def fim(model: LoadedModel, prefix: str, suffix: str) -> str | None:
    """Qwen's FIM prompt when the tokenizer has the FIM tokens (Qwen2.5-Coder), else None."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        return None
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's or mlx-lm's wrapper
    if not all(_knows(tokenizer, token) for token in FIM_TOKENS):
        return None
    return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
