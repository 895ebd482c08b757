// The Mamba block's causal depthwise conv1d, optionally through SiLU:
//   out[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - width + 1 + k])   (x = 0 before t = 0)
// forward, backward (dx, dweight, dbias), the one-position decode update against a rolling state,
// and the tiled transpose that lays channel-first gradients out token-major. All memory-bound: each
// reads and writes every activation once.
//
// Forward and backward work on chunks of two 16-byte vectors of consecutive positions of a row, one
// chunk a thread. A block serves one channel d (its weights in registers, its dweight/dbias summed
// over the block), its threads the (batch, chunk) pairs of that channel with 32-bit index math. The
// taps before a chunk (and, backward, after it) come from overlapping vector loads of the
// neighbouring chunks (L1 hits); the backward recomputes the gradient of those few positions instead
// of exchanging it. Rows that are not 16-byte aligned (odd lengths, offset pointers) and the ends of
// rows take scalar loads.
#include <algorithm>

#include "kernels/decode_rows.cuh"
#include "kernels/mamba_block_params.h"

namespace ssm_tools_cuda {
namespace {

constexpr int kConvThreads = 128;
constexpr int kConvWarps = kConvThreads / 32;
// The backward's per-block dweight/dbias partials: dweight by tap shift, then dbias.
constexpr int kConvPartials = kMaxConvWidth + 1;
// Blocks per channel at most (more (batch, chunk) pairs loop): bounds the partials the second,
// deterministic pass sums.
constexpr int kMaxConvBlocksPerDim = 1024;

// A thread's chunk of positions and the halo of taps around it, rounded up to whole vectors.
template <typename T>
struct ConvChunk {
  static constexpr int kVec = 16 / sizeof(T);
  static constexpr int kItems = 2 * kVec;
  static constexpr int kPad = (kMaxConvWidth - 1 + kVec - 1) / kVec * kVec;
  static_assert(kPad >= kMaxConvWidth - 1 && kPad % 4 == 0, "the halo covers the taps in whole int32 vectors");
};

__device__ __forceinline__ float silu_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.f + v * (1.f - s));
}

__device__ __forceinline__ int to_value(int v) { return v; }
template <typename T>
__device__ __forceinline__ float to_value(T v) { return to_float(v); }

// v[i] = row[start + i], 0 outside [0, len). start is a multiple of the 16-byte vector width (it may
// be negative); a vector wholly inside the row is one 16-byte load when the row is 16-byte aligned.
template <typename T, typename V, int N>
__device__ __forceinline__ void load_run(const T* row, int start, int len, bool aligned, V (&v)[N]) {
  constexpr int kVec = 16 / sizeof(T);
  static_assert(N % kVec == 0, "whole vectors");
#pragma unroll
  for (int j = 0; j < N; j += kVec) {
    const int s = start + j;
    if (aligned && s >= 0 && s + kVec <= len) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row + s));
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[j + k] = to_value(e[k]);
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[j + k] = s + k >= 0 && s + k < len ? to_value(row[s + k]) : V(0);
    }
  }
}

// row[start + i] = v[i] for start + i < len; start is a multiple of the vector width.
template <typename T, int N>
__device__ __forceinline__ void store_run(T* row, int start, int len, bool aligned, const float (&v)[N]) {
  constexpr int kVec = 16 / sizeof(T);
  static_assert(N % kVec == 0, "whole vectors");
#pragma unroll
  for (int j = 0; j < N; j += kVec) {
    const int s = start + j;
    if (aligned && s + kVec <= len) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) e[k] = from_float<T>(v[j + k]);
      *reinterpret_cast<uint4*>(row + s) = raw;
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        if (s + k < len) row[s + k] = from_float<T>(v[j + k]);
    }
  }
}

// Channel d's weights by tap shift: ws[s] multiplies x[t - s]; 0 past the width.
__device__ __forceinline__ void load_shift_weights(const CausalConv1dParams& p, int d, float (&ws)[kMaxConvWidth]) {
  const float* w = p.weight + static_cast<size_t>(d) * p.width;
#pragma unroll
  for (int s = 0; s < kMaxConvWidth; ++s) ws[s] = s < p.width ? __ldg(w + p.width - 1 - s) : 0.f;
}

