"""Gemma 3 prompts: its chat template wants one leading system message and
strictly alternating user/model turns, so the conversation is normalized first."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from mlxhost.templating import render_chat_template, special_tokens
from mlxhost_gemma.tools import tool_code_block, tool_output_block, tool_prompt

CHAT_TEMPLATE = files("mlxhost_gemma").joinpath("chat_template.jinja").read_text()


def _parts(content: Any) -> list[dict[str, Any]]:
    """Content as Gemma template parts: text parts and image placeholders."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = []
    for part in content:
        if part.get("type") == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif part.get("type") in ("image_url", "image"):
            parts.append({"type": "image"})
    return parts


def _text(parts: list[dict[str, Any]]) -> str:
    return "\n\n".join(p["text"] for p in parts if p["type"] == "text")


def _append(parts: list[dict[str, Any]], more: list[dict[str, Any]]) -> None:
    """Add ``more`` to a turn's parts; neighbouring texts join with a blank line.

    One text part, not a separate "\n\n" part: the template trims every text part.
    """
    for part in more:
        if part["type"] == "text" and parts and parts[-1]["type"] == "text":
            parts[-1] = {"type": "text", "text": f"{parts[-1]['text']}\n\n{part['text']}"}
        else:
            parts.append(dict(part))


def _turn_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's content as Gemma parts, with tool calls and results in the
    fenced forms the tool prompt describes."""
    parts = _parts(message.get("content"))
    if message["role"] == "assistant" and message.get("tool_calls"):
        parts = [p for p in parts if p["type"] != "text" or p["text"].strip()]
        _append(parts, [{"type": "text", "text": tool_code_block(message["tool_calls"])}])
    elif message["role"] == "tool":
        images = [p for p in parts if p["type"] == "image"]
        parts = [{"type": "text", "text": tool_output_block(_text(parts))}, *images]
    return parts


def normalize_messages(
    messages: list[dict[str, Any]], system_suffix: str | None = None
) -> list[dict[str, Any]]:
    """Leading system/developer messages become one system message (followed by
    ``system_suffix``, the tool section, when given); later ones join the next
    user turn; tool results are user content; consecutive turns of one role are
    merged; a conversation that starts with the model gets an empty user turn first."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        parts = _turn_parts(message)
        if role in ("system", "developer"):
            if not turns:
                system.append(_text(parts))
                continue
            role = "user"
        elif role != "assistant":
            role = "user"  # user and tool
        if turns and turns[-1]["role"] == role:
            _append(turns[-1]["content"], parts)
        else:
            turns.append({"role": role, "content": parts})
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": []})
    if system_suffix:
        system.append(system_suffix)
    out = []
    if system:
        out.append({"role": "system", "content": "\n\n".join(system)})
    out.extend(turns)
    return out


def render(
    messages: list[dict[str, Any]],
    tokenizer: Any = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
) -> str:
    """The prompt text. Offered ``tools`` (and the ``tool_choice`` instruction)
    go into the system prefix of the first user turn: Gemma 3's template has no
    tool section of its own."""
    variables = {"bos_token": "<bos>", **special_tokens(tokenizer)}
    suffix = tool_prompt(tools, tool_choice) if tools else None
    return render_chat_template(CHAT_TEMPLATE, normalize_messages(messages, suffix), **variables)
