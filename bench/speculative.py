"""Prompt-lookup speculative decoding vs plain greedy decoding, side by side.

``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 python -m bench.speculative``
loads Qwen2.5-Coder 0.5B fp32 in-process (``MLXEngine``, ``--max-batch 8``: a
request alone decodes in the lone-sequence loop, where drafting happens; the
prefix cache on, so a repeated prompt costs no second prefill) and, in one run:

- a code edit: a 150-line Python file and "rename this variable and return the
  whole file", ``--edit-tokens`` tokens, plain and speculative interleaved
  ``--rounds`` times: decode tok/s after the first token, identical text;
- free chat (a story, no repetition), likewise;
- 20 prompts (code edits, summaries, free chat), ``--check-tokens`` tokens
  each: how many give identical tokens.

Writes the "Prompt lookup" section of docs/benchmarks.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any


def code_file(lines: int = 150) -> str:
    """A plausible Python module of ``lines`` lines using the variable ``total``."""
    out = ["import math", "", ""]
    k = 0
    while len(out) < lines:
        out += [
            f"def step_{k}(values, scale={k + 1}):",
            f'    """Scale and sum the values of batch {k}."""',
            "    total = 0",
            "    for value in values:",
            "        total += value * scale",
            f"    if total > {100 * (k + 1)}:",
            "        total = math.sqrt(total)",
            "    return total",
            "",
        ]
        k += 1
    return "\n".join(out[:lines])


STORY = "Tell me a short story about a lighthouse keeper who finds a message in a bottle."
SOURCE = code_file()
TEXT = (
    "The city council met on Tuesday to discuss the new bicycle lanes. Residents spoke "
    "for two hours: shop owners worried about parking, parents asked for safer routes "
    "to school, and cyclists described near misses on the main avenue. The council "
    "voted to build a pilot lane on one street and to report back in six months."
)


def check_prompts() -> list[str]:
    small = code_file(30)
    edits = [
        f"Rename the variable `total` to `{name}` in this file and return the whole file.\n\n```python\n{small}\n```"
        for name in ("acc", "running_sum", "result", "s", "subtotal", "amount", "value_sum")
    ]
    summaries = [
        f"{ask}\n\n{TEXT}" for ask in (
            "Summarize this in one sentence.", "Summarize this for a child.", "List the main points.",
            "What did the council decide?", "Who spoke at the meeting?", "Rewrite this as a headline.",
            "Summarize this in three bullet points.",
        )
    ]
    chats = [
        "Hello! How are you today?", "What is your favourite colour, and why?",
        "Give me three ideas for a birthday party.", "Explain recursion to a beginner.",
        "Write a haiku about autumn.", "What is the capital of Australia?",
    ]
    return edits + summaries + chats


def generate(engine: Any, tokens: tuple[int, ...], max_tokens: int, speculative: bool) -> tuple[list[int], float]:
    """The greedy tokens and the decode rate after the first token."""
    from mlxhost.core.types import SamplingParams
    from mlxhost.runtime.engine import PreparedPrompt

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, speculative=speculative)
    out: list[int] = []
    stamps: list[float] = []

    def emit(step: Any, error: Any) -> None:
        if error is not None:
            raise error
        out.append(step.token)
        stamps.append(time.perf_counter())

    engine.join(PreparedPrompt(tokens=tokens), params, emit)
    while engine.step():
        pass
    rate = (len(out) - 1) / (stamps[-1] - stamps[0]) if len(out) > 1 and stamps[-1] > stamps[0] else 0.0
    return out, rate


def chat_tokens(tokenizer: Any, text: str) -> tuple[int, ...]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return tuple(tokenizer.encode(rendered, add_special_tokens=False))


def side_by_side(engine: Any, tokens: tuple[int, ...], max_tokens: int, rounds: int) -> dict[str, Any]:
    generate(engine, tokens, 1, False)  # the prompt's KV into the prefix cache
    plain_rates, fast_rates, identical = [], [], True
    before = dict(engine.stats()["batch"])
    for _ in range(rounds):
        plain, plain_rate = generate(engine, tokens, max_tokens, False)
        fast, fast_rate = generate(engine, tokens, max_tokens, True)
        identical &= plain == fast
        plain_rates.append(plain_rate)
        fast_rates.append(fast_rate)
    after = engine.stats()["batch"]
    drafted = after["drafted"] - before["drafted"]
    accepted = after["accepted"] - before["accepted"]
    return {
        "plain_tok_s": round(statistics.median(plain_rates), 2),
        "speculative_tok_s": round(statistics.median(fast_rates), 2),
        "ratio": round(statistics.median(fast_rates) / statistics.median(plain_rates), 2),
        "identical": identical,
        "acceptance": round(accepted / drafted, 2) if drafted else None,
        "tokens": len(plain),
        "prompt_tokens": len(tokens),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--edit-tokens", type=int, default=160)
    parser.add_argument("--chat-tokens", type=int, default=64)
    parser.add_argument("--check-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from bench import docs
    from mlxhost.engine.mlx_engine import MLXEngine
    from mlxhost.models.registry import folder_info
    from mlxhost.models.starter.builder import ensure_test_model

    engine = MLXEngine(warmup=True, max_batch=8, speculative=True)
    tokenizer = engine.load(folder_info(ensure_test_model("qwen")))
    edit = chat_tokens(tokenizer, "Rename the variable `total` to `running_total` in this file and "
                                  f"return the whole file.\n\n```python\n{SOURCE}\n```")
    results = {
        "code edit": side_by_side(engine, edit, args.edit_tokens, args.rounds),
    }
    print(json.dumps(results), flush=True)
    results["free chat"] = side_by_side(engine, chat_tokens(tokenizer, STORY), args.chat_tokens, args.rounds)
    print(json.dumps(results), flush=True)
    same = 0
    prompts = check_prompts()
    for text in prompts:
        tokens = chat_tokens(tokenizer, text)
        plain, _ = generate(engine, tokens, args.check_tokens, False)
        fast, _ = generate(engine, tokens, args.check_tokens, True)
        same += plain == fast
    print(f"identical: {same}/{len(prompts)}", flush=True)
    engine.unload()
    rows = [
        "| workload | prompt tokens | tokens | plain tok/s | prompt lookup tok/s | ratio | identical text | acceptance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['prompt_tokens']:,} | {r['tokens']} | {r['plain_tok_s']:.2f} | "
            f"{r['speculative_tok_s']:.2f} | **{r['ratio']:.2f}×** | {'yes' if r['identical'] else 'NO'} | "
            f"{r['acceptance']} |"
        )
    body = "\n".join([
        "## Prompt lookup (speculative decoding without a draft model)",
        "",
        f"`python -m bench.speculative --edit-tokens {args.edit_tokens} --chat-tokens {args.chat_tokens} "
        f"--check-tokens {args.check_tokens} --rounds {args.rounds}`: Qwen2.5-Coder 0.5B fp32 on 2 shared "
        "CPU cores (OpenBLAS), in-process engine (`--max-batch 8`, a request alone: the lone-sequence "
        "loop), greedy; plain and prompt lookup interleaved in one process on the same cached prompt; "
        "decode rate after the first token (median of the rounds). The code edit is a 150-line Python "
        "file with \"rename the variable `total` to `running_total` and return the whole file\". "
        "Acceptance: accepted ÷ drafted tokens. Not run on a GPU.",
        "",
        *rows,
        "",
        f"Identical tokens on {same}/{len(prompts)} prompts (7 code edits, 7 summaries, 6 free chat; "
        f"{args.check_tokens} tokens each).",
    ])
    print(body)
    if not args.no_write:
        docs.write_section(args.doc, "speculative", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
