"""Continuous batching on the GPU: aggregate decode tok/s at 1/8/16 streams.

On the 4B-shaped random-weight 4-bit models of ``bench/shaped_models.py``
(built here on first use), in one run per part, side by side:

- ``raw``: mlx-lm's ``BatchGenerator`` in this process, as stock, with the
  engine's 2-D quantized-matmul input (``mlxhost.engine.kernels``), and on a
  dequantized bf16 copy: the ceilings;
- ``mlxhost-as-is`` / ``-bf16`` / ``-auto``: ``mlxhost serve --max-batch 16
  --weights as-is|bf16|auto`` over HTTP (``--flat-qmm auto``), N requests at once;
- ``mlx-lm-server``: ``python -m mlx_lm server`` (it batches too), the same
  requests.

Every figure is generated tokens ÷ wall time for N requests of ``--tokens``
each, prefill of their ~40-token prompts included. Parts accumulate in
WORK/batch_state.json; every invocation writes OUT/gpu_batching.{md,json}.

    python3 bench/gpu/batch_gpu.py --parts raw --models qwen3-4b
    python3 bench/gpu/batch_gpu.py --parts mlxhost-as-is,mlxhost-bf16 --models qwen3-4b
    python3 bench/gpu/batch_gpu.py --render-only bench/results/gpu-h200-batching.json
    python3 bench/gpu/batch_gpu.py --tiny --parts raw,mlxhost-as-is --streams 1,2 --tokens 8   # CPU dry run

On the offline GPU machine it runs through ``install_and_run.sh`` (set
``SCRIPT=bench/gpu/batch_gpu.py``), which adds ``--tokenizers``, ``--out`` and
``--budget-s``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu.cli import probe_parser  # noqa: E402
from bench.http import client  # noqa: E402
from bench.log import say  # noqa: E402
from bench.report import md_table  # noqa: E402
from bench.shaped_models import TOKENIZER_FROM, build_shaped_model, folder_name  # noqa: E402

PARTS = ("raw", "mlxhost-as-is", "mlxhost-bf16", "mlxhost-auto", "mlx-lm-server")
LABELS = {"gemma3-4b": "Gemma 3 4B shape", "qwen3-4b": "Qwen3-4B shape", "llama-3b": "Llama 3.2 3B shape"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = probe_parser(__doc__)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--streams", default="1,8,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--render-only", type=Path)
    p.add_argument("--raw-variants", default="stream_generate,stock,2-D qmm input,bf16",
                   help="which raw ceilings to run (comma-separated)")
    return p.parse_args(argv)


def prompt(i: int) -> str:
    return f"Request {i}: write a long story about the number {i * 7919 % 1000}, in detail."


# -- models -------------------------------------------------------------------
def build(args: argparse.Namespace, kind: str) -> Path:
    out = args.work / "models" / folder_name(kind, args.tiny)
    if (out / "config.json").is_file():
        return out
    if args.tokenizers:
        tokenizers = args.tokenizers / TOKENIZER_FROM[kind]
    else:
        from mlxhost.testing.models import ensure_test_model

        tokenizers = ensure_test_model(TOKENIZER_FROM[kind], log=say)
    build_shaped_model(kind, out, tokenizers, tiny=args.tiny, log=say)
    return out


# -- raw BatchGenerator ---------------------------------------------------------
def raw_rate(model: Any, tokenizer: Any, n: int, tokens: int, offset: int) -> float:
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt(offset + k)}], add_generation_prompt=True
        )
        for k in range(n)
    ]
    generator = BatchGenerator(model, stop_tokens=[], completion_batch_size=max(n, 8),
                               prefill_batch_size=max(n, 8))
    started = time.perf_counter()
    generator.insert(prompts, max_tokens=[tokens] * n)
    produced = finished = 0
    while finished < n:
        for response in generator.next_generated():
            produced += 1
            finished += response.finish_reason is not None
    rate = produced / (time.perf_counter() - started)
    generator.close()
    mx.clear_cache()
    return rate


def solo_rate(model: Any, tokenizer: Any, tokens: int, offset: int) -> float:
    """One request through mlx-lm's ``stream_generate`` (no batching): generated
    tokens ÷ wall time, chat template and prefill included, like the others."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    started = time.perf_counter()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt(offset)}],
                                        add_generation_prompt=True)
    produced = sum(1 for _ in stream_generate(model, tokenizer, ids, max_tokens=tokens,
                                              sampler=make_sampler(temp=0.0)))
    return produced / (time.perf_counter() - started)


