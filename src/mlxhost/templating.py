"""Rendering Jinja chat templates the way Hugging Face tokenizers do, for plugins."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any


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


def special_tokens(tokenizer: Any) -> dict[str, str]:
    """The special-token variables a template expects, from a tokenizer (if any)."""
    if tokenizer is None:
        return {}
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    return {name: str(getattr(tokenizer, name)) for name in names if getattr(tokenizer, name, None)}
