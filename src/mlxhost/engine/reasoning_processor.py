"""The thinking budget and the grammar's start as one MLX logits processor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlxhost.core.types import ThinkingPlan
from mlxhost.engine.new_tokens import NewTokens
from mlxhost.engine.reasoning_budget import ThoughtTracker

LogitsProcessor = Callable[[Any, Any], Any]


def thinking_processor(
    plan: ThinkingPlan, answer_processors: Callable[[], list[LogitsProcessor]]
) -> LogitsProcessor:
    """Follow the thought (``ThoughtTracker``); once its budget is spent, force the
    closing tokens. ``answer_processors`` (a grammar) apply from the answer's
    start, made fresh there so they count the answer's tokens only; at the first
    step of a reply that may think, they apply with the open marker let through."""
    import mlx.core as mx

    tracker = ThoughtTracker(plan)
    new_tokens = NewTokens()
    answer: list[LogitsProcessor] | None = None

    def process(tokens: Any, logits: Any) -> Any:
        nonlocal answer
        for token in new_tokens.take(tokens):
            tracker.advance(token)
        forced = tracker.forced()
        if forced is not None:
            ids = mx.arange(logits.shape[-1])
            return mx.where(ids == forced, logits, mx.array(-float("inf"), dtype=logits.dtype))
        if tracker.answering:
            if answer is None:
                answer = answer_processors()
            for processor in answer:
                logits = processor(tokens, logits)
            return logits
        if tracker.may_open():
            probe = answer_processors()  # fresh: discarded if a thought opens
            if not probe:
                return logits
            out = logits
            for processor in probe:
                out = processor(tokens, out)
            opens = mx.array(sorted({s[0] for s in plan.opens if s}))
            ids = mx.arange(logits.shape[-1])
            return mx.where(mx.isin(ids, opens) if hasattr(mx, "isin") else _any_equal(ids, opens),
                            logits, out)
        return logits

    def _any_equal(ids: Any, values: Any) -> Any:
        return (ids[:, None] == values[None, :]).any(axis=-1)

    return process
