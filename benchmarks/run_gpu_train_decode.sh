#!/usr/bin/env bash
# The training-step and decode measurements against mamba_ssm in one GPU command (what issue 14's
# numbers in results/ come from): builds mamba_ssm's and causal-conv1d's CUDA extensions from their
# sources in the background (niced, so timings of ours are not disturbed much; MAMBA_SSM_PKG,
# CAUSAL_CONV1D_PKG, MAMBA_SSM_SRC from benchmarks/fetch_mamba_ssm.sh) while it builds the package with
# CUDA, runs the CUDA tests of the Mamba-block kernels and of the models (packed rows included: conv
# and scan with seq_idx, the packed training loss), compute-sanitizer on one case of each new kernel,
# and the decode benchmark; the selective scan's CUDA tests (tests/test_cuda.py) and compute-sanitizer
# on its case; then, the baseline built, the training-step benchmark (fixed lengths, and real task
# batches packed / padded / mamba_ssm) with a profiler table of our step, and the scan and conv
# kernel benchmarks against mamba_ssm / causal-conv1d. About 500 s on an H200 (the baseline's build,
# ~320 s, overlaps the tests). Logs and JSON go to $OUT (default results/gpu/).
set -o pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_step.sh
{
  machine_info
  baseline_build mamba_ssm_build.txt 420 "m.lm_head_model()"
  block_checks
  step tests-scan 150 python3 -m pytest -q -rf -p no:cacheprovider tests/test_cuda.py -k "not decode and not packed"
  step sanitizer-scan 90 compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 \
    --log-file "$OUT/sanitizer_memcheck.txt" python3 tests/cuda_sanitize_case.py
  tail -2 "$OUT/sanitizer_memcheck.txt"
  wait "$baseline_pid"; tail -3 "$OUT/mamba_ssm_build.txt"
  # Without a built baseline, time ours alone (the benchmark would otherwise start the build again).
  grep -q "MambaLMHeadModel" "$OUT/mamba_ssm_build.txt" || unset MAMBA_SSM_PKG
  step train 300 python3 benchmarks/bench_train_step.py --profile "$OUT/train_step_profile.txt" \
    --out "$OUT/bench_train_step.json"
  step bench-scan 150 python3 benchmarks/bench_selective_scan_cuda.py --out "$OUT/bench_selective_scan_cuda.json"
  step bench-conv 90 python3 benchmarks/bench_conv1d_cuda.py --out "$OUT/bench_conv1d_cuda.json"
  echo "=== run_gpu_train_decode.sh status $status"
  exit $status
} 2>&1 | tee "$OUT/log.txt"
