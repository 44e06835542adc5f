#!/usr/bin/env bash
# Install mlxhost (core + Gemma and Qwen plugins) into .venv and start the server
# on http://127.0.0.1:1234. Extra arguments go to `mlxhost serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mlxhost serve --model "${MLXHOST_MODEL:-auto}" "$@"
