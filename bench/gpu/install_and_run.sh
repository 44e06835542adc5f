#!/usr/bin/env bash
# On the GPU machine, from the repo root: install the carried wheels (once per
# machine) and run bench/gpu/run_gpu.py with the given arguments.
#
# Needs /tmp/w filled by an earlier call that carried .wa (cp -r .wa/. /tmp/w/);
# the call that installs carries .wb. Later calls on the same warm machine need
# neither: /tmp/site is already there.
set -euo pipefail
W=/tmp/w
SITE=/tmp/site
if [ ! -d "$SITE/mlx" ]; then
  cp .wb/cuda.part2 "$W/"
  name=$(cat "$W/cuda.name")
  cat "$W/cuda.part1" "$W/cuda.part2" > "$W/$name"
  echo "$(cat "$W/cuda.sha256")  $W/$name" | sha256sum -c -
  rm -f "$W/cuda.part1" "$W/cuda.part2"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$W"/*.whl
fi
# mlxhost and its plugins run from this working tree; /tmp/site holds their
# dist-info (entry points) and everything else that was carried.
export PYTHONPATH="$PWD/src:$PWD/plugins/mlxhost_gemma/src:$PWD/plugins/mlxhost_qwen/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())"
mkdir -p "${OUT:-/tmp/bench-gpu}"
set -o pipefail
python3 bench/gpu/run_gpu.py --tokenizers "$W/tok" "$@" 2>&1 | tee -a "${OUT:-/tmp/bench-gpu}/gpu_log.txt"
