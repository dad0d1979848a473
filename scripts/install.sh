#!/usr/bin/env bash
# Install matryoshka-train into the current Python environment (activate a venv first if you use one).
#   EXTRAS=test bash scripts/install.sh      # extras: quickstart (default), test, dev
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build 2.13.0: an unpinned torch
# would pull several GB of CUDA packages. A torch that is already installed is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-quickstart}"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install --quiet torch
  else
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi
"$PY" -m pip install --quiet -e ".[${EXTRAS}]"
echo "installed matryoshka-train (extras: ${EXTRAS}) into $("$PY" -c 'import sys; print(sys.prefix)')"
