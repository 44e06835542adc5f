"""Gemma 3 prompts: its chat template wants one leading system message and
strictly alternating user/model turns, so the conversation is normalized first."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from mlxhost.core.domain import FunctionTool, Message, TextPart, ToolChoice
from mlxhost.core.types import ImageInput, RenderedPrompt
from mlxhost.families.templating import render_chat_template, special_tokens
from mlxhost_gemma.tools import tool_code_block, tool_output_block, tool_prompt

CHAT_TEMPLATE = files("mlxhost_gemma").joinpath("chat_template.jinja").read_text()


Part = dict[str, Any]


def _parts(message: Message, images: list[ImageInput]) -> list[Part]:
    """A message's content as Gemma template parts (text, image placeholders);
    the images are collected in the order they are placed."""
    parts: list[Part] = []
    for part in message.content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif part.image is not None:
            parts.append({"type": "image"})
            images.append(part.image)
    return parts


def _text(parts: list[Part]) -> str:
    return "\n\n".join(p["text"] for p in parts if p["type"] == "text")


def _append(parts: list[Part], more: list[Part]) -> None:
    """Add ``more`` to a turn's parts; neighbouring texts join with a blank line.

    One text part, not a separate "\n\n" part: the template trims every text part.
    """
    for part in more:
        if part["type"] == "text" and parts and parts[-1]["type"] == "text":
            parts[-1] = {"type": "text", "text": f"{parts[-1]['text']}\n\n{part['text']}"}
        else:
            parts.append(dict(part))


def _turn_parts(message: Message, images: list[ImageInput]) -> list[Part]:
    """A message's content as Gemma parts, with tool calls and results in the
    fenced forms the tool prompt describes."""
    parts = _parts(message, images)
    if message.role == "assistant" and message.tool_calls:
        parts = [p for p in parts if p["type"] != "text" or p["text"].strip()]
        _append(parts, [{"type": "text", "text": tool_code_block(message.tool_calls)}])
    elif message.role == "tool":
        placed = [p for p in parts if p["type"] == "image"]
        parts = [{"type": "text", "text": tool_output_block(_text(parts))}, *placed]
    return parts


def normalize_messages(
    messages: Sequence[Message], system_suffix: str | None = None
) -> tuple[list[dict[str, Any]], tuple[ImageInput, ...]]:
    """Template messages and the images they place, in order.

    Leading system/developer messages become one system message (followed by
    ``system_suffix``, the tool section, when given); their images open the
    first user turn (the template prints system text only); later system
    messages join the next user turn; tool results are user content;
    consecutive turns of one role are merged; a conversation that starts with
    the model gets an empty user turn first."""
    system: list[str] = []
    system_images: list[ImageInput] = []
    turns: list[dict[str, Any]] = []
    images: list[ImageInput] = []
    for message in messages:
        role: str = message.role
        if role in ("system", "developer") and not turns:
            parts = _turn_parts(message, system_images)
            system.append(_text(parts))
            continue
        parts = _turn_parts(message, images)
        if role in ("system", "developer"):
            role = "user"
        elif role != "assistant":
            role = "user"  # user and tool
        if turns and turns[-1]["role"] == role:
            _append(turns[-1]["content"], parts)
        else:
            turns.append({"role": role, "content": parts})
    if (turns and turns[0]["role"] == "assistant") or (not turns and system_images):
        turns.insert(0, {"role": "user", "content": []})
    if system_images:  # they open the first user turn, which comes first in the prompt
        turns[0]["content"][:0] = [{"type": "image"} for _ in system_images]
        images[:0] = system_images
    if system_suffix:
        system.append(system_suffix)
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": "\n\n".join(system)})
    out.extend(turns)
    return out, tuple(images)


def render(
    messages: Sequence[Message],
    tokenizer: Any = None,
    tools: Sequence[FunctionTool] = (),
    tool_choice: ToolChoice = "auto",
) -> RenderedPrompt:
    """The prompt text and its images. Offered ``tools`` (and the ``tool_choice``
    instruction) go into the system prefix of the first user turn: Gemma 3's
    template has no tool section of its own."""
    variables = {"bos_token": "<bos>", **special_tokens(tokenizer)}
    suffix = tool_prompt(tools, tool_choice) if tools else None
    normalized, images = normalize_messages(messages, suffix)
    text = render_chat_template(CHAT_TEMPLATE, normalized, **variables)
    return RenderedPrompt(text=text, images=images)
