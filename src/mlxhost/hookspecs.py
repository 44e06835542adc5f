"""The hooks mlxhost plugins implement.

Every hook is named ``mlxhost_<verb>_<noun>``. Hooks marked *firstresult* stop at
the first plugin that returns something other than ``None``: a family plugin
returns ``None`` for models that are not its own, and the built-in fallbacks in
``mlxhost.default_plugins`` (marked ``trylast``) answer for everything else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from mlxhost.runtime.engine import Engine
    from mlxhost.settings import Settings
    from mlxhost.types import ModelInfo, RenderedPrompt, ToolParserFactory

hookspec = pluggy.HookspecMarker("mlxhost")
hookimpl = pluggy.HookimplMarker("mlxhost")


@hookspec
def mlxhost_register_models(register: Callable[..., None]) -> None:
    """Register models with ``register(model_id, *, aliases=(), family=None,
    capabilities=(), context_window=None, path=None)``.

    Called once when the server builds its model registry. Every plugin is called.
    The core rejects a duplicate id or alias and records which plugin registered what.
    """


@hookspec(firstresult=True)
def mlxhost_model_family(config: dict[str, Any]) -> str | None:
    """Name the family (e.g. ``"gemma"``) of a model that no plugin registered,
    from its ``config.json``. Stops at the first non-None result.

    Called when a cached or local model is discovered.
    """


@hookspec(firstresult=True)
def mlxhost_render_prompt(
    model: ModelInfo,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
) -> RenderedPrompt | None:
    """Render OpenAI chat ``messages`` (and ``tools``, when offered) into the
    model's prompt text, ending with the assistant generation prompt.

    ``tools`` is None when none are offered (or ``tool_choice`` is ``"none"``);
    ``tool_choice`` is ``"auto"``, ``"required"``, a named function
    (``{"type": "function", "function": {"name": ...}}``) or None.

    Called per request on the loaded model. Stops at the first non-None result;
    the fallback renders with the model's own chat template.
    """


@hookspec(firstresult=True)
def mlxhost_tool_call_parser(model: ModelInfo) -> ToolParserFactory | None:
    """Return a factory ``factory(tools) -> StreamParser`` that turns the model's
    generated text into content and tool calls.

    Called once per model load. Stops at the first non-None result; the fallback
    treats all text as content.
    """


@hookspec(firstresult=True)
def mlxhost_context_limit(model: ModelInfo) -> int | None:
    """Return the model's context window in tokens.

    Called once per model (at listing or load). Stops at the first non-None
    result; the fallback reads ``max_position_embeddings`` from the config (top
    level or ``text_config``). A ``--context-window`` setting overrides every answer.
    """


@hookspec(firstresult=True)
def mlxhost_make_engine(settings: Settings) -> Engine | None:
    """Return the engine that loads models and generates tokens.

    Called once at server start. Stops at the first non-None result; the
    fallback is the MLX engine (mlx-vlm, with mlx-lm for text-only checkpoints).
    """