// Packed rows: back[i] = how many positions right before window position i share its sequence (a
// run of equal seq_idx), counted from the window's start; the tap pair (t - s, t) is in one sequence
// iff back[t] >= s. One sequence a row: every pair is (taps before t = 0 read zeros).
template <bool kPacked, int N>
__device__ __forceinline__ void sequence_runs(const CausalConv1dParams& p, unsigned b, int start, int (&back)[N]) {
  if (!kPacked) {
#pragma unroll
    for (int i = 0; i < N; ++i) back[i] = kMaxConvWidth;
    return;
  }
  const int* q = p.seq_idx + static_cast<size_t>(b) * p.seqlen;
  int qv[N];
  load_run(q, start, p.seqlen, is_aligned16(q), qv);
  back[0] = 0;
#pragma unroll
  for (int i = 1; i < N; ++i) back[i] = qv[i] == qv[i - 1] ? back[i - 1] + 1 : 0;
}

// The pre-activation at window position i (i >= kMaxConvWidth - 1).
template <int N>
__device__ __forceinline__ float conv_pre(const float (&xv)[N], const float (&ws)[kMaxConvWidth], const int (&back)[N],
                                          float bias, int i) {
  float acc = bias;
#pragma unroll
  for (int s = 0; s < kMaxConvWidth; ++s)
    if (s <= back[i]) acc = fmaf(ws[s], xv[i - s], acc);
  return acc;
}

// Walks the (batch, chunk) pairs of channel blockIdx.x that fall to this thread: f(b, first, row
// offset) with 32-bit index math (the host checks that batch * seqlen fits).
template <typename T, typename F>
__device__ __forceinline__ void for_each_chunk(const CausalConv1dParams& p, F&& f) {
  constexpr int kItems = ConvChunk<T>::kItems;
  const unsigned chunks = (static_cast<unsigned>(p.seqlen) + kItems - 1) / kItems;
  const unsigned n = chunks * static_cast<unsigned>(p.batch);
  for (unsigned i = blockIdx.y * kConvThreads + threadIdx.x; i < n; i += gridDim.y * kConvThreads) {
    const unsigned b = i / chunks;
    const int first = static_cast<int>(i - b * chunks) * kItems;
    f(b, first, (static_cast<size_t>(b) * p.dim + blockIdx.x) * p.seqlen);
  }
}

template <typename T, bool kPacked>
__global__ __launch_bounds__(kConvThreads) void conv_fwd_kernel(CausalConv1dParams p) {
  using C = ConvChunk<T>;
  constexpr int kWin = C::kPad + C::kItems;  // positions first - kPad .. first + kItems
  const int d = blockIdx.x;
  float ws[kMaxConvWidth];
  load_shift_weights(p, d, ws);
  const float bias = p.bias ? p.bias[d] : 0.f;
  for_each_chunk<T>(p, [&](unsigned b, int first, size_t row) {
    const T* x = static_cast<const T*>(p.x) + row;
    T* out = static_cast<T*>(p.out) + row;
    const bool aligned = is_aligned16(x) && is_aligned16(out);
    float xv[kWin];
    load_run(x, first - C::kPad, p.seqlen, aligned, xv);
    int back[kWin];
    sequence_runs<kPacked>(p, b, first - C::kPad, back);
    float o[C::kItems];
#pragma unroll
    for (int j = 0; j < C::kItems; ++j) {
      const float pre = conv_pre(xv, ws, back, bias, C::kPad + j);
      o[j] = p.silu ? pre * sigmoid(pre) : pre;
    }
    store_run(out, first, p.seqlen, aligned, o);
  });
}

