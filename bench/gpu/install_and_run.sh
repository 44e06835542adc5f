#!/usr/bin/env bash
# On an offline GPU machine, from the repo root: install the wheels carried by
# prepare.sh (once per machine) and run bench/gpu/run_gpu.py with the given
# arguments. The call-by-call recipe is at the top of prepare.sh; with network,
# bench/gpu/README.md needs neither script.
#
# Needs /tmp/w filled by an earlier call that carried .wa (cp -r .wa/. /tmp/w/);
# the call that installs carries .wb. Later calls on the same warm machine need
# neither: /tmp/site is already there. SCRIPT=bench/gpu/batch_gpu.py runs the
# batching benchmark instead of run_gpu.py (same three options first). The report goes to $OUT (else
# /tmp/bench-gpu), and phases that would start after 540 s are skipped, unless
# the arguments say otherwise.
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
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PATH="$SITE/bin:$PATH"
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device())"
REPORT=${OUT:-/tmp/bench-gpu}
mkdir -p "$REPORT"
set -o pipefail
python3 "${SCRIPT:-bench/gpu/run_gpu.py}" --tokenizers "$W/tok" --out "$REPORT" --budget-s 540 "$@" 2>&1 \
  | tee -a "$REPORT/gpu_log.txt"
