"""Rendering Jinja chat templates the way Hugging Face tokenizers do, for plugins."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from mlxhost.core.domain import FunctionTool, ImagePart, Message, TextPart
from mlxhost.core.types import ImageInput, ToolCall


class TemplateError(Exception):
    """The template refused the conversation (``raise_exception`` in Jinja)."""


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=16)
def _compile(template: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_chat_template(
    template: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    **variables: Any,
) -> str:
    """Render ``template`` with the variables transformers passes (bos_token etc. in ``variables``)."""
    return _compile(template).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **variables
    )


def special_tokens(tokenizer: Any) -> dict[str, Any]:
    """The special-token variables a template expects, from a tokenizer (if any)."""
    if tokenizer is None:
        return {}
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    return {name: str(getattr(tokenizer, name)) for name in names if getattr(tokenizer, name, None)}


# --- domain messages as chat-template variables --------------------------------

IMAGE_PLACEHOLDER: dict[str, str] = {"type": "image"}


def template_tool_call(call: ToolCall) -> dict[str, Any]:
    """An earlier call as Hugging Face templates expect it: arguments as an object
    (templates print them with ``tojson``); arguments that are not JSON stay text."""
    try:
        arguments: Any = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = call.arguments
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def template_messages(
    messages: Sequence[Message],
    *,
    roles: Mapping[str, str] | None = None,
    text_only_as_string: bool = True,
) -> tuple[list[dict[str, Any]], tuple[ImageInput, ...]]:
    """Messages in the shape Hugging Face chat templates are written against, and
    the images in the order the template will place them.

    Content is a list of ``{"type": "text", "text"}`` / ``{"type": "image"}``
    parts, or (``text_only_as_string``) a plain string when there is no image:
    older templates expect one. ``roles`` renames roles (e.g. ``developer`` to
    ``system``). Templates print no image of a system message, so such images
    open the next user turn instead (and are placed there).
    """
    out: list[dict[str, Any]] = []
    images: list[ImageInput] = []
    carried: list[ImagePart] = []  # system-message images waiting for a user turn
    for message in messages:
        role = (roles or {}).get(message.role, message.role)
        parts = list(message.content)
        if message.role in ("system", "developer"):
            carried.extend(p for p in parts if isinstance(p, ImagePart))
            parts = [p for p in parts if isinstance(p, TextPart)]
        elif message.role == "user" and carried:
            parts = [*carried, *parts]
            carried = []
        content: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            else:
                content.append(dict(IMAGE_PLACEHOLDER))
                if part.image is None:
                    raise ValueError(f"{part.where or 'image'}: not decoded")
                images.append(part.image)
        item: dict[str, Any] = {"role": role}
        if text_only_as_string and all(c["type"] == "text" for c in content):
            item["content"] = "".join(c["text"] for c in content)
        else:
            item["content"] = content
        if message.tool_calls:
            item["tool_calls"] = [template_tool_call(call) for call in message.tool_calls]
        if message.reasoning:
            # Qwen3, DeepSeek, GLM templates read reasoning_content; gpt-oss's reads
            # thinking (and refuses it beside content in a tool-calling turn).
            item["reasoning_content"] = message.reasoning
            if not item["content"]:
                item["thinking"] = message.reasoning
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        if message.name:
            item["name"] = message.name
        out.append(item)
    if carried:  # no user turn followed: a user turn of its own
        out.append({"role": "user", "content": [dict(IMAGE_PLACEHOLDER) for _ in carried]})
        images.extend(p.image for p in carried if p.image is not None)
    return out, tuple(images)


def template_tools(tools: Sequence[FunctionTool]) -> list[dict[str, Any]] | None:
    """Offered tools as OpenAI tool objects (None when there are none)."""
    return [tool.as_openai() for tool in tools] or None
