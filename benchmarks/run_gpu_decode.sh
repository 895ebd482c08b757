#!/usr/bin/env bash
# The decode step on a GPU in one command, about 6 minutes (`OUT=... bash benchmarks/run_gpu_decode.sh`):
# builds the package with CUDA, runs the decode-related CUDA tests (the Mamba block's decode kernels
# in tests/test_mamba_block_ops.py: add_rms_norm, the conv and state updates; the graphed decode
# tests of tests/test_cuda_models.py, programmatic launches bitwise as plain ones; the
# decode tests of tests/test_cuda.py), benchmarks/bench_decode.py (every variant at batch 1, 100 and
# 1,000 and the kernels a step launches), the same benchmark with plain launches
# (SSM_TOOLS_PROGRAMMATIC_LAUNCH=0: what programmatic dependent launch gains), then compute-sanitizer
# memcheck and racecheck on tests/cuda_sanitize_mamba_block.py where the machine has
# compute-sanitizer. $OUT (default results/gpu/) receives bench_decode.json,
# bench_decode_plain_launch.json, bench_state_update.json (the state update kernels alone:
# bench_selective_scan_cuda.py --decode-only), log_decode.txt and logs_decode.tar.gz (the sanitizer
# logs): five files.
set -o pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_step.sh
logs=$(mktemp -d)
{
  machine_info
  build_cuda
  step tests-decode-kernels 90 python3 -m pytest -q -rf -p no:cacheprovider tests/test_mamba_block_ops.py \
    -k "add_rms_norm or conv_update or state_update or opcheck or rejects"
  step tests-graphed-decode 180 python3 -m pytest -q -rf -p no:cacheprovider tests/test_cuda_models.py \
    -k "graphed or final_add or rollout or pinned or transformer_decodes or programmatic"
  # The benchmark before the slower checks: the numbers come back even if those run past the call's limit.
  step decode 180 python3 benchmarks/bench_decode.py --out "$OUT/bench_decode.json"
  step state-update-kernel 90 python3 benchmarks/bench_selective_scan_cuda.py --decode-only \
    --out "$OUT/bench_state_update.json"
  step decode-plain-launch 180 env SSM_TOOLS_PROGRAMMATIC_LAUNCH=0 python3 benchmarks/bench_decode.py \
    --profile-batch 0 --out "$OUT/bench_decode_plain_launch.json"
  step tests-decode 40 python3 -m pytest -q -rf -p no:cacheprovider tests/test_cuda.py -k decode
  if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck racecheck; do
      step "sanitizer-$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
        --log-file "$logs/sanitizer_mamba_block_$tool.txt" python3 tests/cuda_sanitize_mamba_block.py
      tail -2 "$logs/sanitizer_mamba_block_$tool.txt"
    done
  else
    echo "=== no compute-sanitizer on this machine: sanitizer runs skipped"
  fi
  tar -czf "$OUT/logs_decode.tar.gz" -C "$logs" .
  echo "=== run_gpu_decode.sh status $status after $SECONDS s"
  exit $status
} 2>&1 | tee "$OUT/log_decode.txt"
