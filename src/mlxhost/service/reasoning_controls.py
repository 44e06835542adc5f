"""A request's thinking controls, mapped onto the model: template variables and
the plan the engine follows (budget, where the answer starts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlxhost.core.domain import EFFORTS, ReasoningControl
from mlxhost.core.errors import InvalidRequest
from mlxhost.core.types import Harmony, ReasoningFormat, ThinkingPlan, ThinkTags

# gpt-oss's template and harmony know three levels; the others map to the nearest.
HARMONY_EFFORT = {"none": "low", "minimal": "low", "low": "low", "medium": "medium",
                  "high": "high", "xhigh": "high", "max": "high"}


def effort_of(value: Any, param: str) -> Any:
    """A ``reasoning_effort`` value (None stays None); anything else is a 400 naming ``param``."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in EFFORTS:
        raise InvalidRequest(
            f"'{param}' must be one of {', '.join(EFFORTS)}; got {value!r}.", param=param
        )
    return value


def template_kwargs_of(value: Any, param: str = "chat_template_kwargs") -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidRequest(f"'{param}' must be an object of template variables.", param=param)
    return dict(value)


def template_variables(control: ReasoningControl) -> dict[str, Any]:
    """The chat-template variables a request's controls set: ``enable_thinking``
    (Qwen3 and most hybrid templates), ``reasoning_effort`` (gpt-oss), then the
    request's own ``chat_template_kwargs``, which win."""
    out: dict[str, Any] = {}
    thinks = control.thinks
    if thinks is not None:
        out["enable_thinking"] = thinks
    if control.effort is not None:
        out["reasoning_effort"] = HARMONY_EFFORT[control.effort]
    out.update(control.template_kwargs)
    return out


def _rfind(tokens: Sequence[int], sequence: tuple[int, ...]) -> int:
    n = len(sequence)
    if not n:
        return -1
    for i in range(len(tokens) - n, -1, -1):
        if tokens[i] == sequence[0] and tuple(tokens[i : i + n]) == sequence:
            return i
    return -1


def prompt_opens_thought(fmt: ReasoningFormat | None, prompt: Sequence[int]) -> bool:
    """The prompt ends inside a thought (its last open marker is not closed):
    templates that start the think block in the generation prompt."""
    if not isinstance(fmt, ThinkTags):
        return False
    return _rfind(prompt, fmt.start_ids) > _rfind(prompt, fmt.end_ids)


def thinking_budget(
    control: ReasoningControl, max_tokens: int | None, answer_needs_room: bool
) -> int | None:
    """Thinking tokens allowed: the request's budget; 0 when thinking is turned off
    (a thought the model opens anyway closes at once); and when the answer must be
    a call or JSON within ``max_tokens``, at most half of it."""
    budget = control.budget
    if control.thinks is False:
        budget = 0
    if answer_needs_room and max_tokens is not None:
        budget = max_tokens // 2 if budget is None else min(budget, max_tokens // 2)
    return budget


def thinking_plan(
    fmt: ReasoningFormat | None, *, inside: bool, budget: int | None
) -> ThinkingPlan | None:
    """What the engine watches for this model (None: it does not think)."""
    if isinstance(fmt, ThinkTags):
        return ThinkingPlan(
            opens=(fmt.start_ids,), closes=fmt.end_ids, answer_opens=fmt.end_ids,
            force=fmt.end_ids, inside=inside, may_skip=True, budget=budget,
        )
    if isinstance(fmt, Harmony):
        return ThinkingPlan(
            opens=(fmt.analysis_ids,), closes=fmt.end_ids, answer_opens=fmt.final_ids,
            force=fmt.close_ids, inside=False, may_skip=False, budget=budget,
        )
    return None