// One chunk of the backward for channel d of batch row b (first: its first position, row: the
// row's offset): g = dout * act'(pre) on the chunk and the kPad positions after it; dx[t] = sum_s
// ws[s] g[t + s] over t's sequence, returned in dxv; the chunk's dweight/dbias terms are added to acc
// (dweight by tap shift, then dbias).
template <typename T, bool kPacked>
__device__ __forceinline__ void conv_bwd_chunk(const CausalConv1dParams& p, const float (&ws)[kMaxConvWidth],
                                               float bias, unsigned b, int first, size_t row,
                                               float (&acc)[kConvPartials], float (&dxv)[ConvChunk<T>::kItems]) {
  using C = ConvChunk<T>;
  constexpr int kWin = C::kPad + C::kItems + C::kPad;  // x, seq_idx: first - kPad .. first + kItems + kPad
  constexpr int kG = C::kItems + C::kPad;             // g: first .. first + kItems + kPad
  const T* x = static_cast<const T*>(p.x) + row;
  const T* dout = static_cast<const T*>(p.dout) + row;
  float xv[kWin], g[kG];
  load_run(x, first - C::kPad, p.seqlen, is_aligned16(x), xv);
  load_run(dout, first, p.seqlen, is_aligned16(dout), g);
  int back[kWin];
  sequence_runs<kPacked>(p, b, first - C::kPad, back);
  if (p.silu) {
#pragma unroll
    for (int i = 0; i < kG; ++i) g[i] *= silu_grad(conv_pre(xv, ws, back, bias, C::kPad + i));
  }
#pragma unroll
  for (int j = 0; j < C::kItems; ++j) {
    float a = 0.f;
#pragma unroll
    for (int s = 0; s < kMaxConvWidth; ++s) {
      if (s <= back[C::kPad + j + s]) a = fmaf(ws[s], g[j + s], a);
      if (s <= back[C::kPad + j]) acc[s] = fmaf(g[j], xv[C::kPad + j - s], acc[s]);
    }
    dxv[j] = a;
    acc[kMaxConvWidth] += g[j];
  }
}

// The backward, channel-first dx: a block a channel, conv_bwd_chunk a (batch, chunk) pair; the
// thread sums go to partials[d][blockIdx.y] (conv_bwd_reduce_kernel adds those up in a fixed order:
// deterministic).
template <typename T, bool kPacked>
__global__ __launch_bounds__(kConvThreads) void conv_bwd_kernel(CausalConv1dParams p) {
  using C = ConvChunk<T>;
  __shared__ float partial[kConvWarps][kConvPartials];
  const int d = blockIdx.x;
  float ws[kMaxConvWidth];
  load_shift_weights(p, d, ws);
  const float bias = p.bias ? p.bias[d] : 0.f;
  float acc[kConvPartials] = {};
  for_each_chunk<T>(p, [&](unsigned b, int first, size_t row) {
    float dxv[C::kItems];
    conv_bwd_chunk<T, kPacked>(p, ws, bias, b, first, row, acc, dxv);
    T* dx = static_cast<T*>(p.dx) + row;
    store_run(dx, first, p.seqlen, is_aligned16(dx), dxv);
  });
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kConvPartials; ++k) {
    float v = acc[k];
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
    if (lane == 0) partial[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x < kConvPartials) {
    float v = 0.f;
    for (int i = 0; i < kConvWarps; ++i) v += partial[i][threadIdx.x];
    p.partials[(static_cast<size_t>(d) * gridDim.y + blockIdx.y) * kConvPartials + threadIdx.x] = v;
  }
}

// The backward with dx written token-major, dx[(b * seqlen + t) * dx_cols + d] (the first columns of
// in_proj's gradient, laid out for its GEMMs), instead of channel-first and transposed by a separate
// kernel. A block takes kTmChannels(T) channels x 64 positions of a batch row (a thread one chunk of
// one channel, conv_bwd_chunk), puts dx through a shared float tile and writes it as transpose_kernel
// does: 16-byte vectors along the channels, a warp 32 / kVec vectors of kVec consecutive positions
// (a tile line is 65 words: no bank conflicts on the reads). The block then loops over batch rows
// b += gridDim.z, summing its channels' dweight/dbias terms; per channel, the lanes of its chunks
// (lanes c, c + cpw, ...) reduce by shuffles and write partials[d][blockIdx.z * gridDim.x +
// blockIdx.x] once.
constexpr int kConvTmThreads = 256, kTmPositions = 64;
// Batch blocks at most (more rows loop): bounds the partials to 32 x ceil(seqlen / 64) a channel.
constexpr int kMaxTmBatchBlocks = 32;

