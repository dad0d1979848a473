#!/usr/bin/env bash
# One command from a fresh clone to a full test run (offline, CPU): install with test extras, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test bash scripts/install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" -m pytest -q "$@"
