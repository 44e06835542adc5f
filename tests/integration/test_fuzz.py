"""Schema-driven fuzzing: the ``schemathesis`` CLI against a real server with
a real MLX model, over every operation of the server's own OpenAPI document
(coverage and fuzzing phases).

The model is the tiny random Qwen3-VL (the Qwen plugin's templates and tool
parser, mlx-vlm's loader and generation): fuzzing checks what the server
answers, not what the model writes, and on 2 CPU cores the 0.5B model spent
~45 s of this run in generation (prefilling fuzzed prompts, 2-token replies).

Checks: no 5xx (``not_a_server_error``), every status documented
(``status_code_conformance``) and every JSON response matching its documented
schema (``response_schema_conformance``; errors are documented in each API's
own shape, so this checks the Anthropic and Ollama error shapes too). The run's
HAR report is read back to count cases and how many chat requests reached
generation; ``fuzz_hooks.py`` caps every completion budget.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mlxhost.testing.vlm_models import TINY_VLMS

MODEL = TINY_VLMS["qwen3_vl"]
HOOKS = Path(__file__).parent / "fuzz"
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
GENERATING = ("/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses",
              "/api/chat", "/api/generate")


@pytest.fixture(scope="module")
def fuzz_server(start_server):
    with start_server("--model", MODEL, "--context-window", "512") as server:
        yield server


def test_schemathesis_run_finds_no_server_error_and_no_nonconformance(fuzz_server, tmp_path):
    har = tmp_path / "run.har"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{fuzz_server.url}/schema/openapi.json",
        "--phases", "coverage,fuzzing", "--checks", CHECKS, "--max-examples", "5", "--seed", "1",
        "--workers", "1", "--request-timeout", "300", "--suppress-health-check", "all",
        "--report", "har", "--report-har-path", str(har), "--no-color",
    ]
    env = {**os.environ, "PYTHONPATH": str(HOOKS), "SCHEMATHESIS_HOOKS": "fuzz_hooks",
           "MLXHOST_FUZZ_MODEL": MODEL}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]

    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = collections.Counter()
    for entry in entries:
        path = urlsplit(entry["request"]["url"]).path
        statuses[(entry["request"]["method"], path, entry["response"]["status"])] += 1
    assert len(entries) >= 1000
    assert not [key for key in statuses if key[2] >= 500]
    by_path = collections.defaultdict(collections.Counter)
    for (method, path, status), count in statuses.items():
        if method == "POST" and path in GENERATING:
            by_path[path][status] += count
    # Fuzzing reaches the core: every generating endpoint answered 200 to some cases.
    for path in GENERATING:
        assert by_path[path][200] > 0, (path, dict(by_path[path]))
    chat = by_path["/v1/chat/completions"]
    report = {path: f"{c[200]}/{sum(c.values())}" for path, c in by_path.items()}
    print(f"\nschemathesis: {len(entries)} cases; reached 200 per endpoint: {report}; "
          f"chat share {chat[200] / sum(chat.values()):.0%}")
