// Programmatic dependent launch (Hopper) for the decode step's kernels: a kernel launched with
// launch_after_previous() may be scheduled while the kernel before it on the stream is still running
// (or finishing), and waits inside, at its top, for that kernel's completion and memory
// (wait_for_previous_grid). The decode step is a chain of ~120 small dependent kernels whose cost
// is mostly the gap between them (launch, block dispatch), not their work; this hides part of each
// gap behind the previous kernel. Without the attribute, or compiled below sm_90, the wait is a
// no-op and the launch an ordinary one: the results are bitwise the same either way.
//
// Correctness rule: every block of a kernel launched this way calls wait_for_previous_grid() before
// it reads or writes any memory, and unconditionally (a block that returned first would let the
// kernel complete before its predecessor, and a later kernel waiting on this one would then not be
// waiting on that predecessor).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace ssm_tools_cuda {

__device__ __forceinline__ void wait_for_previous_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel on the stream (if launched with launch_after_previous) be scheduled once
// every block of this one has called this or exited; it still waits for this kernel's completion.
__device__ __forceinline__ void allow_next_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// Whether launches of `kernel` on the current device may be programmatic: its loaded code was
// compiled for sm_90 or later (the compute_80 PTX, JIT-compiled on a newer GPU, has no wait in it,
// so launching it early would race), and SSM_TOOLS_PROGRAMMATIC_LAUNCH is not "0" (the switch that
// measures the gain). Checked once per device and kernel signature (the package compiles every
// kernel for the same targets).
template <typename Kernel>
bool programmatic_launch_allowed(Kernel kernel) {
  static const bool enabled = [] {
    const char* v = std::getenv("SSM_TOOLS_PROGRAMMATIC_LAUNCH");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  if (!enabled) return false;
  constexpr int kDevices = 64;
  static std::atomic<signed char> cached[kDevices] = {};  // 0: unknown, 1: yes, -1: no
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (device < kDevices) {
    const signed char c = cached[device].load(std::memory_order_relaxed);
    if (c != 0) return c > 0;
  }
  cudaFuncAttributes attributes;
  const bool allowed = cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess && attributes.ptxVersion >= 90;
  cudaGetLastError();  // a failed query leaves no sticky error for the launch's check
  if (device < kDevices) cached[device].store(allowed ? 1 : -1, std::memory_order_relaxed);
  return allowed;
}

// kernel<<<grid, block, shared, stream>>>(args...), programmatic where allowed. Returns the launch's error.
template <typename... Params, typename... Args>
cudaError_t launch_after_previous(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                                  cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = programmatic_launch_allowed(kernel) ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) cudaGetLastError();  // returned here, not left for another op's check to find
  return err;
}

}  // namespace ssm_tools_cuda
