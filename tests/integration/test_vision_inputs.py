"""The engine's image prompt preparation, in-process with the tiny Gemma 3 VLM:
exactly one BOS (mlx-vlm's Gemma processor adds its own), and the image expanded."""

from __future__ import annotations

from PIL import Image

from mlxhost.core.types import ImageInput, RenderedPrompt
from mlxhost.engine.mlx_engine import MLXEngine
from mlxhost.models.registry import folder_info
from mlxhost.testing.vlm_models import ensure_tiny_vlm, expected_image_tokens

GEMMA_BOS = 2
IMAGE_TOKEN = 262144


def test_gemma_image_prompt_has_one_bos_and_expanded_image_tokens():
    path = ensure_tiny_vlm("gemma3")
    engine = MLXEngine(prefix_cache_bytes=0, warmup=False)
    engine.load(folder_info(path))
    text = "<bos><start_of_turn>user\n<start_of_image>Describe.<end_of_turn>\n<start_of_turn>model\n"
    image = ImageInput(image=Image.new("RGB", (64, 64), "red"), digest="red")
    prepared = engine.prepare(RenderedPrompt(text=text, images=(image,)))
    assert prepared.tokens[0] == GEMMA_BOS and prepared.tokens[1] != GEMMA_BOS
    assert prepared.tokens.count(IMAGE_TOKEN) == expected_image_tokens("gemma3", 64, 64)
    assert prepared.extras["mask"].shape[-1] == len(prepared.tokens)
    engine.unload()
