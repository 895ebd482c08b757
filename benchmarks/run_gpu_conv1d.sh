#!/usr/bin/env bash
# The causal conv1d kernels on a GPU in one command (`OUT=... bash benchmarks/run_gpu_conv1d.sh`):
# builds causal-conv1d's CUDA extension from its sources in the background (niced; CAUSAL_CONV1D_PKG
# from benchmarks/fetch_mamba_ssm.sh, optional) while it builds the package with CUDA, runs the tests of
# the Mamba-block kernels (tests/test_mamba_block_ops.py, CPU and CUDA) and compute-sanitizer
# memcheck/racecheck on tests/cuda_sanitize_mamba_block.py; then, the baseline built, the conv
# benchmark (benchmarks/bench_conv1d_cuda.py). Logs and JSON go to $OUT (default results/gpu/).
set -o pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_step.sh
export MAX_JOBS=$(nproc)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  baseline_build causal_conv1d_build.txt 360 "m.load_causal_conv1d()"
  step build 300 python3 -m pip install -q --no-build-isolation --no-deps -e . \
    -C cmake.define.SSM_TOOLS_CUDA=ON -C build-dir=build/gpu
  step tests 180 python3 -m pytest -q -rf -p no:cacheprovider tests/test_mamba_block_ops.py
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
      --log-file "$OUT/sanitizer_mamba_block_$tool.txt" python3 tests/cuda_sanitize_mamba_block.py
    tail -2 "$OUT/sanitizer_mamba_block_$tool.txt"
  done
  wait "$baseline_pid"; tail -3 "$OUT/causal_conv1d_build.txt"
  # Without a built baseline, time ours alone (the benchmark would otherwise start the build again).
  grep -q "module 'causal_conv1d_cuda'" "$OUT/causal_conv1d_build.txt" || unset CAUSAL_CONV1D_PKG
  step bench 180 python3 benchmarks/bench_conv1d_cuda.py --out "$OUT/bench_conv1d_cuda.json"
  echo "=== run_gpu_conv1d.sh status $status"
  exit $status
} 2>&1 | tee "$OUT/log_conv1d.txt"
