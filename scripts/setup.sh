#!/usr/bin/env bash
# Create .venv with mlxhost, both family plugins and the test/GGUF extras.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
VENV_PY=.venv/bin/python

extras="test,gguf"
if [ "$(uname -s)" = "Linux" ]; then
  extras="cpu,$extras"
  # MLX on Linux CPU: Debian's OpenBLAS, preloaded by `mlxhost serve`, makes fp32 ~10x faster.
  if [ ! -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] && command -v apt-get >/dev/null \
     && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread) >/dev/null || \
      echo "warning: could not install libopenblas0-pthread; MLX on CPU will be slower" >&2
  fi
  # The status page's test drives a real headless browser: Debian's Chromium and its driver.
  if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null || \
      echo "warning: could not install chromium/chromium-driver; the browser test will fail" >&2
  fi
  # transformers' GGUF reader needs torch: the CPU build, never the multi-GB CUDA one.
  if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
    "$VENV_PY" -m pip install -q "torch==2.13.0" 2> >(grep -v "^WARNING: Location 'file:" >&2)
  fi
fi
# (grep hides pip's warnings about this machine's unused local index folders)
"$VENV_PY" -m pip install -q --disable-pip-version-check \
  -e ".[$extras]" -e plugins/mlxhost_gemma -e plugins/mlxhost_qwen \
  2> >(grep -v "^WARNING: Location 'file:" >&2)
