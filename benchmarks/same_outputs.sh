#!/bin/bash
# Not a timing: whether a change of code alone (a refactor, a re-layout)
# leaves a run's outputs as they were. Runs a 60-step demo (checkpoints at
# steps 30 and 60, weight EMA on) and evaluate / predict / response_maps on
# it with the code of each of two checkouts, then compares everything they
# wrote (benchmarks/same_outputs.py).
#
#   git worktree add /tmp/before <old commit>
#   bash benchmarks/same_outputs.sh /tmp/before . /tmp/same_outputs
#
# Each side takes about 1.5 minutes on a 2-core CPU. XLA on the CPU is
# deterministic, so two runs of the same code compare equal (checked on
# 2026-12-04); a mismatch is a change of behaviour.
set -euo pipefail
[ $# -eq 3 ] || { echo "usage: $0 CODE_A CODE_B OUT_DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
a=$(cd "$1" && pwd); b=$(cd "$2" && pwd); out=$3
mkdir -p "$out"; out=$(cd "$out" && pwd)

run() {  # run CODE_DIR OUT_DIR
  local code=$1 dir=$2
  rm -rf "$dir"; mkdir -p "$dir/images"
  local w=$dir/run
  (
    cd "$code"
    export PYTHONPATH=$code JAX_PLATFORMS=cpu TFDS_DATA_DIR=$dir/tfds
    python -m danil_jax.main --config=configs/demo.py --workdir="$w" \
      --config.max_steps=60 --config.checkpoint_every_steps=30 \
      --config.optim.ema_decay=0.9 > "$dir/main.log" 2>&1
    python -m danil_jax.evaluate --workdir="$w" --split=test --tta=flips \
      --weights=raw > "$dir/evaluate.log" 2>&1
    python -c "
import numpy as np, sys
from PIL import Image
rng = np.random.default_rng(0)
for i in range(6):
  Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(
      f'{sys.argv[1]}/im{i}.png')" "$dir/images"
    python -m danil_jax.predict --workdir="$w" --images="$dir/images" \
      --out="$dir/preds.csv" > "$dir/predict.log" 2>&1
    python -m danil_jax.response_maps --workdir="$w" --num=4 \
      --out="$dir/maps.png" > "$dir/maps.log" 2>&1
  ) || { echo "the run with $code failed; its logs: $dir/*.log" >&2; exit 1; }
}

echo "code A: $a"; run "$a" "$out/a"
echo "code B: $b"; run "$b" "$out/b"
python "$here/same_outputs.py" "$out/a" "$out/b"
