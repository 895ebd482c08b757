#!/usr/bin/env bash
# The Mamba block's kernels other than the scan on a GPU in one command (`OUT=... bash
# benchmarks/run_gpu_kernels.sh`): builds causal-conv1d's CUDA extension from its sources in the
# background (niced; CAUSAL_CONV1D_PKG from benchmarks/fetch_mamba_ssm.sh, optional) while it builds
# the package with CUDA, runs the tests of the block's kernels and of the models' graphed decode
# (tests/test_mamba_block_ops.py, tests/test_cuda_models.py, the decode and packed tests of
# tests/test_cuda.py)
# and compute-sanitizer memcheck/racecheck on tests/cuda_sanitize_mamba_block.py; the decode
# benchmark (benchmarks/bench_decode.py: float32, TF32 and bf16 weights against the unfused step);
# then, the baseline built, the conv benchmark (benchmarks/bench_conv1d_cuda.py). Logs and JSON go to
# $OUT (default results/gpu/). The training step against mamba_ssm: run_gpu_train_decode.sh.
set -o pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_step.sh
{
  machine_info
  baseline_build causal_conv1d_build.txt 360 "m.load_causal_conv1d()"
  block_checks
  wait "$baseline_pid"; tail -3 "$OUT/causal_conv1d_build.txt"
  # Without a built baseline, time ours alone (the benchmark would otherwise start the build again).
  grep -q "module 'causal_conv1d_cuda'" "$OUT/causal_conv1d_build.txt" || unset CAUSAL_CONV1D_PKG
  step bench 180 python3 benchmarks/bench_conv1d_cuda.py --out "$OUT/bench_conv1d_cuda.json"
  echo "=== run_gpu_kernels.sh status $status"
  exit $status
} 2>&1 | tee "$OUT/log_kernels.txt"
