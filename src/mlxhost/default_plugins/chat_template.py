"""Fallback prompt rendering: the model's own chat template."""

from __future__ import annotations

from typing import Any

from mlxhost.errors import InvalidRequest
from mlxhost.hookspecs import hookimpl
from mlxhost.types import ModelInfo, RenderedPrompt


def flatten_text(content: Any) -> str:
    """Message content as plain text: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


@hookimpl(trylast=True)
def mlxhost_render_prompt(
    model: ModelInfo, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> RenderedPrompt | None:
    tokenizer = model.tokenizer
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest(
            f"Model '{model.id}' has no chat template and no plugin renders its prompts."
        )
    plain = [{**m, "content": flatten_text(m.get("content"))} for m in messages]
    try:
        text = tokenizer.apply_chat_template(
            plain, tools=tools or None, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # jinja raise_exception() for unsupported role orders etc.
        raise InvalidRequest(f"The model's chat template rejected the messages: {exc}") from exc
    return RenderedPrompt(text=text)
