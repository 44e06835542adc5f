"""Time to ready: from starting ``mlxhost serve --model PATH`` to ``/health/ready``
answering 200, beside a bare ``mlx_lm.load`` plus one request in a fresh process.

Cases, in this order, each a new process:

- ``first start``: empty kernel cache (``MLX_PTX_CACHE_DIR``), no remembered
  ``--max-batch auto`` measurement (an empty ``HOME``: ``~/.cache/mlxhost/batch-probe``);
- ``second start``: the same kernel cache and measurement folder, now filled;
- ``second start, measurement forgotten``: the warm kernel cache, the
  measurement folder emptied (what every start cost before it was kept on disk);
- ``bare mlx_lm``, twice: ``python -c "mlx_lm.load(PATH); stream_generate(..., max_tokens=8)"``
  on the warm kernel cache (the first run compiles the kernels of mlx-lm's own
  path, which the servers did not use; the second is the warm one compared with) and the same ``HOME`` (the CUDA driver's own JIT cache
  lives there), OpenBLAS preloaded as ``serve`` does on Linux CPU.

Each time runs from the process start (interpreter and imports included) to
ready, or for the bare case to the end of its request. After ready, one request
(8 tokens) times how warm the server is. The serve log's "Loaded ... in Xs
(+Ys warm-up)" gives the load / warm-up split. Rounds repeat the four cases
(the first round's first start is the only one on an empty kernel cache: later
rounds start from fresh folders again).

    python -m bench.time_to_ready                       # CPU: the Qwen 0.5B test model
    python -m bench.time_to_ready --models qwen3-4b,gemma3-4b --shaped   # GPU: 4B shapes, 4-bit
    SCRIPT=bench/time_to_ready.py bash bench/gpu/install_and_run.sh --shaped --models qwen3-4b

Writes OUT/time_to_ready.{json,md}.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu.cli import probe_parser  # noqa: E402
from bench.log import say  # noqa: E402
from bench.report import md_table  # noqa: E402

LOADED = re.compile(r"Loaded \S+ with \S+ in ([\d.]+)s \(\+([\d.]+)s warm-up\); .*max batch (\d+) \(([^)]*)\)")
QUESTION = "Write one sentence about the sea."
# The request the server gets after ready, the same way: chat template, 8 tokens.
BARE = """
import sys, time
from mlx_lm import load, stream_generate
model, tokenizer = load(sys.argv[1])
loaded = time.time()
messages = [{"role": "user", "content": sys.argv[2]}]
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
for _ in stream_generate(model, tokenizer, prompt, max_tokens=8):
    pass
print(f"LOADED_AT {loaded}")
"""


def parse_args(argv: list[str] | None):
    p = probe_parser(__doc__)
    p.set_defaults(models="qwen-test", work=Path("/tmp/bench-time-to-ready"))
    p.add_argument("--shaped", action="store_true",
                   help="--models are bench/shaped_models shapes (random 4-bit weights), "
                   "not test models (qwen-test, gemma-test)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--skip-forgotten", action="store_true",
                   help="leave out the 'measurement forgotten' start (fits one 4B shape pair in 10 GPU minutes)")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--serve-args", default="", help="extra `mlxhost serve` arguments")
    p.add_argument("--timeout-s", type=float, default=400.0, help="per start")
    return p.parse_args(argv)


def model_path(args: Any, name: str) -> Path:
    if not args.shaped:
        from mlxhost.models.starter.builder import ensure_model

        return ensure_model(name.removesuffix("-test"), log=say)
    from bench.shaped_models import TOKENIZER_FROM, build_shaped_model, folder_name

    out = args.work / "models" / folder_name(name, args.tiny)
    if not (out / "config.json").is_file():
        if args.tokenizers:
            tokenizers = args.tokenizers / TOKENIZER_FROM[name]
        else:
            from mlxhost.models.starter.builder import ensure_model

            tokenizers = ensure_model(TOKENIZER_FROM[name], log=say)
        build_shaped_model(name, out, tokenizers, tiny=args.tiny, log=say)
    return out


def serve_start(args: Any, path: Path, home: Path, ptx: Path, log: Path) -> dict[str, Any]:
    """Seconds from Popen to /health/ready 200, the log's split, and one request after."""
    import httpx

    from mlxhost.testing.server import free_port

    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "MLX_PTX_CACHE_DIR": str(ptx), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mlxhost.cli.main", "serve", "--model", str(path), "--allow-model-paths",
               "--port", str(port), *args.serve_args.split()]
    url = f"http://127.0.0.1:{port}"
    began = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        first_200 = None
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"serve exited with {process.returncode}: {log.read_text()[-2000:]}")
            if time.perf_counter() - began > args.timeout_s:
                raise TimeoutError(f"not ready after {args.timeout_s} s")
            try:
                if first_200 is None and httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    first_200 = time.perf_counter() - began
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ready = time.perf_counter() - began
        sent = time.perf_counter()
        body = {"model": str(path), "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": QUESTION}]}
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
        response.raise_for_status()
        request = time.perf_counter() - sent
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    found = LOADED.search(log.read_text())
    return {
        "ready_s": round(ready, 2), "first_health_200_s": round(first_200 or ready, 2),
        "request_after_ready_s": round(request, 3),
        "load_s": float(found.group(1)) if found else None,
        "warmup_s": float(found.group(2)) if found else None,
        "max_batch": int(found.group(3)) if found else None,
        "batch_choice": found.group(4) if found else None,
    }


