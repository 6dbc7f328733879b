#!/bin/bash
# The GPU table: step_cost.py --torch in float32 and bfloat16 at
# 224x224, batch 64, for every backbone, on one GPU.
#
#   OUT=/tmp/gpu_table DEADLINE_S=540 bash benchmarks/gpu_table.sh
#   MODELS=vgg11,inception_v4 SIZE=64 BATCH=4 bash benchmarks/gpu_table.sh
#
# Runs most-wanted first (resnet50 with every variant, then the demo model,
# then the other backbones with $OTHERS) and starts no new
# run once DEADLINE_S seconds have passed, so a time-limited lease still
# returns whole results. Appends every run's JSON to $OUT/gpu_results.json
# and its output to $OUT/gpu_table.log.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_table}
DEADLINE_S=${DEADLINE_S:-540}
SIZE=${SIZE:-224} BATCH=${BATCH:-64} REPS=${REPS:-10}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX and torch share the card: leave torch room beside XLA's preallocation.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
PY=${PY:-python3}
LOG="$OUT/gpu_table.log"
start=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm \
  --format=csv 2>&1 | tee -a "$LOG"
# Use the image's packages; fall back to carried wheels (.whl/) if its flax
# or optax lacks what danil_jax uses.
if ! $PY -c 'import flax.linen, optax; optax.tree.norm' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
fi
$PY -c 'import jax, flax, optax, torch, timm, torchvision
print("jax", jax.__version__, jax.devices(), "flax", flax.__version__,
      "optax", optax.__version__, "torch", torch.__version__,
      "timm", timm.__version__, "torchvision", torchvision.__version__)' \
  2>&1 | tee -a "$LOG" || exit 1

ALL=forward,plain,ohem,danil,danil_2grad,danil_correct,danil_skip,danil_skip_correct,danil_eighth,danil_mo,danil_mo_eighth
# The reading of the DANIL variants' Ld (step_cost.py --reduction); the
# trainer's default (the two cost alike on the CPU, benchmarks/README.md).
REDUCTION=${REDUCTION:-batch}
# The issue's five variants; a short lease may want OTHERS=forward,plain,danil.
OTHERS=${OTHERS:-forward,plain,ohem,danil,danil_2grad}
RUNS=(
  "resnet50 $ALL --stock"
  "small_resnet $ALL --stock"
  "vgg11 $OTHERS"
  "efficientnet_b0 $OTHERS"
  "inception_v4 $OTHERS"
)
for run in "${RUNS[@]}"; do
  read -r model variants extra <<<"$run"
  [[ ",${MODELS:-$model}," == *",$model,"* ]] || continue
  for dtype in float32 bfloat16; do
    elapsed=$(( $(date +%s) - start ))
    if (( elapsed > DEADLINE_S )); then
      echo "skipped $model $dtype: ${elapsed}s past the ${DEADLINE_S}s deadline" \
        | tee -a "$LOG"
      continue
    fi
    json="/tmp/step_cost_${model}_${dtype}.json"
    $PY benchmarks/step_cost.py --models="$model" --size="$SIZE" \
      --batch="$BATCH" --dtype="$dtype" --variants="$variants" ${extra:-} \
      --torch --reps="$REPS" --reduction="$REDUCTION" \
      --json="$json" 2>&1 | grep -v "^W0000\|^I0000" | tee -a "$LOG"
    [[ -f "$json" ]] && $PY - "$json" "$OUT/gpu_results.json" <<'EOF'
import json, os, sys
new = json.load(open(sys.argv[1]))
path = sys.argv[2]
runs = json.load(open(path)) if os.path.exists(path) else []
json.dump(runs + [new], open(path, 'w'), indent=1)
EOF
  done
done
echo "total $(( $(date +%s) - start )) s" | tee -a "$LOG"
