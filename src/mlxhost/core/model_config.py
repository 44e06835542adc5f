"""Facts read from a model's ``config.json``, each read here once.

A vision-language model keeps its language model's facts under ``text_config``;
a text model keeps them at the top level. Two lookups cover every reader:
:func:`top_or_text` (the top level wins: the context window, the vocabulary) and
:func:`language_fact` (``text_config`` wins: the KV cache's layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's section of a VLM's config (empty for a text model)."""
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else {}


def positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def language_fact(config: Mapping[str, Any], key: str) -> Any:
    """A key of the language model's config: ``text_config`` first (VLMs), then the top."""
    text = text_config(config)
    return text[key] if text.get(key) is not None else config.get(key)


def top_or_text(config: Mapping[str, Any], key: str) -> int | None:
    """A positive integer at the top level, else inside ``text_config``."""
    for section in (config, text_config(config)):
        value = positive_int(section.get(key))
        if value is not None:
            return value
    return None


def vocab_size(config: Mapping[str, Any]) -> int | None:
    """The size of the model's output layer."""
    return top_or_text(config, "vocab_size")


def context_window(config: Mapping[str, Any]) -> int | None:
    """``max_position_embeddings``: the positions the model was trained for."""
    return top_or_text(config, "max_position_embeddings")


def eos_ids(*sources: Mapping[str, Any]) -> set[int]:
    """The ``eos_token_id`` values (an int or a list) of configs; for a model's
    ``config.json`` its ``text_config`` counts too."""
    ids: set[int] = set()
    for source in sources:
        for section in (source, text_config(source)):
            value = section.get("eos_token_id")
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
    return ids
