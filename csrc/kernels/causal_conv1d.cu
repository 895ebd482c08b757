// The Mamba block's causal depthwise conv1d, optionally through SiLU:
//   out[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - width + 1 + k])   (x = 0 before t = 0)
// forward, backward (dx, dweight, dbias), the one-position decode update against a rolling state,
// and the tiled transpose that lays channel-first gradients out token-major. All memory-bound: each
// reads and writes every activation once (neighbouring positions come from L1).
#include "kernels/mamba_block_params.h"
#include "kernels/scan_common.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kConvThreads = 128;
constexpr int kConvWarps = kConvThreads / 32;

__device__ __forceinline__ float silu_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.f + v * (1.f - s));
}

// Packed rows: how many positions before t (at most width - 1) belong to t's sequence, i.e. the
// taps t - j, j <= back, that the conv reads (q: the row's seq_idx, or null: one sequence).
__device__ __forceinline__ int seq_back(const int* q, int t, int width) {
  int j = 0;
  while (j < width - 1 && j < t && (q == nullptr || q[t - j - 1] == q[t - j])) ++j;
  return j;
}

// The same after t: the positions t + j, j <= ahead, whose taps read x[t].
__device__ __forceinline__ int seq_ahead(const int* q, int t, int width, int seqlen) {
  int j = 0;
  while (j < width - 1 && t + j + 1 < seqlen && (q == nullptr || q[t + j + 1] == q[t + j])) ++j;
  return j;
}

// The pre-activation at position t of one row, from the taps up to `back` positions before t.
template <typename T>
__device__ __forceinline__ float conv_at(const T* x, const float (&w)[kMaxConvWidth], int width, float bias, int t,
                                         int back) {
  float acc = bias;
#pragma unroll
  for (int k = 0; k < kMaxConvWidth; ++k) {
    const int shift = width - 1 - k;
    if (k < width && shift <= back) acc = fmaf(w[k], to_float(x[t - shift]), acc);
  }
  return acc;
}

__device__ __forceinline__ void load_weights(const float* weight, int width, float (&w)[kMaxConvWidth]) {
#pragma unroll
  for (int k = 0; k < kMaxConvWidth; ++k) w[k] = k < width ? __ldg(weight + k) : 0.f;
}

// The row's seq_idx, or null.
__device__ __forceinline__ const int* row_seq_idx(const CausalConv1dParams& p, size_t row) {
  return p.seq_idx ? p.seq_idx + row / p.dim * p.seqlen : nullptr;
}

// One thread per output element, consecutive threads on consecutive positions of a row.
template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_fwd_kernel(CausalConv1dParams p) {
  const size_t i = static_cast<size_t>(blockIdx.x) * kConvThreads + threadIdx.x;
  if (i >= static_cast<size_t>(p.batch) * p.dim * p.seqlen) return;
  const size_t row = i / p.seqlen;
  const int t = static_cast<int>(i - row * p.seqlen), d = static_cast<int>(row % p.dim);
  float w[kMaxConvWidth];
  load_weights(p.weight + static_cast<size_t>(d) * p.width, p.width, w);
  const float pre = conv_at(static_cast<const T*>(p.x) + row * p.seqlen, w, p.width, p.bias ? p.bias[d] : 0.f, t,
                            seq_back(row_seq_idx(p, row), t, p.width));
  static_cast<T*>(p.out)[i] = from_float<T>(p.silu ? pre * sigmoid(pre) : pre);
}

// One block per (batch, dim) row, walking it in tiles of kConvThreads positions. Per tile, the
// gradient of the pre-activation (recomputed from x) is staged in shared memory with a halo of
// width - 1 positions after the tile, which dx[t] = sum_k weight[k] g[t + width - 1 - k] reads (over
// the positions of t's sequence: packed rows). Each
// thread sums its positions' dweight/dbias terms; the block reduces them and adds them atomically.
template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_bwd_kernel(CausalConv1dParams p) {
  __shared__ float g[kConvThreads + kMaxConvWidth];
  __shared__ float partial[kConvWarps][kMaxConvWidth + 1];
  const size_t row = blockIdx.x;
  const int d = static_cast<int>(row % p.dim), width = p.width;
  const T* x = static_cast<const T*>(p.x) + row * p.seqlen;
  const int* q = row_seq_idx(p, row);
  const T* dout = static_cast<const T*>(p.dout) + row * p.seqlen;
  T* dx = static_cast<T*>(p.dx) + row * p.seqlen;
  float w[kMaxConvWidth];
  load_weights(p.weight + static_cast<size_t>(d) * width, width, w);
  const float bias = p.bias ? p.bias[d] : 0.f;
  float dw[kMaxConvWidth + 1] = {};  // dweight[0 .. width), then dbias
  for (int t0 = 0; t0 < p.seqlen; t0 += kConvThreads) {
    for (int j = threadIdx.x; j < kConvThreads + width - 1; j += kConvThreads) {
      const int t = t0 + j;
      float v = 0.f;
      if (t < p.seqlen) {
        v = to_float(dout[t]);
        if (p.silu) v *= silu_grad(conv_at(x, w, width, bias, t, seq_back(q, t, width)));
      }
      g[j] = v;
    }
    __syncthreads();
    const int t = t0 + threadIdx.x;
    if (t < p.seqlen) {
      const float gt = g[threadIdx.x];
      const int back = seq_back(q, t, width), ahead = seq_ahead(q, t, width, p.seqlen);
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < kMaxConvWidth; ++k) {
        if (k >= width) break;
        const int shift = width - 1 - k;
        if (shift <= back) dw[k] = fmaf(gt, to_float(x[t - shift]), dw[k]);
        if (shift <= ahead) acc = fmaf(w[k], g[threadIdx.x + shift], acc);
      }
      dw[kMaxConvWidth] += gt;
      dx[t] = from_float<T>(acc);
    }
    __syncthreads();
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k <= kMaxConvWidth; ++k) {
    float v = dw[k];
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
    if (lane == 0) partial[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x <= kMaxConvWidth) {
    const int k = threadIdx.x;
    float v = 0.f;
    for (int i = 0; i < kConvWarps; ++i) v += partial[i][k];
    if (k < width) atomicAdd(p.dweight + static_cast<size_t>(d) * width + k, v);
    else if (k == kMaxConvWidth && p.dbias) atomicAdd(p.dbias + d, v);
  }
}

