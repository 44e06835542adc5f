"""Soak: many mixed requests against one `mlxhost serve`; memory must come back.

Run: python -m bench.soak [--requests 500] [--concurrency 6] [--max-memory 2600MiB]
Writes the "Soak" section of docs/benchmarks.md and, with --json, every figure.

One server with both fp32 test models (Qwen 0.5B, Gemma 270M) and a memory
budget a little above Qwen's weights, so the governor works: the prefix cache
is squeezed, requests beyond the KV room are refused. A warm-up (each model, a long prompt, an idle unload) comes first;
then ``--requests`` requests from ``--concurrency`` clients, drawn with a
fixed seed from this mix:

- short chats (``/v1/chat/completions``, streamed or not, ``/api/chat``,
  ``/v1/messages``), a few tokens each;
- long prompts (~600 tokens of notes to summarize);
- follow-up turns that repeat an earlier conversation (prefix-cache hits);
- streams dropped by the client after the first chunk (disconnects);
- requests that can never fit in the budget (must be 400, not 5xx);
- one model or the other (swaps), the first more often.

Memory is compared in two states, each reached the same way before and after
the run: *unloaded* (the idle keep-alive fired: MLX should hold nothing and
RSS be back at the post-unload baseline) and *Qwen loaded* (a Gemma request,
then a Qwen request, so the prefix cache holds only that one request). The
targets: RSS and MLX active memory after within 5% of before, zero 5xx.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.docs import DOC, write_section
from mlxhost.models.starter.builder import TEST_MODELS, ensure_test_model, install_into_hf_cache
from mlxhost.testing.http import raw_post, read_until
from mlxhost.testing.server import ServerProcess

QWEN = TEST_MODELS["qwen"].repo_id
GEMMA = TEST_MODELS["gemma"].repo_id
KEEP_ALIVE_S = 8
_NOTES = [
    "The engineer checked the pump at dawn and found the seal worn.",
    "A small river ran under the road where the old mill had been.",
    "The library kept its maps in a cold room on the third floor.",
    "Every winter the ferry stopped for two weeks of repairs.",
    "The night train was late because a tree had fallen on the line.",
    "Three families shared the orchard and split the apples by weight.",
]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else float("nan")


def long_notes(rng: random.Random, sentences: int = 45) -> str:
    return " ".join(rng.choice(_NOTES) for _ in range(sentences))


class Soak:
    def __init__(self, url: str, pid: int, seed: int) -> None:
        self.url = url
        self.pid = pid
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.errors: list[str] = []
        self.conversations: list[list[dict[str, str]]] = []
        self.client = httpx.Client(base_url=url, timeout=1200)

    # -- one request of each kind ----------------------------------------------
    def plan(self, index: int) -> tuple[str, str, dict[str, Any]]:
        rng = self.rng
        with self.lock:
            model = QWEN if rng.random() < 0.75 else GEMMA
            roll = rng.random()
            tag = f"[{index}] "
            if roll < 0.10:
                return "long", model, {"messages": [{"role": "user", "content": tag + long_notes(rng)
                                                     + " Summarize the notes in one sentence."}],
                                       "max_tokens": 4}
            if roll < 0.22 and self.conversations:
                history = rng.choice(self.conversations)
                return "follow-up", model, {"messages": [*history, {"role": "user",
                                                                    "content": "And then?"}],
                                            "max_tokens": 4}
            if roll < 0.32:
                return "disconnect", model, {"messages": [{"role": "user", "content": tag +
                                                           "Write a long poem about rivers."}],
                                             "max_tokens": 64, "stream": True}
            if roll < 0.35:
                # Within Qwen's 32k window, far beyond what the budget's KV room holds.
                return "never-fits", QWEN, {"messages": [{"role": "user", "content": tag + "Hi"}],
                                            "max_tokens": 20_000}
            kind = rng.choice(["chat", "chat-stream", "ollama", "anthropic"])
            return kind, model, {"messages": [{"role": "user", "content": tag +
                                               f"What is {index % 9}+{index % 7}?"}],
                                 "max_tokens": rng.choice([2, 4, 8])}

    def run_one(self, index: int) -> None:
        kind, model, body = self.plan(index)
        try:
            status = self._send(kind, model, body)
        except Exception as exc:  # a transport failure counts as an error
            status = f"exception {type(exc).__name__}"
            with self.lock:
                self.errors.append(f"{index} {kind}: {exc}")
        with self.lock:
            self.statuses[status] += 1
            self.kinds[kind] += 1
            if kind in ("chat", "long") and status == "200" and len(self.conversations) < 40:
                self.conversations.append(body["messages"])

    def _send(self, kind: str, model: str, body: dict[str, Any]) -> str:
        if kind == "disconnect":
            with raw_post(self.url, "/v1/chat/completions", {"model": model, **body}) as sock:
                head = read_until(sock, b"\r\n\r\n")
                status = head.split(b" ", 2)[1].decode()
                if status == "200":
                    read_until(sock, b"data: ")  # the first chunk, then hang up
                return status
        if kind == "ollama":
            payload = {"model": model, "messages": body["messages"], "stream": False,
                       "options": {"num_predict": body["max_tokens"], "temperature": 0}}
            return str(self.client.post("/api/chat", json=payload).status_code)
        if kind == "anthropic":
            payload = {"model": model, "messages": body["messages"],
                       "max_tokens": body["max_tokens"]}
            return str(self.client.post("/v1/messages", json=payload).status_code)
        payload = {"model": model, "temperature": 0, **body}
        if kind == "chat-stream":
            payload["stream"] = True
            with self.client.stream("POST", "/v1/chat/completions", json=payload) as response:
                for _ in response.iter_lines():
                    pass
                return str(response.status_code)
        response = self.client.post("/v1/chat/completions", json=payload)
        if response.status_code >= 500:
            with self.lock:
                self.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
        return str(response.status_code)

    # -- states --------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self.client.get("/health").json()

    def ask(self, model: str, text: str, max_tokens: int = 2) -> None:
        response = self.client.post("/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "temperature": 0})
        response.raise_for_status()

    def measure(self, label: str) -> dict[str, Any]:
        health = self.health()
        memory = health["memory"]
        figures = {
            "state": label,
            "model": health["model"],
            "rss_mib": rss_mib(self.pid),
            "mlx_active_mib": (memory["mlx"]["active"] or 0) / 2**20,
            "mlx_cache_mib": (memory["mlx"]["cache"] or 0) / 2**20,
            "prefix_cache_mib": memory["prefix_cache"] / 2**20,
        }
        print(f"[{label}] {json.dumps(figures)}", flush=True)
        return figures

    def unloaded(self, label: str) -> dict[str, Any]:
        unloads = self.health()["keep_alive"]["idle_unloads"]
        deadline = time.monotonic() + 300
        while self.health()["keep_alive"]["idle_unloads"] <= unloads:
            if time.monotonic() > deadline:
                raise TimeoutError("the model did not unload")
            time.sleep(0.5)
        return self.measure(label)

    def qwen_loaded(self, label: str) -> dict[str, Any]:
        self.ask(GEMMA, "Say hi.")
        self.ask(QWEN, "Say hi.")
        return self.measure(label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--max-memory", default="2600MiB",
                        help="the budget: a little above Qwen's 2.35 GiB of weights")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--no-write", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    hub = Path(tempfile.mkdtemp(prefix="mlxhost-soak-hf-"))
    for name in ("qwen", "gemma"):
        install_into_hf_cache(ensure_test_model(name), TEST_MODELS[name].repo_id, hub)
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    serve_args = ["--model", QWEN, "--max-memory", args.max_memory,
                  "--keep-alive", f"{KEEP_ALIVE_S}s"]
    log = hub / "serve.log"
    started = time.perf_counter()
    with ServerProcess(serve_args, env=env, log_path=log) as server:
        assert server.process is not None
        soak = Soak(server.url, server.process.pid, args.seed)
        # Warm-up: both models, a long prompt, a follow-up, then the two states.
        for model in (QWEN, GEMMA, QWEN):
            soak.ask(model, "[warm] " + long_notes(random.Random(0)) + " Summarize.", 2)
        before = [soak.qwen_loaded("before, Qwen loaded"), soak.unloaded("before, unloaded")]
        run_started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(soak.run_one, range(args.requests)))
        run_seconds = time.perf_counter() - run_started
        health = soak.health()
        after = [soak.qwen_loaded("after, Qwen loaded"), soak.unloaded("after, unloaded")]
        final = soak.health()
    total = time.perf_counter() - started
    five_xx = sum(n for s, n in soak.statuses.items() if not s.isdigit() or s.startswith("5"))
    rows = []
    for b, a in zip(before, after):
        rows.append((b["state"].split(", ", 1)[1], b, a))
    lines = [
        "## Soak: memory after many mixed requests",
        "",
        f"`python -m bench.soak --requests {args.requests} --concurrency {args.concurrency} "
        f"--max-memory {args.max_memory}` on {os.cpu_count()} CPU cores (Linux, MLX CPU, "
        f"OpenBLAS): one `mlxhost serve --max-memory {args.max_memory} --keep-alive "
        f"{KEEP_ALIVE_S}s` with both fp32 test models; {args.requests} requests in "
        f"{run_seconds / 60:.1f} min from {args.concurrency} clients (seed {args.seed}). "
        "Mix: " + ", ".join(f"{n} {k}" for k, n in sorted(soak.kinds.items())) + ". "
        f"Swaps during the run: {health['swaps']}; prefix-cache shrinks for memory: "
        f"{health['memory']['prefix_shrinks']}; requests that waited for memory: "
        f"{health['memory']['waited']}; refused as never fitting: {health['memory']['refused']}.",
        "",
        "Each state is reached the same way before and after the run (see `bench/soak.py`). "
        "RSS is the server's VmRSS; MLX active is `mx.get_active_memory()` from `/health`.",
        "",
        "| state | RSS before | RSS after | change | MLX active before | MLX active after | change |",
        "|---|---|---|---|---|---|---|",
    ]

    def change(b: float, a: float) -> str:
        if b < 1:  # nothing held: show the absolute difference
            return f"{a - b:+.3f} MiB"
        return f"{(a - b) / b * 100:+.1f}%"

    met = True
    for state, b, a in rows:
        for key in ("rss_mib", "mlx_active_mib"):
            if b[key] >= 1 and abs(a[key] - b[key]) > 0.05 * b[key]:
                met = False
            if b[key] < 1 and a[key] - b[key] > 1:  # unloaded MLX: within 1 MiB of nothing
                met = False
        lines.append(
            f"| {state} | {b['rss_mib']:.0f} MiB | {a['rss_mib']:.0f} MiB | "
            f"{change(b['rss_mib'], a['rss_mib'])} | {b['mlx_active_mib']:.1f} MiB | "
            f"{a['mlx_active_mib']:.1f} MiB | {change(b['mlx_active_mib'], a['mlx_active_mib'])} |"
        )
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(soak.statuses.items()))
    met = met and five_xx == 0
    lines += [
        "",
        f"Responses by status: {statuses}. 5xx (or transport errors): **{five_xx}**. "
        f"Target (within 5%, zero 5xx): {'met' if met else 'NOT met'}. "
        f"Whole run {total / 60:.1f} min; loads {final['loads']}, idle unloads "
        f"{final['keep_alive']['idle_unloads']}.",
    ]
    section = "\n".join(lines)
    print(section)
    if soak.errors:
        print("errors:\n" + "\n".join(soak.errors[:20]))
    if args.json:
        args.json.write_text(json.dumps({
            "args": vars(args) | {"json": str(args.json)}, "before": before, "after": after,
            "statuses": soak.statuses, "kinds": soak.kinds, "errors": soak.errors,
            "health_after_run": health, "run_seconds": run_seconds,
        }, indent=2, default=str))
    if not args.no_write:
        write_section(DOC, "soak", section)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
