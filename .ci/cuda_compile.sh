#!/usr/bin/env bash
# Compile-only check of the CUDA build, so that code which does not compile never lands. No GPU is
# needed:
# - every kernel under csrc/kernels/ with nvcc alone (the kernels include no torch headers), for the
#   targets the package builds: sm_90 machine code and compute_80 PTX (the generic path of kernels
#   that use Hopper-only instructions must compile too);
# - the torch binding csrc/ops/*_cuda.cpp against the installed torch's headers (PYTHON, default
#   .venv/bin/python). A CPU build of torch ships the CUDA headers but not the one its CMake
#   generates (c10/cuda/impl/cuda_cmake_macros.h); a one-line stand-in is written for this check.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
PYTHON=${PYTHON:-.venv/bin/python}
CUDA_INCLUDE=$(dirname "$(dirname "$(readlink -f "$NVCC")")")/include
[[ -f $CUDA_INCLUDE/cuda_runtime_api.h ]] || CUDA_INCLUDE=/usr/local/cuda/include
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
srcs=(csrc/kernels/*.cu)
if [ ${#srcs[@]} -eq 0 ]; then echo "cuda-check: no CUDA sources"; exit 0; fi
pids=()
for f in "${srcs[@]}"; do
  echo "nvcc sm_90 + compute_80: $f"
  "$NVCC" -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -gencode arch=compute_90,code=sm_90 \
    -gencode arch=compute_80,code=compute_80 -Icsrc -c "$f" -o "$out/$(basename "$f").o" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

mkdir -p "$out/include/c10/cuda/impl"
printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$out/include/c10/cuda/impl/cuda_cmake_macros.h"
torch_includes=$("$PYTHON" -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
for f in csrc/ops/*_cuda.cpp; do
  echo "g++ (torch + CUDA headers): $f"
  # shellcheck disable=SC2086  # torch_includes is a list of -I flags
  g++ -std=c++20 -fsyntax-only -Wno-deprecated-declarations $torch_includes -I"$out/include" \
    -I"$CUDA_INCLUDE" -Icsrc "$f" || status=1
done
exit $status