template <typename T>
struct ConvTm {
  static constexpr int kVec = 16 / sizeof(T);
  static constexpr int kChunks = kTmPositions / ConvChunk<T>::kItems;  // chunks a channel: 4 (16-bit), 8 (float32)
  static constexpr int kChannels = kConvTmThreads / kChunks;           // channels a block: 64, 32
  static constexpr int kWarpChannels = 32 / kChunks;                   // channels a warp (cpw): 8, 4
  static constexpr int kLineVecs = kChannels / kVec;                   // vectors a position's line: 8
  static constexpr int kWarpVecs = 32 / kVec;
  static constexpr int kWarpsPerLine = kLineVecs / kWarpVecs;          // 2, 1
  static constexpr int kPassLines = kConvTmThreads / 32 / kWarpsPerLine * kVec;  // positions a pass: 32
  static_assert(kLineVecs * kVec == kChannels && kWarpsPerLine * kWarpVecs == kLineVecs, "whole warps a line");
  static_assert(kTmPositions % kPassLines == 0, "whole passes a tile");
};

template <typename T, bool kPacked>
__global__ __launch_bounds__(kConvTmThreads) void conv_bwd_tm_kernel(CausalConv1dParams p) {
  using C = ConvChunk<T>;
  using M = ConvTm<T>;
  __shared__ float tile[M::kChannels][kTmPositions + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Compute: this thread's channel and chunk.
  const int c = warp * M::kWarpChannels + lane % M::kWarpChannels, chunk = lane / M::kWarpChannels;
  const int d0 = blockIdx.y * M::kChannels, d = d0 + c, t0 = blockIdx.x * kTmPositions;
  const int first = t0 + chunk * C::kItems;
  const bool active = d < p.dim && first < p.seqlen;
  float ws[kMaxConvWidth];
  if (d < p.dim) load_shift_weights(p, d, ws);
  const float bias = d < p.dim && p.bias ? p.bias[d] : 0.f;
  // Write: this thread's vector of channels and first position line.
  const int vec = (warp % M::kWarpsPerLine) * M::kWarpVecs + lane % M::kWarpVecs;
  const int line0 = (warp / M::kWarpsPerLine) * M::kVec + lane / M::kWarpVecs;
  const int dv = d0 + vec * M::kVec;
  const bool vectors = p.dx_cols % M::kVec == 0 && is_aligned16(p.dx) && dv + M::kVec <= p.dim;
  float acc[kConvPartials] = {};
  for (unsigned b = blockIdx.z; b < static_cast<unsigned>(p.batch); b += gridDim.z) {
    if (active) {
      float dxv[C::kItems];
      conv_bwd_chunk<T, kPacked>(p, ws, bias, b, first, (static_cast<size_t>(b) * p.dim + d) * p.seqlen, acc, dxv);
#pragma unroll
      for (int j = 0; j < C::kItems; ++j) tile[c][chunk * C::kItems + j] = dxv[j];
    }
    __syncthreads();
#pragma unroll
    for (int pass = 0; pass < kTmPositions / M::kPassLines; ++pass) {
      const int line = line0 + pass * M::kPassLines, t = t0 + line;
      if (t >= p.seqlen || dv >= p.dim) continue;
      T* dst = static_cast<T*>(p.dx) + (static_cast<size_t>(b) * p.seqlen + t) * p.dx_cols + dv;
      if (vectors) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int k = 0; k < M::kVec; ++k) e[k] = from_float<T>(tile[vec * M::kVec + k][line]);
        *reinterpret_cast<uint4*>(dst) = raw;
      } else {
        for (int k = 0; k < M::kVec && dv + k < p.dim; ++k) dst[k] = from_float<T>(tile[vec * M::kVec + k][line]);
      }
    }
    __syncthreads();  // the tile is written again for the next batch row
  }
#pragma unroll
  for (int k = 0; k < kConvPartials; ++k) {
    float v = acc[k];
    for (int off = M::kWarpChannels; off < 32; off *= 2) v += __shfl_xor_sync(kFullMask, v, off);
    acc[k] = v;
  }
  if (chunk == 0 && d < p.dim) {
    const size_t blocks_per_dim = static_cast<size_t>(gridDim.z) * gridDim.x;
    float* dst = p.partials + (d * blocks_per_dim + blockIdx.z * gridDim.x + blockIdx.x) * kConvPartials;
#pragma unroll
    for (int k = 0; k < kConvPartials; ++k) dst[k] = acc[k];
  }
}

