"""``python -m bench``: mlxhost against the raw engine and the other MLX servers, one machine.

Measures, on the same models and prompts: decode tok/s and time to first token
(short prompt, streamed, greedy), prefill tok/s (~1,500-token prompt), the
first request after a load, swap time between two models against a bare load,
and OpenBLAS on/off for one model. Writes the results into
docs/benchmarks.md (its own section), docs/bench-decode.png and, with
``--json``, every sample.

    python -m bench                                   # defaults: 3 runs, 128 tokens
    python -m bench --runs 3 --max-tokens 64          # lighter, for a shared CPU
    python -m bench --models gemma --systems mlxhost,raw-mlx-lm --no-write
    python -m bench --json bench/results/cpu.json     # also keep every sample
    python -m bench --render-only bench/results/cpu.json   # re-render, measure nothing

Stored results live in bench/results/ (its README.md lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import machine, report
from bench.log import say
from bench.prompts import chat_token_counter, fit_long_prompt, short_messages
from bench.runner import ModelCase, SwapResult, SystemResult, run_model, run_swap
from bench.systems import SystemUnavailable, make_system

ROOT = Path(__file__).resolve().parent.parent
TEST_MODELS = {"qwen": "Qwen2.5-Coder 0.5B fp32", "gemma": "Gemma 3 270M fp32"}
SHAPED_MODELS = {"gemma3-4b": "Gemma 3 4B shape, 4-bit", "qwen3-4b": "Qwen3 4B shape, 4-bit"}
DEFAULT_SYSTEMS = "mlxhost,raw-mlx-lm,mlx-lm-server,mlx-vlm-server"
RESULTS = ROOT / "bench" / "results"  # stored results (README.md there lists them)
GPU_RESULTS = RESULTS / "gpu-h100.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--models",
        default="qwen,gemma",
        help=f"comma-separated, from {list(TEST_MODELS)} (default: %(default)s)",
    )
    p.add_argument(
        "--systems",
        default=DEFAULT_SYSTEMS,
        help="comma-separated: mlxhost, raw-mlx-lm, raw-mlx-vlm, mlx-lm-server, "
        "mlx-vlm-server (default: %(default)s)",
    )
    p.add_argument(
        "--all",
        action="store_true",
        help="then also run the KV prefix-cache and 50-swap memory benchmarks, so one "
        "command rewrites every CPU section of docs/benchmarks.md",
    )
    p.add_argument("--runs", type=int, default=3, help="decode runs per system (default 3)")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        help="tokens generated per decode run (default 128; lower it on CPU)",
    )
    p.add_argument(
        "--prefill-tokens",
        type=int,
        default=1500,
        help="length of the prefill prompt in tokens (0: skip prefill)",
    )
    p.add_argument("--prefill-runs", type=int, help="prefill runs per system (default: --runs)")
    p.add_argument(
        "--blas-model",
        default="gemma",
        help="model on which mlxhost also runs with --no-openblas ('none': skip)",
    )
    p.add_argument(
        "--blas-prefill-runs",
        type=int,
        default=1,
        help="prefill runs without OpenBLAS (slow on CPU; default 1)",
    )
    p.add_argument("--swap", default="qwen,gemma", help="two models to swap between ('none': skip)")
    p.add_argument(
        "--swap-systems",
        default="mlxhost,mlxhost-no-warmup,raw-mlx-lm,mlx-lm-server,mlx-vlm-server",
    )
    p.add_argument(
        "--shaped",
        action="store_true",
        help="also the 4B-shaped 4-bit models (very slow on CPU: tiny budget)",
    )
    p.add_argument("--shaped-max-tokens", type=int, default=8)
    p.add_argument("--shaped-systems", default="mlxhost,raw-mlx-lm")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="one system at a time instead of interleaving runs across systems",
    )
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench-decode.png")
    p.add_argument(
        "--json",
        type=Path,
        help=f"also write every sample here (keep it under {RESULTS.relative_to(ROOT)}/ "
        "for --render-only later)",
    )
    p.add_argument(
        "--gpu-results",
        type=Path,
        default=GPU_RESULTS,
        help="GPU report (bench/gpu/run_gpu.py --render-only) included as the section's GPU "
        "part, if the file exists (default: bench/results/gpu-h100.md)",
    )
    p.add_argument("--no-write", action="store_true", help="print the section, write nothing")
    p.add_argument("--logs", type=Path, help="server logs (default: a temporary folder)")
    p.add_argument(
        "--render-only",
        type=Path,
        metavar="JSON",
        help="measure nothing: rewrite the section and plot from an earlier run's --json",
    )
    args = p.parse_args(argv)
    args.prefill_runs = args.prefill_runs if args.prefill_runs is not None else args.runs
    return args


def resolve_model(key: str, args: argparse.Namespace) -> ModelCase:
    if key in TEST_MODELS:
        from mlxhost.testing.models import ensure_test_model

        path = ensure_test_model(key, log=say)
        return ModelCase(
            key=key,
            label=TEST_MODELS[key],
            path=path,
            max_tokens=args.max_tokens,
            runs=args.runs,
            prefill_runs=args.prefill_runs,
            weight_bytes=machine.model_weight_bytes(path),
        )
    if key in SHAPED_MODELS:
        from bench.shaped_models import ensure_shaped_model

        path = ensure_shaped_model(key, log=say)
        return ModelCase(
            key=key,
            label=SHAPED_MODELS[key],
            path=path,
            max_tokens=args.shaped_max_tokens,
            runs=1,
            prefill_runs=0,
            weight_bytes=machine.model_weight_bytes(path),
            note="random weights; short prompt only on CPU",
        )
    raise SystemExit(f"unknown model {key!r}")


def size_prompts(case: ModelCase, prefill_tokens: int) -> None:
    count = chat_token_counter(case.path)
    case.short_tokens = count(short_messages(1))
    if prefill_tokens and case.prefill_runs:
        case.prefill_sentences, case.prefill_tokens = fit_long_prompt(count, prefill_tokens)
    say(
        f"{case.key}: short prompt {case.short_tokens} tokens"
        + (
            f", prefill prompt {case.prefill_tokens} tokens ({case.prefill_sentences} notes)"
            if case.prefill_sentences
            else ""
        )
    )


def _systems(names: str, log_dir: Path) -> list[Any]:
    return [make_system(n.strip(), log_dir) for n in names.split(",") if n.strip()]


def rerender(path: Path, render_args: argparse.Namespace) -> int:
    """Section and plot from a saved run (e.g. after new GPU results), measuring nothing."""
    data = json.loads(path.read_text())
    info = data["info"]
    args = parse_args(shlex.split(info["command"])[3:])  # the run's own options
    args.doc, args.plot, args.no_write = render_args.doc, render_args.plot, render_args.no_write
    args.gpu_results = render_args.gpu_results
    pairs = []
    for entry in data["models"]:
        case = dict(entry["case"])
        case["path"] = Path(case["path"])
        results = [SystemResult.from_dict(r) for r in entry["results"]]
        pairs.append((ModelCase(**case), results))
    swaps = [SwapResult(**s) for s in data["swaps"]]
    return write_outputs(args, info, pairs, swaps)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render_only:
        return rerender(args.render_only, args)
    if args.all:
        from bench import prefix_cache, swap_memory

        rest = [a for a in argv if a != "--all"]
        return main(rest) or prefix_cache.main([]) or swap_memory.main([])
    command = "python -m bench" + (" " + shlex.join(argv) if argv else "")
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="mlxhost-bench-"))
    say(f"logs in {log_dir}")
    started = time.time()
    load_before = os.getloadavg()
    versions = machine.versions()  # the code under test is the code at the start

    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    cases = [resolve_model(k, args) for k in keys]
    if args.shaped:
        cases += [resolve_model(k, args) for k in SHAPED_MODELS]
    for case in cases:
        size_prompts(case, args.prefill_tokens)

    pairs: list[tuple[ModelCase, list[SystemResult]]] = []
    for case in cases:
        names = args.shaped_systems if case.key in SHAPED_MODELS else args.systems
        systems = _systems(names, log_dir)
        if case.key == args.blas_model:
            off = make_system("mlxhost-no-openblas", log_dir)
            off.prefill_runs_limit = args.blas_prefill_runs
            systems.append(off)
        results = run_model(
            case, systems, interleave=not args.sequential, unavailable=(SystemUnavailable,)
        )
        pairs.append((case, results))

    swaps: list[SwapResult] = []
    swap_keys = [k.strip() for k in args.swap.split(",")] if args.swap != "none" else []
    if len(swap_keys) == 2:
        by_key = {c.key: c for c in cases}
        a = by_key.get(swap_keys[0]) or resolve_model(swap_keys[0], args)
        b = by_key.get(swap_keys[1]) or resolve_model(swap_keys[1], args)
        for system in _systems(args.swap_systems, log_dir):
            swaps.append(run_swap(system, a, b, unavailable=(SystemUnavailable,)))

    info = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M", time.localtime(started)),
        "minutes": (time.time() - started) / 60,
        "machine": machine.machine_info(),
        "versions": versions,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    if args.json:
        report.dump_json(
            args.json,
            {
                "info": info,
                "models": [{"case": case, "results": results} for case, results in pairs],
                "swaps": swaps,
            },
        )
    return write_outputs(args, info, pairs, swaps)


def write_outputs(
    args: argparse.Namespace,
    info: dict[str, Any],
    pairs: list[tuple[ModelCase, list[SystemResult]]],
    swaps: list[SwapResult],
) -> int:
    section = render(args, info, pairs, swaps)
    print(section)
    if not args.no_write:
        plotted = report.plot_decode(
            pairs,
            args.plot,
            f"Decode speed, {info['machine'].get('cpu', '?')} ({info['machine'].get('cores')} cores), "
            f"{args.max_tokens} tokens, greedy",
        )
        report.write_section(
            args.doc,
            section
            if plotted
            else section.replace(
                f"![decode tokens/s per system]({args.plot.name})", "(plot not made: no matplotlib)"
            ),
        )
        say(f"wrote {args.doc}" + (f" and {args.plot}" if plotted else ""))
    return 0


def render(
    args: argparse.Namespace,
    info: dict[str, Any],
    pairs: list[tuple[ModelCase, list[SystemResult]]],
    swaps: list[SwapResult],
) -> str:
    m, v = info["machine"], info["versions"]
    out = ["## mlxhost vs the raw engine and other MLX servers", ""]
    out.append(
        f"Measured {info['date']} on **{m.get('cpu', '?')}, {m.get('cores')} cores, "
        f"{m.get('ram_gib', '?')} GiB RAM** ({m.get('platform')}, Python {m.get('python')}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + "); "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + "."
    )
    out += ["", f"Command (took {info['minutes']:.0f} min): `{info['command']}`", ""]
    lb, la = info["load_before"], info["load_after"]
    out.append(
        "**These CPU figures are noisy.** The machine has 2 cores and other work (test suites of "
        "other engineers) ran during the benchmark: load average "
        f"{lb[0]:.1f} at the start and {la[0]:.1f} at the end. Runs are interleaved across the "
        "systems (run *i* goes to every system before run *i+1*) so background load spreads over "
        "all of them; compare ratios rather than absolute speeds, and rerun on a quiet machine "
        "for figures to quote."
    )
    out += ["", "### How it is measured", ""]
    out.append(
        "- Same model folder, same chat messages and greedy decoding (temperature 0) for every "
        "system; each server applies the model's own chat template, the raw engine renders it "
        "the way mlxhost does (template, then encode without extra special tokens). The prompt "
        "tokens column shows what each system fed the model (mlx-vlm adds a second BOS to "
        "text-only Gemma prompts: one more token).\n"
        "- Decode: short prompt, "
        f"{args.max_tokens} generated tokens (`max_tokens`), streamed; tok/s = (n − 1) / "
        "(t_last − t_first) with n the completion tokens from `usage` and t the arrival of the "
        f"first and last content chunk; {args.runs} runs, shown as median (min–max).\n"
        "- TTFT: request sent → first content chunk (raw engine: call → first token, chat "
        "template and tokenization included).\n"
        "- Prefill: a ~N-token notes prompt with `max_tokens` 1; tok/s = prompt tokens / TTFT.\n"
        "- Each run's prompt starts with its own tag, so no server's prompt/prefix cache reuses "
        "an earlier run (cold prompts); run *i* gets the same prompt on every system.\n"
        "- Every process gets the same environment: `HF_HUB_OFFLINE=1`, and OpenBLAS preloaded "
        "the way `mlxhost serve` preloads it (peers and the raw engine too), so the ratios "
        "measure the serving layer, not the BLAS.\n"
        "- Ratios are mlxhost's figure ÷ the other system's: above 1 means mlxhost is faster "
        "for tok/s; for TTFT below 1 means mlxhost is faster."
    )
    out += ["", "### dtype and BLAS on Linux CPU", ""]
    out.append(
        "The test models are fp32 MLX conversions and `mlxhost serve` preloads Debian's OpenBLAS "
        "(`libopenblas0-pthread`) on Linux. That is the fastest setup MLX has on a Linux CPU: "
        "`mlx-cpu` ships a reference BLAS (fp32 GEMM 3–4 GFLOP/s) that OpenBLAS replaces "
        "(55–68 GFLOP/s) for fp32 matrix products, while bf16/fp16 and quantized (4-bit) "
        "matmuls do not go through BLAS at all and stay slow on CPU (a 4-bit Gemma 270M: about "
        "1 prompt tok/s, 0.4 decode tok/s). `mlxhost-no-openblas` below is `mlxhost serve "
        "--no-openblas` (same as `MLXHOST_OPENBLAS=0`) on the same model."
    )
    out += ["", "### Results", ""]
    if not args.no_write:
        out += [f"![decode tokens/s per system]({args.plot.name})", ""]
    out += ["Headline ratios (mlxhost ÷ other, medians):", "", report.headline_table(pairs), ""]
    for case, results in pairs:
        gb = case.weight_bytes / 1e9
        out.append(
            f"**{case.label}** (`{case.path.name}`, {gb:.2f} GB of weights; short prompt "
            f"{case.short_tokens} tokens, {case.max_tokens} generated"
            + (f"; {case.note}" if case.note else "")
            + "):"
        )
        out += ["", report.model_table(case, results), ""]
        blas = [r for r in results if r.system == "mlxhost-no-openblas"]
        on = [r for r in results if r.system == "mlxhost"]
        if blas and on and blas[0].ok and on[0].ok:
            out.append(
                f"OpenBLAS on vs off (mlxhost, {case.label}): decode "
                f"{report.ratio(on[0].decode_spread().median, blas[0].decode_spread().median)}×, "
                f"prefill {report.ratio(on[0].prefill_spread().median, blas[0].prefill_spread().median)}×"
                f" (off: {args.blas_prefill_runs} prefill run)."
            )
            out.append("")
    if not args.shaped:
        out.append(
            "The 4B-shaped 4-bit models (`bench/shaped_models.py`) are left out of the CPU run: "
            "4-bit weights do not use BLAS and run at about 1 prompt token/s here (`--shaped` "
            "adds them with a tiny budget). They are measured on the GPU (below)."
        )
        out.append("")
    out += ["### First request after a load", ""]
    out.append(
        "TTFT of the first request after the model finished loading at start-up (8 tokens, "
        "same prompt length) against the later runs' TTFT. The warm-up column is what "
        "mlxhost's log reports for its post-load warm-up (`Loaded … (+Xs warm-up)`; 'none': "
        "the code under test ran none). mlxhost's later requests also reuse the chat template's "
        "fixed header from its prefix cache (Qwen's default system prompt, ~30 tokens), which "
        "its first request cannot; that is also why its short-prompt TTFT beats the raw engine "
        "on Qwen and not on Gemma (whose header is 4 tokens)."
    )
    out += ["", report.first_request_table(pairs), ""]
    if swaps:
        out += ["### Swapping models", ""]
        out.append(
            "Each system starts on the first model, serves one request, then gets a request for "
            "the other model (a swap) and back. For HTTP servers the load happens inside that "
            "request; for the raw engine it is an in-process `load()` after dropping the "
            "previous model (`gc.collect()` + `mx.clear_cache()`, as mlxhost unloads): that "
            "in-process load is the bare load to compare with. mlxhost's load time is its log's "
            "`Model … ready in Xs` (unload + locate + load + its post-load warm-up); "
            "`mlxhost-no-warmup` is the same server with `MLXHOST_WARMUP=0`."
        )
        out += ["", report.swap_table(swaps), ""]
    if args.gpu_results.is_file():
        out += ["### GPU", "", args.gpu_results.read_text().strip(), ""]
    out += ["### Rerun", ""]
    out.append(
        "On a quiet machine: `nox -s bench -- --runs 5` (or `python -m bench --runs 5`; the "
        "full defaults are 3 runs of 128 tokens). `python -m bench --all` also reruns the KV "
        "prefix-cache and swap-memory sections. The GPU procedure is in `bench/gpu/README.md`."
    )
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