// One thread per (batch, dim) row of the state.
template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_update_kernel(CausalConv1dUpdateParams p) {
  const size_t row = static_cast<size_t>(blockIdx.x) * kConvThreads + threadIdx.x;
  if (row >= static_cast<size_t>(p.batch) * p.dim) return;
  const size_t b = row / p.dim;
  const int d = static_cast<int>(row % p.dim);
  float* state = p.state + row * p.width;
  const float* w = p.weight + static_cast<size_t>(d) * p.width;
  const float x = to_float(static_cast<const T*>(p.x)[b * p.x_stride + d]);
  float acc = p.bias ? p.bias[d] : 0.f;
  for (int k = 0; k + 1 < p.width; ++k) {
    const float s = state[k + 1];
    state[k] = s;
    acc = fmaf(w[k], s, acc);
  }
  state[p.width - 1] = x;
  acc = fmaf(w[p.width - 1], x, acc);
  static_cast<T*>(p.out)[row] = from_float<T>(p.silu ? acc * sigmoid(acc) : acc);
}

// 32 x 32 tiles through shared memory, so that both the reads (along t) and the writes (along r)
// are coalesced.
constexpr int kTile = 32, kTileRows = 8;

template <typename T>
__global__ void transpose_kernel(TransposeParams p) {
  __shared__ float tile[kTile][kTile + 1];
  const int t0 = blockIdx.x * kTile, r0 = blockIdx.y * kTile;
  const size_t b = blockIdx.z;
  const T* src = static_cast<const T*>(p.src) + b * p.rows * p.seqlen;
  T* dst = static_cast<T*>(p.dst) + b * p.seqlen * p.dst_cols + p.offset;
  for (int i = threadIdx.y; i < kTile; i += kTileRows) {
    const int r = r0 + i, t = t0 + threadIdx.x;
    if (r < p.rows && t < p.seqlen) tile[i][threadIdx.x] = to_float(src[static_cast<size_t>(r) * p.seqlen + t]);
  }
  __syncthreads();
  for (int i = threadIdx.y; i < kTile; i += kTileRows) {
    const int t = t0 + i, r = r0 + threadIdx.x;
    if (r < p.rows && t < p.seqlen) dst[static_cast<size_t>(t) * p.dst_cols + r] = from_float<T>(tile[threadIdx.x][i]);
  }
}

unsigned blocks(size_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

}  // namespace
}  // namespace ssm_tools_cuda

int causal_conv1d_fwd_launch(const CausalConv1dParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    conv_fwd_kernel<decltype(tag)><<<blocks(static_cast<size_t>(p.batch) * p.dim * p.seqlen, kConvThreads),
                                     kConvThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}

int causal_conv1d_bwd_launch(const CausalConv1dParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    conv_bwd_kernel<decltype(tag)><<<static_cast<unsigned>(static_cast<size_t>(p.batch) * p.dim), kConvThreads, 0,
                                     static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}

int causal_conv1d_update_launch(const CausalConv1dUpdateParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    conv_update_kernel<decltype(tag)><<<blocks(static_cast<size_t>(p.batch) * p.dim, kConvThreads), kConvThreads,
                                        0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}

int transpose_launch(const TransposeParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const dim3 grid((p.seqlen + kTile - 1) / kTile, (p.rows + kTile - 1) / kTile, p.batch);
  return dispatch_input_type(type, [&](auto tag) {
    transpose_kernel<decltype(tag)><<<grid, dim3(kTile, kTileRows), 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}
