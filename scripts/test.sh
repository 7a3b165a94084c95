#!/usr/bin/env bash
# The test command (README): set up .venv, make sure Redis answers, run ruff and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/ensure_redis.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
