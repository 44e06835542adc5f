"""Memory across model swaps: 50 swaps between two real models in one `mlxhost serve`.

Run: python -m bench.swap_memory [--swaps 50]
Writes the "Memory across swaps" section of docs/benchmarks.md.

After each swap (a 1-token request for the other model) the server's resident
set size (VmRSS from /proc) is read. The target: after the last swap, RSS
within 5% of the same model's RSS after the first swaps, i.e. the old model's
memory is returned every time.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.docs import DOC, write_section
from mlxhost.testing.models import TEST_MODELS, ensure_test_model, install_into_hf_cache
from mlxhost.testing.server import ServerProcess


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--swaps", type=int, default=50)
    args = parser.parse_args(argv)
    hub = Path(tempfile.mkdtemp(prefix="mlxhost-bench-hf-"))
    names = ["qwen", "gemma"]
    ids = [TEST_MODELS[n].repo_id for n in names]
    for name in names:
        install_into_hf_cache(ensure_test_model(name), TEST_MODELS[name].repo_id, hub)
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    log = hub / "serve.log"
    rows = []
    with ServerProcess(["--model", ids[0]], env=env, log_path=log) as server:
        pid = server.process.pid
        baseline = rss_mib(pid)
        print(f"loaded {ids[0]}: RSS {baseline:.0f} MiB", flush=True)
        for swap in range(1, args.swaps + 1):
            model = ids[swap % 2]
            started = time.perf_counter()
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
            }
            response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
            response.raise_for_status()
            rows.append((swap, model, rss_mib(pid), time.perf_counter() - started))
            print(
                f"swap {swap:2d} -> {model}: RSS {rows[-1][2]:.0f} MiB ({rows[-1][3]:.1f}s)",
                flush=True,
            )
        swaps = server.health()["swaps"]
    first = {m: next(r[2] for r in rows if r[1] == m) for m in ids}
    last = {m: next(r[2] for r in reversed(rows) if r[1] == m) for m in ids}
    drift = {m: (last[m] - first[m]) / first[m] * 100 for m in ids}
    lines = [
        "## Memory across swaps",
        "",
        f"`python -m bench.swap_memory --swaps {args.swaps}` on "
        f"{os.cpu_count()} CPU cores; {swaps} swaps between the two fp32 test models in one "
        "`mlxhost serve`, each swap triggered by a 1-token request. RSS is the server's VmRSS "
        "right after the swap's response.",
        "",
        "| model loaded | RSS after its first swap | RSS after its last swap | drift |",
        "|---|---|---|---|",
    ]
    for m in ids:
        lines.append(f"| `{m}` | {first[m]:.0f} MiB | {last[m]:.0f} MiB | {drift[m]:+.1f}% |")
    peak = max(r[2] for r in rows)
    lines += [
        "",
        f"RSS before any swap: {baseline:.0f} MiB; highest after any swap: {peak:.0f} MiB. "
        f"Target: drift within ±5% — {'met' if all(abs(d) <= 5 for d in drift.values()) else 'NOT met'}.",
        f"Median swap request time: {sorted(r[3] for r in rows)[len(rows) // 2]:.1f} s.",
    ]
    section = "\n".join(lines)
    write_section(DOC, "swap-memory", section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
