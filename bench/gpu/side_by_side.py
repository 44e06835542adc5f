"""mlxhost over HTTP against the raw engine in this process, interleaved round
by round on one GPU, so each ratio compares runs seconds apart.

Per round and N: raw (``stream_generate`` for N=1, ``BatchGenerator`` with the
engine's 2-D quantized-matmul input for N>1), then ``mlxhost serve`` with N
requests at once (or the other order, alternating by round). Figures are
generated tokens ÷ wall time, prefill included; the report gives per-round
values, medians and the ratio of medians. For N=1 it also splits mlxhost's
request into time to first token (streaming) and decode rate after it, and
raw's into ``stream_generate``'s own prompt and generation rates. With
``--profile`` (py-spy on PATH), the server is profiled (all threads, idle
samples included) during the last round of each N: ``OUT/pyspy-side-<N>.txt``.
With ``--raw-weights bf16`` the raw side runs the engine's own dequantized
bf16 copy, to compare with ``--serve-args "--weights bf16"``.

    python3 bench/gpu/side_by_side.py --models qwen3-4b --streams 1,8,16 --rounds 3 --profile
    python3 bench/gpu/side_by_side.py --models qwen3-4b,llama-3b --streams 1,8 --rounds 3

The last line is issue 40's check of the generic path: ``llama-3b`` (a Llama
3.2 3B shape) is claimed by no family plugin, so the generic family serves
it; each model's entry records the family ``/v1/models`` reports. A CPU dry
run: ``--tiny --models llama-3b --streams 1,2 --rounds 1 --tokens 16``.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu.batch_gpu import build, concurrent_rate, prompt, raw_rate, solo_rate  # noqa: E402
from bench.gpu.cli import probe_parser  # noqa: E402
from bench.http import streamed  # noqa: E402
from bench.log import say  # noqa: E402


def set_flat(model: Any, on: bool) -> None:
    """The engine's 2-D qmm input on (as mlxhost's ``--flat-qmm auto`` chooses on CUDA:
    8 rows and more, no padding of fewer) or off (stock classes)."""
    import mlx.nn as nn

    from mlxhost.engine import kernels

    if on:
        kernels.flatten_quantized_inputs(model)
        return
    for _, module in kernels.quantized_modules(model):
        for base in (nn.QuantizedLinear, nn.QuantizedEmbedding):
            if isinstance(module, base):
                module.__class__ = base


def streamed_split(url: str, model: str, i: int, tokens: int) -> tuple[float, float]:
    """(TTFT s, decode tok/s after the first token) of one streaming request."""
    body = {"model": model, "temperature": 0, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt(i)}]}
    ttft, rate, _ = streamed(url, body)
    return ttft, rate


def raw_split(model: Any, tokenizer: Any, tokens: int, i: int) -> tuple[float, float]:
    """stream_generate's own (prompt tok/s, generation tok/s) of one request."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt(i)}], add_generation_prompt=True)
    final = None
    for response in stream_generate(model, tokenizer, ids, max_tokens=tokens, sampler=make_sampler(temp=0.0)):
        final = response
    assert final is not None
    return final.prompt_tps, final.generation_tps


def raw_once(model: Any, tokenizer: Any, n: int, tokens: int, offset: int) -> float:
    """Raw MLX: stream_generate for one stream, the 2-D BatchGenerator for several."""
    if n == 1:
        set_flat(model, False)
        return solo_rate(model, tokenizer, tokens, offset)
    set_flat(model, True)
    return raw_rate(model, tokenizer, n, tokens, offset)


