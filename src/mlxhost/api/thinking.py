"""Each API's thinking controls as the domain's :class:`ReasoningControl`.

A malformed value is a 400 naming the field; on a model that does not think
every control is accepted and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from mlxhost.core.domain import EFFORTS, ReasoningControl
from mlxhost.core.errors import InvalidRequest
from mlxhost.service.reasoning_controls import effort_of, template_kwargs_of

# JSON schema of a reasoning_effort value.
EFFORT_SCHEMA = {"enum": [*EFFORTS, None], "description": "none: do not think"}


def chat_control(effort: Any, template_kwargs: Any) -> ReasoningControl:
    """Chat Completions: ``reasoning_effort`` and ``chat_template_kwargs``."""
    return ReasoningControl(
        effort=effort_of(effort, "reasoning_effort"),
        template_kwargs=template_kwargs_of(template_kwargs),
    )


def responses_control(reasoning: Any, template_kwargs: Any = None) -> ReasoningControl:
    """Responses: ``reasoning: {"effort": ..., "summary": ...}`` (summaries are not made:
    the thinking itself is returned as ``reasoning_text``)."""
    if reasoning is None:
        return ReasoningControl(template_kwargs=template_kwargs_of(template_kwargs))
    if not isinstance(reasoning, dict):
        raise InvalidRequest("'reasoning' must be an object such as {\"effort\": \"low\"}.",
                             param="reasoning")
    return ReasoningControl(
        effort=effort_of(reasoning.get("effort"), "reasoning.effort"),
        template_kwargs=template_kwargs_of(template_kwargs),
    )


def anthropic_control(thinking: Any) -> ReasoningControl:
    """Anthropic: ``{"type": "enabled", "budget_tokens": N}``, ``{"type": "disabled"}``,
    ``{"type": "adaptive"}`` (the model decides: no budget)."""
    if thinking is None:
        return ReasoningControl()
    if not isinstance(thinking, dict):
        raise InvalidRequest("thinking: expected an object with a 'type'", param="thinking")
    kind = thinking.get("type")
    if kind == "disabled":
        return ReasoningControl(enabled=False)
    if kind == "adaptive":
        return ReasoningControl(enabled=True)
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise InvalidRequest(
                "thinking.budget_tokens: expected a positive integer", param="thinking.budget_tokens"
            )
        return ReasoningControl(enabled=True, budget=budget)
    raise InvalidRequest(
        f"thinking.type: {kind!r} is not one of 'enabled', 'disabled', 'adaptive'",
        param="thinking.type",
    )


OLLAMA_LEVELS = ("low", "medium", "high", "max")


def ollama_control(think: Any) -> ReasoningControl:
    """Ollama: ``think`` true / false or a level (low, medium, high, max)."""
    if think is None:
        return ReasoningControl()
    if isinstance(think, bool):
        return ReasoningControl(enabled=think)
    if isinstance(think, str) and think in OLLAMA_LEVELS:
        return ReasoningControl(enabled=True, effort=think)  # type: ignore[arg-type]
    raise InvalidRequest(
        f"'think' must be true, false or one of {', '.join(OLLAMA_LEVELS)}; got {think!r}.",
        param="think",
    )


def signature(thinking: str) -> str:
    """An Anthropic thinking block's ``signature``: opaque to clients (they send it
    back unchanged); here a digest of the thinking text."""
    digest = hashlib.sha256(thinking.encode()).digest()
    return base64.b64encode(digest).decode()