def part_raw(args: argparse.Namespace, path: Path, streams: list[int]) -> dict[str, Any]:
    import mlx.core as mx
    from mlx_lm import load

    from mlxhost.engine import kernels

    out: dict[str, Any] = {}
    model, tokenizer = load(str(path))
    wanted = args.raw_variants.split(",")
    if 1 in streams and "stream_generate" in wanted:
        solo_rate(model, tokenizer, args.tokens, 100)  # compile
        out["stream_generate (one request, no batching)"] = {1: solo_rate(model, tokenizer, args.tokens, 1001)}
        say(f"raw stream_generate n=1: {out['stream_generate (one request, no batching)'][1]:.1f} tok/s")
    for variant in [v for v in ("stock", "2-D qmm input", "bf16") if v in wanted]:
        if variant == "2-D qmm input":
            kernels.flatten_quantized_inputs(model)
        if variant == "bf16":
            model, tokenizer = load(str(path))  # fresh, then dequantized
            kernels.dequantize(model)
        out[variant] = {}
        for n in streams:
            raw_rate(model, tokenizer, n, args.tokens, 100 * n)  # compile every KV length once
            out[variant][n] = raw_rate(model, tokenizer, n, args.tokens, 1000 + 100 * n)
            say(f"raw {variant} n={n}: {out[variant][n]:.1f} tok/s")
    del model
    mx.clear_cache()
    return out


# -- servers over HTTP --------------------------------------------------------------
def chat(url: str, model: str, i: int, tokens: int) -> int:
    body = {"model": model, "temperature": 0, "max_tokens": tokens,
            "messages": [{"role": "user", "content": prompt(i)}]}
    reply = client().post(f"{url}/v1/chat/completions", json=body)
    reply.raise_for_status()
    return int(reply.json()["usage"]["completion_tokens"])


def concurrent_rate(url: str, model: str, n: int, tokens: int, offset: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        produced = sum(pool.map(lambda i: chat(url, model, i, tokens), range(offset, offset + n)))
    return produced / (time.perf_counter() - started)


def serve_rates(args: argparse.Namespace, command: list[str], port: int, path: Path,
                streams: list[int], name: str, ready: Any = None) -> dict[str, Any]:
    import httpx

    from mlxhost.testing.server import ServerProcess

    log = args.work / "logs" / f"{name}-{time.time_ns()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {"MLX_PTX_CACHE_DIR": str(args.work / "ptx-batching"), "HF_HUB_CACHE": str(args.work / "hf")}
    extra: dict[str, Any] = {"ready": ready} if ready else {}
    server = ServerProcess(command=command, port=port, log_path=log, startup_timeout=400,
                           env=env, name=name, **extra)
    out: dict[str, Any] = {"rates": {}}
    with server:
        for n in streams:
            concurrent_rate(server.url, str(path), n, args.tokens, 100 * n)  # compile every KV length once
            out["rates"][n] = concurrent_rate(server.url, str(path), n, args.tokens, 1000 + 100 * n)
            say(f"{name} n={n}: {out['rates'][n]:.1f} tok/s")
        try:
            health = httpx.get(f"{server.url}/health", timeout=10).json()
            out["kernels"] = health.get("kernels")
        except (httpx.HTTPError, ValueError):
            pass
    return out


def part_mlxhost(args: argparse.Namespace, path: Path, streams: list[int], weights: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "mlxhost.cli.main", "serve", "--model", str(path), "--allow-model-paths",
               "--max-batch", str(max(streams)), "--weights", weights]
    from mlxhost.testing.server import free_port

    port = free_port()
    return serve_rates(args, [*command, "--port", str(port)], port, path, streams, f"mlxhost-{weights}")


def part_mlx_lm_server(args: argparse.Namespace, path: Path, streams: list[int]) -> dict[str, Any]:
    import httpx

    from mlxhost.testing.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "mlx_lm", "server", "--model", str(path), "--host", "127.0.0.1",
               "--port", str(port), "--decode-concurrency", str(max(streams)),
               "--prompt-concurrency", str(max(streams))]

    def ready(server: Any) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    (args.work / "hf").mkdir(parents=True, exist_ok=True)
    return serve_rates(args, command, port, path, streams, "mlx-lm-server", ready=ready)


