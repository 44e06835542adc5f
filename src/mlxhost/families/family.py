"""Model families as one declaration: what a family plugin is made of.

A family plugin knows a set of ``model_type`` values, how their conversations
become prompt text, how their tool calls look, and which models it ships. It
declares that once, as a :class:`Family`, and exposes ``FamilyPlugin(family)``
as its entry point. :class:`FamilyPlugin` implements the ordinary hooks
(``mlxhost_register_models``, ``mlxhost_model_family``,
``mlxhost_render_prompt``, ``mlxhost_tool_call_parser``,
``mlxhost_context_limit``, ``mlxhost_shard_model``), each answering only for models of its family and
returning ``None`` otherwise, so the dispatch on ``model.family`` is written
once, here, rather than in every plugin. A plugin that needs something the
declaration cannot say still implements a hook directly, next to it.

A family is an override: whatever it leaves out (its render function, its tool
parser or grammar) falls through to the built-in generic family
(``mlxhost.families.builtin.generic_family``), which serves every model mlx-lm or
mlx-vlm loads from its own chat template and tool-call format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from mlxhost.core.domain import FunctionTool, Message, ToolChoice
from mlxhost.core.types import LoadedModel, ModelInfo, ModelSpec, RenderedPrompt, ToolParserFactory
from mlxhost.families.hookspecs import hookimpl

# (model, messages, offered tools, tool choice) -> the prompt and the images it placed.
# A render that also takes a ``variables`` keyword gets the request's chat-template
# variables (``enable_thinking``, ``reasoning_effort``, ``chat_template_kwargs``).
RenderFunction = Callable[..., RenderedPrompt]
# (spec, config) -> the context window, or None to leave it to the config.
ContextLimitFunction = Callable[[ModelSpec, Mapping[str, Any]], "int | None"]
# (tools, choice) -> the Lark grammar a reply that must call one of them matches.
ToolGrammarFunction = Callable[[Sequence[FunctionTool], ToolChoice], str]
# (model, prefix, suffix) -> the fill-in-the-middle prompt, or None if this model has none.
FimFunction = Callable[[LoadedModel, str, str], "str | None"]
# (model, config, group, pipeline) -> True when it split the model over the group's ranks.
ShardFunction = Callable[[Any, Mapping[str, Any], Any, bool], "bool | None"]


@attrs.frozen
class ModelRegistration:
    """A model the family ships (registered under its id and aliases)."""

    id: str
    aliases: tuple[str, ...] = ()
    capabilities: frozenset[str] = frozenset()
    # Reported while the model's config is not on disk.
    context_window: int | None = None
    path: Path | None = None


@attrs.frozen
class Family:
    name: str
    # config.json ``model_type`` values of this family.
    model_types: frozenset[str]
    # Each field left None is answered by the generic family (the model's own
    # template and tool format): a family declares only its quirks.
    render: RenderFunction | None = None
    tool_parser: ToolParserFactory | None = None
    models: tuple[ModelRegistration, ...] = ()
    context_limit: ContextLimitFunction | None = None
    fim: FimFunction | None = None
    tool_grammar: ToolGrammarFunction | None = None
    shard: ShardFunction | None = None


class FamilyPlugin:
    """The hooks of one :class:`Family`: register with ``pm.register(FamilyPlugin(f))``
    or name the instance as the plugin's entry point (``"pkg.plugin:plugin"``)."""

    def __init__(self, family: Family) -> None:
        self.family = family
        self._render_takes_variables = family.render is not None and _takes_keyword(
            family.render, "variables"
        )

    def __repr__(self) -> str:
        return f"FamilyPlugin({self.family.name!r})"

    @hookimpl
    def mlxhost_register_models(self, register: Callable[..., None]) -> None:
        for model in self.family.models:
            register(
                model.id,
                aliases=model.aliases,
                family=self.family.name,
                capabilities=model.capabilities,
                context_window=model.context_window,
                path=model.path,
            )

    @hookimpl
    def mlxhost_model_family(self, config: dict[str, Any]) -> str | None:
        return self.family.name if config.get("model_type") in self.family.model_types else None

    @hookimpl
    def mlxhost_render_prompt(
        self,
        model: LoadedModel,
        messages: Sequence[Message],
        tools: Sequence[FunctionTool],
        tool_choice: ToolChoice,
        template_variables: Mapping[str, Any],
    ) -> RenderedPrompt | None:
        if model.family != self.family.name or self.family.render is None:
            return None
        if self._render_takes_variables:
            return self.family.render(
                model, messages, tools, tool_choice, variables=template_variables
            )
        return self.family.render(model, messages, tools, tool_choice)

    @hookimpl
    def mlxhost_tool_call_parser(self, model: ModelInfo) -> ToolParserFactory | None:
        return self.family.tool_parser if model.family == self.family.name else None

    @hookimpl
    def mlxhost_tool_call_grammar(
        self, model: ModelInfo, tools: Sequence[FunctionTool], tool_choice: ToolChoice
    ) -> str | None:
        if model.family != self.family.name or self.family.tool_grammar is None:
            return None
        return self.family.tool_grammar(tools, tool_choice)

    @hookimpl
    def mlxhost_fim_prompt(self, model: LoadedModel, prefix: str, suffix: str) -> str | None:
        if model.family != self.family.name or self.family.fim is None:
            return None
        return self.family.fim(model, prefix, suffix)

    @hookimpl
    def mlxhost_context_limit(self, spec: ModelSpec, config: Mapping[str, Any]) -> int | None:
        if spec.family != self.family.name or self.family.context_limit is None:
            return None
        return self.family.context_limit(spec, config)

    @hookimpl
    def mlxhost_shard_model(
        self, model: Any, config: Mapping[str, Any], group: Any, pipeline: bool
    ) -> bool | None:
        if self.family.shard is None or config.get("model_type") not in self.family.model_types:
            return None
        return self.family.shard(model, config, group, pipeline)


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
