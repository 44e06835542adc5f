"""The step loop of a text model (mlx-lm) running one sequence alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Tokens per prefill forward pass, as mlx-lm's generate_step: bounds peak memory.
PREFILL_STEP = 2048


def text_steps(
    model: Any,
    tokens: tuple[int, ...],
    reused: int,
    cache: list[Any],
    max_tokens: int,
    sampler: Any,
    processors: Any = None,
    snapshot: Callable[[int, list[Any]], None] | None = None,
) -> Any:
    """mlx-lm's ``generate_step`` over the prompt's uncached suffix (``cache`` holds
    the first ``reused`` tokens): (token, log probabilities) per step.
    ``snapshot(held, cache)`` sees the cache at the end of the prompt."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step, generation_stream

    todo = tokens[reused:]
    if len(todo) > 1:
        # Prefill all but the last token here (generate_step would do the
        # same) so the cache can be copied at the end of the prompt.
        with mx.stream(generation_stream):
            for start in range(0, len(todo) - 1, PREFILL_STEP):
                chunk = mx.array(todo[start : min(start + PREFILL_STEP, len(todo) - 1)])
                model(chunk[None], cache=cache)
                mx.eval([c.state for c in cache])
                mx.clear_cache()
        if snapshot is not None:
            snapshot(len(tokens) - 1, cache)
    return generate_step(
        mx.array(todo[-1:]),
        model,
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=processors,
        prompt_cache=cache,
    )
