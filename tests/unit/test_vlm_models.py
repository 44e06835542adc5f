"""The tiny random VLMs: mlx-vlm loads them, expands each image to the right
number of image tokens, and the image reaches the language model.

Builds them (seconds) on first use; needs the text test models' tokenizers
(``python -m mlxhost.models.starter.builder``, built once per machine).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

mlx_vlm = pytest.importorskip("mlx_vlm")

from mlx_vlm import prepare_inputs
from mlx_vlm.generate import generate_step
from mlx_vlm.utils import estimate_num_image_tokens
from PIL import Image

from mlxhost.testing.vlm_models import (
    GEMMA_MM_TOKENS_PER_IMAGE,
    TINY_VLMS,
    ensure_tiny_vlm,
    expected_image_tokens,
)

NAMES = list(TINY_VLMS)
GEMMA_BOS, GEMMA_BOI, GEMMA_EOI, GEMMA_IMAGE = 2, 255999, 256000, 262144
QWEN_VISION_START, QWEN_VISION_END, QWEN_IMAGE = 151652, 151653, 151655


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def vlm():
    """name -> (folder, model, processor), each loaded once per module."""
    loaded: dict[str, tuple] = {}

    def get(name: str):
        if name not in loaded:
            folder = ensure_tiny_vlm(name, log=quiet)
            loaded[name] = (folder, *mlx_vlm.load(str(folder)))
        return loaded[name]

    return get


def chat_prompt(processor, n_images: int, text: str = "Describe.") -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return processor.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def encode(model, processor, images: list, prompt: str) -> dict:
    """Token ids with each image expanded, pixel values and extras, as generate_step wants them."""
    bos = processor.tokenizer.bos_token
    if images and bos and prompt.startswith(bos):
        # Gemma's template writes <bos> and the processor's tokenizer adds another.
        prompt = prompt[len(bos) :]
    return prepare_inputs(
        processor,
        images=images or None,
        prompts=[prompt],
        image_token_index=model.config.image_token_index,
    )


def run(model, inputs: dict, n: int = 4) -> tuple[np.ndarray, list[int]]:
    """Greedy: the first step's log-probabilities and ``n`` tokens."""
    extra = {
        k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")
    }
    steps = generate_step(
        inputs["input_ids"],
        model,
        inputs.get("pixel_values"),
        inputs.get("attention_mask"),
        max_tokens=n,
        temperature=0.0,
        **extra,
    )
    first, tokens = None, []
    for token, logprobs in steps:
        if first is None:
            first = np.array(logprobs)
        tokens.append(int(token))
    return first, tokens


def ids_of(inputs: dict) -> list[int]:
    return np.array(inputs["input_ids"])[0].tolist()


def solid(color: str, size=(200, 150)) -> Image.Image:
    return Image.new("RGB", size, color)


def noise(seed: int, size=(200, 150)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# --- the folders ----------------------------------------------------------------


def test_repo_ids():
    assert TINY_VLMS == {
        "gemma3": "mlxhost-test/tiny-gemma3-vlm",
        "qwen3_vl": "mlxhost-test/tiny-qwen3-vl",
    }
    with pytest.raises(KeyError):
        ensure_tiny_vlm("llava")


def test_configs_keep_the_real_layout(vlm):
    gemma = json.loads((vlm("gemma3")[0] / "config.json").read_text())
    assert gemma["model_type"] == "gemma3"
    assert gemma["text_config"]["model_type"] == "gemma3_text"
    assert gemma["vision_config"]["model_type"] == "siglip_vision_model"
    assert (gemma["boi_token_index"], gemma["eoi_token_index"]) == (GEMMA_BOI, GEMMA_EOI)
    assert gemma["image_token_index"] == GEMMA_IMAGE
    assert gemma["eos_token_id"] == [1, 106]
    assert gemma["text_config"]["vocab_size"] == 262208
    assert gemma["text_config"]["max_position_embeddings"] == 131072
    assert "max_position_embeddings" not in gemma
    processor_config = json.loads((vlm("gemma3")[0] / "processor_config.json").read_text())
    assert processor_config["image_seq_length"] == gemma["mm_tokens_per_image"]

    qwen = json.loads((vlm("qwen3_vl")[0] / "config.json").read_text())
    assert qwen["model_type"] == "qwen3_vl"
    assert qwen["text_config"]["model_type"] == "qwen3_vl_text"
    assert qwen["text_config"]["max_position_embeddings"] == 262144
    assert "max_position_embeddings" not in qwen
    assert qwen["image_token_id"] == QWEN_IMAGE
    vision = qwen["vision_config"]
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["temporal_patch_size"]) == (
        16,
        2,
        2,
    )
    assert vision["deepstack_visual_indexes"]


@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic(name, vlm, tmp_path):
    cached = vlm(name)[0]
    fresh = ensure_tiny_vlm(name, tmp_path, log=quiet)
    assert fresh == tmp_path / cached.name
    files = sorted(p.name for p in cached.iterdir())
    assert sorted(p.name for p in fresh.iterdir()) == files
    for file in files:
        assert (fresh / file).read_bytes() == (cached / file).read_bytes(), file
    assert ensure_tiny_vlm(name, tmp_path, log=quiet) == fresh  # found, not rebuilt


# --- image tokens -----------------------------------------------------------------


