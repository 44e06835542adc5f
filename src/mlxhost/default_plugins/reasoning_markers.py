"""Fallback thinking markers: read from the loaded tokenizer's vocabulary."""

from __future__ import annotations

from typing import Any

from mlxhost.hookspecs import hookimpl
from mlxhost.reasoning.formats import reasoning_format_of
from mlxhost.types import ModelInfo, ReasoningFormat


@hookimpl(trylast=True)
def mlxhost_reasoning_format(model: ModelInfo, tokenizer: Any) -> ReasoningFormat | None:
    return reasoning_format_of(tokenizer)
