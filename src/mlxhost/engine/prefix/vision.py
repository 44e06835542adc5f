"""Reusing a cached prefix of an image prompt: where the images lie, and which
vision inputs the uncached suffix still needs.

An image prompt's prefix-cache key replaces each image's run of placeholder
tokens with an id derived from the image's digest (``prefix_cache.key_with_images``),
so a cached prefix that covers an image was computed with that very image. What
is left to feed the model is the suffix, and with it only the images that lie in
the suffix:

* the cached prefix must not end inside an image's run (the vision tower
  computes an image's embeddings as a whole): a hit that does is cut back to
  the run's start (:func:`reuse_point`);
* images wholly in the prefix are not encoded again (their KV is cached; the
  vision tower does not run at all when no image is left);
* images in the suffix keep their pixel values: :func:`suffix_vision_inputs`
  keeps those images' rows. Two layouts are known: one row per image (Gemma 3:
  ``pixel_values`` of shape ``(images, 3, H, W)``) and Qwen-VL's patches of
  every image stacked, with ``image_grid_thw`` giving each image's
  ``(t, h, w)`` grid (``t*h*w`` rows). Anything else is not sliced (the caller
  then reuses only text before the first image).

Position bookkeeping (Qwen-VL's multimodal rotary positions): positions are
derived from the whole prompt and every image's grid (:func:`prime_positions`).
Nothing here imports MLX at module level.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def image_runs(tokens: Sequence[int], placeholder_id: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of ``placeholder_id`` in ``tokens``, in order."""
    runs: list[tuple[int, int]] = []
    start = -1
    for i, token in enumerate(tokens):
        if token == placeholder_id:
            if start < 0:
                start = i
        elif start >= 0:
            runs.append((start, i))
            start = -1
    if start >= 0:
        runs.append((start, len(tokens)))
    return runs


def reuse_point(reused: int, runs: Sequence[tuple[int, int]]) -> int:
    """``reused`` cut back to the start of the image run it would end inside, if any."""
    for start, end in runs:
        if start < reused < end:
            return start
    return reused


def first_uncached_image(reused: int, runs: Sequence[tuple[int, int]]) -> int:
    """Index of the first image not wholly inside ``tokens[:reused]`` (``len(runs)``: none)."""
    for index, (_, end) in enumerate(runs):
        if end > reused:
            return index
    return len(runs)


def suffix_vision_inputs(extras: Mapping[str, Any], first: int, count: int) -> dict[str, Any] | None:
    """The vision inputs of images ``first..count-1`` only (the others are cached).

    ``extras`` is ``vision_inputs.prepare_vision_inputs``' dict (``pixel_values``,
    ``mask``, ``kwargs``). Returns None when the layout is not one this module
    knows how to slice. ``first == count``: no image left, no pixel values.
    """
    kwargs = dict(extras.get("kwargs") or {})
    pixel_values = extras.get("pixel_values")
    if first >= count:
        kwargs.pop("image_grid_thw", None)
        return {"pixel_values": None, "kwargs": kwargs}
    if first == 0:
        return {"pixel_values": pixel_values, "kwargs": kwargs}
    if pixel_values is None:
        return None
    grid = kwargs.get("image_grid_thw")
    if grid is not None:  # Qwen-VL: each image's patches, stacked
        sizes = [int(t) * int(h) * int(w) for t, h, w in grid.tolist()]
        if len(sizes) != count or sum(sizes) != int(pixel_values.shape[0]):
            return None
        skip = sum(sizes[:first])
        kwargs["image_grid_thw"] = grid[first:]
        return {"pixel_values": pixel_values[skip:], "kwargs": kwargs}
    if int(pixel_values.shape[0]) == count:  # one row per image (Gemma 3)
        return {"pixel_values": pixel_values[first:], "kwargs": kwargs}
    return None


def prime_positions(
    model: Any,
    tokens: tuple[int, ...],
    kwargs: dict[str, Any],
    vision_kwargs: Mapping[str, Any] | None = None,
) -> bool:
    """Let a Qwen-VL style model (mRoPE) continue from a cached prefix; False: cannot.

    Its language model derives positions from the whole prompt, which the
    uncached suffix alone does not give: mlx-vlm's own prompt-cache reuse
    computes them from the full prompt first, and so do we. An image prompt's
    ``vision_kwargs`` carry every image's grid (``image_grid_thw``): an image
    spans fewer positions than tokens, so the text after it continues from
    there (the rope delta), whether the image is cached or not. The positions
    go into ``kwargs``.
    """
    language_model = getattr(model, "language_model", None)
    if not callable(getattr(language_model, "get_rope_index", None)):
        return True  # plain RoPE: positions come from the cache offset
    try:
        import mlx.core as mx
        from mlx_vlm.generate.dispatch import _prime_cached_prefix_rope_state
    except ImportError:
        return False
    primed = dict(vision_kwargs or {})
    if not _prime_cached_prefix_rope_state(model, mx.array(tokens)[None], None, primed):
        return False
    for name in ("position_ids", "rope_deltas"):
        if primed.get(name) is not None:
            kwargs[name] = primed[name]
    return True
