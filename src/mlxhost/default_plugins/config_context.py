"""Fallback context window: ``max_position_embeddings`` from the model's config."""

from __future__ import annotations

from typing import Any

from mlxhost.hookspecs import hookimpl
from mlxhost.types import ModelInfo


def context_window_from_config(config: dict[str, Any]) -> int | None:
    """``max_position_embeddings`` at the top level, else inside ``text_config``."""
    for section in (config, config.get("text_config") or {}):
        value = section.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return None


@hookimpl(trylast=True)
def mlxhost_context_limit(model: ModelInfo) -> int | None:
    return context_window_from_config(model.config)
