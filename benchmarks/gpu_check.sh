#!/usr/bin/env bash
# Every GPU check of issue 13 in ONE command, at most 8 minutes on one H200 with no network:
# SD1.5 (random weights, 512 px, ZeRO-2, bf16) at batch 8 and 32, eager and compiled; the reference-style loop
# at batch 2 for the ratio; SDXL at 1024 px batch 2; the largest batch with gradient checkpointing; one
# checkpoint save + resume + export under ZeRO-2. One markdown table + raw metrics + logs under $OUT
# (gpu_check.md, gpu_check.json, gpu_check.log); a failing case is reported and the rest go on.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine (the device tool: carry [".whl"])
#   bash benchmarks/gpu_check.sh --dry-run    # tiny models on the CPU, a few steps, the same table (a test runs it)
#
# Packages the machine lacks (diffusers, deepspeed, webdataset, omegaconf, ...) are installed from the wheels
# in .whl/ (ignored by git), without network, into $WHEEL_TARGET (default /tmp/brushtrain-site). Fill it here,
# before the device call, and rehearse the install and the dry run under that machine's versions if you like:
#   bash benchmarks/device_wheels.sh
#   bash benchmarks/device_rehearsal.sh         # optional, on this CPU (Python 3.12, torch 2.11, ...)
# and run it there with the device tool: command `bash benchmarks/gpu_check.sh`, carry [".whl"], timeout 600.
# Environment: PY (python; default .venv/bin/python if there, else python3), OUT (default runs/gpu-check),
# WORK (models, shards, runs), WHEEL_TARGET.
set -uo pipefail
started=$(date +%s)
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export OUT=${OUT:-runs/gpu-check}
mkdir -p "$OUT"
need="import diffusers, deepspeed, omegaconf, webdataset, braceexpand"
if ! "$PY" -c "$need" 2>/dev/null; then
  target=${WHEEL_TARGET:-/tmp/brushtrain-site}
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check: installing $(ls .whl/*.whl | wc -l) carried wheels into $target"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" .whl/*.whl \
      || echo "gpu_check: wheel install failed (continuing; the checks below will say what is missing)"
    export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: missing packages and no .whl/ folder (run device-wheels.sh here and carry .whl)" | tee "$OUT/gpu_check.log"
  fi
  "$PY" -c "$need" || { echo "gpu_check: still missing packages; see above" | tee -a "$OUT/gpu_check.log"; exit 1; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
args=()
[ -n "${WORK:-}" ] && args+=(--work "$WORK")
# the driver's budget (470 s) counts from the start of this script, the wheel installation included
exec "$PY" benchmarks/gpu_check.py --out "$OUT" "${args[@]}" --started-at "$started" "$@"
