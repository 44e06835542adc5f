"""Claude Code puts a per-request ``x-anthropic-billing-header: …`` line at the top of
its system prompt; it changes every request and would defeat the prefix cache.
This built-in plugin drops that line from system messages."""

from __future__ import annotations

import re

import attrs

from mlxhost.core.domain import SYSTEM_ROLES, ChatRequest, TextPart
from mlxhost.families.hookspecs import hookimpl

_NONCE = re.compile(r"^x-anthropic-billing-header:[^\n]*(\n|$)", re.MULTILINE)


@hookimpl(trylast=True)
def mlxhost_normalize_request(request: ChatRequest) -> ChatRequest | None:
    changed = False
    messages = []
    for message in request.messages:
        if message.role in SYSTEM_ROLES:
            parts = []
            for part in message.content:
                if isinstance(part, TextPart) and _NONCE.search(part.text):
                    part = TextPart(_NONCE.sub("", part.text))
                    changed = True
                parts.append(part)
            message = attrs.evolve(message, content=tuple(parts))
        messages.append(message)
    return attrs.evolve(request, messages=tuple(messages)) if changed else None
