"""mlxhost plugin for Gemma 3 models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlxhost.hookspecs import hookimpl
from mlxhost.types import TOOLS, VISION, ModelInfo, RenderedPrompt, ToolParserFactory
from mlxhost_gemma.template import render
from mlxhost_gemma.tools import make_parser

FAMILY = "gemma"
MODEL_TYPES = {"gemma3", "gemma3_text"}


@hookimpl
def mlxhost_register_models(register: Callable[..., None]) -> None:
    register(
        "mlx-community/gemma-3-4b-it-4bit",
        aliases=["gemma"],
        family=FAMILY,
        capabilities=[VISION, TOOLS],
        context_window=131072,
    )


@hookimpl
def mlxhost_model_family(config: dict[str, Any]) -> str | None:
    return FAMILY if config.get("model_type") in MODEL_TYPES else None


@hookimpl
def mlxhost_render_prompt(
    model: ModelInfo,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
) -> RenderedPrompt | None:
    if model.family != FAMILY:
        return None
    return RenderedPrompt(text=render(messages, model.tokenizer, tools, tool_choice))


@hookimpl
def mlxhost_tool_call_parser(model: ModelInfo) -> ToolParserFactory | None:
    return make_parser if model.family == FAMILY else None
