#!/usr/bin/env bash
# Train TIGER and HSTU concurrently on one CUDA GPU within a time budget (from scratch, from a run folder's
# last.pt, or warm-started from the best.pt a previous run brought back), then evaluate both on the full
# Beauty test split with beam 20. Needs no internet.
#
#   OUT=/some/dir benchmarks/gpu_backbones.sh [BUDGET_S=420]
#
# Inputs: this repo, artifacts/beauty/semantic_ids_rqvae.npz (or CODES=path), data at ../shared/data (or
# SCOTER_DATA_DIR). Optional: INIT_DIR (default benchmarks/checkpoints) holding beauty_{tiger,hstu}_gpu.pt
# to continue from; artifacts/wheels/*.whl installed when pydantic is missing (the GPU image lacks it).
# Outputs in $OUT (at most 8 files, so they come back from the device tool):
#   beauty_backbones_{tiger,hstu}_gpu.json, beauty_{tiger,hstu}_gpu.pt (best.pt: weights only), {tiger,hstu}.log,
#   {tiger,hstu}_epochs.jsonl
# Full run folders (with optimizer state, for resuming on the same machine) stay in $RUN_DIR.
set -euo pipefail
BUDGET=${1:-420}
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu_out}
RUN_DIR=${RUN_DIR:-/tmp/scoter_gpu_runs}
INIT_DIR=${INIT_DIR:-benchmarks/checkpoints}
CODES=${CODES:-artifacts/beauty/semantic_ids_rqvae.npz}
# seconds kept for start-up (data, model) and the final full valid + test evaluation of both models
RESERVE=${RESERVE:-110}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu EXTRA="--max-users 300" rehearses the whole path without a GPU
EXTRA=${EXTRA:-}
mkdir -p "$OUT" "$RUN_DIR"
[ -f "$CODES" ] || { echo "semantic IDs not found: $CODES (set CODES=...)" >&2; exit 2; }
# data: $SCOTER_DATA_DIR, else ../shared/data (the default), else a shared/data copy inside the repo
if [ -z "${SCOTER_DATA_DIR:-}" ] && [ ! -f ../shared/data/beauty/sequences.txt ] && [ -f shared/data/beauty/sequences.txt ]; then
  export SCOTER_DATA_DIR=$PWD/shared/data
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2

if ! "$PY" -c "import pydantic" 2>/dev/null; then
  if ls artifacts/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/scoter_site artifacts/wheels/*.whl
    export PYTHONPATH=/tmp/scoter_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "pydantic missing and no artifacts/wheels/*.whl to install it from" >&2; exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ "$DEVICE" = cuda ]; then
  SCOTER_MACHINE=$("$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))")
  export SCOTER_MACHINE
  echo "GPU: $SCOTER_MACHINE"
fi

TRAIN=$(( BUDGET > RESERVE + 30 ? BUDGET - RESERVE : 30 ))
echo "budget ${BUDGET}s -> ${TRAIN}s of training per model (concurrent), codes ${CODES}"
pids=()
for b in tiger hstu; do
  init=()
  if [ ! -f "$RUN_DIR/$b/last.pt" ] && [ -f "$INIT_DIR/beauty_${b}_gpu.pt" ]; then
    init=(--init-from "$INIT_DIR/beauty_${b}_gpu.pt")
  fi
  "$PY" -m benchmarks.beauty_backbones --backbone "$b" --run-dir "$RUN_DIR/$b" --codes "$CODES" --device "$DEVICE" \
      --time-budget "$TRAIN" --threads 2 --tag gpu $EXTRA --results-dir "$OUT" "${init[@]}" > "$OUT/$b.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for b in tiger hstu; do
  cp "$RUN_DIR/$b/log.jsonl" "$OUT/${b}_epochs.jsonl" 2>/dev/null || true
  cp "$RUN_DIR/$b/best.pt" "$OUT/beauty_${b}_gpu.pt" 2>/dev/null || true
  grep -h '"test"' "$OUT/$b.log" | tail -n 1 || echo "$b: no result (see $OUT/$b.log)"
done
exit $status
