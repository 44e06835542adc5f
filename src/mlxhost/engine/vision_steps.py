"""The step loop of a vision model (mlx-vlm) running one sequence alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def vision_steps(
    model: Any,
    tokens: tuple[int, ...],
    reused: int,
    cache: list[Any],
    max_tokens: int,
    sampler: Any,
    extra: dict[str, Any],
    processors: Any = None,
    *,
    pixel_values: Any = None,
    snapshot: Callable[[int, list[Any]], None] | None = None,
) -> Any:
    """mlx-vlm's ``generate_step`` over the prompt's uncached suffix (``cache`` holds
    the first ``reused`` tokens; ``pixel_values``: the images still to encode;
    ``extra``: generate kwargs, the attention ``mask`` among them).
    ``snapshot(held, cache)`` sees the cache at the end of the prompt where
    mlx-vlm's prefill offers it."""
    import mlx.core as mx
    from mlx_vlm.generate.ar import generate_step as vlm_generate_step

    extra = dict(extra)
    mask = extra.pop("mask", None)
    todo = tokens[reused:]
    checkpoint_len = len(todo) - 1

    def checkpoint(processed: int, prompt_cache: list[Any]) -> None:
        # mlx-vlm calls this during its chunked prefill; not every model chunks,
        # and then there is no snapshot (only the after-reply cache).
        if processed == checkpoint_len and snapshot is not None:
            snapshot(reused + processed, prompt_cache)

    # Images after a cached prefix: one unchunked prefill and no snapshot. A
    # chunk of the suffix gets Qwen-VL's visual-position mask (suffix-relative)
    # aligned by the cache's absolute offset in mlx-vlm, which misplaces the
    # image features (measured: greedy output changed on the tiny Qwen3-VL).
    images_after_prefix = pixel_values is not None and reused > 0
    if images_after_prefix:
        extra["prefill_step_size"] = None
    wants_snapshot = snapshot is not None and checkpoint_len > 0 and not images_after_prefix
    return vlm_generate_step(
        mx.array(todo)[None],
        model,
        pixel_values,
        mask,
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=processors,
        prompt_cache=cache,
        prompt_cache_checkpoint=checkpoint if wants_snapshot else None,
        prompt_cache_checkpoint_len=checkpoint_len if wants_snapshot else None,
        **extra,
    )
