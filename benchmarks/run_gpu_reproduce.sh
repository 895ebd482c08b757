#!/usr/bin/env bash
# The paper-scale addition reproduction on a GPU machine, one (model, mode) per call so each fits
# the device tool's 10-minute limit:
#   RUNS=mamba:interactive SEEDS=0 bash benchmarks/run_gpu_reproduce.sh
#   RUNS=lstm:interactive  SEEDS=0 bash benchmarks/run_gpu_reproduce.sh   ... and so on
# Builds the two extension modules with CUDA (plain CMake, loaded through PYTHONPATH), then runs
# `ssm-tools reproduce addition --scale paper` (paper model sizes, 2,000 steps, bf16 autocast) and
# writes curve.json / curve.png / command.txt / log.txt into $OUT/<model>-<mode>/.
# Uses the machine's python3 (with a CUDA torch, numpy, tqdm, matplotlib); no venv, no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
RUNS=${RUNS:-mamba:interactive}
SEEDS=${SEEDS:-0}
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
dest="$OUT/${RUNS//[:,]/-}"
mkdir -p "$dest"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  cmake -S . -B build/gpu -DCMAKE_BUILD_TYPE=Release -DSSM_TOOLS_CUDA=ON -DPython_EXECUTABLE="$(command -v python3)"
  cmake --build build/gpu --target _C _tools
  cp build/gpu/_C*.so build/gpu/_tools*.so python/ssm_tools/
  export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
  time python3 -m ssm_tools.cli reproduce addition --scale paper --device cuda --seeds "$SEEDS" \
    --runs "$RUNS" --out "$dest"
} 2>&1 | tee "$dest/log.txt"
