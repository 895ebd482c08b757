// Forward selective scan, sequential in time and parallel over (dim, state).
//
// A block owns kRows dims of one batch entry, all in the same group of B/C, and walks the sequence
// in tiles of kTile positions. Each tile's u and delta are loaded once (128-bit loads), turned into
// delta and delta*u, and kept in shared memory; the tile of input-dependent B/C is loaded once per
// block and read by all kRows dims from shared memory (a broadcast). kSplit threads share a dim,
// each carrying kStates states in registers through the tile: per position and state one exp2, two
// FMAs, and no block-wide scan or barrier. States beyond kSplit * kStates (dstate up to 256) are
// done in further passes over the same tile; states live in shared memory between passes and tiles.
// Measured on the H100 (results/selective_scan_cuda_notes.md) it is bound by shared-memory
// wavefronts, mostly the B/C tile reads, ahead of its exponentials (one per position and state).
//
// Long rows, few of them (p.n_segments > 1): with batch * dim / kRows blocks too few to fill the GPU,
// each row's sequence is cut into segments of p.segment_len positions (whole saved chunks), each its
// own block. A first launch (kEndOnly) runs every segment but the last from the zero state and keeps
// only its end state E and the product P of its decays (0 past a sequence start); the second runs
// every segment in full from the state entering it, folded from the segments before:
// x <- P_j x + E_j. The first launch skips C, y and the output: about half the per-position work.
//
// Packed rows (kVarlen, p.seq_idx): each tile's sequence starts are one bit per position, shared by
// the block (one batch entry); a thread zeroes its states before a position that starts a sequence.
#include "kernels/scan_common.cuh"

#include <algorithm>

