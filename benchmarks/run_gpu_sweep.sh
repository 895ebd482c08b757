#!/usr/bin/env bash
# One GPU call: build with CUDA, the CUDA tests in the background, then benchmarks/sweep_recipes.py
# with the given arguments (SWEEP_ARGS), results under $OUT:
#   OUT=/tmp/out SWEEP_ARGS="--task logical_graph --recipes '...' --out \$OUT/sweep" bash benchmarks/run_gpu_sweep.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_sweep}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
start=$SECONDS
python3 -m pip install --no-build-isolation --no-deps -q -e . -C cmake.define.SSM_TOOLS_CUDA=ON \
  -C build-dir=build/gpu > "$OUT/build.txt" 2>&1 || { tail -30 "$OUT/build.txt"; exit 1; }
echo "built in $((SECONDS - start)) s"
(timeout 240 python3 -m pytest -q -rf -p no:cacheprovider -n 2 tests/test_cuda.py tests/test_cuda_models.py \
  tests/test_mamba_block_ops.py > "$OUT/cuda_tests.txt" 2>&1; echo "rc $?" >> "$OUT/cuda_tests.txt") &
tests=$!
eval "python3 benchmarks/sweep_recipes.py $SWEEP_ARGS" 2>&1 | tee "$OUT/sweep_log.txt" | grep -v "^\s*$" | tail -40
wait $tests
tail -5 "$OUT/cuda_tests.txt"
echo "=== done after $((SECONDS - start)) s"
