"""Fallback context window: ``max_position_embeddings`` from the model's config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlxhost.core import model_config
from mlxhost.core.types import ModelSpec
from mlxhost.families.hookspecs import hookimpl


def context_window_from_config(config: Mapping[str, Any]) -> int | None:
    """``max_position_embeddings`` at the top level, else inside ``text_config``."""
    return model_config.context_window(config)


@hookimpl(trylast=True)
def mlxhost_context_limit(spec: ModelSpec, config: Mapping[str, Any]) -> int | None:
    return context_window_from_config(config)
