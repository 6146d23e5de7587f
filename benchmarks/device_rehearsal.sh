#!/usr/bin/env bash
# A rehearsal of the GPU check, here on the CPU, under the lent H200 machine's Python and package versions:
# CPython 3.12, torch 2.11.0 (PyPI's CUDA build, run on the CPU), lightning 2.6.6, transformers 5.17.0,
# huggingface_hub 1.33.0, ... (the versions a session read off that machine in 2026-11; the workplace's
# device notes list them). None of what .whl/ carries is installed in the venv, so the carried wheels are
# installed exactly as gpu_check.sh installs them there (--no-index --no-deps --target); then its dry run.
# It catches what the suite's dry run (this machine's newer packages) cannot: a wheel that does not install
# or import there, an API our code uses that those versions lack.
#
#   bash benchmarks/device_wheels.sh && bash benchmarks/device_rehearsal.sh
#
# The first run downloads about 3 GB (torch 2.11 and its CUDA libraries) into $VENV
# (default /tmp/brushtrain-device-venv); later runs reuse it. PYTHON312 names the interpreter (default:
# python3.12 on PATH, else pyenv's). OUT (default runs/device-rehearsal) gets gpu_check's table and logs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-/tmp/brushtrain-device-venv}
out=${OUT:-runs/device-rehearsal}
py312=${PYTHON312:-}
if [ -z "$py312" ]; then  # the first that runs as 3.12 (a pyenv shim on PATH may not: its version is not selected)
  for candidate in $(command -v python3.12 || true) $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python 2>/dev/null); do
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py312=$candidate; break; fi
  done
fi
if ! ls .whl/*.whl >/dev/null 2>&1; then
  echo "device_rehearsal: no wheels in .whl/ (run bash benchmarks/device_wheels.sh first)" >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  if [ -z "$py312" ] || ! "$py312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    echo "device_rehearsal: no CPython 3.12 found (set PYTHON312=/path/to/python3.12)" >&2
    exit 2
  fi
  "$py312" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "torch==2.11.0" "lightning==2.6.6" "pytorch-lightning==2.6.6" \
    "transformers==5.17.0" "huggingface_hub==1.33.0" "accelerate==1.15.0" "torchmetrics==1.9.0" "numpy==2.5.2" \
    "safetensors==0.8.0" "tokenizers==0.23.2" opencv-python-headless pillow psutil ninja einops msgpack \
    py-cpuinfo tqdm pyyaml packaging requests regex filelock
fi
# What the machine lacks must come from .whl/ only (typing_extensions stays: the machine has an older one).
carried=$(for w in .whl/*.whl; do basename "$w" | cut -d- -f1; done | grep -vix typing_extensions | tr '\n' ' ')
# shellcheck disable=SC2086
"$venv/bin/python" -m pip uninstall -q -y $carried 2>/dev/null || true
target=$(mktemp -d /tmp/brushtrain-site.XXXXXX)
trap 'rm -rf "$target"' EXIT
PY="$venv/bin/python" WHEEL_TARGET="$target" OUT="$out" bash benchmarks/gpu_check.sh --dry-run --jobs 2
