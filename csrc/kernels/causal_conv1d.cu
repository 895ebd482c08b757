// The Mamba block's causal depthwise conv1d, optionally through SiLU:
//   out[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - width + 1 + k])   (x = 0 before t = 0)
// forward, backward (dx, dweight, dbias), the one-position decode update against a rolling state,
// and the tiled transpose that lays channel-first gradients out token-major. All memory-bound: each
// reads and writes every activation once.
//
// Forward and backward work on chunks of a few 16-byte vectors of consecutive positions of a row, one
// chunk a thread. A block serves one channel d (its weights in registers, its dweight/dbias summed
// over the block), its threads the (batch, chunk) pairs of that channel with 32-bit index math. The
// taps before a chunk (and, backward, after it) come from overlapping vector loads of the
// neighbouring chunks (L1 hits); the backward recomputes the gradient of those few positions instead
// of exchanging it. A thread issues all its vector loads before it uses any (one memory round trip a
// chunk); rows that are not 16-byte aligned (odd lengths, offset pointers) and the ends of rows then
// take scalar loads. The taps are a template constant: 4 for widths up to 4 (Mamba's; the missing
// weights are zeros), else kMaxConvWidth.
#include <algorithm>
#include <type_traits>

#include "kernels/decode_rows.cuh"
#include "kernels/mamba_block_params.h"

namespace ssm_tools_cuda {
namespace {

constexpr int kConvThreads = 128;
constexpr int kConvWarps = kConvThreads / 32;
// The backward's per-block dweight/dbias partials: dweight by tap shift, then dbias (at kMaxConvWidth
// whatever the taps).
constexpr int kConvPartials = kMaxConvWidth + 1;
// Blocks per channel at most (more (batch, chunk) pairs loop): bounds the partials the second,
// deterministic pass sums.
constexpr int kMaxConvBlocksPerDim = 1024;

// A thread's chunk: kVecs 16-byte vectors of positions, kW taps, and the halo of taps around the
// chunk rounded up to whole vectors.
template <typename T, int kVecs, int kW>
struct ConvChunk {
  static constexpr int kVec = 16 / sizeof(T);
  static constexpr int kItems = kVecs * kVec;
  static constexpr int kTaps = kW;
  static constexpr int kPad = (kW - 1 + kVec - 1) / kVec * kVec;
  static_assert(kPad >= kW - 1 && kPad % 4 == 0, "the halo covers the taps in whole int32 vectors");
};

// The forward's and channel-first backward's chunks: 4 vectors a thread (32 positions in bf16: half
// the threads, index math and block sums a position of 2 vectors, and half the halo loads and
// recomputed pre-activations a position) where rows hold one sequence; 2 with seq_idx, whose run
// lengths take another register a position. kConvLegacyChunks = true gives back 2 vectors and all
// kMaxConvWidth taps everywhere, the arithmetic (and bits) of the earlier kernels; the loads stay
// batched.
constexpr bool kConvLegacyChunks = false;
template <typename T, bool kPacked, int kW>
using ConvRowChunk = ConvChunk<T, kConvLegacyChunks || kPacked ? 2 : 4, kW>;

// f(std::integral_constant<int, taps>) for p's width.
template <typename F>
int with_conv_taps(const CausalConv1dParams& p, F&& f) {
  if (!kConvLegacyChunks && p.width <= 4) return f(std::integral_constant<int, 4>{});
  return f(std::integral_constant<int, kMaxConvWidth>{});
}

// The slot of a chunk sum in a block's kConvPartials: tap shifts k < kW, then dbias.
template <int kW>
__device__ __forceinline__ int partial_slot(int k) { return k < kW ? k : kMaxConvWidth; }

__device__ __forceinline__ float silu_grad(float v) {
  const float s = sigmoid(v);
  return s * (1.f + v * (1.f - s));
}

__device__ __forceinline__ int to_value(int v) { return v; }
template <typename T>
__device__ __forceinline__ float to_value(T v) { return to_float(v); }

// N consecutive elements row[start, start + N) of a row of len elements, start a multiple of the
// 16-byte vector width (it may be negative): load() issues the loads of the vectors wholly inside the
// row where the row is 16-byte aligned (the others read zero), unpack() converts them, with element
// loads for the vectors that were not loaded whole (an unaligned row; the vector across the row's
// end), and zeros outside [0, len). A chunk loads all its runs before it unpacks any, so that its loads
// are in flight together.
template <typename T, int N>
struct RowRun {
  static constexpr int kVec = 16 / sizeof(T);
  static_assert(N % kVec == 0, "whole vectors");
  uint4 raw[N / kVec];

