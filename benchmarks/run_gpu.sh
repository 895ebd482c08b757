#!/usr/bin/env bash
# Everything the CUDA kernels need on a GPU machine, in one command (`bash benchmarks/run_gpu.sh`):
# build the package with CUDA, run tests/test_cuda.py, run one
# small case of each kernel under compute-sanitizer memcheck and racecheck, profile the forward and
# backward once with Nsight Compute, run the benchmark.
# Logs and results go to $OUT (default results/gpu/); copy the JSON into results/ afterwards.
# Uses the machine's python3 (with a CUDA torch); no venv, no downloads. Leaves
# an editable install behind. NCU_KERNELS= (empty) skips the Nsight Compute step.
# With MAMBA_SSM_SRC set (benchmarks/fetch_mamba_ssm.sh), mamba_ssm's kernel is built in the
# background while the tests run, and the benchmark times it side by side. Ends with the profile of a
# paper-scale training step (benchmarks/profile_train_step_gpu.py -> $OUT/train_step_profile.txt).
set -o pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_step.sh
{
  machine_info
  # The package as a user installs it on a GPU machine: both extension modules, CUDA kernels on.
  step build 420 python3 -m pip install --no-build-isolation --no-deps -v -e . \
    -C cmake.define.SSM_TOOLS_CUDA=ON -C build-dir=build/gpu
  python3 -c 'import ssm_tools, torch; print("ssm_tools", ssm_tools.__file__, "CUDA kernel registered:",
torch._C._dispatch_has_kernel_for_dispatch_key("ssm_tools::selective_scan_fwd", "CUDA"))' || status=1
  if [ -n "${MAMBA_SSM_SRC:-}" ]; then
    (PYTHONPATH=benchmarks MAX_JOBS=$(nproc) timeout 420 python3 -c "import mamba_ssm_baseline as m; m.load()" \
      > "$OUT/mamba_ssm_build.txt" 2>&1; echo "mamba_ssm build rc $?" >> "$OUT/mamba_ssm_build.txt") &
    mamba_build=$!
  fi
  # Two xdist workers: a crashing test is reported as such and the others still run.
  step tests 200 python3 -m pytest -q -rf --durations=8 -p no:cacheprovider -n 2 tests/test_cuda.py \
    tests/test_cuda_models.py tests/test_mamba_block_ops.py
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 60 compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
      --log-file "$OUT/sanitizer_$tool.txt" python3 tests/cuda_sanitize_case.py
    tail -3 "$OUT/sanitizer_$tool.txt"
  done
  # One forward and one backward launch at the benchmark shape under Nsight Compute (clocks as found).
  for kernel in ${NCU_KERNELS-fwd bwd}; do
    step "ncu-$kernel" 90 ncu --clock-control none --launch-count 1 --kernel-name "regex:selective_scan_$kernel" \
      --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
      --section LaunchStats --print-details all \
      --log-file "$OUT/ncu_$kernel.txt" python3 -c "import sys, torch; sys.path.insert(0, 'benchmarks')
import bench_selective_scan_cuda as b
i = b.scan_inputs(8, 8192, torch.bfloat16); b.fwd_bwd(i, torch.randn_like(i['u'])); torch.cuda.synchronize()"
    grep -E "Duration|Memory Throughput|L1/TEX Cache|Compute \(SM\)|Achieved Occupancy|Registers Per|Warp Cycles Per Issued" \
      "$OUT/ncu_$kernel.txt"
  done
  if [ -n "${mamba_build:-}" ]; then
    wait "$mamba_build"; tail -2 "$OUT/mamba_ssm_build.txt"
  fi
  step bench 200 python3 benchmarks/bench_selective_scan_cuda.py --out "$OUT/bench_selective_scan_cuda.json"
  step profile 120 bash -c "python3 benchmarks/profile_train_step_gpu.py > '$OUT/train_step_profile.txt' 2>&1"
  grep -E "ms" "$OUT/train_step_profile.txt" | grep -vE "^\s*(aten|ssm|void|Memcpy|cud)" | head
  echo "=== run_gpu.sh status $status"
  exit $status  # the block runs in a subshell (it feeds tee); pipefail passes this on
} 2>&1 | tee "$OUT/log.txt"
