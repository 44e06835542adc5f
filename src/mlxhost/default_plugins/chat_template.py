"""Fallback prompt rendering: the model's own chat template."""

from __future__ import annotations

from collections.abc import Sequence

from mlxhost.domain import FunctionTool, Message, ToolChoice
from mlxhost.errors import InvalidRequest
from mlxhost.hookspecs import hookimpl
from mlxhost.templating import template_messages, template_tools
from mlxhost.types import LoadedModel, RenderedPrompt


@hookimpl(trylast=True)
def mlxhost_render_prompt(
    model: LoadedModel,
    messages: Sequence[Message],
    tools: Sequence[FunctionTool],
    tool_choice: ToolChoice,
) -> RenderedPrompt | None:
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest(
            f"Model '{model.id}' has no chat template and no plugin renders its prompts."
        )
    plain, images = template_messages(messages)
    if images:
        raise InvalidRequest(
            f"Model '{model.id}' has no plugin that places images in its prompts; send text only."
        )
    try:
        text = tokenizer.apply_chat_template(
            plain, tools=template_tools(tools), add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # jinja raise_exception() for unsupported role orders etc.
        raise InvalidRequest(f"The model's chat template rejected the messages: {exc}") from exc
    return RenderedPrompt(text=text)