def batch_cell(figures: dict[str, Any]) -> str:
    choice = figures.get("batch_choice") or ""
    if choice.startswith("auto, measured in"):
        how = "measured now"
    elif choice.startswith("auto, measured "):
        how = "remembered"
    else:
        how = choice
    return f"{figures.get('max_batch')} ({how})"


def bare_start(path: Path, home: Path, ptx: Path) -> dict[str, Any]:
    from mlxhost.cli.blas import preload_env

    # The same HOME as the servers: the CUDA driver keeps its own JIT cache there (~/.nv).
    env = {**preload_env(os.environ), "HOME": str(home), "MLX_PTX_CACHE_DIR": str(ptx)}
    began = time.time()
    done = subprocess.run([sys.executable, "-c", BARE, str(path), QUESTION], env=env, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    loaded = float(done.stdout.split("LOADED_AT ")[1].split()[0])
    return {"ready_s": round(ended - began, 2), "load_s": round(loaded - began, 2),
            "request_s": round(ended - loaded, 2)}


def one_round(args: Any, name: str, path: Path, index: int) -> dict[str, Any]:
    base = args.work / "runs" / f"{name}-{index}"
    shutil.rmtree(base, ignore_errors=True)
    ptx, home, logs = base / "ptx", base / "home", base / "logs"
    logs.mkdir(parents=True)
    cases: dict[str, Any] = {}
    say(f"{name} round {index}: first start (empty kernel cache, nothing remembered)")
    cases["first start"] = serve_start(args, path, home, ptx, logs / "first.log")
    say(f"  {cases['first start']}")
    say(f"{name} round {index}: second start")
    cases["second start"] = serve_start(args, path, home, ptx, logs / "second.log")
    say(f"  {cases['second start']}")
    if not args.skip_forgotten:
        shutil.rmtree(home / ".cache" / "mlxhost" / "batch-probe", ignore_errors=True)
        say(f"{name} round {index}: second start, measurement forgotten")
        cases["second start, measurement forgotten"] = serve_start(args, path, home, ptx, logs / "forgotten.log")
        say(f"  {cases['second start, measurement forgotten']}")
    bare_cases(cases, name, index, path, home, ptx)
    return cases


def bare_cases(cases: dict[str, Any], name: str, index: int, path: Path, home: Path, ptx: Path) -> None:
    """The bare engine twice: its first run compiles the kernels its own path needs
    (mlxhost's runs did not fill the cache with them), the second is the warm one
    the targets compare with."""
    say(f"{name} round {index}: bare mlx_lm.load + one request (its kernels compiled now)")
    cases["bare mlx_lm, first"] = bare_start(path, home, ptx)
    say(f"  {cases['bare mlx_lm, first']}")
    say(f"{name} round {index}: bare mlx_lm.load + one request, warm")
    cases["bare mlx_lm"] = bare_start(path, home, ptx)
    say(f"  {cases['bare mlx_lm']}")


def render(state: dict[str, Any]) -> str:
    lines = [f"Device: {state['device']}; MLX {state['mlx']}; serve args: `{state['serve_args'] or '(none)'}`", ""]
    header = ["model", "round", "case", "ready s", "÷ bare", "load s", "warm-up s", "max batch",
              "first /health 200 s", "1st request after ready s", "ready + 1st request ÷ bare"]
    rows = []
    for name, rounds in state["models"].items():
        for index, cases in enumerate(rounds, 1):
            bare = cases["bare mlx_lm"]["ready_s"]  # its load + one request, warm
            for case, figures in cases.items():
                if case.startswith("bare mlx_lm"):
                    label = case.replace("bare mlx_lm", "bare mlx_lm.load + one request")
                    rows.append([name, index, label, figures["ready_s"], f"{figures['ready_s'] / bare:.2f}",
                                 figures["load_s"], f"(request {figures['request_s']})", "—", "—", "—",
                                 f"{figures['ready_s'] / bare:.2f}"])
                    continue
                answered = figures["ready_s"] + figures["request_after_ready_s"]
                rows.append([name, index, case, figures["ready_s"], f"{figures['ready_s'] / bare:.2f}",
                             figures["load_s"], figures["warmup_s"], batch_cell(figures),
                             figures["first_health_200_s"], figures["request_after_ready_s"],
                             f"{answered / bare:.2f}"])
    lines.append(md_table(header, rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import mlx.core as mx

    began = time.monotonic()
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    info = mx.device_info()
    state: dict[str, Any] = {"device": info.get("device_name", str(mx.default_device())), "mlx": mx.__version__,
                             "serve_args": args.serve_args, "models": {}}
    for name in args.models.split(","):
        path = model_path(args, name)
        for index in range(1, args.rounds + 1):
            if time.monotonic() - began > args.budget_s:
                say(f"skipping {name} round {index}: over --budget-s")
                continue
            state["models"].setdefault(name, []).append(one_round(args, name, path, index))
            (out / "time_to_ready.json").write_text(json.dumps(state, indent=2))
            (out / "time_to_ready.md").write_text(render(state))
    print(render(state))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