namespace ssm_tools_cuda {
namespace {

constexpr int kRows = 16;                    // dims per block (16: 1024 blocks at batch 8, dim 2048)
constexpr int kSplit = 4;                    // threads per dim
constexpr int kStates = 4;                   // states per thread and pass
constexpr int kPass = kSplit * kStates;      // states per pass
constexpr int kThreads = kRows * kSplit;
constexpr int kTile = 64;                    // positions per tile
// Padded row of a per-dim tile: a multiple of 4 so that kSplit positions of delta and delta*u are one
// float4 read, and 4 banks past the previous row so that the 8 dims of a warp read 32 distinct banks.
constexpr int kStride = kTile + 4;
constexpr int kRowItems = kRows * kTile / kThreads;    // positions of one dim each thread loads
constexpr int kStateItems = kPass * kTile / kThreads;  // positions of one state each thread loads
static_assert(kScanChunk % kTile == 0, "saved chunks start at tile starts");
static_assert(kSplit == 4 && kStates == 4, "the time loop reads float4s of states and shuffles over 4 lanes");
static_assert(kTile == 64 && kThreads == 64, "one ballot bit per position of a tile: two warps of sequence starts");

// Shared-memory layout, in floats: per-dim tiles of delta, delta*u and y; the B and C tiles of one
// pass ([position][state], so a thread reads its kStates states as one float4); the states; with
// kEndOnly, the decay products after them.
constexpr int kDtOff = 0, kDuOff = kRows * kStride, kYOff = 2 * kRows * kStride;
constexpr int kBOff = 3 * kRows * kStride, kCOff = kBOff + kTile * kPass, kXOff = kCOff + kTile * kPass;
static_assert(kStride % 4 == 0 && kBOff % 4 == 0 && kCOff % 4 == 0, "tiles are read as float4");
size_t smem_bytes(int dstate, bool end_only) {
  return (kXOff + static_cast<size_t>(kRows) * dstate * (end_only ? 2 : 1)) * sizeof(float);
}

// Whether position t of batch entry b starts a sequence of a packed row (never t = 0: the state
// starts from zero there anyway).
__device__ __forceinline__ bool starts_sequence(const SelectiveScanParams& p, int b, int t) {
  const int32_t* seq = p.seq_idx + static_cast<size_t>(b) * p.seqlen;
  return t > 0 && t < p.seqlen && seq[t] != seq[t - 1];
}

template <typename T, bool kVarlen, bool kEndOnly>
__global__ __launch_bounds__(kThreads, 8) void selective_scan_fwd_kernel(SelectiveScanParams p, int blocks_per_group) {
  __shared__ uint32_t s_starts[kTile / 32];  // sequence starts of the tile, one bit per position
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float *s_dt = smem + kDtOff, *s_du = smem + kDuOff, *s_y = smem + kYOff, *s_B = smem + kBOff,
        *s_C = smem + kCOff, *s_x = smem + kXOff, *s_P = s_x + kRows * p.dstate;
  const int tid = threadIdx.x, b = blockIdx.y, N = p.dstate;
  const int segment = blockIdx.z, t_begin = segment * p.segment_len;
  const int t_end = min(p.seqlen, t_begin + p.segment_len);
  const int dims_per_group = p.dim / p.n_groups, group = blockIdx.x / blocks_per_group;
  const int d0 = group * dims_per_group + (blockIdx.x % blocks_per_group) * kRows;
  const int rows = min(kRows, (group + 1) * dims_per_group - d0);
  const size_t row0 = static_cast<size_t>(b) * p.dim + d0;

  // Loading role: dim lr, positions lt .. lt + kRowItems of each tile.
  const int lr = tid / (kTile / kRowItems), lt = tid % (kTile / kRowItems) * kRowItems;
  const bool load_row = lr < rows;
  const size_t load_offset = (row0 + lr) * p.seqlen;
  const float D = load_row && p.D ? p.D[d0 + lr] : 0.f;
  const float bias = load_row && p.delta_bias ? p.delta_bias[d0 + lr] : 0.f;
  // B/C loading role: state ln of the pass, positions ls .. ls + kStateItems.
  const int ln = tid / (kTile / kStateItems), ls = tid % (kTile / kStateItems) * kStateItems;
  const size_t group_offset = (static_cast<size_t>(b) * p.n_groups + group) * N * p.seqlen;
  const T* B_var = p.variable_B ? static_cast<const T*>(p.B) + group_offset : nullptr;
  const T* C_var = p.variable_C ? static_cast<const T*>(p.C) + group_offset : nullptr;
  // Compute role: dim r (threads past `rows` run on zero inputs and write nothing), states
  // split * kStates + j of each pass.
  const int r = tid / kSplit, split = tid % kSplit;
  const size_t param_row = static_cast<size_t>(d0 + min(r, rows - 1)) * N;

  auto ok = [](const void* ptr) { return !ptr || is_aligned16(ptr); };
  const bool aligned = (p.seqlen * sizeof(T)) % 16 == 0 && ok(p.u) && ok(p.delta) && ok(p.z) && ok(p.out) &&
                       ok(B_var) && ok(C_var);

  for (int i = tid; i < kRows * N; i += kThreads) {
    // The state entering this segment (zero for the first, and for the end-only launch).
    float x = 0.f;
    const size_t seg_row = (row0 + min(i / N, rows - 1)) * p.n_segments * N + i % N;
    for (int j = 0; !kEndOnly && j < segment; ++j)
      x = fmaf(p.segment_decay[seg_row + static_cast<size_t>(j) * N], x, p.segment_end[seg_row + static_cast<size_t>(j) * N]);
    s_x[i] = x;
    if (kEndOnly) s_P[i] = 1.f;
  }
  const int n_passes = (N + kPass - 1) / kPass;
  for (int t0 = t_begin; t0 < t_end; t0 += kTile) {
    __syncthreads();  // the previous tile is done with s_dt, s_du, s_y and has written s_x
    if (!kEndOnly && t0 % kScanChunk == 0) {
      for (int i = tid; i < rows * N; i += kThreads)
        p.saved[((row0 + i / N) * p.n_chunks + t0 / kScanChunk) * N + i % N] = s_x[i];
    }
    {
      float u[kRowItems], raw[kRowItems];
      if (load_row) {
        load_items<T, kRowItems>(static_cast<const T*>(p.u) + load_offset, t0 + lt, p.seqlen, aligned, u);
        load_items<T, kRowItems>(static_cast<const T*>(p.delta) + load_offset, t0 + lt, p.seqlen, aligned, raw);
      }
#pragma unroll
      for (int i = 0; i < kRowItems; ++i) {
        const bool in = load_row && t0 + lt + i < p.seqlen;
        const float dt = in ? step_size(raw[i], bias, p.delta_softplus) : 0.f;
        const float uv = in ? u[i] : 0.f;
        s_dt[lr * kStride + lt + i] = dt;  // 0 past the end: identity steps
        s_du[lr * kStride + lt + i] = dt * uv;
        s_y[lr * kStride + lt + i] = D * uv;
      }
    }
    if constexpr (kVarlen) {
      const unsigned starts = __ballot_sync(kFullMask, starts_sequence(p, b, t0 + tid));
      if (tid % 32 == 0) s_starts[tid / 32] = starts;
    }
    for (int pass = 0; pass < n_passes; ++pass) {
      const int n0 = pass * kPass;
      __syncthreads();  // tiles written; the previous pass is done with s_B, s_C
      for (int m = 0; m < (kEndOnly ? 1 : 2); ++m) {
        const T* var = m == 0 ? B_var : C_var;
        if (!var) continue;
        float v[kStateItems];
        if (n0 + ln < N) {
          load_items<T, kStateItems>(var + static_cast<size_t>(n0 + ln) * p.seqlen, t0 + ls, p.seqlen, aligned, v);
        } else {
#pragma unroll
          for (int i = 0; i < kStateItems; ++i) v[i] = 0.f;
        }
        float* dst = m == 0 ? s_B : s_C;
#pragma unroll
        for (int i = 0; i < kStateItems; ++i) dst[(ls + i) * kPass + ln] = v[i];
      }
      __syncthreads();
      float x[kStates], A2[kStates], Bc[kStates], Cc[kStates], P[kStates];
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        const int n = n0 + split * kStates + j;
        const bool in = n < N;
        x[j] = in ? s_x[r * N + n] : 0.f;
        P[j] = kEndOnly && in ? s_P[r * N + n] : 1.f;
        A2[j] = in ? p.A[param_row + n] * kLog2e : 0.f;
        Bc[j] = in && !B_var ? static_cast<const float*>(p.B)[param_row + n] : 0.f;
        Cc[j] = in && !C_var ? static_cast<const float*>(p.C)[param_row + n] : 0.f;
      }
      const float4* sB4 = reinterpret_cast<const float4*>(s_B);
      const float4* sC4 = reinterpret_cast<const float4*>(s_C);
      const uint64_t starts = kVarlen ? s_starts[0] | static_cast<uint64_t>(s_starts[1]) << 32 : 0;
      // A state input of this thread's states at tile position t: from the tile, or the constant one.
      const auto state_input = [&](const float4* tile, bool variable, const float (&constant)[kStates], int t,
                                   float (&v)[kStates]) {
        if (variable) {
          const float4 f = tile[t * kSplit + split];
          v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
        } else {
#pragma unroll
          for (int j = 0; j < kStates; ++j) v[j] = constant[j];
        }
      };
      for (int t0 = 0; t0 < kTile; t0 += kSplit) {
        // kSplit positions, each thread with its partial y (its states) of every one of them.
        float y[kSplit];
        const float4 dt4 = *reinterpret_cast<const float4*>(s_dt + r * kStride + t0);
        const float4 du4 = *reinterpret_cast<const float4*>(s_du + r * kStride + t0);
        const float dts[kSplit] = {dt4.x, dt4.y, dt4.z, dt4.w}, dus[kSplit] = {du4.x, du4.y, du4.z, du4.w};
#pragma unroll
        for (int q = 0; q < kSplit; ++q) {
          const int t = t0 + q;
          const float dt = dts[q], du = dus[q];
          float Bv[kStates], Cv[kStates];
          state_input(sB4, B_var, Bc, t, Bv);
          if (!kEndOnly) state_input(sC4, C_var, Cc, t, Cv);
          y[q] = 0.f;
          // A sequence starts at t: the state restarts from zero (the end-only pass's decay is 0 there).
          const bool restart = kVarlen && (starts >> t & 1);
          if (!kEndOnly && restart) {
#pragma unroll
            for (int j = 0; j < kStates; ++j) x[j] = 0.f;
          }
#pragma unroll
          for (int j = 0; j < kStates; ++j) {
            const float a = kEndOnly && restart ? 0.f : exp2f(dt * A2[j]);
            x[j] = fmaf(a, x[j], du * Bv[j]);
            if (kEndOnly) {
              P[j] *= a;
            } else {
              y[q] = fmaf(Cv[j], x[j], y[q]);
            }
          }
        }
        if (kEndOnly) continue;  // states and decay products only: no C, no y
        // Reduce-scatter over the kSplit threads of this dim: thread `split` ends with the full y
        // of position t0 + split, in 3 shuffles (a sum to every thread would take 8).
        const bool high = split & 2, odd = split & 1;
        float keep0 = high ? y[2] : y[0], keep1 = high ? y[3] : y[1];  // positions 2*high + {0, 1}
        keep0 += __shfl_xor_sync(kFullMask, high ? y[0] : y[2], 2);
        keep1 += __shfl_xor_sync(kFullMask, high ? y[1] : y[3], 2);
        const float mine = (odd ? keep1 : keep0) + __shfl_xor_sync(kFullMask, odd ? keep0 : keep1, 1);
        s_y[r * kStride + t0 + split] += mine;
      }
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        const int n = n0 + split * kStates + j;
        if (n < N) s_x[r * N + n] = x[j];
        if (kEndOnly && n < N) s_P[r * N + n] = P[j];
      }
    }
    __syncthreads();  // s_y complete
    if (!kEndOnly && load_row) {
      float y[kRowItems];
#pragma unroll
      for (int i = 0; i < kRowItems; ++i) y[i] = s_y[lr * kStride + lt + i];
      if (p.z) {
        float z[kRowItems];
        load_items<T, kRowItems>(static_cast<const T*>(p.z) + load_offset, t0 + lt, p.seqlen, aligned, z);
#pragma unroll
        for (int i = 0; i < kRowItems; ++i) y[i] *= z[i] * sigmoid(z[i]);
      }
      store_items<T, kRowItems>(static_cast<T*>(p.out) + load_offset, t0 + lt, p.seqlen, aligned, y);
    }
  }
  __syncthreads();
  for (int i = tid; i < rows * N; i += kThreads) {
    const size_t seg_row = ((row0 + i / N) * p.n_segments + segment) * N + i % N;
    if (kEndOnly) {
      p.segment_end[seg_row] = s_x[i];
      p.segment_decay[seg_row] = s_P[i];
    } else if (segment == p.n_segments - 1) {
      p.last_state[(row0 + i / N) * N + i % N] = s_x[i];
    }
  }
}

