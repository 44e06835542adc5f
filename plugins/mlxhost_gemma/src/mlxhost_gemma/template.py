"""Gemma 3 prompts: its chat template wants one leading system message and
strictly alternating user/model turns, so the conversation is normalized first."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from mlxhost.templating import render_chat_template, special_tokens

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


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leading system/developer messages become one system message; later ones
    join the next user turn; consecutive turns of one role are merged; a
    conversation that starts with the model gets an empty user turn first."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message["role"]
        parts = _parts(message.get("content"))
        if role in ("system", "developer"):
            if not turns:
                system.append(_text(parts))
                continue
            role = "user"
        elif role == "tool":
            role = "user"
        elif role != "assistant":
            role = "user"
        if turns and turns[-1]["role"] == role:
            previous = turns[-1]["content"]
            if previous and parts:
                previous.append({"type": "text", "text": "\n\n"})
            previous.extend(parts)
        else:
            turns.append({"role": role, "content": parts})
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": []})
    out = []
    if system:
        out.append({"role": "system", "content": "\n\n".join(system)})
    out.extend(turns)
    return out


def render(messages: list[dict[str, Any]], tokenizer: Any = None) -> str:
    variables = {"bos_token": "<bos>", **special_tokens(tokenizer)}
    return render_chat_template(CHAT_TEMPLATE, normalize_messages(messages), **variables)
