"""Why is one request alone slow on ``mlxhost serve --weights as-is`` on CUDA?

``batch_gpu.py`` measured 4 tok/s for one stream (4-bit Qwen3-4B shape; bf16
weights: 115; raw ``stream_generate``: 122). This probe streams single requests
one after another to one server per variant and records, per request, the time
to the first token and the decode rate after it, so prefill (new prompt
lengths, the prefix cache) and decode separate:

- ``a``, ``a`` again (a full prefix-cache hit), ``b`` (another length), ``c``
  (``b``'s length, other words), ``d`` (a long prompt), ``b`` again.

Variants (``--variants``): ``base`` (as batch_gpu starts it), ``no-prefix``
(``--prefix-cache-mib 0``), ``flat-off`` (``--flat-qmm off``), ``batch1``
(``--max-batch 1``). One MLX kernel cache for all, so a later variant finds
the kernels an earlier one compiled: ``base`` runs first and again last.

    SCRIPT=bench/gpu/solo_probe.py bash bench/gpu/install_and_run.sh --models qwen3-4b
    python3 bench/gpu/solo_probe.py --tiny --tokens 8 --variants base    # CPU dry run

Writes OUT/gpu_solo_probe.json and prints one line per request.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu.batch_gpu import build  # noqa: E402
from bench.gpu.cli import probe_parser  # noqa: E402
from bench.http import client  # noqa: E402
from bench.log import say  # noqa: E402

VARIANTS = {
    "base": [],
    "no-prefix": ["--prefix-cache-mib", "0"],
    "flat-off": ["--flat-qmm", "off"],
    "batch1": ["--max-batch", "1"],
}
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly", "judge", "boxing", "matches"]


def prompt(name: str) -> str:
    sizes = {"a": 40, "b": 70, "c": 70, "d": 600}
    seed = sum(map(ord, name))
    words = [WORDS[(seed + k * 7) % len(WORDS)] for k in range(sizes[name])]
    return f"Continue this text ({name}): " + " ".join(words)


def stream_one(url: str, model: str, text: str, tokens: int) -> dict[str, float]:

    body = {"model": model, "temperature": 0, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}
    started = time.perf_counter()
    first = None
    chunks = 0
    usage: dict[str, Any] = {}
    with client().stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices") and event["choices"][0]["delta"].get("content"):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    ended = time.perf_counter()
    generated = int(usage.get("completion_tokens", chunks))
    ttft = (first or ended) - started
    decode = (generated - 1) / (ended - first) if first and ended > first and generated > 1 else 0.0
    return {"ttft_s": ttft, "decode_tok_s": decode, "tokens": generated,
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "cached": int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))}


def kernel_files(folder: Path) -> set[str]:
    return {str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file()} if folder.exists() else set()


def run_variant(args: argparse.Namespace, path: Path, name: str) -> dict[str, Any]:
    import httpx

    from mlxhost.testing.server import ServerProcess, free_port

    port = free_port()
    command = [sys.executable, "-m", "mlxhost.cli.main", "serve", "--model", str(path), "--allow-model-paths",
               "--weights", "as-is", "--port", str(port), *VARIANTS[name.split("#")[0]]]
    log = args.work / "logs" / f"solo-{name.replace('#', '-')}-{time.time_ns()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {"MLX_PTX_CACHE_DIR": str(args.work / "ptx-batching"), "HF_HUB_CACHE": str(args.work / "hf")}
    out: dict[str, Any] = {"requests": []}
    started = time.perf_counter()
    with ServerProcess(command=command, port=port, log_path=log, startup_timeout=400, env=env, name=name) as server:
        out["start_s"] = time.perf_counter() - started
        ptx = Path(env["MLX_PTX_CACHE_DIR"])
        seen = kernel_files(ptx)
        out["kernels_at_start"] = len(seen)
        for label in ("a", "a", "b", "c", "d", "b"):
            row = {"prompt": label, **stream_one(server.url, str(path), prompt(label), args.tokens)}
            now = kernel_files(ptx)
            new = sorted(now - seen)
            seen = now
            # Kernels MLX compiled during this request (its on-disk cache grew by these).
            row["kernels_compiled"] = len(new)
            row["kernels_sample"] = new[:12]
            out["requests"].append(row)
            say(f"{name} {label}: ttft {row['ttft_s']:.2f} s, decode {row['decode_tok_s']:.1f} tok/s, "
                f"prompt {row['prompt_tokens']} (cached {row['cached']}), {len(new)} kernels compiled")
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        out["kernels"] = health.get("kernels")
        out["batch"] = health.get("batch")
    out["log_tail"] = log.read_text()[-3000:] if log.exists() else ""
    return out


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--variants", default="base,no-prefix,flat-off,batch1,base#2")
    p.add_argument("--budget-s", type=float, default=540.0)
    args = p.parse_args(argv)
    begun = time.perf_counter()
    out_dir = args.out or args.work
    out_dir.mkdir(parents=True, exist_ok=True)
    import mlx.core as mx

    state: dict[str, Any] = {"mlx": mx.__version__, "tokens": args.tokens, "models": {}}
    for kind in args.models.split(","):
        path = build(args, kind)
        for name in args.variants.split(","):
            if time.perf_counter() - begun > args.budget_s - 90:
                say(f"skipping {name}: budget")
                continue
            state["models"].setdefault(kind, {})[name] = run_variant(args, path, name)
            (out_dir / "gpu_solo_probe.json").write_text(json.dumps(state, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
