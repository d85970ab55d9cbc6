#!/usr/bin/env bash
# Schedule budget study: ArcVQ with the paper's absolute schedule and with the schedule horizon
# (ArcQuantizer schedule_horizon = the run's steps, schedule_reference_horizon = 29,500: the
# paper's MNIST run; arcvq-reproduce --schedule relative-lambda = schedule_rescale arc_weight,
# --schedule relative = schedule_rescale both) against cosine only and + BBNR, on MNIST, batch 32,
# seeds 1-3, run lengths 250 .. 8000 steps. One arcvq-reproduce call per (length, schedule, seed);
# a call whose results.json exists is skipped (restartable). Then the summary:
# $OUT/summary/budget_study.{md,json} and budget_study_psnr.png.
#   REPO=/path/to/checkout OUT=/path/to/runs LENGTHS="250 1000" SEEDS="1 2 3" scripts/schedule_budget_study.sh
set -uo pipefail
REPO="${REPO:-$(cd "$(dirname "$0")/.." && pwd)}"
OUT="${OUT:-$REPO/runs/budget_study}"
LENGTHS="${LENGTHS:-250 1000 2000 8000}"
SEEDS="${SEEDS:-1 2 3}"
PY="${PY:-$REPO/.venv/bin/python}"
mkdir -p "$OUT"
run() {  # length schedule seed rows...
  local L=$1 S=$2 seed=$3; shift 3
  local dir="$OUT/L${L}_${S}_s${seed}"
  [ -f "$dir/results.json" ] && return 0
  local epochs=$(( (L + 1874) / 1875 ))  # 60,000 images / batch 32 = 1,875 steps per epoch
  echo "$(date -u +%T) start L=$L schedule=$S seed=$seed rows=$*"
  (cd "$REPO" && "$PY" -m arcvq_plugin.vqvae.reproduce --rows "$@" --seeds "$seed" --schedule "$S" \
      --epochs "$epochs" --max-steps "$L" --batch-size 32 --out "$dir" --force --no-progress-bar) \
      > "$dir.log" 2>&1 || echo "FAILED $dir (see $dir.log)"
  echo "$(date -u +%T) done  L=$L schedule=$S seed=$seed"
}
for L in $LENGTHS; do
  for seed in $SEEDS; do
    run "$L" paper "$seed" cosine bbnr arcvq
    run "$L" relative-lambda "$seed" arcvq   # schedule_rescale: arc_weight
    run "$L" relative "$seed" arcvq          # schedule_rescale: both
  done
done
(cd "$REPO" && "$PY" -m arcvq_plugin.vqvae.budget_study "$OUT" --out "$OUT/summary" --force)
echo "$(date -u +%T) all done"
