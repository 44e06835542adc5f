"""Aggregate tok/s of ``mlxhost serve`` at N concurrent streams, per variant of
the process's Python settings, with a py-spy profile of the server during the
measured run: where the serving layer spends the time the raw
``BatchGenerator`` does not (bench/gpu/step_probe.py has the raw side).

Variants (``--variants``): ``base`` (as shipped) and ``switch=S`` (the server's
``sys.setswitchinterval(S)``, set through a ``sitecustomize`` on its
PYTHONPATH: how long a thread holding the GIL keeps it while the other one
waits). Profiles (``--profile``, py-spy on PATH) are written as folded stacks,
one file per variant and N: ``OUT/pyspy-<variant>-<N>.txt``.

    python3 bench/gpu/profile_serve.py --models qwen3-4b --streams 1,8,16 --variants base,switch=0.0005
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu.batch_gpu import build, concurrent_rate  # noqa: E402
from bench.gpu.cli import probe_parser  # noqa: E402
from bench.log import say  # noqa: E402


def sitecustomize(work: Path, interval: float) -> Path:
    folder = work / f"switch-{interval}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nsys.setswitchinterval({interval})\n")
    return folder


def main(argv: list[str] | None = None) -> int:
    p = probe_parser(__doc__)
    p.add_argument("--streams", default="1,8,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--variants", default="base")
    p.add_argument("--serve-args", default="--weights as-is")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--budget-s", type=float, default=540.0)
    args = p.parse_args(argv)
    import os

    from mlxhost.testing.server import ServerProcess, free_port

    began = time.monotonic()
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    streams = [int(n) for n in args.streams.split(",")]
    pyspy = shutil.which("py-spy") if args.profile else None
    results: dict[str, Any] = {"tokens": args.tokens, "serve_args": args.serve_args, "rates": {}}
    for kind in args.models.split(","):
        path = build(args, kind)
        for variant in args.variants.split(","):
            if time.monotonic() - began > args.budget_s:
                say(f"skipping {variant}: over --budget-s")
                continue
            env = {"MLX_PTX_CACHE_DIR": str(args.work / "ptx-batching"), "HF_HUB_CACHE": str(args.work / "hf")}
            if variant.startswith("switch="):
                folder = sitecustomize(args.work, float(variant.split("=", 1)[1]))
                env["PYTHONPATH"] = f"{folder}:{os.environ.get('PYTHONPATH', '')}"
            port = free_port()
            command = [sys.executable, "-m", "mlxhost.cli.main", "serve", "--model", str(path), "--allow-model-paths",
                       "--max-batch", str(max(streams)), "--port", str(port), *args.serve_args.split()]
            log = out / f"serve-{kind}-{variant}.log"
            rates: dict[int, float] = {}
            with ServerProcess(command=command, port=port, log_path=log, startup_timeout=400, env=env,
                               name=f"mlxhost {variant}") as server:
                assert server.process is not None
                for n in streams:
                    concurrent_rate(server.url, str(path), n, args.tokens, 100 * n)  # compile
                    spy = None
                    if pyspy:
                        spy = subprocess.Popen(
                            [pyspy, "record", "--pid", str(server.process.pid), "--rate", "250", "--threads", "--idle",
                             "--format", "raw", "--nonblocking", "--duration", "600",
                             "--output", str(out / f"pyspy-{kind}-{variant}-{n}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        time.sleep(1.0)
                    rates[n] = concurrent_rate(server.url, str(path), n, args.tokens, 1000 + 100 * n)
                    if spy is not None:
                        spy.send_signal(2)  # SIGINT: py-spy writes what it has
                        spy.wait(30)
                    say(f"{kind} mlxhost {variant} n={n}: {rates[n]:.1f} tok/s")
            results["rates"][f"{kind} {variant}"] = rates
            (out / "gpu_profile_serve.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
