# Sourced by the GPU scripts (run_gpu.sh, run_gpu_train_decode.sh) from the repository root: the
# output folder, the environment, and `step`, which runs one stage with a time limit, logs it and
# remembers a failure in $status.
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
status=0
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