@pytest.mark.parametrize("size", [(200, 150), (56, 56), (1000, 500), (16, 900)])
def test_gemma3_expands_each_image_to_a_fixed_count(vlm, size):
    _, model, processor = vlm("gemma3")
    inputs = encode(model, processor, [noise(0, size)], chat_prompt(processor, 1))
    ids = ids_of(inputs)
    assert ids.count(GEMMA_BOS) == 1 and ids[0] == GEMMA_BOS
    start = ids.index(GEMMA_BOI)
    image = [GEMMA_IMAGE] * GEMMA_MM_TOKENS_PER_IMAGE
    assert ids[start + 1 : start + 1 + len(image) + 1] == image + [GEMMA_EOI]
    assert ids.count(GEMMA_IMAGE) == GEMMA_MM_TOKENS_PER_IMAGE == 16
    assert expected_image_tokens("gemma3", *size) == 16
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 112, 112)  # resized, aspect ignored


def test_gemma3_two_images(vlm):
    _, model, processor = vlm("gemma3")
    inputs = encode(
        model, processor, [solid("red"), solid("blue", (40, 40))], chat_prompt(processor, 2)
    )
    ids = ids_of(inputs)
    assert ids.count(GEMMA_IMAGE) == 2 * 16
    assert ids.count(GEMMA_BOI) == ids.count(GEMMA_EOI) == 2
    assert tuple(inputs["pixel_values"].shape) == (2, 3, 112, 112)


def test_gemma3_prepare_inputs_adds_a_second_bos(vlm):
    """Canary for mlx-vlm 0.7.10: with images, the template's <bos> plus the tokenizer's.

    Gemma3Processor.__call__ has no add_special_tokens parameter, so
    prepare_inputs cannot turn it off. If this fails, mlx-vlm changed and
    callers may drop their workaround (stripping <bos> from the prompt text).
    """
    _, model, processor = vlm("gemma3")
    prompt = chat_prompt(processor, 1)
    assert prompt.startswith("<bos>")
    inputs = prepare_inputs(
        processor,
        images=[solid("red")],
        prompts=[prompt],
        image_token_index=model.config.image_token_index,
    )
    assert ids_of(inputs)[:2] == [GEMMA_BOS, GEMMA_BOS]


@pytest.mark.parametrize(
    ("size", "count"),
    [
        ((200, 150), 12),  # resized to 128x96: 4x3 tokens of 32x32 px
        ((56, 56), 4),  # up to the minimum, 64x64
        ((64, 64), 4),
        ((128, 128), 16),  # the maximum area
        ((1000, 500), 10),  # down to 160x64
        ((2000, 2000), 16),
        ((16, 16), 4),
        ((30, 900), 21),  # thin: 32x672, 1x21 tokens, over the "maximum"
    ],
)
def test_qwen3_vl_token_count_follows_the_image_size(vlm, size, count):
    _, model, processor = vlm("qwen3_vl")
    inputs = encode(model, processor, [noise(0, size)], chat_prompt(processor, 1))
    ids = ids_of(inputs)
    assert ids.count(QWEN_IMAGE) == count
    assert estimate_num_image_tokens(processor, size[1], size[0]) == count
    assert expected_image_tokens("qwen3_vl", *size) == count
    start = ids.index(QWEN_VISION_START)
    assert ids[start + 1 : start + 2 + count] == [QWEN_IMAGE] * count + [QWEN_VISION_END]
    grid = np.array(inputs["image_grid_thw"]).tolist()
    assert len(grid) == 1 and grid[0][0] == 1 and grid[0][1] * grid[0][2] == 4 * count
    # 2x2 patches of 16 px per token; each patch row holds C * T * 16 * 16 values
    assert tuple(inputs["pixel_values"].shape) == (4 * count, 3 * 2 * 16 * 16)


def test_qwen3_vl_two_images(vlm):
    _, model, processor = vlm("qwen3_vl")
    images = [solid("red"), solid("blue", (64, 64))]
    inputs = encode(model, processor, images, chat_prompt(processor, 2))
    ids = ids_of(inputs)
    assert ids.count(QWEN_IMAGE) == 12 + 4
    assert ids.count(QWEN_VISION_START) == ids.count(QWEN_VISION_END) == 2
    assert np.array(inputs["image_grid_thw"]).tolist() == [[1, 6, 8], [1, 4, 4]]


# --- the image reaches the model ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_different_images_give_different_outputs(vlm, name):
    _, model, processor = vlm(name)
    prompt = chat_prompt(processor, 1)

    def go(image):
        return run(model, encode(model, processor, [image], prompt))

    red, red_tokens = go(solid("red"))
    blue, blue_tokens = go(solid("blue"))
    assert np.abs(red - blue).max() > 0.01
    assert red_tokens != blue_tokens  # the greedy text changes too
    noise_a, _ = go(noise(1))
    noise_b, _ = go(noise(2))
    assert np.abs(noise_a - noise_b).max() > 0.01

    again, again_tokens = go(solid("red"))
    np.testing.assert_array_equal(again, red)
    assert again_tokens == red_tokens
    assert len(red_tokens) == 4


@pytest.mark.parametrize("name", NAMES)
def test_text_only_prompt(vlm, name):
    _, model, processor = vlm(name)
    messages = [{"role": "user", "content": "Hello"}]
    prompt = processor.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    inputs = encode(model, processor, [], prompt)
    assert "pixel_values" not in inputs
    ids = ids_of(inputs)
    assert model.config.image_token_index not in ids
    if name == "gemma3":
        assert (
            ids.count(GEMMA_BOS) == 1
        )  # prepare_inputs' text path honours add_special_tokens=False
    logprobs, tokens = run(model, inputs)
    assert np.isfinite(logprobs).all() and len(tokens) == 4
