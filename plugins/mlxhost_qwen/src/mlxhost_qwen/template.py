"""Qwen prompts: the model's own chat template (it renders tools itself), else
Qwen3-VL's, fed messages in the shape Qwen templates expect."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from mlxhost.templating import render_chat_template, special_tokens
from mlxhost.toolcalls import tool_choice_instruction

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
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    tokenizer: Any = None,
    tool_choice: str | dict[str, Any] | None = None,
) -> str:
    """The prompt text. The template renders ``tools`` itself; ``tool_choice``
    "required" or a named function adds one instruction line (only when tools
    are offered)."""
    template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
    normalized = normalize_messages(messages)
    line = tool_choice_instruction(tool_choice) if tools else None
    if line:
        normalized = with_instruction(normalized, line)
    return render_chat_template(template, normalized, tools=tools, **special_tokens(tokenizer))
