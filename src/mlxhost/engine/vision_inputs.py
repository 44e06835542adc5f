"""Turning a rendered prompt with images into mlx-vlm inputs.

mlx-vlm's processors expand each image placeholder into the model's image
tokens and compute pixel values. Gemma 3's processor always prepends BOS (it
takes no ``add_special_tokens``), while our rendered template already starts
with one: strip it from the text and make sure exactly one remains.
"""

from __future__ import annotations

from typing import Any

CORE_KEYS = ("input_ids", "pixel_values", "attention_mask")


def prepare_vision_inputs(
    processor: Any, model: Any, text: str, images: list[Any]
) -> tuple[list[int], dict[str, Any]]:
    """Token ids (images expanded) and the extra inputs ``generate_step`` needs."""
    from mlx_vlm import prepare_inputs

    tokenizer = getattr(processor, "tokenizer", processor)
    bos = getattr(tokenizer, "bos_token", None)
    had_bos = isinstance(bos, str) and bool(bos) and text.startswith(bos)
    if had_bos:
        text = text[len(str(bos)) :]
    inputs = prepare_inputs(
        processor,
        images=images,
        prompts=[text],
        image_token_index=getattr(model.config, "image_token_index", None),
    )
    tokens = [int(t) for t in inputs["input_ids"][0].tolist()]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if had_bos and bos_id is not None:
        while len(tokens) > 1 and tokens[0] == bos_id and tokens[1] == bos_id:
            tokens.pop(0)
        if tokens[0] != bos_id:
            tokens.insert(0, bos_id)
    mask = inputs.get("attention_mask")
    if mask is not None and mask.shape[-1] != len(tokens):
        import mlx.core as mx

        # One unpadded prompt: the mask is all ones; rebuild it for the fixed ids.
        mask = mx.ones((1, len(tokens)), dtype=mask.dtype)
    extras = {
        "pixel_values": inputs.get("pixel_values"),
        "mask": mask,
        "kwargs": {k: v for k, v in inputs.items() if k not in CORE_KEYS},
    }
    return tokens, extras
