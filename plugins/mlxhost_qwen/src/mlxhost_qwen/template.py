"""Qwen prompts: the model's own chat template (it renders tools itself), else
Qwen3-VL's, fed messages in the shape Qwen templates expect."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from mlxhost.templating import render_chat_template, special_tokens

CHAT_TEMPLATE = files("mlxhost_qwen").joinpath("chat_template.jinja").read_text()


def _content(content: Any) -> Any:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") == "text":
            parts.append({"type": "text", "text": part["text"]})
        elif part.get("type") in ("image_url", "image"):
            parts.append({"type": "image"})
    # Text-only lists become a plain string: older Qwen templates expect one.
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call["function"])
    try:  # templates print dict arguments with tojson; keep bad JSON verbatim
        function["arguments"] = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError:
        pass
    return {**call, "function": function}


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        role = "system" if message["role"] == "developer" else message["role"]
        item: dict[str, Any] = {"role": role, "content": _content(message.get("content"))}
        if message.get("tool_calls"):
            item["tool_calls"] = [_tool_call(c) for c in message["tool_calls"]]
        if message.get("tool_call_id"):
            item["tool_call_id"] = message["tool_call_id"]
        out.append(item)
    return out


def render(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: Any = None
) -> str:
    template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
    return render_chat_template(
        template, normalize_messages(messages), tools=tools, **special_tokens(tokenizer)
    )