// One thread per (channel, partial): the sum over the channel's blocks, in block order.
__global__ __launch_bounds__(kConvThreads) void conv_bwd_reduce_kernel(CausalConv1dParams p, int blocks_per_dim) {
  const unsigned i = blockIdx.x * kConvThreads + threadIdx.x;
  if (i >= static_cast<unsigned>(p.dim) * kConvPartials) return;
  const int d = static_cast<int>(i / kConvPartials), k = static_cast<int>(i % kConvPartials);
  const float* src = p.partials + static_cast<size_t>(d) * blocks_per_dim * kConvPartials + k;
  float v = 0.f;
  for (int j = 0; j < blocks_per_dim; ++j) v += src[static_cast<size_t>(j) * kConvPartials];
  if (k < p.width) p.dweight[static_cast<size_t>(d) * p.width + p.width - 1 - k] = v;
  else if (k == kMaxConvWidth && p.dbias) p.dbias[d] = v;
}

// One thread per (batch, dim) row of the state.
template <typename T>
__global__ __launch_bounds__(kConvThreads) void conv_update_kernel(CausalConv1dUpdateParams p) {
  const size_t row = static_cast<size_t>(blockIdx.x) * kConvThreads + threadIdx.x;
  if (row >= static_cast<size_t>(p.batch) * p.dim) return;
  const size_t b = row / p.dim;
  const int d = static_cast<int>(row % p.dim);
  const float x = to_float(static_cast<const T*>(p.x)[b * p.x_stride + d]);
  const float u = conv_update_row(p.state + row * p.width, p.weight + static_cast<size_t>(d) * p.width,
                                  p.bias ? p.bias[d] : 0.f, x, p.width, p.silu);
  static_cast<T*>(p.out)[row] = from_float<T>(u);
}

// 64 x 64 tiles through shared memory with 16-byte accesses (kVec elements: 4 float32, 8 bf16/fp16)
// both ways, so that the reads (along t) and the writes (along r) move whole sectors and each
// thread keeps 64 / kVec vectors (float32: 4, 16-bit types: 2) in flight. A warp covers 32 / kVec
// vectors of kVec consecutive lines (lines of the tile: r when reading, t when writing); a line of
// the float tile is 65 words, so the warp's kVec x (32 / kVec) accesses of one element index fall in
// 32 different banks both ways. A vector is one access where it lies wholly inside the part and is
// 16-byte aligned (seqlen a multiple of kVec for the reads; dst_cols and offset for the writes);
// else its elements go one by one.
constexpr int kTile = 64, kTransposeThreads = 256;

template <typename T>
__global__ __launch_bounds__(kTransposeThreads) void transpose_kernel(TransposeParams p) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kWarpVecs = 32 / kVec;              // vectors a warp takes along a line
  constexpr int kPassLines = kTransposeThreads / (kTile / kVec);  // lines the block covers a pass
  static_assert(kTile / kVec == 2 * kWarpVecs && kPassLines == 4 * kVec, "two warps a tile line");
  __shared__ float tile[kTile][kTile + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int vec = (warp % 2) * kWarpVecs + lane % kWarpVecs;  // the thread's vector along a line
  const int line0 = (warp / 2) * kVec + lane / kWarpVecs;     // its first line; then every kPassLines
  const int t0 = blockIdx.x * kTile, r0 = blockIdx.y * kTile;
  const size_t b = blockIdx.z;
  const T* src = static_cast<const T*>(p.src) + b * p.rows * p.seqlen;
  T* dst = static_cast<T*>(p.dst) + b * p.seqlen * p.dst_cols + p.offset;
  const bool src_vectors = p.seqlen % kVec == 0 && is_aligned16(src);
  const bool dst_vectors = p.dst_cols % kVec == 0 && p.offset % kVec == 0 && is_aligned16(dst);
#pragma unroll
  for (int pass = 0; pass < kTile / kPassLines; ++pass) {
    const int line = line0 + pass * kPassLines;
    const int r = r0 + line, t = t0 + vec * kVec;
    if (r >= p.rows || t >= p.seqlen) continue;
    const T* s = src + static_cast<size_t>(r) * p.seqlen + t;
    float* row = &tile[line][vec * kVec];
    if (src_vectors && t + kVec <= p.seqlen) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(s));
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) row[k] = to_float(e[k]);
    } else {
      for (int k = 0; k < kVec && t + k < p.seqlen; ++k) row[k] = to_float(s[k]);
    }
  }
  __syncthreads();
