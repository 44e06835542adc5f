"""Image turns and the disk tier with the tiny random VLMs, in process.

Greedy replies with the cache on must equal a cold run token for token; a turn
after an image turn must reuse the image's KV. The disk tier: entries written
at unload (a swap) and at close (shutdown), loaded by another engine on the
same folder (a restart) and after swapping back; bad files are refused.
"""

from __future__ import annotations

import hashlib
import logging

import pytest
from PIL import Image

from mlxhost.core.types import ImageInput, RenderedPrompt, SamplingParams
from mlxhost.engine.mlx_engine import MLXEngine
from mlxhost.models.registry import folder_info
from mlxhost.testing.vlm_models import ensure_tiny_vlm

LONG = "Look closely at every part of this picture and say what you see there. " * 4


def image(color: str) -> ImageInput:
    picture = Image.new("RGB", (128, 96), color)
    picture.putpixel((3, 3), (0, 255, 0))
    return ImageInput(picture, hashlib.sha256(color.encode()).hexdigest())


def chat(engine: MLXEngine, tokenizer, turns) -> list[tuple[tuple[int, ...], int, int]]:
    """(reply tokens, prompt tokens, reused) per turn; turns are (text, colour or None)."""
    messages: list[dict] = []
    images: list[ImageInput] = []
    out = []
    for text, color in turns:
        content: list[dict] = [{"type": "text", "text": text}]
        if color:
            content.insert(0, {"type": "image"})
            images.append(image(color))
        messages.append({"role": "user", "content": content})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prepared = engine.prepare(RenderedPrompt(prompt, tuple(images)))
        before = _reused(engine)
        steps = list(engine.generate(prepared, SamplingParams(max_tokens=4, temperature=0.0), lambda: False))
        out.append((tuple(s.token for s in steps), prepared.num_tokens, _reused(engine) - before))
        messages.append({"role": "assistant", "content": [{"type": "text", "text": "".join(s.text for s in steps)}]})
    return out


def _reused(engine: MLXEngine) -> int:
    stats = engine.stats().get("prefix_cache") or {}
    return stats.get("tokens_reused", 0) + (stats.get("disk") or {}).get("tokens_reused", 0)


@pytest.mark.parametrize("name", ["gemma3", "qwen3_vl"])
def test_image_turns_reuse_the_image_and_match_a_cold_run(name):
    engine = MLXEngine(warmup=False, max_batch=1)
    tokenizer = engine.load(folder_info(ensure_tiny_vlm(name)))
    turns = [(LONG * 3, "red"), ("And the corner?", None), ("This one?", "blue"), ("Compare.", None)]
    try:
        on = chat(engine, tokenizer, turns)
        saved, engine.prefix_cache = engine.prefix_cache, None
        off = chat(engine, tokenizer, turns)
        engine.prefix_cache = saved
    finally:
        engine.unload()
    assert [t[0] for t in on] == [t[0] for t in off]
    assert on[0][2] == 0
    _, prompt, reused = on[1]
    assert reused >= 0.9 * prompt  # turn 2 re-reads only its own text
    assert on[2][2] >= on[0][1]  # a new image after the cached one: the first stays cached
    assert all(t[2] == 0 for t in off)


def test_disk_tier_survives_swaps_restarts_and_refuses_bad_files(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    qwen, gemma = folder_info(ensure_tiny_vlm("qwen3_vl")), folder_info(ensure_tiny_vlm("gemma3"))
    turns = [(LONG * 2, "red")]
    follow = [(LONG * 2, "red"), ("More.", None)]

    def engine() -> MLXEngine:
        return MLXEngine(warmup=False, max_batch=1, prefix_cache_dir=str(tmp_path))

    first = engine()
    tokenizer = first.load(qwen)
    chat(first, tokenizer, turns)
    first.unload()  # to disk
    first.close()

    second = engine()  # a restart
    tokenizer = second.load(qwen)
    assert "1 entries for" in caplog.text
    (_, repeated, _), (reply, _, _) = chat(second, tokenizer, follow)
    disk = second.stats()["prefix_cache"]["disk"]
    # The repeated long prompt: all but its last token from disk.
    assert disk["hits"] == 1 and disk["tokens_reused"] == repeated - 1
    assert "loaded from disk" in caplog.text
    gemma_tokenizer = second.load(gemma)  # swap away: qwen's entries to disk
    chat(second, gemma_tokenizer, turns)
    tokenizer = second.load(qwen)  # and back
    hits = second.stats()["prefix_cache"]["disk"]["hits"]
    assert chat(second, tokenizer, follow)[1][0] == reply
    assert second.stats()["prefix_cache"]["disk"]["hits"] > hits
    second.unload()
    second.close()

    cold = MLXEngine(warmup=False, max_batch=1, prefix_cache_bytes=0)
    tokenizer = cold.load(qwen)
    assert chat(cold, tokenizer, follow)[1][0] == reply  # token-identical to no cache
    cold.unload()

    third = engine()
    files = sorted(third.prefix.disk.model_dir(qwen.id).glob("*.safetensors"))
    assert files
    for path in files:  # flipped bits: headers still parse, data does not match
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    tokenizer = third.load(qwen)
    assert chat(third, tokenizer, follow)[1][0] == reply  # answered, from a cold prefill
    assert "checksum" in caplog.text and third.stats()["prefix_cache"]["disk"]["rejected"] >= 1
    third.unload()  # writes good entries again
    third.prefix.disk.flush()
    third.load(gemma)
    third.prefix.disk.activate(qwen.id, {**third.prefix.identity(third.loaded, qwen), "weights": "another"})
    assert "written for another version" in caplog.text
    assert not list(third.prefix.disk.model_dir(qwen.id).glob("*.safetensors"))
    third.unload()
    third.close()
