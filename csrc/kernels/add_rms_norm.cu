// The residual add and RMSNorm before each layer of a decode step, in one kernel: a block a row
// (a decode step has batch rows of d_model), the row's sum of squares reduced over the block. It
// replaces three launches of the step's graph (add, norm, cast to the matmul dtype) with one; at
// decode sizes every launch costs a few microseconds, more than the bytes it moves.
#include "kernels/mamba_block_params.h"
#include "kernels/scan_common.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kNormThreads = 256;

// TR: the residual's type, TO: the output's (the same but for the last norm before a float32 head).
template <typename TR, typename TO>
__global__ __launch_bounds__(kNormThreads) void add_rms_norm_kernel(AddRmsNormParams p) {
  const size_t offset = static_cast<size_t>(blockIdx.x) * p.dim;
  const float* x = p.x + offset;
  const TR* residual = p.residual ? static_cast<const TR*>(p.residual) + offset : nullptr;
  float* sum = p.sum + offset;
  float squares = 0.f;
  for (int i = threadIdx.x; i < p.dim; i += kNormThreads) {
    const float v = residual ? x[i] + to_float(residual[i]) : x[i];
    sum[i] = v;  // read back below by this same thread
    squares = fmaf(v, v, squares);
  }
  __shared__ float warp_sums[kNormThreads / 32];
  __shared__ float inv_rms;
  squares = warp_sum(squares);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = squares;
  __syncthreads();
  if (threadIdx.x < 32) {
    squares = warp_sum(threadIdx.x < kNormThreads / 32 ? warp_sums[threadIdx.x] : 0.f);
    if (threadIdx.x == 0) inv_rms = rsqrtf(squares / p.dim + p.eps);
  }
  __syncthreads();
  TO* out = static_cast<TO*>(p.out) + offset;
  for (int i = threadIdx.x; i < p.dim; i += kNormThreads) out[i] = from_float<TO>(sum[i] * inv_rms * p.weight[i]);
}

}  // namespace
}  // namespace ssm_tools_cuda

int add_rms_norm_launch(const AddRmsNormParams& p, ScanInputType residual_type, ScanInputType out_type,
                        void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(residual_type, [&](auto residual_tag) {
    return dispatch_input_type(out_type, [&](auto out_tag) {
      add_rms_norm_kernel<decltype(residual_tag), decltype(out_tag)>
          <<<p.rows, kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
      return static_cast<int>(cudaGetLastError());
    });
  });
}
