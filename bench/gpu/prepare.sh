#!/usr/bin/env bash
# For a GPU machine WITHOUT network that can only receive a checkout plus small
# folders (at most 64 MiB per command). With network, follow bench/gpu/README.md
# instead (pip install, then run run_gpu.py); neither this script nor
# install_and_run.sh is needed there.
#
# Here (with PyPI): bash bench/gpu/prepare.sh. Then, on the GPU machine, one
# command after the other while /tmp survives (the machine is kept warm):
#   1. carry .wa:  mkdir -p /tmp/w && cp -r .wa/. /tmp/w/ && nvidia-smi -L
#   2. carry .wb:  bash bench/gpu/install_and_run.sh --phases bandwidth,build,models --models gemma3-4b --budget-s 420
#   3.             bash bench/gpu/install_and_run.sh --phases build,models --models qwen3-4b --budget-s 420
#   4.             bash bench/gpu/install_and_run.sh --phases build,warmup --models gemma3-4b,qwen3-4b --warmup-lengths 8,64 --budget-s 420
#   5.             bash bench/gpu/install_and_run.sh --phases build,swap --models gemma3-4b,qwen3-4b --budget-s 420
#    Issue 40's side-by-side (generic path vs raw), after 1 and with .wb carried if not installed yet:
#      SCRIPT=bench/gpu/side_by_side.py bash bench/gpu/install_and_run.sh --models qwen3-4b,llama-3b --streams 1,8 --rounds 5 --budget-s 480
#    (a .wa made before the llama-3b shape lacks tok/smollm2: write it with
#    python -m bench.shaped_models llama-3b --export-tokenizers .wc/tok, carry .wc in
#    call 1 too and add && cp -r .wc/tok/. /tmp/w/tok/ to it.)
# (10-minute limit per command; 4-5.5 min each.) Every command returns the report
# so far in $OUT/gpu_results.{md,json}; if the machine was lost between commands,
# start again at 1 with the phases still missing. Store the last gpu_results.json
# as bench/results/gpu-<gpu>.json (bench/gpu/README.md, "Storing the results").
#
# This prepares the two carried sets:
#
#   .wa/  mlx-cuda-13 part 1, every other wheel, the tokenizer files   (< 60 MiB; 56 MiB)
#   .wb/  mlx-cuda-13 part 2                                           (< 60 MiB)
#
# The GPU machine has Python 3.12, the NVIDIA libraries, numpy, transformers,
# tokenizers, huggingface-hub, httpx, jinja2, pluggy, pillow, pyyaml, rich,
# click and psutil, no network and no mlx. So this carries: mlx,
# mlx-cuda-13 and mlx-lm at the project's pins; what `mlxhost serve` imports and
# the machine lacks (litestar and its own needs, uvicorn, cattrs, attrs,
# typing-extensions, jsonschema and its own needs, llguidance for constrained
# decoding), at this environment's versions; py-spy for bench/gpu/profile_serve.py
# at a version pinned here (a fresh .venv has no py-spy); and wheels of mlxhost and
# its two plugins built from this checkout (for their entry points; the code
# itself runs from the carried working tree). mlx-vlm stays behind: text-only
# models never import it. Model weights stay behind too: run_gpu.py makes
# random ones there. Run here, from anywhere in the repo; needs PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python
  elif [ -n "${VIRTUAL_ENV:-}" ]; then PY=$VIRTUAL_ENV/bin/python
  else PY=python3; fi
fi
W=.whl                      # every wheel, whole (git-ignored)
SPLIT=42000000              # bytes of the mlx-cuda-13 wheel that go in .wa
LIMIT=$((60 * 1024 * 1024)) # per carried set

rm -rf "$W" .wa .wb
mkdir -p "$W" .wa/tok .wb

version() {
  "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || {
    echo "error: $1 is not installed in $PY (bash scripts/setup.sh installs what mlxhost serve imports)" >&2
    return 1
  }
}
# A tool the GPU runs use and the server never imports: not in .venv, so pinned here.
PY_SPY=py-spy==0.4.3
pins=(mlx==0.32.4 mlx-cuda-13==0.32.4 mlx-lm==0.32.2 "$PY_SPY")
for dist in litestar litestar-htmx msgspec multipart polyfactory faker rich-click sniffio \
            uvicorn cattrs attrs typing-extensions jsonschema \
            jsonschema-specifications referencing rpds-py llguidance prometheus-client; do
  v=$(version "$dist")
  pins+=("$dist==$v")
done
echo "downloading: ${pins[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  -d "$W" "${pins[@]}" 2> >(grep -v "^WARNING: Location 'file:" >&2)
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$W" \
  . plugins/mlxhost_gemma plugins/mlxhost_qwen 2> >(grep -v "^WARNING: Location 'file:" >&2)

# Tokenizer files of the small test models (the shaped models borrow them), xz-compressed:
# .wa/tok/gemma, qwen and smollm2 (the Llama shape's).
PYTHONPATH=. "$PY" -m bench.shaped_models --export-tokenizers .wa/tok

cuda=$(ls "$W"/mlx_cuda_13-*.whl)
head -c "$SPLIT" "$cuda" > .wa/cuda.part1
tail -c +"$((SPLIT + 1))" "$cuda" > .wb/cuda.part2
basename "$cuda" > .wa/cuda.name
sha256sum "$cuda" | cut -d' ' -f1 > .wa/cuda.sha256
for wheel in "$W"/*.whl; do
  [ "$wheel" = "$cuda" ] || cp "$wheel" .wa/
done

for set in .wa .wb; do
  size=$(du -sb "$set" | cut -f1)
  printf '%s: %d bytes (%.1f MiB)\n' "$set" "$size" "$(echo "$size / 1048576" | bc -l)"
  if [ "$size" -ge "$LIMIT" ]; then
    echo "error: $set is over 60 MiB" >&2
    exit 1
  fi
done
ls .wa .wb
