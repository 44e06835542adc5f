"""One model over 1 vs 2 ranks (`mlxhost serve --ranks 2`, ring backend over loopback).

Run: python -m bench.distributed [--model qwen] [--tokens 48]
Writes the "Distributed (--ranks)" section of docs/benchmarks.md.

For each setup a real `mlxhost serve` loads the model; one greedy request
decodes ``--tokens`` tokens (streamed: decode speed is measured from the first
to the last token), then /health gives rank 0's weight bytes (tensor parallel
ranks hold equal shapes, so a follower holds the same) and /proc every rank's
resident set. On one CPU box two ranks share its cores and talk over loopback,
so they decode slower than one process: the point is the memory split and that
the replies match, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench.docs import DOC, write_section
from mlxhost.testing.models import TEST_MODELS, ensure_test_model, install_into_hf_cache
from mlxhost.testing.server import ServerProcess

PROMPT = "Write a short story about a lighthouse keeper."


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ranks_of(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def decode(url: str, model: str, tokens: int) -> tuple[float, str]:
    body = {
        "model": model, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }
    stamps: list[float] = []
    text: list[str] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=900) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return rate, "".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen", choices=sorted(TEST_MODELS))
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    model = TEST_MODELS[args.model].repo_id
    rows, replies = [], []
    with tempfile.TemporaryDirectory() as tmp:
        hub = Path(tmp) / "hub"
        install_into_hf_cache(ensure_test_model(args.model), model, hub)
        env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
        for ranks in (1, 2):
            extra = ["--ranks", str(ranks)] if ranks > 1 else []
            log = Path(tmp) / f"serve-{ranks}.log"
            with ServerProcess(["--model", model, "--no-warmup", *extra], env=env, log_path=log) as server:
                decode(server.url, model, 4)  # the first request's one-time costs
                rate, reply = decode(server.url, model, args.tokens)
                health = server.health()
                pids = ranks_of(server.process.pid)
                rows.append((ranks, rate, health["memory"]["weights"], [rss_bytes(p) for p in pids]))
                replies.append(reply)
    single_weights = rows[0][2]
    lines = [
        f"`python -m bench.distributed --model {args.model} --tokens {args.tokens}` "
        f"({os.cpu_count()} CPU cores, ring backend over loopback, fp32, one greedy request of "
        f"{args.tokens} tokens; decode speed from the first to the last streamed token).",
        "",
        "| ranks | decode tok/s | weights per rank | of one process | RSS per rank |",
        "|---|---|---|---|---|",
    ]
    for ranks, rate, weights, rss in rows:
        lines.append(
            f"| {ranks} | {rate:.2f} | {weights / 2**20:.0f} MiB | {weights / single_weights:.0%} "
            f"| {', '.join(f'{r / 2**20:.0f} MiB' for r in rss)} |"
        )
    lines += ["", f"Replies identical: {'yes' if replies[0] == replies[1] else 'no'}."]
    section = "## Distributed (--ranks)\n\n" + "\n".join(lines)
    print(section)
    write_section(DOC, "distributed", section)


if __name__ == "__main__":
    main()
