"""`mlxhost pull` of a model that is already in the cache: it should be instant.

Run: python -m bench.pull_cached [--runs 5]
Writes the "pull of a cached model" section of docs/benchmarks.md.

Two cases, each the whole command as a user types it (a fresh `mlxhost`
process, Python start-up included), median of ``--runs``:

- offline (``HF_HUB_OFFLINE=1``): the Qwen 0.5B fp32 test model (2.5 GB)
  installed in a temporary Hugging Face cache; no network at all;
- online: a fake hub on loopback (mlxhost.testing.fake_hub) serving a 15 MB
  repo that was pulled once before; the command asks the hub for the repo's
  file list, finds every file cached, and downloads nothing.

The JSON field ``seconds`` is the time inside the command (after imports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.docs import DOC, write_section
from mlxhost.models.starter.builder import TEST_MODELS, ensure_test_model, install_into_hf_cache
from mlxhost.testing.fake_hub import FakeHub


def timed_pull(env: dict[str, str], model: str) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mlxhost.cli.main", "pull", model, "--json"],
                          env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, json.loads(done.stdout)


def measure(env: dict[str, str], model: str, runs: int) -> tuple[float, float, str]:
    walls, insides, status = [], [], ""
    for _ in range(runs):
        wall, result = timed_pull(env, model)
        walls.append(wall)
        insides.append(result["seconds"])
        status = result["status"]
    return statistics.median(walls), statistics.median(insides), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = {**os.environ, "XDG_CONFIG_HOME": str(Path(tmp) / "xdg"), "MLXHOST_CONFIG": ""}
        qwen = TEST_MODELS["qwen"].repo_id
        install_into_hf_cache(ensure_test_model("qwen"), qwen, Path(tmp) / "offline")
        offline = {**base, "HF_HUB_CACHE": str(Path(tmp) / "offline"), "HF_HUB_OFFLINE": "1"}
        wall, inside, status = measure(offline, qwen, args.runs)
        rows.append((f"`{qwen}` (2.5 GB), `HF_HUB_OFFLINE=1`", status, wall, inside))
        repo = {"config.json": json.dumps({"model_type": "qwen2"}).encode(),
                "model.safetensors": os.urandom(15_000_000), "tokenizer.json": b"{}"}
        with FakeHub({"org/tiny-qwen": repo}) as hub:
            online = {**base, "HF_HUB_CACHE": str(Path(tmp) / "online"), "HF_HUB_OFFLINE": "0",
                      "HF_ENDPOINT": hub.url}
            timed_pull(online, "org/tiny-qwen")  # the first pull downloads
            wall, inside, status = measure(online, "org/tiny-qwen", args.runs)
        rows.append(("`org/tiny-qwen` (15 MB), fake hub on loopback", status, wall, inside))
    lines = [
        "## `mlxhost pull` of a cached model",
        "",
        f"`python -m bench.pull_cached --runs {args.runs}` on 2 CPU cores: the whole command "
        "(a fresh process, Python start-up included) and the time inside it (`seconds` of "
        "`--json`), medians.",
        "",
        "| model, hub | result | command wall time | inside the command |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {status} | {wall:.2f} s | {inside:.3f} s |" for name, status, wall, inside in rows]
    lines += ["", "Nothing is downloaded in either case; online, the hub is asked once for the "
              "repo's file list (on the real hub that adds one round trip)."]
    body = "\n".join(lines)
    print(body)
    write_section(DOC, "pull-cached", body)


if __name__ == "__main__":
    main()
