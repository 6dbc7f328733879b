#!/bin/bash
# Does DANIL do what it says? Its mechanism beside its F1, over lam, at the
# low-noise protocol (configs/demo_compare.py, 15 epochs). Trains Base, the
# control (DANIL's step with lam = 0) and DANIL 'batch' at lam 1e-5, 1e-4,
# 1e-3 and 1e-2 on every seed, then pairs each against Base on the same
# seed: macro-F1, the log10 median ||A+ - A-||^2 of the test images (all,
# misclassified, near misses; `compare --map_distance`) and the term's share
# of the gradient (from each run's metrics.jsonl).
#
#   bash benchmarks/mechanism.sh WORK DATA [SEEDS] [JOBS] [--config.KEY=VALUE ...]
#
# SEEDS: as parallel_runs.py takes them (default 0-9: at the control's
# paired macro-F1 sd of 0.0074 measured over 14 seeds, 10 pairs detect 0.0074
# with 80% power, paired_stats.detectable). JOBS: runs at a time (default 2,
# one a core). The remaining arguments go to every run, e.g.
# --config.max_steps=30 for a quick check of the pipeline (no measurement).
#
# Writes WORK/comparison.{md,json} (per lam: the paired differences, 95%
# CI, p, detectable effect), WORK/mechanism.png (F1 and map distance
# against lam over the control's band), WORK/sweep.png, WORK/differences.png
# and WORK/near_misses.png (A+ and A- of Base's near-miss test images under
# Base and under DANIL at the largest lam, first seed).
#
# Cost on a 2-core CPU, two runs at a time (measured on seeds 0-6,
# docs/science.md): a Base run 161 s, a control or DANIL run 326 s, about 30
# CPU-minutes a seed, 5 CPU-hours for 10 seeds; the comparison, with every
# run's maps, about 80 s more for 42 runs.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 WORK DATA [SEEDS] [JOBS] [--config.K=V ...]" >&2; exit 2; }
work=$1 data=$2 seeds=${3:-0-9} jobs=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
config=configs/demo_compare.py
lams=1e-5,1e-4,1e-3,1e-2
sweep="danil.reduction=batch;danil.lam=$lams"
cd "$(dirname "$0")/.."

# Built once here, so parallel runs do not build it at the same time.
python -c "from danil_jax import data_prep; data_prep.prepare('danil_demo', data_dir='$data')"
overrides=()
for o in "$@"; do overrides+=("--override=$o"); done
python benchmarks/parallel_runs.py --config=$config --workdir="$work" \
    --data_dir="$data" --seeds="$seeds" --jobs="$jobs" \
    --plan='base,control' --plan="danil|$sweep" "${overrides[@]}"

seed_list=$(python -c "import sys; sys.path.insert(0, 'benchmarks')
import parallel_runs; print(','.join(map(str, parallel_runs.parse_seeds('$seeds'))))")
python -m danil_jax.compare --config=$config --workdir="$work" \
    --config.dataset.data_dir="$data" --methods=base,control,danil \
    --seeds="$seed_list" --sweep="$sweep" --map_distance --only_finished "$@" \
    | tee "$work/compare.log"

first=${seed_list%%,*}
python -m danil_jax.response_maps --workdir="$work/base_seed$first" \
    --beside="$work/danil_danil.reduction=batch_danil.lam=${lams##*,}_seed$first" \
    --near_misses --num=4 --out="$work/near_misses.png"
