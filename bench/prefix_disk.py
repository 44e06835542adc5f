"""Time to first token with the prefix cache's image keys and its disk tier, in process.

* **Image turn 2**: turn 1 of a chat carries an image; turn 2 (text only) is
  timed with the cache on (only turn 2's text is prefilled, the vision tower
  does not run) and off (image encoded, whole prompt prefilled), on the tiny
  random VLMs.
* **Disk tier**: a ~2,000-token chat prompt on the Qwen 0.5B fp32 test model is
  served once by an engine with ``--prefix-cache-dir``, which is then unloaded
  and closed (as at shutdown). A new engine on the same folder (a restart) times
  the same history with a new question; then it swaps to another model and back
  and times another question. Cold: the same prompt with no cache.

    python -m bench.prefix_disk [--history-tokens 2000] [--no-write]

Re-executes itself once with OpenBLAS preloaded; writes its table to
docs/benchmarks.md between the ``prefix-disk`` markers.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import platform
import sys
import tempfile
import time
from typing import Any

from bench.docs import DOC, write_section
from bench.prefix_cache import QUESTIONS, history

SECTION = "prefix-disk"
COMMAND = "python -m bench.prefix_disk"
LONG = "Look closely at every part of this picture and say what you see there. " * 12


def ttft(engine: Any, tokenizer: Any, messages: list[dict], images: tuple = ()) -> tuple[float, int, int]:
    """(seconds to the first token, prompt tokens, tokens reused from RAM or disk)."""
    from mlxhost.types import RenderedPrompt, SamplingParams

    def reused() -> int:
        stats = engine.stats().get("prefix_cache") or {}
        return stats.get("tokens_reused", 0) + (stats.get("disk") or {}).get("tokens_reused", 0)

    before = reused()
    started = time.perf_counter()
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prepared = engine.prepare(RenderedPrompt(text, images))
    steps = engine.generate(prepared, SamplingParams(max_tokens=1, temperature=0.0), lambda: False)
    first = next(steps)
    seconds = time.perf_counter() - started
    list(steps)
    del first
    return seconds, prepared.num_tokens, reused() - before


def image_turns(name: str) -> list[str]:
    from PIL import Image

    from mlxhost.registry import folder_info
    from mlxhost.runtime.mlx_engine import MLXEngine
    from mlxhost.testing.vlm_models import ensure_tiny_vlm
    from mlxhost.types import ImageInput

    picture = Image.new("RGB", (448, 448), "red")
    images = (ImageInput(picture, hashlib.sha256(b"red").hexdigest()),)
    engine = MLXEngine(max_batch=1)
    tokenizer = engine.load(folder_info(ensure_tiny_vlm(name)))
    turn1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": LONG}]}]
    rows = []
    try:
        ons, offs = [], []
        for k in range(3):
            engine.prefix_cache.clear()
            ttft(engine, tokenizer, turn1, images)
            turn2 = [*turn1, {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
                     {"role": "user", "content": [{"type": "text", "text": QUESTIONS[k]}]}]
            ons.append(ttft(engine, tokenizer, turn2, images))
            saved, engine.prefix_cache = engine.prefix_cache, None
            offs.append(ttft(engine, tokenizer, turn2, images))
            engine.prefix_cache = saved
        on, off = min(ons), min(offs)
        rows.append(f"| image turn 2, tiny {name} | {on[1]} | {on[2]} | {off[0]:.3f} s | "
                    f"{on[0]:.3f} s | {off[0] / on[0]:.1f}x |")
    finally:
        engine.unload()
    return rows


def disk(history_tokens: int) -> list[str]:
    from mlxhost.registry import folder_info
    from mlxhost.runtime.mlx_engine import MLXEngine
    from mlxhost.starter.builder import ensure_test_model
    from mlxhost.testing.vlm_models import ensure_tiny_vlm

    qwen = folder_info(ensure_test_model("qwen"))
    other = folder_info(ensure_tiny_vlm("qwen3_vl"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlxhost-prefix-disk-") as folder:
        first = MLXEngine(prefix_cache_dir=folder)
        tokenizer = first.load(qwen)
        past = history(tokenizer, history_tokens)
        ttft(first, tokenizer, past)
        first.unload()
        first.close()

        restarted = MLXEngine(prefix_cache_dir=folder)
        tokenizer = restarted.load(qwen)
        ask = [*past, {"role": "assistant", "content": "I see."},
               {"role": "user", "content": QUESTIONS[0]}]
        after_restart = ttft(restarted, tokenizer, past)
        restarted.load(other)
        tokenizer = restarted.load(qwen)
        after_swap = ttft(restarted, tokenizer, ask)
        restarted.unload()
        restarted.close()

        cold_engine = MLXEngine(prefix_cache_bytes=0)
        tokenizer = cold_engine.load(qwen)
        cold = ttft(cold_engine, tokenizer, past)
        cold_ask = ttft(cold_engine, tokenizer, ask)
        cold_engine.unload()
    rows.append(f"| restart, same prompt, Qwen 0.5B fp32 | {after_restart[1]} | {after_restart[2]} | "
                f"{cold[0]:.2f} s | {after_restart[0]:.2f} s | {cold[0] / after_restart[0]:.1f}x |")
    rows.append(f"| swap away and back, next turn, Qwen 0.5B fp32 | {after_swap[1]} | {after_swap[2]} | "
                f"{cold_ask[0]:.2f} s | {after_swap[0]:.2f} s | {cold_ask[0] / after_swap[0]:.1f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from mlxhost.blas import preload_env, wanted

    if wanted(os.environ):
        os.execve(sys.executable, [sys.executable, "-m", "bench.prefix_disk", *argv],
                  preload_env(os.environ))
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = [*image_turns("gemma3"), *image_turns("qwen3_vl"), *disk(args.history_tokens)]
    text = "\n".join([
        "## Prefix cache: images and the disk tier",
        "",
        f"`{COMMAND} {' '.join(argv)}`".replace(" `", "`"),
        "",
        f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), MLX CPU, OpenBLAS preloaded; "
        "in process (`MLXEngine`), time to first token including tokenizing and image "
        "preprocessing; each ratio measured side by side in one run (image rows: best of 3).",
        "",
        "| case | prompt tokens | reused | cold | cached | ratio |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(text)
    if not args.no_write:
        write_section(DOC, SECTION, text)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