# -- report ------------------------------------------------------------------------
def render(state: dict[str, Any]) -> str:
    lines = ["Aggregate tok/s (generated tokens ÷ wall time, N requests at once, prefill included); "
             f"{state.get('tokens', '?')} tokens a request; {state.get('device', '?')}, MLX "
             f"{state.get('mlx', '?')}.", ""]
    for kind, parts in state.get("models", {}).items():
        streams = sorted({int(n) for _, series in _all_series(parts) for n in series})
        rows = []
        for label, series in _all_series(parts):
            rows.append([label, *(f"{series[str(n)]:.0f}" if str(n) in series else "–" for n in streams)])
        lines += [f"**{LABELS.get(kind, kind)}, 4-bit checkpoint**", "",
                  md_table(["system", *(f"{n} stream{'s' if n > 1 else ''}" for n in streams)], rows), ""]
        for part in ("mlxhost-as-is", "mlxhost-bf16", "mlxhost-auto"):
            chosen = parts.get(part, {}).get("kernels")
            if chosen:
                lines.append(f"- `{part}` kernels: {chosen.get('reason')}")
        lines.append("")
    return "\n".join(lines)


def _series(part: dict[str, Any]) -> dict[str, dict[str, float]]:
    if "rates" in part:
        return {"": part["rates"]}
    return {k: v for k, v in part.items() if isinstance(v, dict)}


def _all_series(parts: dict[str, Any]):
    names = {
        "raw": "raw BatchGenerator",
        "mlxhost-as-is": "mlxhost serve --weights as-is (4-bit)",
        "mlxhost-bf16": "mlxhost serve --weights bf16",
        "mlxhost-auto": "mlxhost serve --weights auto",
        "mlx-lm-server": "mlx_lm.server",
    }
    for part in PARTS:
        if not isinstance(parts.get(part), dict):
            continue
        for variant, series in _series(parts[part]).items():
            label = names[part] + (f", {variant}" if variant else "")
            if variant.startswith("stream_generate"):
                label = f"raw mlx-lm {variant}"
            yield label, {str(k): v for k, v in series.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        print(render(json.loads(args.render_only.read_text())))
        return 0
    import mlx.core as mx

    began = time.monotonic()
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    state_path = args.work / "batch_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"models": {}}
    state.update(tokens=args.tokens, mlx=mx.__version__, device=str(mx.default_device()))
    info = mx.device_info()
    state["device"] = f"{info.get('device_name', state['device'])}"
    streams = [int(n) for n in args.streams.split(",")]
    for kind in args.models.split(","):
        path = build(args, kind)
        parts = state["models"].setdefault(kind + ("-tiny" if args.tiny else ""), {})
        for part in args.parts.split(","):
            if time.monotonic() - began > args.budget_s:
                say(f"skipping {part} of {kind}: over --budget-s")
                continue
            say(f"{kind}: {part}")
            try:
                if part == "raw":
                    parts[part] = part_raw(args, path, streams)
                elif part.startswith("mlxhost-"):
                    parts[part] = part_mlxhost(args, path, streams, part.removeprefix("mlxhost-"))
                elif part == "mlx-lm-server":
                    parts[part] = part_mlx_lm_server(args, path, streams)
                else:
                    raise SystemExit(f"unknown part {part}")
            except Exception as exc:  # keep what the other parts measured
                say(f"{kind} {part} failed: {type(exc).__name__}: {exc}")
                parts[f"{part}-error"] = f"{type(exc).__name__}: {exc}"
            state_path.write_text(json.dumps(state, indent=2))
            (out / "gpu_batching.json").write_text(json.dumps(state, indent=2))
            (out / "gpu_batching.md").write_text(render(state))
    print(render(state))
    os.sync()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
