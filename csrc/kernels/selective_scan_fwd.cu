// Forward selective scan, sequential in time and parallel over (dim, state).
//
// A block owns kRows dims of one batch entry, all in the same group of B/C, and walks the sequence
// in tiles of kTile positions. Each tile's u and delta are loaded once (128-bit loads), turned into
// delta and delta*u, and kept in shared memory; the tile of input-dependent B/C is loaded once per
// block and read by all kRows dims from shared memory (a broadcast), in the input type with each
// thread's 4 states of B and of C side by side, so that one 128-bit read gives both at 16-bit input
// types (two at float32). kSplit threads share a dim,
// each carrying kStates states in registers through the tile: per position and state one exp2, two
// FMAs, and no block-wide scan or barrier. States beyond kSplit * kStates (dstate up to 256) are
// done in further passes over the same tile; states live in shared memory between passes and tiles.
// Measured on the H100 and H200 (results/selective_scan_cuda_notes.md) it is bound by the bytes its
// shared-memory reads return (the B/C tile reads first) and by instruction issue, ahead of its
// exponentials (one per position and state). Whether B and C are input-dependent (kVarB, kVarC) is a
// template parameter, so that the time loop makes no run-time choice between the tile and constant B/C.
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
#include <cstring>

namespace ssm_tools_cuda {
namespace {

constexpr int kRows = 16;                    // dims per block (16: 1024 blocks at batch 8, dim 2048)
constexpr int kSplit = 4;                    // threads per dim
constexpr int kStates = 4;                   // states per thread and pass
constexpr int kPass = kSplit * kStates;      // states per pass
constexpr int kThreads = kRows * kSplit;
constexpr int kTile = 64;                    // positions per tile
constexpr int kGroup = kSplit * kSplit;      // positions whose y a dim's kSplit threads reduce-scatter at once
// Padded row of a per-dim tile: a multiple of 4 so that kSplit positions of delta and delta*u are one
// float4 read, and 4 banks past the previous row so that the 8 dims of a warp read 32 distinct banks.
constexpr int kStride = kTile + 4;
constexpr int kRowItems = kRows * kTile / kThreads;    // positions of one dim each thread loads
static_assert(kScanChunk % kTile == 0, "saved chunks start at tile starts");
static_assert(kTile % kGroup == 0, "whole groups per tile");
static_assert(kSplit == 4 && kStates == 4, "the time loop reads float4s of states and shuffles over 4 lanes");
static_assert(kTile == 64 && kThreads == 64, "one ballot bit per position of a tile: two warps of sequence starts");

// One thread's B and C of one position and pass, in the input type: what one time step reads from
// the B/C tile (16 bytes at 16-bit types, one LDS.128; 32 at float32).
template <typename T>
struct alignas(16) BCUnit {
  T b[kStates], c[kStates];
};
// The B/C tile is [position][kSplit units + 1 of padding]: the padding puts the positions that the
// tile's loaders store in one go (4 apart) on different banks.
constexpr int kUnitsPerPosition = kSplit + 1;
constexpr int kBCLoadItems = 4;  // positions of one state quad each thread loads into the tile
static_assert(kTile / kBCLoadItems * (kPass / kStates) == kThreads, "one B/C loading role per thread");

// Shared-memory layout, in floats: per-dim tiles of delta, delta*u and y; the B/C tile of one pass;
// the states; with kEndOnly, the decay products after them.
constexpr int kDtOff = 0, kDuOff = kRows * kStride, kYOff = 2 * kRows * kStride, kBCOff = 3 * kRows * kStride;
template <typename T>
constexpr int kXOff = kBCOff + kTile * kUnitsPerPosition * static_cast<int>(sizeof(BCUnit<T>) / sizeof(float));
static_assert(kStride % 4 == 0 && kBCOff % 4 == 0 && kRowItems % 4 == 0, "tiles are read and written as float4");
template <typename T>
size_t smem_bytes(int dstate, bool end_only) {
  return (kXOff<T> + static_cast<size_t>(kRows) * dstate * (end_only ? 2 : 1)) * sizeof(float);
}

// A unit's B and C as float. bfloat16 pairs are split with one integer instruction per value (the
// high half masked, the low half shifted up): the conversion per value otherwise takes two.
template <typename T>
__device__ __forceinline__ void unpack(const BCUnit<T>& unit, float (&b)[kStates], float (&c)[kStates]) {
#pragma unroll
  for (int j = 0; j < kStates; ++j) b[j] = to_float(unit.b[j]), c[j] = to_float(unit.c[j]);
}
__device__ __forceinline__ void unpack(const BCUnit<__nv_bfloat16>& unit, float (&b)[kStates], float (&c)[kStates]) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(&unit);
#pragma unroll
  for (int j = 0; j < kStates / 2; ++j) {
    b[2 * j] = __uint_as_float(w[j] << 16), b[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    c[2 * j] = __uint_as_float(w[kStates / 2 + j] << 16), c[2 * j + 1] = __uint_as_float(w[kStates / 2 + j] & 0xffff0000u);
  }
}

// A run of kBCLoadItems positions of one state row, as raw 32-bit words; loaded with one vector
// load (the row aligned to the run's size).
template <typename T>
constexpr int kRunWords = static_cast<int>(sizeof(T)) * kBCLoadItems / 4;
// A thread's runs of its kStates state rows (B or C) in the tile.
template <typename T>
using BCRuns = uint32_t[kStates][kRunWords<T>];

template <typename T>
__device__ __forceinline__ void load_run(const T* row, uint32_t (&v)[kRunWords<T>]) {
  if constexpr (kRunWords<T> == 4) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(row));
    v[0] = raw.x, v[1] = raw.y, v[2] = raw.z, v[3] = raw.w;
  } else {
    static_assert(kRunWords<T> == 2, "runs of 8 or 16 bytes");
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(row));
    v[0] = raw.x, v[1] = raw.y;
  }
}

