#!/usr/bin/env bash
# One command from a fresh clone to a trained Matryoshka model: install, then run the offline quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=quickstart bash scripts/install.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"   # everything the quickstart needs ships locally
exec mtrain run configs/quickstart.yaml --overwrite "$@"
