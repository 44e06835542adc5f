"""The hooks mlxhost plugins implement.

Every hook is named ``mlxhost_<verb>_<noun>``. Hooks marked *firstresult* stop at
the first plugin that returns something other than ``None``: a family plugin
returns ``None`` for models that are not its own, and the built-in fallbacks in
``mlxhost.families.builtin`` (marked ``trylast``) answer for everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from mlxhost.core.domain import ChatRequest, FunctionTool, Message, ToolChoice
    from mlxhost.core.types import (
        LoadedModel,
        ModelInfo,
        ModelSpec,
        ReasoningFormat,
        RenderedPrompt,
        ToolParserFactory,
    )
    from mlxhost.runtime.engine import Engine
    from mlxhost.settings.table import Settings

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
    model: LoadedModel,
    messages: Sequence[Message],
    tools: Sequence[FunctionTool],
    tool_choice: ToolChoice,
    template_variables: Mapping[str, Any],
) -> RenderedPrompt | None:
    """Render the conversation (domain ``Message`` objects, content already
    normalized into ``TextPart``/``ImagePart``) and the offered ``tools`` into
    the model's prompt text, ending with the assistant generation prompt.

    ``tools`` is empty when none are offered (or ``tool_choice`` is ``"none"``);
    ``tool_choice`` is ``"auto"``, ``"none"``, ``"required"`` or a
    ``NamedToolChoice``. ``template_variables`` are the chat-template variables
    the request sets (``enable_thinking``, ``reasoning_effort``, the request's
    ``chat_template_kwargs``; empty when it sets none): a template render passes
    them to the template. The result lists the images it placed, in prompt order
    (``RenderedPrompt.images``); the core rejects a request whose images the
    template did not place.

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
def mlxhost_tool_call_grammar(
    model: ModelInfo, tools: Sequence[FunctionTool], tool_choice: ToolChoice
) -> str | None:
    """Return an llguidance Lark grammar for a reply whose tool calls are
    constrained, in the family's own call format.

    For ``tool_choice`` ``"required"`` or a named function (then ``tools`` holds
    only that function) the reply must be one call to one of ``tools``, its
    arguments matching the tool's parameters. For ``"auto"`` (called only when
    some tool is ``strict``) the reply is free text, but every call it starts
    names one of ``tools`` and a strict tool's arguments match its schema
    (``mlxhost.families.toolcalls.calls_in_free_text`` builds that shape).

    Called per request that forces a call or offers a strict tool. Stops at the
    first non-None result; the fallback (the generic family) writes the grammar
    of the model's own tool format. A forced choice that no plugin can express
    is a 400 naming the model (for a model without a chat template it stays an
    instruction in the prompt). Arguments are limited to the declared
    properties unless the schema allows more (``toolcalls.strict_parameters``).
    """


@hookspec(firstresult=True)
def mlxhost_reasoning_format(model: ModelInfo, tokenizer: Any) -> ReasoningFormat | None:
    """Return how the model marks its thinking: ``ThinkTags`` (start/end markers
    as text and token ids) or ``Harmony`` (gpt-oss's channels), from its
    tokenizer (the Hugging Face tokenizer the engine loaded; None for engines
    without one).

    Called once per model load. Stops at the first non-None result; the
    fallback reads the vocabulary (mlx-lm's thinking-marker inference, and
    harmony's ``<|channel|>``/``<|message|>`` tokens); a model without markers
    does not think (its whole reply is the answer).
    """


@hookspec(firstresult=True)
def mlxhost_context_limit(spec: ModelSpec, config: Mapping[str, Any]) -> int | None:
    """Return the model's context window in tokens, from its spec and ``config.json``
    (an empty mapping while the model is not downloaded).

    Called once per model version, when the registry resolves its facts. Stops
    at the first non-None result; the fallback reads ``max_position_embeddings``
    from the config (top level or ``text_config``). A ``--context-window``
    setting overrides every answer.
    """


@hookspec
def mlxhost_normalize_request(request: ChatRequest) -> ChatRequest | None:
    """Return a changed copy of the request (``attrs.evolve``), or None to leave it.

    Called first for every request, whatever API it came through; every plugin
    is called, each seeing the previous one's result. For normalizations that
    keep meaning but help the prefix cache, e.g. dropping a per-request nonce.
    """


@hookspec(firstresult=True)
def mlxhost_fim_prompt(model: LoadedModel, prefix: str, suffix: str) -> str | None:
    """Return the fill-in-the-middle prompt text for ``prefix`` … ``suffix`` in the
    model's own FIM tokens (legacy completions with ``suffix``), or None when the
    model has none. Stops at the first non-None result; no fallback (a request
    with ``suffix`` for such a model is a 400 naming ``suffix``).
    """


@hookspec(firstresult=True)
def mlxhost_make_engine(settings: Settings) -> Engine | None:
    """Return the engine that loads models and generates tokens.

    Called once at server start. Stops at the first non-None result; the
    fallback is the MLX engine (mlx-vlm, with mlx-lm for text-only checkpoints).
    """


@hookspec(firstresult=True)
def mlxhost_shard_model(model: Any, config: Mapping[str, Any], group: Any, pipeline: bool) -> bool | None:
    """Split a loaded model over the ranks of ``group`` (an ``mx.distributed.Group``)
    in place, for an architecture mlx-lm cannot shard (or to shard it differently);
    return True when done, None to leave it to mlx-lm.

    ``model`` is the mlx-lm (or mlx-vlm) model with its weights still lazy, so each
    rank reads only its part; ``config`` its ``config.json``; ``pipeline`` is True
    for pipeline parallel (``--pipeline``), else tensor parallel is wanted. Use
    ``mlx.nn.layers.distributed.shard_linear`` as mlx-lm's ``shard()`` methods do
    (``mlxhost.distributed.sharding.shard_attention_mlp`` splits standard decoder
    layers). Called on every rank at each load in a distributed group
    (``--ranks`` / ``--hostfile``), before mlx-lm's own ``shard()`` /
    ``pipeline()``. Stops at the first non-None result; without one and without
    mlx-lm's methods the load fails naming the architecture.
    """