  __device__ __forceinline__ static bool whole(int s, int len, bool aligned) {
    return aligned && s >= 0 && s + kVec <= len;
  }

  __device__ __forceinline__ void load(const T* row, int start, int len, bool aligned) {
#pragma unroll
    for (int j = 0; j < N / kVec; ++j) {
      const int s = start + j * kVec;
      raw[j] = whole(s, len, aligned) ? __ldg(reinterpret_cast<const uint4*>(row + s)) : make_uint4(0, 0, 0, 0);
    }
  }

  template <typename V>
  __device__ __forceinline__ void unpack(const T* row, int start, int len, bool aligned, V (&v)[N]) const {
#pragma unroll
    for (int j = 0; j < N / kVec; ++j) {
      const T* e = reinterpret_cast<const T*>(&raw[j]);
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[j * kVec + k] = to_value(e[k]);
    }
    if (aligned && len % kVec == 0) return;  // every vector lies wholly inside the row or outside
#pragma unroll
    for (int j = 0; j < N / kVec; ++j) {
      const int s = start + j * kVec;
      if (whole(s, len, aligned)) continue;
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[j * kVec + k] = s + k >= 0 && s + k < len ? to_value(row[s + k]) : V(0);
    }
  }
};

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
template <int kW>
__device__ __forceinline__ void load_shift_weights(const CausalConv1dParams& p, int d, float (&ws)[kW]) {
  const float* w = p.weight + static_cast<size_t>(d) * p.width;
#pragma unroll
  for (int s = 0; s < kW; ++s) ws[s] = s < p.width ? __ldg(w + p.width - 1 - s) : 0.f;
}

// The seq_idx of a window of a chunk (packed rows; unused otherwise).
template <bool kPacked, int N>
struct SeqRun {
  RowRun<int, N> run;
  const int* q = nullptr;
  bool aligned = false;

  __device__ __forceinline__ void load(const CausalConv1dParams& p, unsigned b, int start) {
    if (!kPacked) return;
    q = p.seq_idx + static_cast<size_t>(b) * p.seqlen;
    aligned = is_aligned16(q);
    run.load(q, start, p.seqlen, aligned);
  }