def served_once(server: Any, path: str, n: int, tokens: int, offset: int,
                pyspy: str | None, spy_out: Path | None) -> float:
    """mlxhost over HTTP; with spy_out, py-spy records the server meanwhile."""
    spy = None
    if pyspy and spy_out is not None:
        spy = subprocess.Popen(
            [pyspy, "record", "--pid", str(server.process.pid), "--rate", "500", "--threads",
             "--idle", "--format", "raw", "--nonblocking", "--duration", "600", "--output", str(spy_out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    try:
        return concurrent_rate(server.url, path, n, tokens, offset)
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)


def served_family(url: str, model: str) -> str | None:
    """The family ``/v1/models`` reports for the model ("generic": no plugin claimed it)."""
    import httpx

    for entry in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]:
        if entry["id"] == model:
            return entry.get("family")
    return None


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__)
    p.add_argument("--streams", default="1,8,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve-args", default="--weights as-is")
    p.add_argument("--raw-weights", choices=("as-is", "bf16"), default="as-is",
                   help="bf16: raw runs a dequantized bf16 copy (compare with --serve-args '--weights bf16')")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="no round starts after this many seconds; with several --models, model i "
                   "(from 0) of k starts none after (i + 1) / k of it")
    p.add_argument("--server-setup", default="",
                   help="Python run at the server's start (a sitecustomize), e.g. 'import gc; gc.disable()'")
    args = p.parse_args(argv)
    began = time.monotonic()
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    ptx = args.work / "ptx-batching"
    os.environ.setdefault("MLX_PTX_CACHE_DIR", str(ptx))  # the server shares this process's kernels

    import httpx
    import mlx.core as mx
    from mlx_lm import load

    from mlxhost.testing.server import ServerProcess, free_port

    streams = [int(n) for n in args.streams.split(",")]
    pyspy = shutil.which("py-spy") if args.profile else None
    results: dict[str, Any] = {"tokens": args.tokens, "serve_args": args.serve_args,
                               "raw_weights": args.raw_weights, "mlx": mx.__version__,
                               "device": mx.device_info().get("device_name", ""), "models": {}}
    kinds = args.models.split(",")
    for index, kind in enumerate(kinds):
        # Each model's rounds stop at its share of --budget-s, so a slow first model
        # (kernel compilation) leaves the next one its rounds.
        deadline = args.budget_s * (index + 1) / len(kinds)
        path = build(args, kind)
        model, tokenizer = load(str(path))
        if args.raw_weights == "bf16":
            from mlxhost.engine import kernels

            kernels.dequantize(model)  # the engine's own bf16 copy; set_flat then has nothing to switch
        say(f"{kind}: compiling the raw shapes")
        for n in streams:  # compile every shape once, before the server starts (shared kernel cache)
            if n == 1:
                set_flat(model, False)
                solo_rate(model, tokenizer, args.tokens, 7)
            else:
                set_flat(model, True)
                raw_rate(model, tokenizer, n, args.tokens, 7 * n)
        port = free_port()
        command = [sys.executable, "-m", "mlxhost.cli.main", "serve", "--model", str(path), "--allow-model-paths",
                   "--max-batch", str(max(streams)), "--port", str(port), *args.serve_args.split()]
        env = {"MLX_PTX_CACHE_DIR": str(ptx), "HF_HUB_CACHE": str(args.work / "hf")}
        if args.server_setup:
            setup = out / "server-setup"
            setup.mkdir(parents=True, exist_ok=True)
            (setup / "sitecustomize.py").write_text(args.server_setup + "\n")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(setup), os.environ.get("PYTHONPATH", "")]))
            results["server_setup"] = args.server_setup
        table: dict[str, Any] = {"raw": {}, "mlxhost": {}, "split": {"raw": [], "mlxhost": []}}
        with ServerProcess(command=command, port=port, log_path=out / f"serve-side-{kind}.log",
                           startup_timeout=400, env=env, name="mlxhost") as server:
            assert server.process is not None
            say(f"{kind}: server up after {time.monotonic() - began:.0f}s")
            table["family"] = served_family(server.url, str(path))
            say(f"{kind}: served by the {table['family']!r} family")
            for n in streams:
                concurrent_rate(server.url, str(path), n, args.tokens, 50 * n)  # compile
            for r in range(args.rounds):
                if time.monotonic() - began > deadline:
                    say(f"{kind}: stopping after {r} rounds: over its share of --budget-s ({deadline:.0f}s)")
                    break
                for n in streams:
                    offset = 1000 * (r + 1) + 100 * n

                    spy_out = out / f"pyspy-side-{kind}-{n}.txt" if pyspy and r == args.rounds - 1 else None
                    raw = functools.partial(raw_once, model, tokenizer, n, args.tokens, offset)
                    served = functools.partial(served_once, server, str(path), n, args.tokens, offset + 50,
                                               pyspy, spy_out)
                    first, second = (raw, served) if r % 2 == 0 else (served, raw)
                    a, b = first(), second()
                    got = {"raw": a, "mlxhost": b} if r % 2 == 0 else {"raw": b, "mlxhost": a}
                    for name, rate in got.items():
                        table[name].setdefault(str(n), []).append(rate)
                    say(f"{kind} round {r} n={n}: raw {got['raw']:.1f}, mlxhost {got['mlxhost']:.1f} tok/s")
                if 1 in streams:
                    set_flat(model, False)
                    table["split"]["raw"].append(raw_split(model, tokenizer, args.tokens, 5000 + r))
                    table["split"]["mlxhost"].append(streamed_split(server.url, str(path), 5000 + r, args.tokens))
                    say(f"{kind} round {r} split: raw (prompt, gen tok/s) {table['split']['raw'][-1]}, "
                        f"mlxhost (TTFT s, decode tok/s) {table['split']['mlxhost'][-1]}")
            try:
                table["health"] = httpx.get(f"{server.url}/health", timeout=10).json()
            except (httpx.HTTPError, ValueError):
                pass
        table["median"] = {name: {n: statistics.median(v) for n, v in table[name].items()}
                           for name in ("raw", "mlxhost")}
        table["ratio"] = {n: table["median"]["mlxhost"][n] / table["median"]["raw"][n]
                          for n in table["median"]["mlxhost"] if n in table["median"]["raw"]}
        results["models"][kind] = table
        (out / "gpu_side_by_side.json").write_text(json.dumps(results, indent=2))
        say(f"{kind}: medians {table['median']}, mlxhost / raw {table['ratio']}")
        del model
        mx.clear_cache()
    print(json.dumps({k: {"family": v.get("family"), "ratio": v.get("ratio")}
                      for k, v in results["models"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
