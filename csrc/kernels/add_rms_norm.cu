// The residual add and RMSNorm before each layer, in one kernel (add, norm, cast to the matmul dtype),
// and the training step's backward of that norm with the residual stream's other gradient added
// (rms_norm_bwd_kernel, at the end).
// Decode (up to kMinWarpRows rows): a block a row, the row's sum of squares reduced over the block;
// at decode sizes every launch costs a few microseconds, more than the bytes it moves. Training
// (batch x length rows, tens of thousands): a warp a row with 4-element vector accesses and no block
// barrier, so that the kernel is bound by its bytes (read x and the residual, write the sum and the
// output) where the block-a-row kernel's scalar accesses and two barriers a row are not. Without a sum
// (the training backward's recomputed norm: no residual, often no weight) the second pass reads x
// again (an L1/L2 hit) instead of the sum.
#include "kernels/mamba_block_params.h"
#include "kernels/programmatic_launch.cuh"
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
  float* sum = p.sum ? p.sum + offset : nullptr;
  wait_for_previous_grid();  // for x and the residual (decode: the previous layer's out_proj)
  float squares = 0.f;
  for (int i = threadIdx.x; i < p.dim; i += kNormThreads) {
    const float v = residual ? x[i] + to_float(residual[i]) : x[i];
    if (sum) sum[i] = v;  // read back below by this same thread
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
  for (int i = threadIdx.x; i < p.dim; i += kNormThreads) {
    const float v = sum ? sum[i] : residual ? x[i] + to_float(residual[i]) : x[i];
    out[i] = from_float<TO>(p.weight ? v * inv_rms * p.weight[i] : v * inv_rms);
  }
}

constexpr int kRowWarps = 8;        // rows (warps) a block of the warp-a-row kernel
constexpr int kMinWarpRows = 4096;  // fewer rows (decode batches) take the block-a-row kernel

template <typename T, int V>
struct alignas(V * sizeof(T)) VecN {
  T v[V];
};

template <typename T>
using Vec4 = VecN<T, 4>;

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
  float4* __restrict__ sum = p.sum ? reinterpret_cast<float4*>(p.sum + offset) : nullptr;
  const auto added = [&](int i) {
    float4 v = x[i];
    if (residual) {
      const float4 r = load4(residual[i]);
      v = make_float4(v.x + r.x, v.y + r.y, v.z + r.z, v.w + r.w);
    }
    return v;
  };
  float squares = 0.f;
  for (int i = lane; i < n4; i += 32) {
    const float4 v = added(i);
    if (sum) sum[i] = v;  // read back below by this same lane
    squares = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, squares))));
  }
  const float inv_rms = rsqrtf(warp_sum(squares) / p.dim + p.eps);
  const float4* __restrict__ weight = reinterpret_cast<const float4*>(p.weight);
  Vec4<TO>* __restrict__ out = reinterpret_cast<Vec4<TO>*>(static_cast<TO*>(p.out) + offset);
  for (int i = lane; i < n4; i += 32) {
    const float4 v = sum ? sum[i] : added(i), w = weight ? weight[i] : make_float4(1.f, 1.f, 1.f, 1.f);
    Vec4<TO> o;
    o.v[0] = from_float<TO>(v.x * inv_rms * w.x);
    o.v[1] = from_float<TO>(v.y * inv_rms * w.y);
    o.v[2] = from_float<TO>(v.z * inv_rms * w.z);
    o.v[3] = from_float<TO>(v.w * inv_rms * w.w);
    out[i] = o;
  }
}

// rms_norm_bwd: a warp a row, V elements an access (4: one 16-byte vector of x; 1: any dim or
// alignment). One pass reads x and g = grad * weight and reduces both sums of the row (sum x^2 and
// sum g x); the second writes dx = rstd g - x rstd^3 sum(g x) / dim + grad_sum and its copy in the
// cast type. At V = 4 a lane keeps its first kBwdCached vectors of x and g in registers for the second
// pass (all of a 768-wide row); past those, and at V = 1 (the fallback), it reads them again (L1/L2
// hits).
constexpr int kBwdCached = 6;

template <int V, typename T>
__device__ __forceinline__ void load_vec(const T* base, int i, float (&out)[V]) {
  const VecN<T, V> e = reinterpret_cast<const VecN<T, V>*>(base)[i];
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = to_float(e.v[k]);
}

template <int V, typename T>
__device__ __forceinline__ void store_vec(T* base, int i, const float (&in)[V]) {
  VecN<T, V> e;
#pragma unroll
  for (int k = 0; k < V; ++k) e.v[k] = from_float<T>(in[k]);
  reinterpret_cast<VecN<T, V>*>(base)[i] = e;
}