  // back[i] = how many positions right before window position i share its sequence (a run of equal
  // seq_idx), counted from the window's start; the tap pair (t - s, t) is in one sequence iff
  // back[t] >= s. One sequence a row: every pair is (taps before t = 0 read zeros).
  __device__ __forceinline__ void runs(int start, int len, int (&back)[N]) const {
    if (!kPacked) {
#pragma unroll
      for (int i = 0; i < N; ++i) back[i] = kMaxConvWidth;
      return;
    }
    int qv[N];
    run.unpack(q, start, len, aligned, qv);
    back[0] = 0;
#pragma unroll
    for (int i = 1; i < N; ++i) back[i] = qv[i] == qv[i - 1] ? back[i - 1] + 1 : 0;
  }
};

// The pre-activation at window position i (i >= kW - 1).
template <int kW, int N>
__device__ __forceinline__ float conv_pre(const float (&xv)[N], const float (&ws)[kW], const int (&back)[N],
                                          float bias, int i) {
  float acc = bias;
#pragma unroll
  for (int s = 0; s < kW; ++s)
    if (s <= back[i]) acc = fmaf(ws[s], xv[i - s], acc);
  return acc;
}

// Walks the (batch, chunk) pairs of channel blockIdx.x that fall to this thread: f(b, first, row
// offset) with 32-bit index math (the host checks that batch * seqlen fits).
template <typename C, typename F>
__device__ __forceinline__ void for_each_chunk(const CausalConv1dParams& p, F&& f) {
  const unsigned chunks = (static_cast<unsigned>(p.seqlen) + C::kItems - 1) / C::kItems;
  const unsigned n = chunks * static_cast<unsigned>(p.batch);
  for (unsigned i = blockIdx.y * blockDim.x + threadIdx.x; i < n; i += gridDim.y * blockDim.x) {
    const unsigned b = i / chunks;
    const int first = static_cast<int>(i - b * chunks) * C::kItems;
    f(b, first, (static_cast<size_t>(b) * p.dim + blockIdx.x) * p.seqlen);
  }
}

template <typename T, typename C, bool kPacked>
__global__ __launch_bounds__(kConvThreads) void conv_fwd_kernel(CausalConv1dParams p) {
  constexpr int kWin = C::kPad + C::kItems;  // positions first - kPad .. first + kItems
  const int d = blockIdx.x;
  float ws[C::kTaps];
  load_shift_weights(p, d, ws);
  const float bias = p.bias ? p.bias[d] : 0.f;
  for_each_chunk<C>(p, [&](unsigned b, int first, size_t row) {
    const T* x = static_cast<const T*>(p.x) + row;
    T* out = static_cast<T*>(p.out) + row;
    const bool aligned = is_aligned16(x) && is_aligned16(out);
    const int start = first - C::kPad;
    RowRun<T, kWin> xr;
    xr.load(x, start, p.seqlen, aligned);
    SeqRun<kPacked, kWin> qr;
    qr.load(p, b, start);
    float xv[kWin];
    xr.unpack(x, start, p.seqlen, aligned, xv);
    int back[kWin];
    qr.runs(start, p.seqlen, back);
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
// row's offset): g = dout * act'(pre) on the chunk and the kTaps - 1 positions after it; dx[t] =
// sum_s ws[s] g[t + s] over t's sequence, returned in dxv; the chunk's dweight/dbias terms are added
// to acc (dweight by tap shift, then dbias). The sums run over the taps in a fixed order whatever the
// chunk's size, so that every chunking gives the same dx bits.
template <typename T, typename C, bool kPacked>
__device__ __forceinline__ void conv_bwd_chunk(const CausalConv1dParams& p, const float (&ws)[C::kTaps],
                                               float bias, unsigned b, int first, size_t row,
                                               float (&acc)[C::kTaps + 1], float (&dxv)[C::kItems]) {
  constexpr int kW = C::kTaps;
  constexpr int kWin = C::kPad + C::kItems + C::kPad;  // x, seq_idx: first - kPad .. first + kItems + kPad
  constexpr int kG = C::kItems + C::kPad;             // g: first .. first + kItems + kPad
  const T* x = static_cast<const T*>(p.x) + row;
  const T* dout = static_cast<const T*>(p.dout) + row;
  const bool xa = is_aligned16(x), ga = is_aligned16(dout);
  const int start = first - C::kPad;
  RowRun<T, kWin> xr;
  RowRun<T, kG> gr;
  SeqRun<kPacked, kWin> qr;
  xr.load(x, start, p.seqlen, xa);
  gr.load(dout, first, p.seqlen, ga);
  qr.load(p, b, start);
  float xv[kWin], g[kG];
  xr.unpack(x, start, p.seqlen, xa, xv);
  gr.unpack(dout, first, p.seqlen, ga, g);
  int back[kWin];
  qr.runs(start, p.seqlen, back);
  if (p.silu) {
#pragma unroll
    for (int i = 0; i < C::kItems + kW - 1; ++i) g[i] *= silu_grad(conv_pre(xv, ws, back, bias, C::kPad + i));
  }
#pragma unroll
  for (int j = 0; j < C::kItems; ++j) {
    float a = 0.f;
#pragma unroll
    for (int s = 0; s < kW; ++s) {
      if (s <= back[C::kPad + j + s]) a = fmaf(ws[s], g[j + s], a);
      if (s <= back[C::kPad + j]) acc[s] = fmaf(g[j], xv[C::kPad + j - s], acc[s]);
    }
    dxv[j] = a;
    acc[kW] += g[j];
  }
}

// The backward, channel-first dx: a block a channel, conv_bwd_chunk a (batch, chunk) pair; the
// thread sums go to partials[d][blockIdx.y] (conv_bwd_reduce_kernel adds those up in a fixed order:
// deterministic).
template <typename T, typename C, bool kPacked>
__global__ __launch_bounds__(kConvThreads) void conv_bwd_kernel(CausalConv1dParams p) {
  constexpr int kW = C::kTaps;
  __shared__ float partial[kConvWarps][kConvPartials];
  const int d = blockIdx.x;
  float ws[kW];
  load_shift_weights(p, d, ws);
  const float bias = p.bias ? p.bias[d] : 0.f;
  float acc[kW + 1] = {};
  for_each_chunk<C>(p, [&](unsigned b, int first, size_t row) {
    float dxv[C::kItems];
    conv_bwd_chunk<T, C, kPacked>(p, ws, bias, b, first, row, acc, dxv);
    T* dx = static_cast<T*>(p.dx) + row;
    store_run(dx, first, p.seqlen, is_aligned16(dx), dxv);
  });
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k <= kW; ++k) {
    float v = acc[k];
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
    if (lane == 0) partial[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x <= kW) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < kConvWarps; ++i)
      if (i < static_cast<int>(blockDim.x / 32)) v += partial[i][threadIdx.x];
    p.partials[(static_cast<size_t>(d) * gridDim.y + blockIdx.y) * kConvPartials + partial_slot<kW>(threadIdx.x)] = v;
  }
}

// The backward with dx written token-major, dx[(b * seqlen + t) * dx_cols + d] (the first columns of
// in_proj's gradient, laid out for its GEMMs), instead of channel-first and transposed by a separate
// kernel. A block takes kTmChannels(T) channels x 64 positions of a batch row (a thread one chunk of
// two vectors of one channel, conv_bwd_chunk), puts dx through a shared float tile and writes it as
// transpose_kernel does: 16-byte vectors along the channels, a warp 32 / kVec vectors of kVec
// consecutive positions (a tile line is 65 words: no bank conflicts on the reads). The block then
// loops over batch rows b += gridDim.z, summing its channels' dweight/dbias terms; per channel, the
// lanes of its chunks (lanes c, c + cpw, ...) reduce by shuffles and write partials[d][blockIdx.z *
// gridDim.x + blockIdx.x] once.
constexpr int kConvTmThreads = 256, kTmPositions = 64, kTmVecs = 2;
// Batch blocks at most (more rows loop): bounds the partials to 32 x ceil(seqlen / 64) a channel.
constexpr int kMaxTmBatchBlocks = 32;

template <typename T>
struct ConvTm {
  static constexpr int kVec = 16 / sizeof(T);
  static constexpr int kChunks = kTmPositions / (kTmVecs * kVec);      // chunks a channel: 4 (16-bit), 8 (float32)
  static constexpr int kChannels = kConvTmThreads / kChunks;           // channels a block: 64, 32
  static constexpr int kWarpChannels = 32 / kChunks;                   // channels a warp (cpw): 8, 4
  static constexpr int kLineVecs = kChannels / kVec;                   // vectors a position's line: 8
  static constexpr int kWarpVecs = 32 / kVec;
  static constexpr int kWarpsPerLine = kLineVecs / kWarpVecs;          // 2, 1
  static constexpr int kPassLines = kConvTmThreads / 32 / kWarpsPerLine * kVec;  // positions a pass: 32
  static_assert(kLineVecs * kVec == kChannels && kWarpsPerLine * kWarpVecs == kLineVecs, "whole warps a line");
  static_assert(kTmPositions % kPassLines == 0, "whole passes a tile");
};

template <typename T, int kW, bool kPacked>
__global__ __launch_bounds__(kConvTmThreads) void conv_bwd_tm_kernel(CausalConv1dParams p) {
  using C = ConvChunk<T, kTmVecs, kW>;
  using M = ConvTm<T>;
  __shared__ float tile[M::kChannels][kTmPositions + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  // Compute: this thread's channel and chunk.
  const int c = warp * M::kWarpChannels + lane % M::kWarpChannels, chunk = lane / M::kWarpChannels;
  const int d0 = blockIdx.y * M::kChannels, d = d0 + c, t0 = blockIdx.x * kTmPositions;
  const int first = t0 + chunk * C::kItems;
  const bool active = d < p.dim && first < p.seqlen;
  float ws[kW];
  if (d < p.dim) load_shift_weights(p, d, ws);
  const float bias = d < p.dim && p.bias ? p.bias[d] : 0.f;
  // Write: this thread's vector of channels and first position line.
  const int vec = (warp % M::kWarpsPerLine) * M::kWarpVecs + lane % M::kWarpVecs;
  const int line0 = (warp / M::kWarpsPerLine) * M::kVec + lane / M::kWarpVecs;
  const int dv = d0 + vec * M::kVec;
  const bool vectors = p.dx_cols % M::kVec == 0 && is_aligned16(p.dx) && dv + M::kVec <= p.dim;
  float acc[kW + 1] = {};
  for (unsigned b = blockIdx.z; b < static_cast<unsigned>(p.batch); b += gridDim.z) {
    if (active) {
      float dxv[C::kItems];
      conv_bwd_chunk<T, C, kPacked>(p, ws, bias, b, first, (static_cast<size_t>(b) * p.dim + d) * p.seqlen, acc, dxv);
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
  for (int k = 0; k <= kW; ++k) {
    float v = acc[k];
    for (int off = M::kWarpChannels; off < 32; off *= 2) v += __shfl_xor_sync(kFullMask, v, off);
    acc[k] = v;
  }
  if (chunk == 0 && d < p.dim) {
    const size_t blocks_per_dim = static_cast<size_t>(gridDim.z) * gridDim.x;
    float* dst = p.partials + (d * blocks_per_dim + blockIdx.z * gridDim.x + blockIdx.x) * kConvPartials;
#pragma unroll
    for (int k = 0; k <= kW; ++k) dst[partial_slot<kW>(k)] = acc[k];
  }
}

// One thread per (channel, partial): the sum over the channel's blocks, in block order (the slots
// past the width and before dbias hold nothing).
__global__ __launch_bounds__(kConvThreads) void conv_bwd_reduce_kernel(CausalConv1dParams p, int blocks_per_dim) {
  const unsigned i = blockIdx.x * kConvThreads + threadIdx.x;
  if (i >= static_cast<unsigned>(p.dim) * kConvPartials) return;
  const int d = static_cast<int>(i / kConvPartials), k = static_cast<int>(i % kConvPartials);
  if (k >= p.width && (k < kMaxConvWidth || !p.dbias)) return;
  const float* src = p.partials + static_cast<size_t>(d) * blocks_per_dim * kConvPartials + k;
  float v = 0.f;
  for (int j = 0; j < blocks_per_dim; ++j) v += src[static_cast<size_t>(j) * kConvPartials];
  if (k < p.width) p.dweight[static_cast<size_t>(d) * p.width + p.width - 1 - k] = v;
  else p.dbias[d] = v;
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

// The forward's and backward's blocks: a channel's (batch, chunk) pairs over blocks_per_dim blocks of
// threads threads, whole warps; fewer than kConvThreads where a channel has fewer pairs (8 rows of 216
// positions: 56 chunks of 32, two warps), so that no warp idles; at most kMaxConvBlocksPerDim blocks.
// grid: (channels, blocks_per_dim).
struct ConvGrid {
  dim3 grid;
  int threads;
};

template <typename C>
ConvGrid conv_grid(const CausalConv1dParams& p) {
  const size_t pairs = static_cast<size_t>(p.batch) * ((p.seqlen + C::kItems - 1) / C::kItems);
  const int threads = static_cast<int>(std::clamp<size_t>((pairs + 31) / 32 * 32, 32, kConvThreads));
  const size_t blocks_per_dim = std::min<size_t>(std::max<size_t>(blocks(pairs, threads), 1), kMaxConvBlocksPerDim);
  return {dim3(static_cast<unsigned>(p.dim), static_cast<unsigned>(blocks_per_dim)), threads};
}

// f(chunk, packed) for the forward's and channel-first backward's chunk of p (seq_idx, width).
template <typename T, typename F>
int with_row_chunk(const CausalConv1dParams& p, F&& f) {
  return with_conv_taps(p, [&](auto taps) {
    constexpr int kW = decltype(taps)::value;
    if (p.seq_idx) return f(ConvRowChunk<T, true, kW>{}, std::true_type{});
    return f(ConvRowChunk<T, false, kW>{}, std::false_type{});
  });
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
    if (p.dx_cols > 0) {
      const dim3 grid = conv_tm_grid<T>(p);
      return static_cast<int>(grid.x * grid.z);
    }
    return with_row_chunk<T>(p, [&](auto chunk, auto) { return static_cast<int>(conv_grid<decltype(chunk)>(p).grid.y); });
  });
}

int causal_conv1d_fwd_launch(const CausalConv1dParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    return with_row_chunk<T>(p, [&](auto chunk, auto packed) {
      using C = decltype(chunk);
      const ConvGrid g = conv_grid<C>(p);
      conv_fwd_kernel<T, C, decltype(packed)::value><<<g.grid, g.threads, 0, static_cast<cudaStream_t>(stream)>>>(p);
      return static_cast<int>(cudaGetLastError());
    });
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
      with_conv_taps(p, [&](auto taps) {
        constexpr int kW = decltype(taps)::value;
        const auto kernel = p.seq_idx ? conv_bwd_tm_kernel<T, kW, true> : conv_bwd_tm_kernel<T, kW, false>;
        kernel<<<grid, kConvTmThreads, 0, s>>>(p);
        return 0;
      });
      blocks_per_dim = static_cast<int>(grid.x * grid.z);
    } else {
      blocks_per_dim = with_row_chunk<T>(p, [&](auto chunk, auto packed) {
        using C = decltype(chunk);
        const ConvGrid g = conv_grid<C>(p);
        conv_bwd_kernel<T, C, decltype(packed)::value><<<g.grid, g.threads, 0, s>>>(p);
        return static_cast<int>(g.grid.y);
      });
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
