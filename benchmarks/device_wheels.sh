#!/usr/bin/env bash
# Fill .whl/ (project root, ignored by git) with every wheel benchmarks/gpu_check.sh installs on the lent GPU
# machine (no network there): the workplace's ../shared/tools/device-wheels.sh (diffusers, deepspeed, webdataset,
# omegaconf, pycocotools and what they need), plus what that list lacks for us:
#   typing_extensions>=4.16  pydantic 2.14 (deepspeed's config) needs it; the machine's is older
#   simplejpeg               the stream's JPEG decoder (without it OpenCV decodes the same pixels, slower, and the
#                            data-wait figure would not be the one users get)
# All for CPython 3.12 on x86_64 (the H200 machine's python3). Run from anywhere, before the device call:
#
#   bash benchmarks/device_wheels.sh            # then: device tool, command `bash benchmarks/gpu_check.sh`,
#                                               #       carry [".whl"], timeout 600
#   bash benchmarks/device_rehearsal.sh         # optional: the same install + dry run under that machine's versions
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${DEVICE_WHEELS:-../shared/tools/device-wheels.sh}
if [ ! -f "$tool" ]; then
  echo "device_wheels: $tool not found (the workplace's wheel builder; set DEVICE_WHEELS=path)" >&2
  exit 2
fi
bash "$tool" .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "typing_extensions>=4.16" simplejpeg
echo "device_wheels: $(ls .whl/*.whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