// TG: grad's type, TC: dx_cast's (unused without one).
template <typename TG, typename TC, int V>
__global__ __launch_bounds__(kRowWarps * 32) void rms_norm_bwd_kernel(RmsNormBwdParams p) {
  const int row = blockIdx.x * kRowWarps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= p.rows) return;  // the whole warp: no barrier below
  const size_t offset = static_cast<size_t>(row) * p.dim;
  const int n = p.dim / V;
  const float* __restrict__ x = p.x + offset;
  const TG* __restrict__ grad = static_cast<const TG*>(p.grad) + offset;
  const auto load = [&](int i, float (&xv)[V], float (&g)[V]) {
    load_vec(x, i, xv);
    load_vec(grad, i, g);
    if (p.weight) {
      float w[V];
      load_vec(p.weight, i, w);
#pragma unroll
      for (int k = 0; k < V; ++k) g[k] *= w[k];
    }
  };
  float squares = 0.f, dot = 0.f;
  const auto accumulate = [&](const float (&xv)[V], const float (&g)[V]) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      squares = fmaf(xv[k], xv[k], squares);
      dot = fmaf(g[k], xv[k], dot);
    }
  };
  constexpr int kCached = V == 4 ? kBwdCached : 0;
  float xc[kCached > 0 ? kCached : 1][V], gc[kCached > 0 ? kCached : 1][V];
#pragma unroll
  for (int c = 0; c < kCached; ++c) {
    if (lane + 32 * c < n) {
      load(lane + 32 * c, xc[c], gc[c]);
      accumulate(xc[c], gc[c]);
    }
  }
  for (int i = lane + 32 * kCached; i < n; i += 32) {
    float xv[V], g[V];
    load(i, xv, g);
    accumulate(xv, g);
  }
  const float rstd = rsqrtf(warp_sum(squares) / p.dim + p.eps);
  const float c3 = rstd * rstd * rstd * warp_sum(dot) / p.dim;
  float* __restrict__ dx = p.dx + offset;
  TC* __restrict__ dx_cast = p.dx_cast ? static_cast<TC*>(p.dx_cast) + offset : nullptr;
  const float* __restrict__ grad_sum = p.grad_sum ? p.grad_sum + offset : nullptr;
  const auto finish = [&](int i, const float (&xv)[V], const float (&g)[V]) {
    float out[V], s[V];
    if (grad_sum) load_vec(grad_sum, i, s);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = fmaf(rstd, g[k], -c3 * xv[k]) + (grad_sum ? s[k] : 0.f);
    store_vec(dx, i, out);
    if (dx_cast) store_vec(dx_cast, i, out);
  };
#pragma unroll
  for (int c = 0; c < kCached; ++c)
    if (lane + 32 * c < n) finish(lane + 32 * c, xc[c], gc[c]);
  for (int i = lane + 32 * kCached; i < n; i += 32) {
    float xv[V], g[V];
    load(i, xv, g);
    finish(i, xv, g);
  }
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// f(tag of a, tag of b) for two input types (the norms' input and output element types).
template <typename F>
int dispatch_type_pair(ScanInputType a, ScanInputType b, F&& f) {
  return dispatch_input_type(a, [&](auto a_tag) {
    return dispatch_input_type(b, [&](auto b_tag) { return f(a_tag, b_tag); });
  });
}

}  // namespace
}  // namespace ssm_tools_cuda

int add_rms_norm_launch(const AddRmsNormParams& p, ScanInputType residual_type, ScanInputType out_type,
                        void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_type_pair(residual_type, out_type, [&](auto residual_tag, auto out_tag) {
    using TR = decltype(residual_tag);
    using TO = decltype(out_tag);
    const bool vectors = p.dim % 4 == 0 && aligned(p.x, 16) && aligned(p.sum, 16) && aligned(p.weight, 16) &&
                         aligned(p.out, 4 * sizeof(TO)) && (!p.residual || aligned(p.residual, 4 * sizeof(TR)));
    if (p.rows >= kMinWarpRows && vectors) {
      add_rms_norm_rows_kernel<TR, TO><<<(p.rows + kRowWarps - 1) / kRowWarps, kRowWarps * 32, 0,
                                         static_cast<cudaStream_t>(stream)>>>(p);
      return static_cast<int>(cudaGetLastError());
    }
    // Decode sizes: programmatic, so that the launch overlaps the previous kernel (out_proj's GEMM).
    return static_cast<int>(launch_after_previous(add_rms_norm_kernel<TR, TO>, dim3(p.rows), dim3(kNormThreads), 0,
                                                  static_cast<cudaStream_t>(stream), p));
  });
}

int rms_norm_bwd_launch(const RmsNormBwdParams& p, ScanInputType grad_type, ScanInputType cast_type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_type_pair(grad_type, cast_type, [&](auto grad_tag, auto cast_tag) {
    using TG = decltype(grad_tag);
    using TC = decltype(cast_tag);
    const bool vectors = p.dim % 4 == 0 && aligned(p.x, 16) && aligned(p.dx, 16) && aligned(p.weight, 16) &&
                         aligned(p.grad_sum, 16) && aligned(p.grad, 4 * sizeof(TG)) &&
                         aligned(p.dx_cast, 4 * sizeof(TC));
    const auto kernel = vectors ? rms_norm_bwd_kernel<TG, TC, 4> : rms_norm_bwd_kernel<TG, TC, 1>;
    kernel<<<(p.rows + kRowWarps - 1) / kRowWarps, kRowWarps * 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}
