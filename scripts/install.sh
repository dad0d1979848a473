#!/usr/bin/env bash
# Install matryoshka-train into the current Python environment (activate a venv first if you use one).
#   EXTRAS=test bash scripts/install.sh      # extras: quickstart (default), test, dev, tensorboard, ...
# On a machine without an NVIDIA GPU, torch is the CPU build 2.13.0 from PyTorch's CPU index: the
# default torch wheel would pull several GB of CUDA packages. When that index cannot be reached
# (offline, behind a proxy, a local wheelhouse), the same pinned version is installed from the
# configured index instead. A torch that is already installed is kept.
#   PIP="..." replaces the pip command (default: $PYTHON -m pip); tests/test_install.py uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-quickstart}"
TORCH_CPU="torch==2.13.0"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
if [ -n "${PIP:-}" ]; then
  read -r -a pip_cmd <<< "$PIP"
else
  pip_cmd=("$PY" -m pip)
fi

install_torch() {
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    return 0
  fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip_cmd[@]}" install --quiet torch
    return 0
  fi
  if ! "${pip_cmd[@]}" install --quiet --timeout 15 --retries 0 --index-url "$TORCH_CPU_INDEX" "$TORCH_CPU"; then
    echo "PyTorch's CPU index ($TORCH_CPU_INDEX) is not reachable; installing $TORCH_CPU from the configured index" >&2
    "${pip_cmd[@]}" install --quiet "$TORCH_CPU"
  fi
}

install_torch
"${pip_cmd[@]}" install --quiet -e ".[${EXTRAS}]"
echo "installed matryoshka-train (extras: ${EXTRAS}) into $("$PY" -c 'import sys; print(sys.prefix)')"
