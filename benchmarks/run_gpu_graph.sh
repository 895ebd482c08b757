#!/usr/bin/env bash
# The CUDA-graphed training step on a GPU in one command, about 5 minutes (`OUT=... bash
# benchmarks/run_gpu_graph.sh`): builds the package with CUDA, runs the graphed step's tests
# (tests/test_graphed_step.py; in tests/test_cuda_models.py the graph against eager steps, float32
# unfolded / folded / packed, a tensor lr changed between replays, bf16 autocast, a new batch per replay,
# and the folding tests), the selective scan's CUDA tests (tests/test_cuda.py but decode) and
# compute-sanitizer memcheck/racecheck on tests/cuda_sanitize_case.py (the scan backward changed with
# the graph; about 2 more minutes), then benchmarks/bench_train_step.py --cuda-graph at input lengths 216 and 640:
# our eager step folded and unfolded and the graphed step, in one process on the same batches, with
# a profiler table of the eager step at 216 (its kernels' sum against the graph's GPU time: what the
# replay itself costs). With MAMBA_SSM_PKG, CAUSAL_CONV1D_PKG and MAMBA_SSM_SRC exported
# (benchmarks/fetch_mamba_ssm.sh), mamba_ssm's model is built in the background meanwhile (niced,
# MAMBA_BUILD_TIMEOUT, default 330 s) and timed beside ours: up to ~9 minutes in all. $OUT (default
# results/gpu/) receives bench_train_step_graph.json, train_step_profile.txt, its .unfolded.txt and
# log_graph.txt (and mamba_ssm_build.txt).
set -o pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_step.sh
{
  machine_info
  if [ -n "${MAMBA_SSM_PKG:-}" ]; then baseline_build mamba_ssm_build.txt 330 "m.lm_head_model()"; fi
  build_cuda
  step tests-graphed-step-cpu 60 python3 -m pytest -q -rf -p no:cacheprovider tests/test_graphed_step.py
  step tests-graphed-step 180 python3 -m pytest -q -rf -p no:cacheprovider tests/test_cuda_models.py \
    -k "graphed_train_step or folded_rows or channel_first or packed_rows or autocast_training or forward_cuda_matches_cpu"
  # The scan kernels (session 12's backward: every CUDA scan test, the sanitizers on its cases, the
  # folded step's kernel among them) before they are timed in the step.
  step tests-scan 150 python3 -m pytest -q -rf -p no:cacheprovider tests/test_cuda.py -k "not decode"
  for tool in memcheck racecheck; do
    step "sanitizer-scan-$tool" 90 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
      --log-file "$OUT/sanitizer_scan_$tool.txt" python3 tests/cuda_sanitize_case.py
    tail -2 "$OUT/sanitizer_scan_$tool.txt"
  done
  if [ -n "$baseline_pid" ]; then
    wait "$baseline_pid"; tail -3 "$OUT/mamba_ssm_build.txt"
    # Without a built baseline, time ours alone (the benchmark would otherwise start the build again).
    grep -q "MambaLMHeadModel" "$OUT/mamba_ssm_build.txt" || unset MAMBA_SSM_PKG
  fi
  step train-graph 300 python3 benchmarks/bench_train_step.py --cuda-graph --seqlens 216 640 \
    --profile "$OUT/train_step_profile.txt" --out "$OUT/bench_train_step_graph.json"
  echo "=== run_gpu_graph.sh status $status after $SECONDS s"
  exit $status
} 2>&1 | tee "$OUT/log_graph.txt"
