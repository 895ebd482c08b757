#!/usr/bin/env bash
# The paper-scale reproduction of a task (addition, multiplication_nx1, multiplication_nx2) on a GPU
# machine, one (model, mode, seed) at a time, within a time limit per command; the commands merge
# their runs into one curve:
#   TASK=multiplication_nx1 RUNS=mamba:interactive SEEDS=0 bash benchmarks/run_gpu_reproduce.sh
#   TASK=multiplication_nx1 RUNS=pythia:interactive SEEDS=0 ARGS="--max-eval-seconds 240" bash ...
# Builds the package with CUDA if it is not built yet, then runs `ssm-tools reproduce $TASK --scale
# paper --merge` (paper model sizes, 2,000 steps, bf16 autocast) for at most CALL_S seconds (default
# 560): training checkpoints and stops MARGIN_S (default 60) seconds before that, and the same command
# run again resumes it from runs/; once trained, the run is evaluated and joins the curve. A long
# evaluation can be kept inside one command with ARGS="--max-eval-seconds 400" (sizes predicted to
# overrun are skipped, recorded as null).
# The curve is $OUT/curve.json (+ curve.png, command.txt); when $OUT has none yet, the one at $BASE
# (default results/$TASK/gpu/curve.json) is copied there first. The log and every run's log.csv are
# written to $OUT/logs/ as they go, so a command that is killed still leaves them.
# NPROC=N (default: every GPU the machine has) trains each run data-parallel on N GPUs (`--nproc`).
# Uses the machine's python3 (with a CUDA torch, numpy, tqdm, matplotlib); no venv, no downloads.
set -uo pipefail
cd "$(dirname "$0")/.."
TASK=${TASK:-addition}
OUT=${OUT:-results/$TASK/gpu}
BASE=${BASE:-results/$TASK/gpu/curve.json}
RUNS=${RUNS:-mamba:interactive}
SEEDS=${SEEDS:-0}
ARGS=${ARGS:-}
CALL_S=${CALL_S:-560}
NPROC=${NPROC:-$(python3 -c "import torch; print(max(1, torch.cuda.device_count()))")}
MARGIN_S=${MARGIN_S:-60}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
mkdir -p "$OUT/logs"
if [[ ! -f $OUT/curve.json && -f $BASE ]]; then
  cp "$BASE" "$OUT/curve.json"
fi
log="$OUT/logs/${RUNS//[:,]/-}-seed${SEEDS//,/-}.txt"
start=$SECONDS
if ! python3 -c "import sys, torch, ssm_tools._C
sys.exit(not torch._C._dispatch_has_kernel_for_dispatch_key('ssm_tools::selective_scan_fwd', 'CUDA'))" 2>/dev/null; then
  python3 -m pip install --no-build-isolation --no-deps -q -e . -C cmake.define.SSM_TOOLS_CUDA=ON \
    -C build-dir=build/gpu >> "$log" 2>&1 || { tail -30 "$log"; exit 1; }
fi
# shellcheck disable=SC2086  # ARGS is a list of options
timeout --signal=INT --kill-after=20 $((CALL_S - (SECONDS - start))) \
  python3 -m ssm_tools.cli reproduce "$TASK" --scale paper --device cuda --seeds "$SEEDS" --runs "$RUNS" \
  --out "$OUT" --merge --nproc "$NPROC" --max-train-seconds $((CALL_S - MARGIN_S - (SECONDS - start))) $ARGS 2>&1 |
  tee -a "$log" | grep -v "it/s\]"
status=$?
for csv in runs/reproduce-"$TASK"-paper/*/log.csv; do
  [[ -f $csv ]] && cp "$csv" "$OUT/logs/$(basename "$(dirname "$csv")").log.csv"
done
exit $status
