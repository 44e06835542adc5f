"""Fallback thinking markers: read from the loaded tokenizer's vocabulary."""

from __future__ import annotations

from typing import Any

from mlxhost.core.types import ModelInfo, ReasoningFormat
from mlxhost.families.hookspecs import hookimpl
from mlxhost.families.reasoning.formats import reasoning_format_of


@hookimpl(trylast=True)
def mlxhost_reasoning_format(model: ModelInfo, tokenizer: Any) -> ReasoningFormat | None:
    return reasoning_format_of(tokenizer)
