#!/usr/bin/env bash
# Set up BrushTrain in a virtual environment (default: .venv next to this file).
#
#   bash install.sh            # create/update .venv and install brushtrain (+ test tools)
#
# PyTorch is installed first and on purpose: with CUDA (nvidia-smi finds a GPU)
# pip's default CUDA build; without, the CPU build: from a local wheel where
# pip's find-links has one, else from PyTorch's CPU index ($TORCH_CPU_INDEX).
# An existing torch in the environment is kept.
#   BRUSHTRAIN_VENV=path   use another environment
#   TORCH_VERSION=2.x.y    the torch release to install (default 2.13.0)
set -euo pipefail
cd "$(dirname "$0")"

venv=${BRUSHTRAIN_VENV:-.venv}
torch_version=${TORCH_VERSION:-2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip() { "$py" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install.sh: GPU found, installing torch==$torch_version (CUDA build)"
    pip install "torch==$torch_version"
  else
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    if pip download --no-index --no-deps "torch==$torch_version" -d "$tmp" >/dev/null 2>&1 \
        && ls "$tmp" | grep -q '+cpu'; then
      echo "install.sh: no GPU, installing the local CPU build of torch==$torch_version"
      pip install "torch==$torch_version"
    else
      echo "install.sh: no GPU, installing torch==$torch_version (CPU build) from $cpu_index"
      pip install "torch==$torch_version" --index-url "$cpu_index" --extra-index-url https://pypi.org/simple
    fi
  fi
fi

pip install -e ".[test]"
echo "install.sh: ready: $("$py" -c 'import torch; print("torch", torch.__version__)'), brushtrain at $venv/bin/brushtrain"
