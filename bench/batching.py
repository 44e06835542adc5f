"""Continuous batching: aggregate decode rate at 1, 2, 4, 8 concurrent streams
(``python -m bench.batching``).

For each N, one run: N requests one after another (the sequential baseline),
then the same N requests at once, against a real ``mlxhost serve`` over HTTP
(Qwen2.5-Coder 0.5B fp32 test model, greedy, ``--tokens`` each, prefill
included: what a client waits for); then mlx-lm's ``BatchGenerator`` driven
directly in this process on the same prompts (the raw ceiling). Plus the time
to first token of a request that arrives while 7 others decode, against its
time alone. Writes the ``batching`` section of docs/benchmarks.md.

Run it with OpenBLAS preloaded (``LD_PRELOAD=.../openblas-pthread/libblas.so.3``)
so the in-process raw run uses the same BLAS as the server.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench import docs
from bench.http import client
from bench.report import md_table

COUNTS = (1, 2, 4, 8)


def prompt(i: int) -> str:
    # Distinct prompts (no request reuses another's cached prefix beyond the template)
    # that keep a small model talking past the token budget.
    return f"Count from {i * 100 + 1} to {i * 100 + 200}, separated by commas."


def chat(url: str, i: int, tokens: int, model: str) -> int:
    body = {"model": model, "temperature": 0, "max_tokens": tokens,
            "messages": [{"role": "user", "content": prompt(i)}]}
    reply = client().post(f"{url}/v1/chat/completions", json=body).json()
    return int(reply["usage"]["completion_tokens"])


def long_prompt(i: int) -> str:
    """About 1,000 tokens nobody else sent (TTFT is then mostly its own prefill)."""
    facts = " ".join(f"Item {i}-{k} weighs {(i * 31 + k * 7) % 97} grams." for k in range(90))
    return f"{facts}\nWhich item is the heaviest?"


def first_token_after(url: str, content: str, model: str) -> float:
    """Seconds from sending a streaming request to its first content chunk."""
    body = {"model": model, "temperature": 0, "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": content}]}
    started = time.perf_counter()
    with client().stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if has_text(line):
                return time.perf_counter() - started
    raise RuntimeError("no content chunk")


def has_text(line: str) -> bool:
    """An SSE line with a non-empty content delta (the first chunk carries only the role)."""
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


def stream_gaps(url: str, i: int, tokens: int, model: str) -> list[float]:
    """Seconds between consecutive content chunks of one streaming request."""
    body = {"model": model, "temperature": 0, "max_tokens": tokens, "stream": True,
            "messages": [{"role": "user", "content": prompt(i)}]}
    stamps = []
    with client().stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if has_text(line):
                stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def measure_rates(url: str, model: str, tokens: int, offset: int, name: str) -> dict[str, Any]:
    """Sequential and concurrent aggregate tok/s at each N, against one server."""
    results: dict[str, Any] = {"sequential": {}, "concurrent": {}}
    chat(url, 999, 4, model)  # warm
    for n in COUNTS:
        ids = [offset + n * 10 + k for k in range(n)]
        started = time.perf_counter()
        produced = sum(chat(url, i, tokens, model) for i in ids)
        results["sequential"][n] = produced / (time.perf_counter() - started)
        ids = [offset + 500 + n * 10 + k for k in range(n)]
        started = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            produced = sum(pool.map(lambda i: chat(url, i, tokens, model), ids))
        results["concurrent"][n] = produced / (time.perf_counter() - started)
        print(f"{name} n={n}: sequential {results['sequential'][n]:.1f} tok/s, "
              f"concurrent {results['concurrent'][n]:.1f} tok/s", flush=True)
    return results


def measure_server(model_dir: Path, tokens: int, offset: int) -> dict[str, Any]:
    from bench.systems import base_env
    from mlxhost.testing.server import ServerProcess

    server = ServerProcess(
        ["--model", str(model_dir), "--allow-model-paths", "--max-batch", "8"], env=base_env()
    )
    with server:
        model = str(model_dir)
        results = measure_rates(server.url, model, tokens, offset, "mlxhost")
        results["ttft_alone"] = first_token_after(server.url, long_prompt(offset + 900), model)
        with ThreadPoolExecutor(7) as pool:
            running = [pool.submit(stream_gaps, server.url, offset + 910 + k, tokens * 3, model)
                       for k in range(7)]
            # Wait until all 7 decode, then arrive.
            deadline = time.monotonic() + 300
            while httpx.get(f"{server.url}/health").json().get("running", 0) < 7:
                if time.monotonic() > deadline:
                    raise RuntimeError("the 7 background requests did not start")
                time.sleep(0.05)
            results["ttft_busy"] = first_token_after(server.url, long_prompt(offset + 990), model)
            gaps = [g for f in running for g in f.result()]
        gaps.sort()
        results["gap_median"] = gaps[len(gaps) // 2]
        results["gap_max"] = gaps[-1]
    return results


def measure_mlx_lm_server(model_dir: Path, tokens: int, offset: int) -> dict[str, Any]:
    from bench.systems import PeerServerSystem

    system = PeerServerSystem(Path("/tmp/mlxhost-bench-logs"), "mlx-lm-server")
    system.start(model_dir)
    try:
        return measure_rates(system.url, str(model_dir), tokens, offset, "mlx_lm.server")
    finally:
        system.stop()


def measure_raw(model_dir: Path, tokens: int, offset: int) -> dict[int, float]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import BatchGenerator

    model, tokenizer = load(str(model_dir))
    rates = {}
    for n in COUNTS:
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt(offset + 500 + n * 10 + k)}], add_generation_prompt=True
            )
            for k in range(n)
        ]
        generator = BatchGenerator(model, completion_batch_size=8, prefill_step_size=512)
        started = time.perf_counter()
        generator.insert(prompts, max_tokens=[tokens] * n)
        produced, finished = 0, 0
        while finished < n:
            for response in generator.next_generated():
                produced += 1
                finished += response.finish_reason is not None
        rates[n] = produced / (time.perf_counter() - started)
        generator.close()
        mx.clear_cache()
        print(f"raw BatchGenerator n={n}: {rates[n]:.1f} tok/s", flush=True)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/cpu-batching.json"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    from mlxhost.models.starter.builder import ensure_test_model

    model_dir = ensure_test_model("qwen")
    served = measure_server(model_dir, args.tokens, offset=0)
    peer = measure_mlx_lm_server(model_dir, args.tokens, offset=0)
    raw = measure_raw(model_dir, args.tokens, offset=0)
    seq1 = served["sequential"][1]
    rows = []
    for n in COUNTS:
        conc = served["concurrent"][n]
        rows.append([
            n, f"{served['sequential'][n]:.1f}", f"{conc:.1f}", f"{conc / n:.1f}",
            f"{conc / served['sequential'][n]:.2f}×", f"{peer['concurrent'][n]:.1f}",
            f"{conc / peer['concurrent'][n]:.2f}", f"{raw[n]:.1f}", f"{conc / raw[n]:.2f}",
        ])
    body = "\n".join([
        "## Continuous batching",
        "",
        f"`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 python -m bench.batching "
        f"--tokens {args.tokens}`: Qwen2.5-Coder 0.5B fp32 on 2 CPU cores (OpenBLAS), greedy, "
        f"{args.tokens} tokens a request, prefill included (distinct prompts). mlxhost over HTTP "
        "(`--max-batch 8`): N requests one after another, then the same N at once; `mlx_lm.server` "
        "(it batches too) the same N at once; raw: mlx-lm's `BatchGenerator` in one process on the "
        "same prompts, all inserted together (over HTTP they arrive a few ms apart). One run each, "
        "side by side (this machine is shared: read the ratios, not the third digit).",
        "",
        md_table(
            ["streams", "sequential tok/s", "concurrent tok/s (aggregate)", "per stream",
             "concurrent ÷ sequential", "mlx_lm.server tok/s", "mlxhost ÷ mlx_lm.server",
             "raw BatchGenerator tok/s", "mlxhost ÷ raw"],
            rows,
        ),
        "",
        f"Time to first token of a ~1,000-token prompt arriving while 7 others decode: "
        f"{served['ttft_busy']:.2f} s, against {served['ttft_alone']:.2f} s alone "
        f"({served['ttft_busy'] / served['ttft_alone']:.2f}×). Meanwhile the 7 running streams' "
        f"longest gap between two tokens was {served['gap_max']:.2f} s (median gap "
        f"{served['gap_median']:.2f} s): the new prompt's prefill (two 512-token chunks) "
        f"interleaved with their decode. Single stream: {seq1:.1f} tok/s.",
    ])
    print(body)
    if not args.no_write:
        docs.write_section(args.doc, "batching", body)
        args.json.write_text(
            json.dumps({"served": served, "mlx_lm_server": peer, "raw": raw}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
