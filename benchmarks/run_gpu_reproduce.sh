#!/usr/bin/env bash
# The paper-scale reproduction of a task (addition, multiplication_nx1, multiplication_nx2) on a GPU
# machine, one (model, mode, seed) per call so each fits the device tool's 10-minute limit; the calls
# merge their runs into one curve:
#   TASK=multiplication_nx1 RUNS=mamba:interactive SEEDS=0 bash benchmarks/run_gpu_reproduce.sh
#   TASK=multiplication_nx1 RUNS=pythia:interactive SEEDS=0 ARGS="--max-eval-seconds 240" bash ...
# Builds the two extension modules with CUDA (plain CMake, loaded through PYTHONPATH), then runs
# `ssm-tools reproduce $TASK --scale paper --merge` (paper model sizes, 2,000 steps, bf16 autocast).
# The curve is $OUT/curve.json (+ curve.png, command.txt; log in $OUT/logs/). When $OUT has no
# curve.json yet, the one at $BASE (default results/$TASK/gpu/curve.json, from earlier calls, copied
# back into the tree) is copied there first and the run joins it (a run of the same model, mode and
# seed is replaced). ARGS passes more reproduce options: --sizes, --n, --steps, --max-eval-seconds.
# Training longer than one call: ARGS="--max-train-seconds 500" checkpoints the run under runs/ when
# time is up, and the same command in the next call (on the same machine: runs/ is not carried back)
# resumes it; the 24-layer Mamba's 2,000 addition steps took three such calls on the H100.
# Uses the machine's python3 (with a CUDA torch, numpy, tqdm, matplotlib); no venv, no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${TASK:-addition}
OUT=${OUT:-results/$TASK/gpu}
BASE=${BASE:-results/$TASK/gpu/curve.json}
RUNS=${RUNS:-mamba:interactive}
SEEDS=${SEEDS:-0}
ARGS=${ARGS:-}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
mkdir -p "$OUT/logs"
if [[ ! -f $OUT/curve.json && -f $BASE ]]; then
  cp "$BASE" "$OUT/curve.json"
fi
log="$OUT/logs/${RUNS//[:,]/-}-seed${SEEDS//,/-}.txt"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release -DSSM_TOOLS_CUDA=ON -DPython_EXECUTABLE="$(command -v python3)"
  cmake --build build/gpu --target _C _tools
  cp build/gpu/_C*.so build/gpu/_tools*.so python/ssm_tools/
  export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
  # shellcheck disable=SC2086  # ARGS is a list of options
  time python3 -m ssm_tools.cli reproduce "$TASK" --scale paper --device cuda --seeds "$SEEDS" \
    --runs "$RUNS" --out "$OUT" --merge $ARGS
} 2>&1 | tee "$log"
