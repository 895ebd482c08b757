#!/usr/bin/env bash
# Compile every CUDA source under csrc/kernels/ for sm_90 with nvcc alone (the kernels include no
# torch headers), so a kernel that does not compile never lands. No GPU is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
out=$(mktemp -d)
shopt -s nullglob
srcs=(csrc/kernels/*.cu)
if [ ${#srcs[@]} -eq 0 ]; then echo "cuda-check: no CUDA sources"; exit 0; fi
for f in "${srcs[@]}"; do
  echo "nvcc sm_90: $f"
  "$NVCC" -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -gencode arch=compute_90,code=sm_90 \
    -Icsrc -c "$f" -o "$out/$(basename "$f").o" &
done
wait_all=0
for job in $(jobs -p); do wait "$job" || wait_all=1; done
exit $wait_all
