#!/usr/bin/env bash
# The causal conv1d kernels on a GPU in one command, about 5 minutes (`CAUSAL_CONV1D_PKG=... OUT=...
# bash benchmarks/run_gpu_conv.sh`, carrying .device-carry from benchmarks/fetch_mamba_ssm.sh):
# builds the package with CUDA while causal-conv1d builds in the background (niced, its kernels only:
# a fraction of mamba_ssm's build), runs the conv tests (tests/test_mamba_block_ops.py -k conv: the
# reference on fresh random inputs, packed rows, every width, long rows, deterministic weight
# gradients) and compute-sanitizer memcheck/racecheck on the Mamba block's case, then times our
# training step alone (bench_train_step.py --cuda-graph at 216 and 640: the conv is ~8% of it) and the
# conv kernels beside causal-conv1d (bench_conv1d_cuda.py at the step's shape, its folded shape, the
# kernel benchmark's two shapes). $OUT (default results/gpu/) receives bench_conv1d_cuda.json,
# bench_train_step_graph.json, log_conv.txt, conv_build.txt and the two sanitizer logs.
set -o pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_step.sh
{
  machine_info
  if [ -n "${CAUSAL_CONV1D_PKG:-}" ]; then baseline_build conv_build.txt 240 "m.load_causal_conv1d()"; fi
  build_cuda
  step tests-conv 150 python3 -m pytest -q -rf -p no:cacheprovider tests/test_mamba_block_ops.py -k conv
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
      --log-file "$OUT/sanitizer_conv_$tool.txt" python3 tests/cuda_sanitize_mamba_block.py
    tail -2 "$OUT/sanitizer_conv_$tool.txt"
  done
  step train-graph 200 python3 benchmarks/bench_train_step.py --cuda-graph --seqlens 216 640 --tasks \
    --out "$OUT/bench_train_step_graph.json"
  if [ -n "$baseline_pid" ]; then wait "$baseline_pid"; tail -2 "$OUT/conv_build.txt"; fi
  step conv 120 python3 benchmarks/bench_conv1d_cuda.py --shapes 128x1536x216 8x24576x216 8x2048x2048 \
    1x5120x16384 --out "$OUT/bench_conv1d_cuda.json"
  echo "=== run_gpu_conv.sh status $status after $SECONDS s"
  exit $status
} 2>&1 | tee "$OUT/log_conv.txt"