#pragma unroll
  for (int pass = 0; pass < kTile / kPassLines; ++pass) {
    const int line = line0 + pass * kPassLines;
    const int t = t0 + line, r = r0 + vec * kVec;
    if (t >= p.seqlen || r >= p.rows) continue;
    T* d = dst + static_cast<size_t>(t) * p.dst_cols + r;
    if (dst_vectors && r + kVec <= p.rows) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) e[k] = from_float<T>(tile[vec * kVec + k][line]);
      *reinterpret_cast<uint4*>(d) = raw;
    } else {
      for (int k = 0; k < kVec && r + k < p.rows; ++k) d[k] = from_float<T>(tile[vec * kVec + k][line]);
    }
  }
}

unsigned blocks(size_t n, int threads) { return static_cast<unsigned>((n + threads - 1) / threads); }

// Blocks per channel for the forward and backward: enough for one chunk a thread, at most
// kMaxConvBlocksPerDim.
template <typename T>
int conv_blocks_per_dim(const CausalConv1dParams& p) {
  constexpr int kItems = ConvChunk<T>::kItems;
  const size_t pairs = static_cast<size_t>(p.batch) * ((p.seqlen + kItems - 1) / kItems);
  return static_cast<int>(std::min<size_t>(std::max<size_t>(blocks(pairs, kConvThreads), 1), kMaxConvBlocksPerDim));
}

template <typename T>
dim3 conv_grid(const CausalConv1dParams& p) {
  return dim3(static_cast<unsigned>(p.dim), static_cast<unsigned>(conv_blocks_per_dim<T>(p)));
}

// The token-major backward's grid: position tiles, channel tiles, batch blocks.
template <typename T>
dim3 conv_tm_grid(const CausalConv1dParams& p) {
  return dim3(static_cast<unsigned>((p.seqlen + kTmPositions - 1) / kTmPositions),
              static_cast<unsigned>((p.dim + ConvTm<T>::kChannels - 1) / ConvTm<T>::kChannels),
              static_cast<unsigned>(std::min(p.batch, kMaxTmBatchBlocks)));
}

}  // namespace
}  // namespace ssm_tools_cuda

int64_t causal_conv1d_bwd_partials(const CausalConv1dParams& p, ScanInputType type) {
  using namespace ssm_tools_cuda;
  return static_cast<int64_t>(p.dim) * kConvPartials * dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    return p.dx_cols > 0 ? static_cast<int>(conv_tm_grid<T>(p).x * conv_tm_grid<T>(p).z) : conv_blocks_per_dim<T>(p);
  });
}

int causal_conv1d_fwd_launch(const CausalConv1dParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    const auto kernel = p.seq_idx ? conv_fwd_kernel<T, true> : conv_fwd_kernel<T, false>;
    kernel<<<conv_grid<T>(p), kConvThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}

int causal_conv1d_bwd_launch(const CausalConv1dParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    int blocks_per_dim;
    if (p.dx_cols > 0) {
      const dim3 grid = conv_tm_grid<T>(p);
      const auto kernel = p.seq_idx ? conv_bwd_tm_kernel<T, true> : conv_bwd_tm_kernel<T, false>;
      kernel<<<grid, kConvTmThreads, 0, s>>>(p);
      blocks_per_dim = static_cast<int>(grid.x * grid.z);
    } else {
      const dim3 grid = conv_grid<T>(p);
      const auto kernel = p.seq_idx ? conv_bwd_kernel<T, true> : conv_bwd_kernel<T, false>;
      kernel<<<grid, kConvThreads, 0, s>>>(p);
      blocks_per_dim = static_cast<int>(grid.y);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
    conv_bwd_reduce_kernel<<<blocks(static_cast<size_t>(p.dim) * kConvPartials, kConvThreads), kConvThreads, 0, s>>>(
        p, blocks_per_dim);
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
    transpose_kernel<decltype(tag)><<<grid, kTransposeThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}
