"""Qwen prompts: the model's own chat template (it renders tools itself), else
Qwen3-VL's, fed messages in the shape Qwen templates expect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

from mlxhost.core.domain import FunctionTool, Message, ToolChoice
from mlxhost.core.types import ImageInput, RenderedPrompt
from mlxhost.families.templating import (
    render_chat_template,
    special_tokens,
    template_messages,
    template_tools,
)
from mlxhost.families.toolcalls import tool_choice_instruction

CHAT_TEMPLATE = files("mlxhost_qwen").joinpath("chat_template.jinja").read_text()


def normalize_messages(
    messages: Sequence[Message],
) -> tuple[list[dict[str, Any]], tuple[ImageInput, ...]]:
    """Template messages (``developer`` is ``system`` to Qwen) and their images."""
    return template_messages(messages, roles={"developer": "system"})


def with_instruction(messages: list[dict[str, Any]], line: str) -> list[dict[str, Any]]:
    """Add one instruction line to the system message (made if there is none):
    the template prints the system text just before its tool section."""
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        content = first["content"]
        if isinstance(content, str):
            first["content"] = f"{content}\n\n{line}" if content else line
        else:
            first["content"] = [*content, {"type": "text", "text": f"\n\n{line}"}]
        return [first, *messages[1:]]
    return [{"role": "system", "content": line}, *messages]


def render(
    messages: Sequence[Message],
    tools: Sequence[FunctionTool] = (),
    tokenizer: Any = None,
    tool_choice: ToolChoice = "auto",
    variables: Mapping[str, Any] | None = None,
) -> RenderedPrompt:
    """The prompt text and its images. The template renders ``tools`` itself;
    ``tool_choice`` "required" or a named function adds one instruction line
    (only when tools are offered). ``variables``: the request's template
    variables (Qwen3's ``enable_thinking``; ``chat_template_kwargs``)."""
    template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
    normalized, images = normalize_messages(messages)
    line = tool_choice_instruction(tool_choice) if tools else None
    if line:
        normalized = with_instruction(normalized, line)
    text = render_chat_template(
        template,
        normalized,
        tools=template_tools(tools),
        **{**special_tokens(tokenizer), **(variables or {})},
    )
    return RenderedPrompt(text=text, images=images)
