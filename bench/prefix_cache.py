"""Time to first token of a late chat turn, with the KV prefix cache on and off.

A conversation with a ~2,000-token history (written out, not generated) is
served up to turn N-1 with the cache on; turn N (history + the reply to turn
N-1 + a new question) is then timed with the cache on (only the new question
is prefilled) and off (the whole prompt is), on the same loaded model. Each
"on" sample is a different question after the same turn N-1, so every sample
is a real first visit of turn N.

    python -m bench.prefix_cache [--models qwen gemma] [--history-tokens 2000]

Re-executes itself once with OpenBLAS preloaded (as ``mlxhost serve`` does) and
writes its table to docs/benchmarks.md, between the ``prefix-cache`` markers.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from typing import Any

import attrs

from bench.docs import DOC, write_section

SECTION = "prefix-cache"
COMMAND = "python -m bench.prefix_cache"

PARAGRAPHS = [
    "The harbour town woke early. Fishing boats slipped out before dawn, their lamps "
    "swinging, while the bakers on the quay pulled the first loaves from brick ovens.",
    "By midmorning the market filled with carts of apples, crates of mackerel and "
    "bolts of blue cloth, and the sound of bargaining rose above the gulls.",
    "The lighthouse keeper walked down from the point to buy oil and wicks, as he "
    "did every Tuesday, and stopped to read the notices pinned outside the customs house.",
    "One notice announced a storm expected within three days; another offered a reward "
    "for a lost brass telescope; a third listed the ships due in port before winter.",
    "Children chased each other along the sea wall, and an old sailor mended nets "
    "while telling anyone who would listen about the winter the harbour froze solid.",
]
ASSISTANT_REPLIES = [
    "That sounds like a lively place. The details about the bakers and the boats set "
    "the scene well; what happens next in the town?",
    "The storm notice suggests tension ahead. The keeper will likely prepare the light "
    "and warn the fishing fleet before the weather turns.",
    "The lost telescope could become a small mystery: perhaps the keeper finds it, or "
    "someone in the market knows more than they say.",
]
QUESTIONS = [
    "Given all of this, what should the keeper do first when the storm arrives?",
    "Which ship on the list would be most at risk, and why?",
    "Write one sentence the keeper might put in his log tonight.",
    "Who do you think lost the brass telescope?",
    "Describe the harbour at sunset in two sentences.",
]


@attrs.frozen
class Sample:
    prompt_tokens: int
    reused: int
    ttft: float


@attrs.frozen
class Result:
    model: str
    prompt_tokens: int
    reused: int
    off: list[float]
    on: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.off) / statistics.median(self.on)


def history(tokenizer: Any, target_tokens: int) -> list[dict[str, str]]:
    """User/assistant exchanges until the rendered prompt reaches ``target_tokens``."""
    messages: list[dict[str, str]] = []
    i = 0
    while True:
        user = " ".join(PARAGRAPHS[(i + k) % len(PARAGRAPHS)] for k in range(3))
        messages.append({"role": "user", "content": f"Part {i + 1}. {user}"})
        if prompt_length(tokenizer, messages) >= target_tokens:
            messages.pop()
            return messages
        messages.append({"role": "assistant", "content": ASSISTANT_REPLIES[i % 3]})
        i += 1


def prompt_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer.encode(text, add_special_tokens=False))


def first_token(engine: Any, tokenizer: Any, messages: list[dict[str, str]], max_tokens: int = 1):
    """(sample, reply text): time from asking for the first token until it arrives."""
    from mlxhost.core.types import RenderedPrompt, SamplingParams

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prepared = engine.prepare(RenderedPrompt(text))
    before = engine.prefix_cache.stats().tokens_reused if engine.prefix_cache else 0
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    steps = engine.generate(prepared, params, lambda: False)
    started = time.perf_counter()
    first = next(steps)
    ttft = time.perf_counter() - started
    reply = first.text + "".join(step.text for step in steps)
    after = engine.prefix_cache.stats().tokens_reused if engine.prefix_cache else 0
    return Sample(prepared.num_tokens, after - before, ttft), reply


def bench_model(name: str, history_tokens: int, repeats: int, cold_repeats: int) -> Result:
    from mlxhost.engine.mlx_engine import MLXEngine
    from mlxhost.models.registry import folder_info
    from mlxhost.models.starter.builder import ensure_test_model

    path = ensure_test_model(name)
    engine = MLXEngine()
    tokenizer = engine.load(folder_info(path))
    cache = engine.prefix_cache
    messages = history(tokenizer, history_tokens)
    # Turn N-1, with the cache on: its prompt and reply are what turn N reuses.
    messages.append({"role": "user", "content": QUESTIONS[-1]})
    sample, reply = first_token(engine, tokenizer, messages, max_tokens=8)
    print(f"{name}: turn N-1 ({sample.prompt_tokens} tokens) in {sample.ttft:.1f}s", flush=True)
    messages.append({"role": "assistant", "content": reply})

    on: list[Sample] = []
    for question in QUESTIONS[:repeats]:
        turn, _ = first_token(engine, tokenizer, [*messages, {"role": "user", "content": question}])
        print(
            f"  on : {turn.prompt_tokens} tokens, {turn.reused} reused, {turn.ttft:.2f}s",
            flush=True,
        )
        on.append(turn)
    engine.prefix_cache = None
    off: list[Sample] = []
    for question in QUESTIONS[:cold_repeats]:
        turn, _ = first_token(engine, tokenizer, [*messages, {"role": "user", "content": question}])
        print(f"  off: {turn.prompt_tokens} tokens, {turn.ttft:.2f}s", flush=True)
        off.append(turn)
    engine.prefix_cache = cache
    engine.unload()
    return Result(
        model=name,
        prompt_tokens=round(statistics.median(s.prompt_tokens for s in on)),
        reused=round(statistics.median(s.reused for s in on)),
        off=[s.ttft for s in off],
        on=[s.ttft for s in on],
    )


MODEL_NAMES = {"qwen": "Qwen2.5-Coder-0.5B-Instruct", "gemma": "Gemma 3 270M"}


def section(results: list[Result], argv: list[str]) -> str:
    import mlx.core as mx

    command = " ".join([COMMAND, *argv])
    samples = ", ".join(f"{r.model}: {len(r.on)} on, {len(r.off)} off" for r in results)
    rows = [
        f"| {MODEL_NAMES.get(r.model, r.model)} (fp32) | {r.prompt_tokens} | {r.reused} "
        f"| {statistics.median(r.off):.2f} | {statistics.median(r.on):.2f} "
        f"| **{r.ratio:.0f}x** |"
        for r in results
    ]
    return "\n".join(
        [
            "## KV prefix cache",
            "",
            "Time to first token of turn N of a chat whose history is ~2,000 tokens, with the",
            "prefix cache on (the history and the reply to turn N-1 come from the cache; only",
            "the new question is prefilled) and off (the whole prompt is prefilled). Same",
            f"loaded model, temperature 0; medians over different turn-N questions ({samples}).",
            "",
            "| model | turn N prompt tokens | reused from cache | TTFT off (s) | TTFT on (s) | speedup |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Measured with `{command}` on {platform.system()} {platform.machine()}, "
            f"{os.cpu_count()} CPU cores, MLX {mx.__version__} on {mx.default_device()}, "
            "OpenBLAS preloaded, fp32 test models (`mlxhost.testing.models`). Timings are",
            "noisy: other work shared the cores."
            + (
                " Gemma's prompts are past its 512-token sliding window, so its turn N"
                " extends rotating caches that can no longer be trimmed."
                if any(r.model == "gemma" and r.prompt_tokens > 512 for r in results)
                else ""
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from mlxhost.cli.blas import preload_env, wanted

    if wanted(os.environ):  # the dynamic linker reads LD_PRELOAD only at start
        os.execve(
            sys.executable,
            [sys.executable, "-m", "bench.prefix_cache", *argv],
            preload_env(os.environ),
        )
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["qwen", "gemma"])
    parser.add_argument("--history-tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3, help="turn-N samples, cache on")
    parser.add_argument("--cold-repeats", type=int, default=2, help="turn-N samples, cache off")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {DOC.name}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = [
        bench_model(name, args.history_tokens, args.repeats, args.cold_repeats)
        for name in args.models
    ]
    text = section(results, argv)
    print(text)
    if not args.no_write:
        write_section(DOC, SECTION, text)
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
