"""The GPU benchmark: 4B-shaped 4-bit models, raw engine vs mlxhost over HTTP.

Run it on a machine with an NVIDIA GPU, mlx[cuda13] and mlxhost installed
(README.md beside this file says how). Builds the two 4B-shaped models there
from random weights (decode speed does not depend on the values, so no weights
are downloaded), then measures:

- copy bandwidth (one large ``a + 1``, bytes read + written) and, per model,
  the bandwidth bound = bandwidth / weight bytes (tokens/s if a decode step
  only had to read every weight once) and the fraction of it reached;
- per shape, for the raw engine (``mlx_lm.stream_generate`` in-process) and
  ``mlxhost serve`` over HTTP: decode tok/s, TTFT, prefill tok/s on a
  ~1,500-token prompt, and the first request after the load. Every process
  gets its own empty ``MLX_PTX_CACHE_DIR``, so each pays MLX's CUDA kernel
  compilation itself (MLX caches compiled kernels on disk, by default under
  /tmp/mlx/<version>/ptx, and in memory per process);
- ``warmup``: the raw engine with a candidate post-load warm-up, then its
  first request (does the warm-up remove the first-request cost?), and an
  mlxhost restart on a warm kernel cache;
- swaps between the two shapes (mlxhost and the raw engine).

Phases can be split over several invocations (``--phases``); results
accumulate in ``--state`` (default WORK/state.json) and every invocation writes
the whole report so far to ``OUT/gpu_results.md`` and ``OUT/gpu_results.json``
(``--out``, default WORK). Stored results live in bench/results/ and are
rendered with ``--render-only``. ``--tiny`` uses small layers: a dry run on any
machine (CPU included) in a few minutes.

    python3 bench/gpu/run_gpu.py                                  # every phase
    python3 bench/gpu/run_gpu.py --phases bandwidth,build,models  # or in parts
    python3 bench/gpu/run_gpu.py --phases build,warmup,swap
    python3 bench/gpu/run_gpu.py --render-only bench/results/gpu-h100.json > bench/results/gpu-h100.md
    python3 bench/gpu/run_gpu.py --tiny --out /tmp/gpu-dry        # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import machine, prompts  # noqa: E402
from bench.log import say  # noqa: E402
from bench.report import fmt_s, headline_table, md_table, ratio, swap_table  # noqa: E402
from bench.runner import ModelCase, SwapResult, SystemResult, run_model, run_swap  # noqa: E402
from bench.shaped_models import (  # noqa: E402
    REFERENCE_FOLDER,
    SHAPES,
    TOKENIZER_FROM,
    build_shaped_model,
    folder_name,
)
from bench.systems import SystemUnavailable, make_system  # noqa: E402

LABELS = {"gemma3-4b": "Gemma 3 4B shape, 4-bit", "qwen3-4b": "Qwen3(-VL) 4B text shape, 4-bit",
          "llama-3b": "Llama 3.2 3B shape, 4-bit"}
ALL_PHASES = ("bandwidth", "build", "models", "warmup", "swap")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="small layers: a dry run")
    p.add_argument(
        "--tokenizers",
        type=Path,
        help="folder with gemma/ and qwen/ tokenizer files (default: the test models)",
    )
    p.add_argument("--work", type=Path, help="models, logs, kernel caches (default /tmp/bench-gpu)")
    p.add_argument("--state", type=Path, help="results so far (default WORK/state.json)")
    p.add_argument("--out", type=Path, help="report folder (default WORK)")
    p.add_argument("--phases", default=",".join(ALL_PHASES))
    # The two seed models' shapes (the ones with reference facts); others by name.
    p.add_argument("--models", default=",".join(REFERENCE_FOLDER),
                   help=f"comma-separated, any of {list(SHAPES)} (default: %(default)s)")
    p.add_argument(
        "--systems",
        default="raw-mlx-lm,mlxhost,mlxhost-no-warmup",
        help="systems of the models phase (default: %(default)s)",
    )
    p.add_argument(
        "--warmup-lengths",
        default="8,64",
        help="prompt lengths of the candidate warm-up (default %(default)s)",
    )
    p.add_argument("--no-restart", action="store_true", help="warmup phase: skip the restart")
    p.add_argument(
        "--render-only", type=Path, metavar="STATE", help="render a state file, run nothing"
    )
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prefill-tokens", type=int, default=1500)
    p.add_argument("--prefill-runs", type=int, default=3)
    p.add_argument(
        "--budget-s",
        type=float,
        help="skip phases that would start after this many seconds (default: no limit)",
    )
    args = p.parse_args(argv)
    args.work = args.work or Path(tempfile.gettempdir()) / (
        "bench-gpu" + ("-tiny" if args.tiny else "")
    )
    args.state = args.state or args.work / "state.json"
    args.out = args.out or args.work
    return args


# --- state ----------------------------------------------------------------------------


def load_state(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"models": {}, "results": {}, "swaps": [], "warmup": [], "restart": []}


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    tmp.replace(path)


# --- phases ---------------------------------------------------------------------------


def bandwidth(tiny: bool) -> dict[str, Any]:
    """Copy bandwidth of ``a + 1`` on a large fp32 array (bytes read + written)."""
    import mlx.core as mx

    shape = (64, 1024, 256) if tiny else (1024, 1024, 512)  # 64 MiB / 2 GiB
    a = mx.random.uniform(shape=shape)
    mx.eval(a)
    for _ in range(3):
        mx.eval(a + 1)
    n = 10
    started = time.perf_counter()
    for _ in range(n):
        b = a + 1
        mx.eval(b)
    seconds = (time.perf_counter() - started) / n
    result = {
        "bytes_per_copy": 2 * a.nbytes,
        "gb_s": 2 * a.nbytes / seconds / 1e9,
        "device": str(mx.default_device()),
        "mlx": mx.__version__,
    }
    del a, b
    mx.clear_cache()
    say(f"copy bandwidth {result['gb_s']:.0f} GB/s on {result['device']}")
    return result


def tokenizer_dir(args: argparse.Namespace, kind: str) -> Path:
    if args.tokenizers:
        return args.tokenizers / TOKENIZER_FROM[kind]
    from mlxhost.testing.models import ensure_test_model

    return ensure_test_model(TOKENIZER_FROM[kind], log=say)


def build(args: argparse.Namespace, kind: str) -> Path:
    out = args.work / "models" / folder_name(kind, args.tiny)
    if (out / "config.json").is_file() and (out / "model.safetensors.index.json").is_file():
        return out
    started = time.perf_counter()
    build_shaped_model(kind, out, tokenizer_dir(args, kind), tiny=args.tiny, log=say)
    say(f"built {kind} in {time.perf_counter() - started:.1f}s")
    return out


def case_for(args: argparse.Namespace, kind: str, path: Path) -> ModelCase:
    case = ModelCase(
        key=kind,
        label=LABELS[kind] + (" (tiny)" if args.tiny else ""),
        path=path,
        max_tokens=args.max_tokens,
        runs=args.runs,
        prefill_runs=args.prefill_runs,
        weight_bytes=machine.model_weight_bytes(path),
        note="random weights",
    )
    count = prompts.chat_token_counter(path)
    case.short_tokens = count(prompts.short_messages(1))
    if args.prefill_tokens and args.prefill_runs:
        case.prefill_sentences, case.prefill_tokens = prompts.fit_long_prompt(
            count, args.prefill_tokens
        )
    return case


def with_kernel_cache(system: Any, cache: Path) -> Any:
    """Give a system its own MLX kernel cache folder (empty: it compiles every kernel)."""
    cache.mkdir(parents=True, exist_ok=True)
    system.extra_env["MLX_PTX_CACHE_DIR"] = str(cache)
    return system


def fresh_cache(args: argparse.Namespace, name: str) -> Path:
    path = args.work / "ptx" / f"{name}-{time.time_ns()}"
    return path


def phase_models(args, state, cases, logs) -> None:
    for case in cases:
        systems = []
        for name in [n.strip() for n in args.systems.split(",") if n.strip()]:
            cache = fresh_cache(args, f"{name}-{case.key}")
            systems.append(with_kernel_cache(make_system(name, logs), cache))
            state.setdefault("caches", {})[f"{name}/{case.key}"] = str(cache)
        results = run_model(case, systems, interleave=True, unavailable=(SystemUnavailable,))
        state["results"][case.key] = [r.to_dict() for r in results]
        save_state(args.state, state)


def phase_warmup(args, state, cases, logs) -> None:
    """The candidate warm-up, measured: raw engine with a cold kernel cache, warm-up, requests."""
    for case in cases:
        system = with_kernel_cache(make_system("raw-mlx-lm", logs), fresh_cache(args, "warmup"))
        lengths = tuple(int(x) for x in args.warmup_lengths.split(","))
        entry: dict[str, Any] = {
            "model": case.key,
            "lengths": list(lengths),
            "decode_steps": 2,
            "prompt": "token-id list (int32, as a request)",
        }
        try:
            entry["load_s"] = system.start(case.path)
            entry["warmup_s"] = system.warmup(lengths, 2)
            first = system.generate(prompts.short_messages(0), min(8, case.max_tokens))
            later = [
                system.generate(prompts.short_messages(i), min(8, case.max_tokens)) for i in (1, 2)
            ]
            prefill = (
                [
                    system.generate(prompts.long_messages(i, case.prefill_sentences), 1)
                    for i in (1, 2)
                ]
                if case.prefill_sentences
                else []
            )
            entry.update(
                first=first.to_dict(),
                later=[s.to_dict() for s in later],
                prefill=[s.to_dict() for s in prefill],
            )
            say(
                f"warm-up {case.key}: {entry['warmup_s']:.2f}s, then first TTFT {first.ttft}, "
                f"later {[s.ttft for s in later]}, prefill TTFT {[s.ttft for s in prefill]}"
            )
        except SystemUnavailable as exc:
            entry["error"] = str(exc)
        finally:
            system.stop()
        state["warmup"].append(entry)
        # mlxhost restarted on the kernel cache its earlier process filled: the
        # first request then pays module loading but no compilation.
        cache = state.get("caches", {}).get(f"mlxhost/{case.key}")
        if cache and not args.no_restart:
            server = with_kernel_cache(make_system("mlxhost", logs), Path(cache))
            restart: dict[str, Any] = {"model": case.key}
            try:
                restart["startup_s"] = server.start(case.path)
                first = server.generate(prompts.short_messages(0), min(8, case.max_tokens))
                later = server.generate(prompts.short_messages(1), min(8, case.max_tokens))
                restart.update(first=first.to_dict(), later=[later.to_dict()])
                say(
                    f"mlxhost restart on a warm kernel cache, {case.key}: first TTFT {first.ttft}, "
                    f"later {later.ttft}"
                )
            except SystemUnavailable as exc:
                restart["error"] = str(exc)
            finally:
                server.stop()
            state["restart"].append(restart)


def phase_swap(args, state, cases, logs) -> None:
    if len(cases) < 2:
        return
    for name in ("mlxhost", "raw-mlx-lm"):
        system = with_kernel_cache(make_system(name, logs), fresh_cache(args, f"swap-{name}"))
        swap = run_swap(system, cases[0], cases[1], unavailable=(SystemUnavailable,))
        state["swaps"].append(swap.to_dict())


# --- report ---------------------------------------------------------------------------


def render(state: dict[str, Any], args: argparse.Namespace) -> str:
    info = state.get("info", {})
    bw = state.get("bandwidth")
    out = [
        f"Measured {info.get('date', '?')} on **{info.get('gpu') or info.get('cpu', '?')}** "
        f"({info.get('device', '?')}); "
        + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        + ".",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in state.get('commands', []))}",
        "",
        "Models: random weights with the text-layer shapes of gemma-3-4b-it and Qwen3-VL-4B "
        "(`bench/shaped_models.py`), 4-bit, group size 64, bf16 scales, like the "
        "mlx-community `-4bit` builds; vision towers left out. Decode: "
        f"{args.max_tokens} tokens; prefill: ~{args.prefill_tokens}-token prompt.",
        "",
    ]
    if bw:
        out.append(
            f"Copy bandwidth (`a + 1` on {bw['bytes_per_copy'] / 2**30:.1f} GiB read + "
            f"written): **{bw['gb_s']:.0f} GB/s**."
        )
        out.append("")
    rows = []
    pairs = []
    for kind, results in state["results"].items():
        meta = state["models"][kind]
        case = ModelCase(
            key=kind,
            label=meta["label"],
            path=Path(meta["path"]),
            prefill_sentences=meta["prefill_sentences"],
            prefill_tokens=meta["prefill_tokens"],
            weight_bytes=meta["weight_bytes"],
            short_tokens=meta["short_tokens"],
            max_tokens=args.max_tokens,
        )
        objs = [SystemResult.from_dict(r) for r in results]
        pairs.append((case, objs))
        bound = bw["gb_s"] * 1e9 / meta["weight_bytes"] if bw and meta["weight_bytes"] else None
        for r in objs:
            dec = r.decode_spread()
            rows.append(
                [
                    case.label,
                    r.system,
                    f"{meta['weight_bytes'] / 1e9:.2f}",
                    dec.fmt(1) if r.ok else r.status,
                    r.ttft_spread().fmt(3) if r.ok else "",
                    r.prefill_spread().fmt(0) if r.ok else "",
                    fmt_s(r.first.ttft if r.first else None),
                    "none" if r.warmup_s is None else fmt_s(r.warmup_s),
                    fmt_s(bound, 0),
                    ratio(dec.median, bound) if r.ok else "",
                ]
            )
    if rows:
        out.append(
            md_table(
                [
                    "model",
                    "system",
                    "weights GB",
                    "decode tok/s",
                    "TTFT s (short)",
                    "prefill tok/s",
                    "1st request TTFT s (cold kernel cache)",
                    "post-load warm-up s (mlxhost log)",
                    "bandwidth bound tok/s",
                    "fraction of bound",
                ],
                rows,
            )
        )
        out += ["", "mlxhost ÷ raw engine (medians):", "", headline_table(pairs), ""]
    if state["warmup"]:
        rows = []
        for w in state["warmup"]:
            if "error" in w:
                rows.append([w["model"], w["error"], "", "", "", ""])
                continue
            rows.append(
                [
                    w["model"],
                    f"{' + '.join(str(n) for n in w['lengths'])} tokens, "
                    f"{w.get('prompt', 'mx.arange (uint32)')}",
                    fmt_s(w["warmup_s"]),
                    fmt_s(w["first"]["ttft"], 3),
                    ", ".join(fmt_s(s["ttft"], 3) for s in w["later"]),
                    ", ".join(fmt_s(s["ttft"], 3) for s in w["prefill"]) or "—",
                ]
            )
        out += [
            "Candidate warm-ups (raw engine, each in a fresh process with an empty kernel "
            "cache): after the load, dummy prompts of the given lengths, 2 decode steps each, "
            "then the same requests as above:",
            "",
        ]
        out.append(
            md_table(
                [
                    "model",
                    "warm-up prompts",
                    "warm-up s",
                    "then 1st request TTFT s",
                    "later TTFT s",
                    "long-prompt TTFT s",
                ],
                rows,
            )
        )
        out.append("")
    if state["restart"]:
        rows = [
            [
                r["model"],
                fmt_s(r.get("first", {}).get("ttft"), 3),
                ", ".join(fmt_s(s["ttft"], 3) for s in r.get("later", [])),
                r.get("error", ""),
            ]
            for r in state["restart"]
        ]
        out += [
            "mlxhost restarted with the kernel cache its first process filled (no compilation, "
            "module loading only):",
            "",
        ]
        out.append(md_table(["model", "1st request TTFT s", "later TTFT s", "error"], rows))
        out.append("")
    if state["swaps"]:
        swaps = [
            SwapResult(system=s["system"], status=s["status"], steps=s["steps"])
            for s in state["swaps"]
        ]
        out += ["Swaps between the two shapes (each process with its own empty kernel cache):", ""]
        out += [swap_table(swaps), ""]
    for note in state.get("notes", []):
        out += [note, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        print(render(json.loads(args.render_only.read_text()), args))
        return 0
    started = time.monotonic()
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(ALL_PHASES)
    if unknown:
        raise SystemExit(f"unknown phases {sorted(unknown)}; choose from {ALL_PHASES}")
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    state = load_state(args.state)
    state.setdefault("commands", []).append(
        "python3 bench/gpu/run_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    host, versions = machine.machine_info(), machine.versions()
    import mlx.core as mx

    state["info"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "gpu": host.get("gpu"),
        "cpu": f"{host.get('cpu')} ({host.get('cores')} cores)",
        "device": str(mx.default_device()),
        "versions": versions,
    }
    say(f"device {mx.default_device()}, mlx {mx.__version__}, {host.get('gpu', 'no GPU')}")

    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    cases: list[ModelCase] = []

    def over_budget(phase: str) -> bool:
        spent = time.monotonic() - started
        if args.budget_s is not None and spent > args.budget_s:
            say(f"skipping {phase}: {spent:.0f}s spent, budget {args.budget_s:.0f}s")
            state.setdefault("skipped", []).append(phase)
            return True
        return False

    try:
        if "bandwidth" in phases:
            state["bandwidth"] = bandwidth(args.tiny)
        if any(p in phases for p in ("build", "models", "warmup", "swap")):
            for kind in kinds:
                path = build(args, kind)
                case = case_for(args, kind, path)
                cases.append(case)
                state["models"][kind] = {
                    "label": case.label,
                    "path": str(path),
                    "weight_bytes": case.weight_bytes,
                    "prefill_sentences": case.prefill_sentences,
                    "prefill_tokens": case.prefill_tokens,
                    "short_tokens": case.short_tokens,
                }
            save_state(args.state, state)
        for phase, run in (
            ("models", phase_models),
            ("warmup", phase_warmup),
            ("swap", phase_swap),
        ):
            if phase in phases and not over_budget(phase):
                run(args, state, cases, logs)
                save_state(args.state, state)
    finally:
        save_state(args.state, state)
        report = render(state, args)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_results.md").write_text(report + "\n")
        (args.out / "gpu_results.json").write_text(json.dumps(state, indent=1, default=str))
        print(report, flush=True)
        say(f"wrote {args.out / 'gpu_results.md'} ({time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
