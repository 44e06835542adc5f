"""Batched decode on CPU with and without the split matmuls (runtime.cpu_split),
side by side (``python -m bench.cpu_split``; OpenBLAS preloaded, as the server runs).

1. In this process, on the Qwen2.5-Coder 0.5B fp32 test model: one
   ``BatchGenerator`` decode step of 1-16 sequences with the stock layers (all
   OpenBLAS threads) and with the split ones (one thread per part), alternating
   by round; and a 512-token prefill both ways.
2. Over HTTP: ``mlxhost serve --cpu-split off`` and ``--cpu-split on`` side by
   side, N requests one after another and the same N at once (distinct
   prompts, greedy, ``--tokens`` each, prefill included), the two servers
   alternating per N.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.batching import chat


def in_process(rounds: int, sizes: list[int]) -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    from mlxhost.engine import cpu_split
    from mlxhost.engine.batch import decode_step_seconds
    from mlxhost.models.starter.builder import ensure_test_model

    blas = cpu_split.openblas()
    if blas is None:
        raise SystemExit("no OpenBLAS in this process: run with LD_PRELOAD=.../openblas-pthread/libblas.so.3")
    model, _ = load(str(ensure_test_model("qwen")))
    layers = cpu_split.split_layers(model, blas, blas.threads)
    steps: dict[str, dict[int, list[float]]] = {"stock": {}, "split": {}}
    prefill: dict[str, list[float]] = {"stock": [], "split": []}
    prompt = mx.array([[(i * 7) % 5000 + 10 for i in range(512)]])
    for r in range(rounds):
        for mode in (("stock", "split") if r % 2 == 0 else ("split", "stock")):
            layers.set_split(mode == "split")
            for size in sizes:
                steps[mode].setdefault(size, []).append(decode_step_seconds(model, size) * 1e3)
            began = time.perf_counter()
            mx.eval(model(prompt, cache=make_prompt_cache(model)))
            prefill[mode].append(time.perf_counter() - began)
            print(f"round {r} {mode}: steps (ms) "
                  f"{ {s: round(v[-1]) for s, v in steps[mode].items()} }, prefill 512 {prefill[mode][-1]:.2f} s",
                  flush=True)
    layers.set_split(False)
    return {"steps_ms": steps, "prefill_s": prefill, "threads": blas.threads}


def over_http(tokens: int, counts: list[int]) -> dict[str, Any]:
    from bench.systems import base_env
    from mlxhost.models.starter.builder import ensure_test_model
    from mlxhost.testing.server import ServerProcess

    model_dir = ensure_test_model("qwen")
    model = str(model_dir)
    servers = {
        policy: ServerProcess(["--model", model, "--allow-model-paths", "--max-batch", "8",
                               "--cpu-split", policy], env=base_env())
        for policy in ("off", "on")
    }
    results: dict[str, Any] = {p: {"sequential": {}, "concurrent": {}} for p in servers}
    for server in servers.values():
        server.__enter__()
    try:
        for policy, server in servers.items():
            chat(server.url, 999, 4, model)  # warm
            results[policy]["kernels"] = server.health().get("kernels")
        for n in counts:
            order = list(servers.items()) if n % 2 else list(reversed(servers.items()))
            for policy, server in order:
                ids = [n * 10 + k for k in range(n)]
                began = time.perf_counter()
                produced = sum(chat(server.url, i, tokens, model) for i in ids)
                results[policy]["sequential"][n] = produced / (time.perf_counter() - began)
                ids = [500 + n * 10 + k for k in range(n)]
                began = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    produced = sum(pool.map(lambda i, s=server: chat(s.url, i, tokens, model), ids))
                results[policy]["concurrent"][n] = produced / (time.perf_counter() - began)
                print(f"--cpu-split {policy} n={n}: sequential {results[policy]['sequential'][n]:.1f} tok/s, "
                      f"concurrent {results[policy]['concurrent'][n]:.1f}", flush=True)
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--counts", default="1,4,8")
    parser.add_argument("--skip", default="", help="in-process or http")
    args = parser.parse_args(argv)
    if "in-process" not in args.skip:
        inner = in_process(args.rounds, [int(s) for s in args.sizes.split(",")])
        print("| sequences | stock step (ms) | split step (ms) | split ÷ stock |")
        print("|---|---|---|---|")
        for size, stock in inner["steps_ms"]["stock"].items():
            split = inner["steps_ms"]["split"][size]
            print(f"| {size} | {statistics.median(stock):.0f} ({min(stock):.0f}–{max(stock):.0f}) | "
                  f"{statistics.median(split):.0f} ({min(split):.0f}–{max(split):.0f}) | "
                  f"{statistics.median(split) / statistics.median(stock):.2f} |")
        p = inner["prefill_s"]
        print(f"512-token prefill: stock {statistics.median(p['stock']):.2f} s, split {statistics.median(p['split']):.2f} s")
    if "http" not in args.skip:
        http = over_http(args.tokens, [int(c) for c in args.counts.split(",")])
        print("| streams | --cpu-split off: sequential / concurrent tok/s | ÷ | --cpu-split on: sequential / concurrent | ÷ |")
        print("|---|---|---|---|---|")
        for n in http["off"]["concurrent"]:
            cells = []
            for policy in ("off", "on"):
                s, c = http[policy]["sequential"][n], http[policy]["concurrent"][n]
                cells += [f"{s:.1f} / {c:.1f}", f"{c / s:.2f}×"]
            print(f"| {n} | {' | '.join(cells)} |")
        print("kernels:", {p: http[p]["kernels"] for p in ("off", "on")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
