# Sourced by the GPU scripts (run_gpu.sh, run_gpu_kernels.sh, run_gpu_decode.sh, run_gpu_graph.sh,
# run_gpu_train_decode.sh) from the repository root: the output folder, the environment,
# `machine_info`, and `step`, which runs one stage with a time limit, logs it and remembers a failure
# in $status.
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) MAX_JOBS=$(nproc)
status=0
baseline_pid=  # set by baseline_build
machine_info() {  # the GPU, its clocks and the torch build, first in every log
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
}
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" || { echo "=== $name FAILED (rc $?)"; status=1; }
  echo "=== $name took $((SECONDS - t0)) s"
}
# baseline_build LOG DEFAULT_TIMEOUT_S EXPR: evaluates and prints EXPR (a call of
# benchmarks/mamba_ssm_baseline.py, module m, that builds mamba_ssm's extensions) in the background,
# niced so that timings of ours are not disturbed much, logging to $OUT/LOG; MAMBA_BUILD_TIMEOUT
# overrides the time limit. Sets baseline_pid; `wait "$baseline_pid"` before reading the log.
baseline_build() {
  local log=$OUT/$1 limit=${MAMBA_BUILD_TIMEOUT:-$2} expr=$3
  (t0=$SECONDS; PYTHONPATH=benchmarks nice -n 19 timeout "$limit" python3 -c \
    "import mamba_ssm_baseline as m; print($expr)" > "$log" 2>&1
   echo "baseline build rc $? after $((SECONDS - t0)) s" >> "$log") &
  baseline_pid=$!
}
build_cuda() {  # build_cuda [TIMEOUT_S]: the package, editable, with its CUDA kernels (~40 s on 16 cores)
  step build "${1:-240}" python3 -m pip install -q --no-build-isolation --no-deps -e . \
    -C cmake.define.SSM_TOOLS_CUDA=ON -C build-dir=build/gpu
}
# block_checks: what both kernel scripts run first: the package built with CUDA, the tests of the
# Mamba block's kernels and of the models' graphed decode (packed rows included), compute-sanitizer
# memcheck/racecheck on one case of each kernel, and the decode benchmark.
block_checks() {
  build_cuda 300
  step tests 180 python3 -m pytest -q -rf -p no:cacheprovider tests/test_mamba_block_ops.py \
    tests/test_cuda_models.py
  step tests-decode-packed 90 python3 -m pytest -q -rf -p no:cacheprovider tests/test_cuda.py -k "decode or packed"
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
      --log-file "$OUT/sanitizer_mamba_block_$tool.txt" python3 tests/cuda_sanitize_mamba_block.py
    tail -2 "$OUT/sanitizer_mamba_block_$tool.txt"
  done
  step decode 150 python3 benchmarks/bench_decode.py --out "$OUT/bench_decode.json"
}
