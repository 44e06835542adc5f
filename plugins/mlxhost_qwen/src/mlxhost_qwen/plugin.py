"""mlxhost plugin for Qwen models (Qwen2/2.5, Qwen3, Qwen3-VL)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlxhost.hookspecs import hookimpl
from mlxhost.types import TOOLS, VISION, ModelInfo, RenderedPrompt, ToolParserFactory
from mlxhost_qwen.template import render
from mlxhost_qwen.tools import make_parser

FAMILY = "qwen"
MODEL_TYPES = {"qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3", "qwen3_moe", "qwen3_vl", "qwen3_vl_moe"}


@hookimpl
def mlxhost_register_models(register: Callable[..., None]) -> None:
    register(
        "mlx-community/Qwen3-VL-4B-Instruct-4bit",
        aliases=["qwen"],
        family=FAMILY,
        capabilities=[VISION, TOOLS],
        context_window=262144,
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
    return RenderedPrompt(text=render(messages, tools, model.tokenizer, tool_choice))


@hookimpl
def mlxhost_tool_call_parser(model: ModelInfo) -> ToolParserFactory | None:
    return make_parser if model.family == FAMILY else None