// Blocks per SM that fill the GPU (the launch bound): fewer, and the forward splits rows into segments.
constexpr int kFullBlocksPerSM = 8;
constexpr int kMinSegmentChunks = 4;  // shorter segments spend more on the end-only pass than they save

}  // namespace
}  // namespace ssm_tools_cuda

int selective_scan_fwd_segment_len(int batch, int dim, int n_groups, int seqlen) {
  using namespace ssm_tools_cuda;
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return seqlen;
  const long blocks = static_cast<long>(batch) * n_groups * ((dim / n_groups + kRows - 1) / kRows);
  const long wanted = static_cast<long>(sms) * kFullBlocksPerSM;
  const int n_chunks = (seqlen + kScanChunk - 1) / kScanChunk;
  const int segments = static_cast<int>(std::min<long>(wanted / blocks, n_chunks / kMinSegmentChunks));
  if (segments <= 1) return seqlen;
  return (n_chunks + segments - 1) / segments * kScanChunk;
}

namespace {

template <typename T, bool kVarlen, bool kEndOnly>
int launch(const SelectiveScanParams& p, int segments, cudaStream_t stream) {
  using namespace ssm_tools_cuda;
  const int blocks_per_group = (p.dim / p.n_groups + kRows - 1) / kRows;
  auto kernel = selective_scan_fwd_kernel<T, kVarlen, kEndOnly>;
  const size_t smem = smem_bytes(p.dstate, kEndOnly);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  kernel<<<dim3(p.n_groups * blocks_per_group, p.batch, segments), kThreads, smem, stream>>>(p, blocks_per_group);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, bool kVarlen>
int launch_all(const SelectiveScanParams& p, cudaStream_t stream) {
  if (p.n_segments > 1) {
    const int err = launch<T, kVarlen, true>(p, p.n_segments - 1, stream);
    if (err) return err;
  }
  return launch<T, kVarlen, false>(p, p.n_segments, stream);
}

}  // namespace

int selective_scan_fwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    return p.seq_idx ? launch_all<T, true>(p, s) : launch_all<T, false>(p, s);
  });
}
