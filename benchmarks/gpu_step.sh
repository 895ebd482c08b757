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
