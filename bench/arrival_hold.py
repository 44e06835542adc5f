"""The arrival hold on and off (``python -m bench.arrival_hold``): bursts of 8
requests sent at once to ``mlxhost serve`` (Qwen 0.5B fp32 test model, 32
tokens each), servers with the hold and without it alternating; per burst the
aggregate tok/s and how the requests entered the batch (``/health`` ``batch``
counters: prompt groups, sequences that started alone and moved).

The hold is switched off in a server by a ``sitecustomize`` on its PYTHONPATH
setting ``mlxhost.runtime.worker.ARRIVING_HOLD_S = 0``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.batching import chat

COUNTERS = ("alone", "moved", "groups")


def main(argv: list[str] | None = None) -> int:
    from bench.systems import base_env
    from mlxhost.starter.builder import ensure_test_model
    from mlxhost.testing.server import ServerProcess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2, help="servers of each kind, alternating")
    parser.add_argument("--bursts", type=int, default=2)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args(argv)
    model = str(ensure_test_model("qwen"))
    off = Path(tempfile.mkdtemp(prefix="mlxhost-nohold-"))
    (off / "sitecustomize.py").write_text("import mlxhost.runtime.worker as w\nw.ARRIVING_HOLD_S = 0.0\n")
    results = []
    for round_ in range(args.servers * 2):
        hold = round_ % 2 == 0
        env = base_env()
        if not hold:
            env["PYTHONPATH"] = str(off)
        with ServerProcess(["--model", model, "--allow-model-paths", "--max-batch", str(args.streams)],
                           env=env) as server:
            chat(server.url, 999, 4, model)  # warm
            for burst in range(args.bursts):
                before = httpx.get(f"{server.url}/health").json()["batch"]
                ids = [7000 + 1000 * round_ + 100 * burst + k for k in range(args.streams)]
                started = time.perf_counter()
                with ThreadPoolExecutor(args.streams) as pool:
                    produced = sum(pool.map(lambda i: chat(server.url, i, args.tokens, model), ids))
                rate = produced / (time.perf_counter() - started)
                after = httpx.get(f"{server.url}/health").json()["batch"]
                counts = {key: after[key] - before[key] for key in COUNTERS}
                results.append({"hold": hold, "tok_s": round(rate, 2), **counts})
                print(json.dumps(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
