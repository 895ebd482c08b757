// The residual add and RMSNorm before each layer, in one kernel (add, norm, cast to the matmul dtype).
// Decode (up to kMinWarpRows rows): a block a row, the row's sum of squares reduced over the block;
// at decode sizes every launch costs a few microseconds, more than the bytes it moves. Training
// (batch x length rows, tens of thousands): a warp a row with 4-element vector accesses and no block
// barrier, so that the kernel is bound by its bytes (read x and the residual, write the sum and the
// output) where the block-a-row kernel's scalar accesses and two barriers a row are not.
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

constexpr int kRowWarps = 8;        // rows (warps) a block of the warp-a-row kernel
constexpr int kMinWarpRows = 4096;  // fewer rows (decode batches) take the block-a-row kernel

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

template <typename T>
__device__ __forceinline__ float4 load4(const Vec4<T>& e) {
  return make_float4(to_float(e.v[0]), to_float(e.v[1]), to_float(e.v[2]), to_float(e.v[3]));
}

// dim % 4 == 0 and every pointer aligned to its 4-element vector (checked by the launcher).
template <typename TR, typename TO>
__global__ __launch_bounds__(kRowWarps * 32) void add_rms_norm_rows_kernel(AddRmsNormParams p) {
  const int row = blockIdx.x * kRowWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= p.rows) return;  // the whole warp: no barrier below
  const size_t offset = static_cast<size_t>(row) * p.dim;
  const int n4 = p.dim / 4;
  const float4* __restrict__ x = reinterpret_cast<const float4*>(p.x + offset);
  const Vec4<TR>* __restrict__ residual =
      p.residual ? reinterpret_cast<const Vec4<TR>*>(static_cast<const TR*>(p.residual) + offset) : nullptr;
  float4* __restrict__ sum = reinterpret_cast<float4*>(p.sum + offset);
  float squares = 0.f;
  for (int i = lane; i < n4; i += 32) {
    float4 v = x[i];
    if (residual) {
      const float4 r = load4(residual[i]);
      v = make_float4(v.x + r.x, v.y + r.y, v.z + r.z, v.w + r.w);
    }
    sum[i] = v;  // read back below by this same lane
    squares = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, squares))));
  }
  const float inv_rms = rsqrtf(warp_sum(squares) / p.dim + p.eps);
  const float4* __restrict__ weight = reinterpret_cast<const float4*>(p.weight);
  Vec4<TO>* __restrict__ out = reinterpret_cast<Vec4<TO>*>(static_cast<TO*>(p.out) + offset);
  for (int i = lane; i < n4; i += 32) {
    const float4 v = sum[i], w = weight[i];
    Vec4<TO> o;
    o.v[0] = from_float<TO>(v.x * inv_rms * w.x);
    o.v[1] = from_float<TO>(v.y * inv_rms * w.y);
    o.v[2] = from_float<TO>(v.z * inv_rms * w.z);
    o.v[3] = from_float<TO>(v.w * inv_rms * w.w);
    out[i] = o;
  }
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

}  // namespace
}  // namespace ssm_tools_cuda

int add_rms_norm_launch(const AddRmsNormParams& p, ScanInputType residual_type, ScanInputType out_type,
                        void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(residual_type, [&](auto residual_tag) {
    return dispatch_input_type(out_type, [&](auto out_tag) {
      using TR = decltype(residual_tag);
      using TO = decltype(out_tag);
      const bool vectors = p.dim % 4 == 0 && aligned(p.x, 16) && aligned(p.sum, 16) && aligned(p.weight, 16) &&
                           aligned(p.out, 4 * sizeof(TO)) && (!p.residual || aligned(p.residual, 4 * sizeof(TR)));
      if (p.rows >= kMinWarpRows && vectors) {
        add_rms_norm_rows_kernel<TR, TO><<<(p.rows + kRowWarps - 1) / kRowWarps, kRowWarps * 32, 0,
                                           static_cast<cudaStream_t>(stream)>>>(p);
      } else {
        add_rms_norm_kernel<TR, TO><<<p.rows, kNormThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
      }
      return static_cast<int>(cudaGetLastError());
    });
  });
}
