"""Running streams while a long prompt prefills: fixed chunks vs time-sized ones.

``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 python -m bench.fair_prefill``
loads Qwen2.5-Coder 0.5B fp32 in-process (``MLXEngine``, ``--max-batch 8``),
and for each policy (``--prefill-step-ms 0``: always 512-token chunks, the old
behaviour; ``--prefill-step-ms 250``) starts two streams, measures their decode
rate alone, then joins a 4,000-token prompt and measures the two streams'
decode rate from that join to the long prompt's first token, and the long
prompt's time to first token. Writes the "Fair prefill" section of
docs/benchmarks.md unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

TEXT = (
    "def handle(request, session):\n    user = session.get_user(request.user_id)\n"
    "    if user is None:\n        raise NotFound(request.user_id)\n"
    "    return render(user.profile, theme=request.theme)\n\n"
)


def measure(path: Path, step_ms: int, long_tokens: int, streams: int = 2, base_steps: int = 6) -> dict[str, Any]:
    from mlxhost.core.types import SamplingParams
    from mlxhost.engine.mlx_engine import MLXEngine
    from mlxhost.models.registry import folder_info
    from mlxhost.runtime.engine import PreparedPrompt

    engine = MLXEngine(
        warmup=True, prefix_cache_bytes=0, max_batch=8, prefill_chunk=512, prefill_step_ms=step_ms
    )
    tokenizer = engine.load(folder_info(path))
    try:
        ids = tokenizer.encode(TEXT * (long_tokens // 40 + 2), add_special_tokens=False)
        counts = [0] * streams
        times: list[float] = []
        run = SamplingParams(max_tokens=100_000, temperature=0.0)
        uids = []
        for k in range(streams):
            def emit(step: Any, error: Any, k: int = k) -> None:
                if step is not None:
                    counts[k] += 1
            prompt = PreparedPrompt(tokens=tuple(ids[k * 7 : k * 7 + 24]))
            uids.append(engine.join(prompt, run, emit))
        while min(counts) < 3:
            engine.step()
        began, before = time.perf_counter(), sum(counts)
        for _ in range(base_steps):
            engine.step()
        alone = (sum(counts) - before) / streams / (time.perf_counter() - began)

        first: list[float] = []
        long_prompt = PreparedPrompt(tokens=tuple(ids[100 : 100 + long_tokens]))
        engine.join(long_prompt, SamplingParams(max_tokens=1, temperature=0.0),
                    lambda step, error: first.append(time.perf_counter()))
        began, before = time.perf_counter(), sum(counts)
        steps = 0
        while not first:
            engine.step()
            steps += 1
            times.append(time.perf_counter())
        during_tokens = (sum(counts) - before) / streams
        ttft = first[0] - began
        gaps = [b - a for a, b in zip([began, *times], times)]
        for uid in uids:
            engine.leave(uid)
        return {
            "prefill_step_ms": step_ms,
            "alone_tok_s": round(alone, 2),
            "during_prefill_tok_s": round(during_tokens / ttft, 3),
            "tokens_per_stream_during_prefill": during_tokens,
            "long_ttft_s": round(ttft, 1),
            "steps": steps,
            "longest_step_s": round(max(gaps), 2),
            "prefill": engine.stats()["batch"].get("prefill"),
        }
    finally:
        engine.unload()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--long-tokens", type=int, default=4000)
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from bench import docs
    from mlxhost.models.starter.builder import ensure_test_model

    path = ensure_test_model("qwen")
    results = []
    for step_ms in (0, 250):
        results.append(measure(path, step_ms, args.long_tokens))
        print(json.dumps(results[-1]), flush=True)
    rows = [
        "| policy | 2 streams alone, tok/s each | while the prompt prefills, tok/s each "
        "| tokens each during the prefill | longest gap between tokens | long prompt's TTFT |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        name = "fixed 512-token chunks (`--prefill-step-ms 0`, before)" if not r["prefill_step_ms"] \
            else f"time-sized chunks (`--prefill-step-ms {r['prefill_step_ms']}`, after)"
        rows.append(
            f"| {name} | {r['alone_tok_s']:.2f} | {r['during_prefill_tok_s']:.2f} "
            f"| {r['tokens_per_stream_during_prefill']:.0f} | {r['longest_step_s']:.1f} s "
            f"| {r['long_ttft_s']:.0f} s |"
        )
    before, after = results
    body = "\n".join([
        "## Fair prefill",
        "",
        f"`python -m bench.fair_prefill` (`--long-tokens {args.long_tokens}`): Qwen2.5-Coder 0.5B fp32 "
        "on 2 shared CPU cores (OpenBLAS), in-process engine, `--max-batch 8`. Two greedy streams "
        f"decode; then a {args.long_tokens:,}-token prompt joins; the streams' decode rate from that "
        "join to the long prompt's first token. Both policies in one run.",
        "",
        *rows,
        "",
        f"Running streams while the prompt prefills: **{after['during_prefill_tok_s'] / max(before['during_prefill_tok_s'], 1e-9):.1f}×** "
        f"the fixed-chunk rate ({after['during_prefill_tok_s'] / max(after['alone_tok_s'], 1e-9):.2f}× "
        "their rate alone); the long prompt's time to first token "
        f"{after['long_ttft_s'] / max(before['long_ttft_s'], 1e-9):.2f}× (its measured prefill "
        f"rate at the end: {after['prefill'] and after['prefill']['rate_tok_s']} tok/s, chunk "
        f"{after['prefill'] and after['prefill']['next_chunk']}).",
    ])
    print(body)
    if not args.no_write:
        docs.write_section(args.doc, "fair_prefill", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