// Brings the 128-byte line holding ptr into L2 (a hint: no register, no wait).
template <typename T>
__device__ __forceinline__ void prefetch_l2(const T* ptr) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr));
}

// Whether position t of batch entry b starts a sequence of a packed row (never t = 0: the state
// starts from zero there anyway).
__device__ __forceinline__ bool starts_sequence(const SelectiveScanParams& p, int b, int t) {
  const int32_t* seq = p.seq_idx + static_cast<size_t>(b) * p.seqlen;
  return t > 0 && t < p.seqlen && seq[t] != seq[t - 1];
}

template <typename T, bool kVarlen, bool kEndOnly, bool kVarB, bool kVarC>
__global__ __launch_bounds__(kThreads, 8) void selective_scan_fwd_kernel(SelectiveScanParams p, int blocks_per_group) {
  __shared__ uint32_t s_starts[kTile / 32];  // sequence starts of the tile, one bit per position
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  float *s_dt = smem + kDtOff, *s_du = smem + kDuOff, *s_y = smem + kYOff, *s_x = smem + kXOff<T>,
        *s_P = s_x + kRows * p.dstate;
  BCUnit<T>* s_bc = reinterpret_cast<BCUnit<T>*>(smem + kBCOff);
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
  // B/C loading role: states lq * kStates .. + kStates of the pass (the unit of split lq), positions
  // ls .. ls + kBCLoadItems (consecutive threads: the units of one position, then the next run).
  const int lq = tid % kSplit, ls = tid / kSplit * kBCLoadItems;
  const size_t group_offset = (static_cast<size_t>(b) * p.n_groups + group) * N * p.seqlen;
  constexpr bool var_B = kVarB, var_C = kVarC && !kEndOnly;  // the end-only pass does not read C
  const T* B_var = var_B ? static_cast<const T*>(p.B) + group_offset : nullptr;
  const T* C_var = var_C ? static_cast<const T*>(p.C) + group_offset : nullptr;
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
  // The B/C tile of states n0 + lq * kStates + j at positions ls + i (zero for states past N, and for
  // C in the end-only pass, which does not read it); constant B or C is not in the tile. One vector
  // load per state row when the whole pass's runs are in range and aligned (one uniform branch for all
  // rows); else element by element, zero past seqlen and past N. The runs stay raw 32-bit words: at
  // 16-bit types each word of a unit is one byte permute of two rows' words.
  using Runs = BCRuns<T>;
  const auto load_bc_rows = [&](const T* var, int t0, int n0, Runs& v) {
    const int nq = n0 + lq * kStates;
    const T* base = var + static_cast<size_t>(nq) * p.seqlen + t0 + ls;
    if (aligned && t0 + ls + kBCLoadItems <= p.seqlen && n0 + kPass <= N) {
#pragma unroll
      for (int j = 0; j < kStates; ++j) load_run<T>(base + static_cast<size_t>(j) * p.seqlen, v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        const T* row = base + static_cast<size_t>(j) * p.seqlen;
        T e[kBCLoadItems];
#pragma unroll
        for (int i = 0; i < kBCLoadItems; ++i) e[i] = nq + j < N && t0 + ls + i < p.seqlen ? row[i] : T{};
        memcpy(v[j], e, sizeof(e));
      }
    }
  };
  uint4* const bc_dst = reinterpret_cast<uint4*>(s_bc + ls * kUnitsPerPosition + lq);
  // float32: B's and C's halves of the units separately (`half` 0 or 1); 16-bit types: both at once.
  const auto store_bc_half = [&](const Runs& v, int half) {
#pragma unroll
    for (int i = 0; i < kBCLoadItems; ++i)
      bc_dst[2 * kUnitsPerPosition * i + half] = make_uint4(v[0][i], v[1][i], v[2][i], v[3][i]);
  };
  const auto store_bc = [&](const Runs& bv, const Runs& cv) {
#pragma unroll
    for (int i = 0; i < kBCLoadItems; ++i) {
      const int w = i / 2;
      const unsigned sel = i % 2 ? 0x7632u : 0x5410u;  // the high or low halves of two words
      bc_dst[kUnitsPerPosition * i] = make_uint4(__byte_perm(bv[0][w], bv[1][w], sel), __byte_perm(bv[2][w], bv[3][w], sel),
                                                 __byte_perm(cv[0][w], cv[1][w], sel), __byte_perm(cv[2][w], cv[3][w], sel));
    }
  };
  // This thread's states of a pass and their parameters (registers through the pass).
  float x[kStates], A2[kStates], Bc[kStates], Cc[kStates], P[kStates];
  const auto load_pass = [&](int n0) {
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const int n = n0 + split * kStates + j;
      const bool in = n < N;
      x[j] = in ? s_x[r * N + n] : 0.f;
      P[j] = kEndOnly && in ? s_P[r * N + n] : 1.f;
      A2[j] = in ? p.A[param_row + n] * kLog2e : 0.f;
      Bc[j] = in && !kVarB ? static_cast<const float*>(p.B)[param_row + n] : 0.f;
      Cc[j] = in && !kVarC && !kEndOnly ? static_cast<const float*>(p.C)[param_row + n] : 0.f;
    }
  };
  for (int t0 = t_begin; t0 < t_end; t0 += kTile) {
    __syncthreads();  // the previous tile is done with s_dt, s_du, s_y and has written s_x
    if (!kEndOnly && t0 % kScanChunk == 0) {
      for (int i = tid; i < rows * N; i += kThreads)
        p.saved[((row0 + i / N) * p.n_chunks + t0 / kScanChunk) * N + i % N] = s_x[i];
    }
    // The next tile's u, delta and z rows of this thread into L2 now, a tile ahead of their loads
    // (which then wait for L2, not for device memory). B and C are not prefetched: the blocks of all
    // dims of a group read the same rows, so all but the first find them in L2.
    if (load_row && t0 + kTile < t_end) {
      const size_t next = load_offset + t0 + kTile + lt;
      prefetch_l2(static_cast<const T*>(p.u) + next);
      prefetch_l2(static_cast<const T*>(p.delta) + next);
      if (!kEndOnly && p.z) prefetch_l2(static_cast<const T*>(p.z) + next);
    }
    {
      float u[kRowItems], raw[kRowItems];
      if (load_row) {
        load_items<T, kRowItems>(static_cast<const T*>(p.u) + load_offset, t0 + lt, p.seqlen, aligned, u);
        load_items<T, kRowItems>(static_cast<const T*>(p.delta) + load_offset, t0 + lt, p.seqlen, aligned, raw);
      }
      // 0 past the end: identity steps. Four positions per 128-bit store. `inside`: the whole run is
      // in range (every run but the last of a row, and none of a thread without a row), so that
      // the common case makes no per-position comparison or select.
      const auto store_run = [&](bool inside) {
#pragma unroll
        for (int i = 0; i < kRowItems; i += 4) {
          float dt[4], uv[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            // Selects, not branches: softplus is computed whether used or not (cheaper than a branch
            // around it per position).
            const bool in = inside || (load_row && t0 + lt + i + k < p.seqlen);
            const float v = raw[i + k] + bias, sp = softplus(v);
            dt[k] = in ? (p.delta_softplus ? sp : v) : 0.f;
            uv[k] = in ? u[i + k] : 0.f;
          }
          const int at = lr * kStride + lt + i;
          *reinterpret_cast<float4*>(s_dt + at) = make_float4(dt[0], dt[1], dt[2], dt[3]);
          *reinterpret_cast<float4*>(s_du + at) = make_float4(dt[0] * uv[0], dt[1] * uv[1], dt[2] * uv[2], dt[3] * uv[3]);
          *reinterpret_cast<float4*>(s_y + at) = make_float4(D * uv[0], D * uv[1], D * uv[2], D * uv[3]);
        }
      };
      if (load_row && t0 + lt + kRowItems <= p.seqlen) {
        store_run(true);
      } else {
        store_run(false);
      }
    }
    if constexpr (kVarlen) {
      const unsigned starts = __ballot_sync(kFullMask, starts_sequence(p, b, t0 + tid));
      if (tid % 32 == 0) s_starts[tid / 32] = starts;
    }
    for (int pass = 0; pass < n_passes; ++pass) {
      const int n0 = pass * kPass;
      __syncthreads();  // the per-dim tiles written; the previous pass is done with s_bc
      {
        Runs bv = {}, cv = {};
        if constexpr (sizeof(T) == 4) {
          // B's half of each unit first: the B and C runs of 16 floats each would not both fit in
          // registers beside the states.
          if (var_B) load_bc_rows(B_var, t0, n0, bv);
          store_bc_half(bv, 0);
          if (var_C) load_bc_rows(C_var, t0, n0, cv);
          store_bc_half(cv, 1);
        } else {
          if (var_B) load_bc_rows(B_var, t0, n0, bv);
          if (var_C) load_bc_rows(C_var, t0, n0, cv);
          store_bc(bv, cv);
        }
      }
      __syncthreads();  // the B/C tile written
      load_pass(n0);
      const uint64_t starts = kVarlen ? s_starts[0] | static_cast<uint64_t>(s_starts[1]) << 32 : 0;
      // The tile in groups of kGroup positions, kSplit steps of kSplit positions each, unrolled: the
      // reads take constant offsets from one pointer per group. Each thread keeps its partial y (its
      // states) of the group's positions and the kSplit threads of a dim reduce-scatter them over the
      // steps (a shuffle pair after every two steps, one at the group's end), so that thread `split`
      // ends with the full y of kSplit consecutive positions: one 128-bit read-add-write of s_y per
      // group and no shared store inside the group (a store there kept the compiler from reading the
      // next step's tile values early, as it cannot tell the tiles apart).
      const float* dt_row = s_dt + r * kStride;
      const float* du_row = s_du + r * kStride;
      const BCUnit<T>* bc_col = s_bc + split;
      const bool high = split & 2, odd = split & 1;
#pragma unroll 1
      for (int g = 0; g < kTile; g += kGroup) {
        const uint32_t group_starts = kVarlen ? static_cast<uint32_t>(starts >> g) : 0u;
        float prev[kSplit], pair[2][kSplit];
#pragma unroll
        for (int step = 0; step < kSplit; ++step) {
          const int t0 = g + step * kSplit;
          float y[kSplit];
          const float4 dt4 = *reinterpret_cast<const float4*>(dt_row + t0);
          const float4 du4 = *reinterpret_cast<const float4*>(du_row + t0);
          const float dts[kSplit] = {dt4.x, dt4.y, dt4.z, dt4.w}, dus[kSplit] = {du4.x, du4.y, du4.z, du4.w};
          // The step's kSplit positions; `starts_here` has a bit for each that starts a sequence.
          const auto positions = [&](uint32_t starts_here) {
#pragma unroll
            for (int q = 0; q < kSplit; ++q) {
              const float dt = dts[q], du = dus[q];
              // This thread's B and C at tile position t0 + q: from the tile, or the constant ones.
              float Bv[kStates], Cv[kStates];
              unpack(bc_col[(t0 + q) * kUnitsPerPosition], Bv, Cv);
#pragma unroll
              for (int j = 0; j < kStates; ++j) {
                Bv[j] = var_B ? Bv[j] : Bc[j];
                Cv[j] = var_C ? Cv[j] : Cc[j];
              }
              y[q] = 0.f;
              // A sequence starts here: the state restarts from zero (the end-only pass's decay is 0 there).
              const bool restart = starts_here >> q & 1;
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
          };
          // Packed rows: the starts are the same for the whole block (one batch entry), so this branch
          // is uniform, and steps without a start run the code without the restart selects.
          const uint32_t step_starts = kVarlen ? group_starts >> step * kSplit & ((1u << kSplit) - 1) : 0u;
          if (kVarlen && step_starts != 0) {
            positions(step_starts);
          } else {
            positions(0u);
          }
          if (kEndOnly) continue;  // states and decay products only: no C, no y
          // Steps 2m and 2m + 1: the odd thread of each pair keeps step 2m + 1's sums over the pair,
          // the even one step 2m's.
          if (step % 2 == 0) {
#pragma unroll
            for (int q = 0; q < kSplit; ++q) prev[q] = y[q];
          } else {
#pragma unroll
            for (int q = 0; q < kSplit; ++q)
              pair[step / 2][q] = (odd ? y[q] : prev[q]) + __shfl_xor_sync(kFullMask, odd ? prev[q] : y[q], 1);
          }
        }
        if constexpr (!kEndOnly) {
          // The high threads keep steps 2 and 3, summed over all kSplit threads: thread `split` now
          // has step `split`, i.e. positions g + kSplit * split + q.
          float mine[kSplit];
#pragma unroll
          for (int q = 0; q < kSplit; ++q)
            mine[q] = (high ? pair[1][q] : pair[0][q]) + __shfl_xor_sync(kFullMask, high ? pair[0][q] : pair[1][q], 2);
          float4* dst = reinterpret_cast<float4*>(s_y + r * kStride + g + kSplit * split);
          float4 acc = *dst;
          acc.x += mine[0], acc.y += mine[1], acc.z += mine[2], acc.w += mine[3];
          *dst = acc;
        }
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

template <typename T, bool kVarlen, bool kEndOnly, bool kVarB, bool kVarC>
int launch(const SelectiveScanParams& p, int segments, cudaStream_t stream) {
  using namespace ssm_tools_cuda;
  const int blocks_per_group = (p.dim / p.n_groups + kRows - 1) / kRows;
  auto kernel = selective_scan_fwd_kernel<T, kVarlen, kEndOnly, kVarB, kVarC>;
  const size_t smem = smem_bytes<T>(p.dstate, kEndOnly);
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  kernel<<<dim3(p.n_groups * blocks_per_group, p.batch, segments), kThreads, smem, stream>>>(p, blocks_per_group);
  return static_cast<int>(cudaGetLastError());
}

// The end-only pass does not read C: its kernel is the one for constant C whatever C is.
template <typename T, bool kVarlen, bool kVarB, bool kVarC>
int launch_all(const SelectiveScanParams& p, cudaStream_t stream) {
  if (p.n_segments > 1) {
    const int err = launch<T, kVarlen, true, kVarB, false>(p, p.n_segments - 1, stream);
    if (err) return err;
  }
  return launch<T, kVarlen, false, kVarB, kVarC>(p, p.n_segments, stream);
}

template <typename T, bool kVarlen>
int launch_all(const SelectiveScanParams& p, cudaStream_t stream) {
  if (p.variable_B) {
    return p.variable_C ? launch_all<T, kVarlen, true, true>(p, stream) : launch_all<T, kVarlen, true, false>(p, stream);
  }
  return p.variable_C ? launch_all<T, kVarlen, false, true>(p, stream) : launch_all<T, kVarlen, false, false>(p, stream);
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
