// Backward selective scan. A block of kRows warps owns kRows consecutive dims of one batch entry and
// one group of B/C; each warp owns one (batch, dim) row and walks its saved chunks (kScanChunk = 256
// positions, 8 per lane) from last to first. For each chunk and state n the warp
//   1. recomputes the chunk's states x_t by a forward warp scan from the forward's `saved` state,
//   2. runs the adjoint g_t = dL/dx_t = exp(delta_{t+1} A_n) g_{t+1} + C_t dy_t as a reverse warp
//      scan, started from the adjoint carried out of the next chunk (dlast_state for the last one),
//   3. accumulates every gradient from (x_{t-1}, x_t, g_t).
// So it stores nothing of size (batch, dim, seqlen, dstate), and every scan is a warp scan: no block
// barrier inside a row's work. Per-row values of each state (A, constant B/C, the saved state entering
// the chunk, the carried adjoint, the sums dA and constant dB/dC) live in shared memory; sums over rows
// (dA, dD, ddelta_bias over batch) are float32 atomics into zero-filled outputs.
//
// Few live registers (no spills under the 128-register cap of two blocks per SM): the per-position
// factors that do not depend on the state are formed once per chunk (delta * u; dy = dL/dy before
// gating), and the state loop keeps two sums per position: S = sum_n g B_n, from which du = delta S +
// D dy and ddelta's input term u S follow at the chunk's end, and E = sum_n A_n dL/d(delta A_n).
//
// 16-bit input-dependent B and C at dstate <= 16 (kChunkBC, Mamba's case) are read for all states of a
// chunk at its start, with its other inputs, into shared memory (32 KB of float32 at dstate 16; two
// blocks an SM still fit). Otherwise input-dependent B/C of the block's group, one state over one chunk,
// are read from global memory once per block into a shared tile (all kRows warps use the same values), one state ahead: while the
// warps compute state n, the tile of the next state (or of the previous chunk's first state) is in
// flight (cp.async for float32 B/C rows that are 16-byte aligned, else one B and one C element per
// thread held in registers). The tile is float32: 16-bit B/C are converted once, by the loads.
//
// Input-dependent dB/dC are sums over the dims of a group at every position: the block's warps put
// their rows' values of state n in shared memory, and after one barrier the block adds their sum into
// dB/dC with float4 atomics of consecutive positions (kRows times fewer atomics than one per row, and
// each warp's atomic instruction covers 512 contiguous bytes). The same barrier publishes the next
// state's B/C tile. Two buffers of each alternate between states, so one barrier per state suffices.
// The grid runs batch entries fastest, so the blocks resident at once add into many different dB/dC
// rows rather than colliding on one.
//
// Packed rows (kVarlen, p.seq_idx): the decay into a position that starts a sequence is 0, so the
// recomputed state restarts there, no adjoint flows back into the sequence before, and the decay's
// gradient terms vanish, as for separate rows.
//
// Measured on the H100 (results/selective_scan_cuda_notes.md): earlier designs with a block scan per
// row over 2,048-position chunks, and dB/dC pooled over thread-block clusters, were slower at every
// benchmark and training shape.
#include <type_traits>

#include "kernels/scan_row.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kItems = 8;
static_assert(32 * kItems == kScanChunk, "one warp covers one saved chunk");
// 8 rows per block, two blocks (16 warps) per SM at up to 128 registers: measured on the H100 against
// 4 rows (4 or 3 blocks per SM) and 8 rows at one block without the register cap, this was fastest at
// every training and benchmark shape (results/selective_scan_cuda_notes.md).
constexpr int kRows = 8;
constexpr int kThreads = kRows * 32;
constexpr int kMinBlocks = 2;

// Per-row values of each state in dynamic shared memory, [kRows][dstate][kRowValues] floats (one
// address per state for all of them): kAdj, the adjoint flowing into the current chunk's last
// position; kDA, kDB, kDC, the sums of dA and of constant dB/dC; kRowA, kRowB, kRowC, A and constant
// B/C; kSaved, the state entering the current chunk.
enum RowValue { kAdj, kDA, kDB, kDC, kRowA, kRowB, kRowC, kSaved, kRowValues };

// kChunkBC (16-bit input-dependent B and C, dstate <= kChunkStates): B/C of all states of the current
// chunk in dynamic shared memory after the per-row values, [kChunkStates][B, C][kScanChunk] float32
// (32 KB), loaded once per chunk with its other inputs instead of a tile per state. Planes of states
// past dstate are written (with whatever the loads left) and never read, so the stores need no bound.
constexpr int kChunkStates = 16;

// Dynamic shared memory: the per-row values, and kChunkBC's B/C of a chunk.
size_t smem_bytes(int dstate, bool chunk_bc) {
  return (kRowValues * kRows * static_cast<size_t>(dstate) + (chunk_bc ? 2 * kScanChunk * kChunkStates : 0)) * sizeof(float);
}

// Static shared memory: the dB/dC parts [2 buffers][B, C][kRows][kScanChunk], y [kRows][kScanChunk] and
// (not kChunkBC) the B/C tile [2 stages][B, C][kScanChunk], all float32.
constexpr size_t static_smem_bytes(bool chunk_bc) { return (5 * kRows + (chunk_bc ? 0 : 4)) * kScanChunk * sizeof(float); }

// Where position i of a chunk lies in a chunk-long plane of shared memory (the tile's B and C, a
// row's dB/dC parts, y): lane i / kItems's positions as kItems / 4 float4s, the j-th float4s of all
// lanes next to each other, so that the warp's 16-byte accesses of one j touch 512 contiguous bytes
// (no bank conflicts; lane-contiguous runs of kItems floats would be 32 bytes apart).
__device__ __forceinline__ int chunk_slot(int i) { return ((i / 4) % (kItems / 4) * 32 + i / kItems) * 4 + i % 4; }

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  // src_bytes < 16: the rest of the 16 bytes is zero-filled (positions past seqlen).
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes) : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Loads of one state's input-dependent B/C over one chunk into a stage of the shared tile, issued
// before the state's work and completed after it (before the barrier that publishes the stage). The
// tile is float32: 16-bit inputs are converted here, once per block, instead of by each of its warps
// in the state's work. float32 B/C rows that are 16-byte aligned come as 16-byte cp.async pieces;
// otherwise each thread loads one position of B and of C, held in registers over the state's work.
// kVarBC: B and C are both input-dependent (known when compiling).
template <typename T, bool kVarBC>
struct TileLoader {
  static constexpr int kPieces = kScanChunk / 4;  // 16-byte pieces of float32 per plane (B or C)
  static_assert(2 * kPieces <= kThreads && kScanChunk == kThreads, "one piece, or one B and one C element, per thread");
  const T* B;      // the group's (dstate, seqlen) B, or null when B is constant; likewise C. async: B is
  const T* C;      // this thread's plane (B or C), C unused
  int seqlen;
  int pos;         // this thread's (first) position in a chunk
  int slot;        // where it goes in a stage (async: in its plane's half)
  bool async;      // float32 B/C rows, 16-byte aligned: cp.async pieces
  bool loads;      // this thread issues loads
  T held_B, held_C;  // the other path: this thread's position of each plane
  // kVarBC, the state loop's issues (issue_next): the global-space address of this thread's element (async:
  // piece) of the next state in this chunk, and of state 0 of the chunk before (chunk 0: itself), whether
  // the thread's position is in range in each, and C's address from B's.
  size_t next_global, wrap_global;
  bool next_in, wrap_in;
  ptrdiff_t C_from_B;

  __device__ TileLoader(const SelectiveScanParams& p, int b, int group) {
    const size_t group_offset = (static_cast<size_t>(b) * p.n_groups + group) * p.dstate * p.seqlen;
    B = kVarBC || p.variable_B ? static_cast<const T*>(p.B) + group_offset : nullptr;
    C = kVarBC || p.variable_C ? static_cast<const T*>(p.C) + group_offset : nullptr;
    seqlen = p.seqlen;
    C_from_B = kVarBC ? reinterpret_cast<const char*>(C) - reinterpret_cast<const char*>(B) : 0;
    async = sizeof(T) == 4 && p.seqlen % 4 == 0 && (!B || is_aligned16(B)) && (!C || is_aligned16(C));
    const int tid = threadIdx.x;
    if (async) {
      const int plane = tid / kPieces;
      pos = tid % kPieces * 4;
      slot = plane * kScanChunk + chunk_slot(pos);
      if (plane != 0) B = C;
      loads = tid < 2 * kPieces && (kVarBC || B);
    } else {
      pos = tid;
      slot = chunk_slot(tid);
      loads = true;
    }
  }

  // Starts loading state n of the chunk starting at position t0 into stage ([B, C][kScanChunk]).
  __device__ __forceinline__ void issue(int t0, int n, float* stage) {
    const int t = t0 + pos;
    const size_t at = static_cast<size_t>(n) * seqlen + t;
    if (sizeof(T) == 4 && async) {
      if (loads) {
        const int bytes = min(max(seqlen - t, 0), 4) * static_cast<int>(sizeof(float));
        cp_async16(stage + slot, B + (bytes > 0 ? at : 0), bytes);
      }
    } else {
      const bool in = t < seqlen;
      held_B = (kVarBC || B) && in ? B[at] : from_float<T>(0.f);
      held_C = (kVarBC || C) && in ? C[at] : from_float<T>(0.f);
    }
  }

  // kVarBC: sets up issue_next() for the states of chunk c.
  __device__ __forceinline__ void start_chunk(int c) {
    const int t = c * kScanChunk + pos, t_wrap = max(c - 1, 0) * kScanChunk + pos;
    next_in = t < seqlen;
    wrap_in = t_wrap < seqlen;
    next_global = __cvta_generic_to_global(B + seqlen + t);  // state 1 (only used in range)
    wrap_global = __cvta_generic_to_global(B + t_wrap);
  }

  // kVarBC: as issue(), for the next state of the chunk given to start_chunk(), or (wrap: after its
  // last state) state 0 of the chunk before it. The address advances by a row per state and is opaque
  // to the compiler, which otherwise formed it again from (chunk, state) in every state.
  __device__ __forceinline__ void issue_next(bool wrap, float* stage) {
    const bool in = wrap ? wrap_in : next_in;
    const T* at = static_cast<const T*>(__cvta_global_to_generic(wrap ? wrap_global : next_global));
    if (sizeof(T) == 4 && async) {
      if (loads) cp_async16(stage + slot, in ? at : B, in ? 16 : 0);
    } else {
      held_B = in ? at[0] : from_float<T>(0.f);
      held_C = in ? *reinterpret_cast<const T*>(reinterpret_cast<const char*>(at) + C_from_B) : from_float<T>(0.f);
    }
    next_global += seqlen * sizeof(T);
    asm("" : "+l"(next_global));
  }

  // Completes this thread's part of the stage started by issue(); a block barrier must follow.
  __device__ __forceinline__ void finish(float* stage) {
    if (sizeof(T) == 4 && async) {
      cp_async_wait_all();
    } else {
      stage[slot] = to_float(held_B);
      stage[kScanChunk + slot] = to_float(held_C);
    }
  }
};

// kChunkBC: one chunk's 16-bit B and C of every state, loaded by the whole block into registers with the
// chunk's other inputs (one round trip to memory for all of them) and then converted into shared memory
// ([kChunkStates][B, C][kScanChunk], chunk_slot's layout). Unit s = warp + kRows j is plane s % 2 (B, C)
// of state s / 2; the lane loads its kItems positions of it (16 bytes, so a warp's load is 512
// contiguous bytes), element by element where the run is not whole or the rows not 16-byte aligned.
// Units of states past dstate load nothing, and their planes are stored unread.
template <typename T>
struct ChunkBC {
  static constexpr int kUnits = 2 * kChunkStates / kRows;
  uint4 raw[kUnits];

  // row: the warp's unit 0, plane warp % 2 (B, C) of state warp / 2 (unit j is state warp / 2 + j kRows / 2).
  __device__ __forceinline__ void load(const T* row, int N, int seqlen, bool aligned, int first, int warp) {
    static_assert(sizeof(T) * kItems == 16, "a lane's positions of a plane are one 16-byte load");
    const T* const src = row + first;
    const size_t stride = static_cast<size_t>(kRows / 2) * seqlen;
    // One branch for all units (the compiler branched per unit otherwise).
    if (aligned && first + kItems <= seqlen) {
#pragma unroll
      for (int j = 0; j < kUnits; ++j)
        if (warp + kRows * j < 2 * N) raw[j] = __ldg(reinterpret_cast<const uint4*>(src + j * stride));
    } else {
#pragma unroll
      for (int j = 0; j < kUnits; ++j) {
        T* e = reinterpret_cast<T*>(&raw[j]);
#pragma unroll
        for (int i = 0; i < kItems; ++i)
          e[i] = warp + kRows * j < 2 * N && first + i < seqlen ? src[j * stride + i] : from_float<T>(0.f);
      }
    }
  }

  // Element i of a lane's run as float. A bfloat16 is the upper half of a float32: one shift or mask (the
  // compiler's conversion of a word's upper half took two instructions).
  __device__ __forceinline__ static float element(const uint4& q, int i) {
    const unsigned w = i < 4 ? (i < 2 ? q.x : q.y) : (i < 6 ? q.z : q.w);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(i % 2 ? w & 0xffff0000u : w << 16);
    else return to_float(reinterpret_cast<const T*>(&q)[i]);
  }

  // A block barrier must follow before the state loop reads them.
  __device__ __forceinline__ void store(float* s_bc, int warp, int lane) const {
#pragma unroll
    for (int j = 0; j < kUnits; ++j) {
      const uint4& q = raw[j];
      float4* dst = reinterpret_cast<float4*>(s_bc + (warp + kRows * j) * kScanChunk) + lane;
      dst[0] = make_float4(element(q, 0), element(q, 1), element(q, 2), element(q, 3));
      dst[32] = make_float4(element(q, 4), element(q, 5), element(q, 6), element(q, 7));
    }
  }
};

// This lane's kItems positions of one chunk-long plane (chunk_slot's layout).
__device__ __forceinline__ void load_chunk_items(const float* plane, int lane, float (&v)[kItems]) {
  const float4* src = reinterpret_cast<const float4*>(plane) + lane;
#pragma unroll
  for (int j = 0; j < kItems / 4; ++j) {
    const float4 q = src[32 * j];
    v[4 * j] = q.x, v[4 * j + 1] = q.y, v[4 * j + 2] = q.z, v[4 * j + 3] = q.w;
  }
}

// Packed rows: bit i set where position first + i (a lane's kItems positions, first = lane * kItems
// plus the chunk's start) starts a sequence, i.e. 0 < t < seqlen and seq[t] != seq[t - 1]. Whole
// runs in range of a 16-byte aligned row come as two 16-byte loads, and the position before a
// lane's first from the lane before it (one shuffle; lane 0 reads it). All lanes of the warp call it.
__device__ __forceinline__ unsigned sequence_starts(const int32_t* seq, int first, int seqlen, int lane) {
  int32_t s[kItems];
  const bool whole = first + kItems <= seqlen;
  if (whole && seqlen % 4 == 0 && is_aligned16(seq)) {
    const int4* src = reinterpret_cast<const int4*>(seq + first);
#pragma unroll
    for (int j = 0; j < kItems / 4; ++j) {
      const int4 q = __ldg(src + j);
      s[4 * j] = q.x, s[4 * j + 1] = q.y, s[4 * j + 2] = q.z, s[4 * j + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) s[i] = first + i < seqlen ? seq[first + i] : 0;
  }
  int32_t before = __shfl_up_sync(kFullMask, s[kItems - 1], 1);
  if (lane == 0) before = first > 0 && first <= seqlen ? seq[first - 1] : s[0];
  unsigned starts = 0;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const bool change = (i == 0 ? before : s[i - 1]) != s[i];
    starts |= change && (whole || first + i < seqlen) ? 1u << i : 0u;
  }
  // Opaque: the state loop then takes the bits into predicates with one R2P (the compiler otherwise
  // kept them among its own flag bits, tested one by one in every state).
  asm("" : "+r"(starts));
  return starts;
}

// kVarBC: B and C are both input-dependent (Mamba's case); the code for constant ones is left out.
// kChunkBC: B/C of a chunk loaded once per chunk (ChunkBC; 16-bit B and C, both input-dependent,
// dstate <= kChunkStates), else a tile per state (TileLoader).
template <typename T, bool kVarlen, bool kVarBC, bool kChunkBC>
__global__ __launch_bounds__(kThreads, kMinBlocks) void selective_scan_bwd_kernel(SelectiveScanParams p, int blocks_per_group) {
  // One array, so that every address in it is one base plus a constant (the compiler forms the base
  // again where registers are short): the dB/dC parts, y = D u + sum_n C_n x_n of every row's positions
  // (chunk_slot's layout; read back at the chunk's end only, for dz, so it is summed here rather than
  // held in registers), and (not kChunkBC) the B/C tile.
  static_assert(!kChunkBC || (kVarBC && sizeof(T) == 2), "kChunkBC: 16-bit B and C, both input-dependent");
  __shared__ float4 s_static4[static_smem_bytes(kChunkBC) / sizeof(float4)];
  float4* const s_parts4 = s_static4;
  float4* const s_y4 = s_parts4 + kRows * kScanChunk;
  float4* const s_tile4 = s_y4 + kRows * kScanChunk / 4;  // not kChunkBC
  float* s_parts = reinterpret_cast<float*>(s_parts4);
  float* s_tile = reinterpret_cast<float*>(s_tile4);
  extern __shared__ float s_rows[];
  const int N = p.dstate;
  float* const s_bc = s_rows + kRowValues * kRows * N;  // kChunkBC: [kChunkStates][B, C][kScanChunk]
  // Input-dependent B and C (kVarBC: both, known when compiling; the launcher checks).
  const bool var_B = kVarBC || p.variable_B, var_C = kVarBC || p.variable_C;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, b = blockIdx.x;
  const int dims_per_group = p.dim / p.n_groups, group = blockIdx.y / blocks_per_group;
  const int d0 = group * dims_per_group + (blockIdx.y % blocks_per_group) * kRows;
  const int rows = min(kRows, (group + 1) * dims_per_group - d0);
  // Warps past `rows` (the group's last block) compute nothing but take part in the barriers and loads.
  const bool active = warp < rows;
  const ScanRow<T> r(p, active ? d0 + warp : d0, b);
  // The first tile's loads are issued first, then the first chunk's rows of u, delta, dout and z, then
  // the per-row values (init_rows), and none is used before all are issued; the tile and the per-row
  // values are published by the first chunk's barrier. So they are one round trip to memory, not a
  // chain of them (per-row values, tile, u and delta, dout and z, saved state): a short row, e.g.
  // seqlen 216, is a single chunk (no saved state to read) and pays this once per block.
  const bool tiled = var_B || var_C;
  TileLoader<T, kVarBC> tile_loader(p, b, group);
  if (!kChunkBC && tiled) tile_loader.issue((p.n_chunks - 1) * kScanChunk, 0, s_tile);
  // kChunkBC: the group's B and C, and whether 16-byte loads of a lane's positions are allowed.
  const size_t bc_offset = (static_cast<size_t>(b) * p.n_groups + group) * N * p.seqlen;
  const T* const bc_B = static_cast<const T*>(p.B) + bc_offset;
  const T* const bc_C = static_cast<const T*>(p.C) + bc_offset;
  const bool bc_aligned = p.seqlen % kItems == 0 && is_aligned16(bc_B) && is_aligned16(bc_C);
  const T* const bc_row = (warp % 2 ? bc_C : bc_B) + static_cast<size_t>(warp / 2) * p.seqlen;
  const auto init_rows = [&] {
    for (int i = tid; i < kRows * N; i += kThreads) {  // i = w * N + n: row w, state n
      const bool valid = i / N < rows;
      const size_t param = static_cast<size_t>(d0) * N + i;  // (dim, dstate) entry of row w, state n
      float* v = s_rows + i * kRowValues;
      v[kAdj] = valid && p.dlast_state ? p.dlast_state[static_cast<size_t>(b) * p.dim * N + param] : 0.f;
      // kSaved is written by the row's warp in every chunk before use (not here: no barrier orders
      // the two before the first chunk's).
      v[kDA] = v[kDB] = v[kDC] = 0.f;
      v[kRowA] = valid ? p.A[param] : 0.f;
      v[kRowB] = valid && !var_B ? static_cast<const float*>(p.B)[param] : 0.f;
      v[kRowC] = valid && !var_C ? static_cast<const float*>(p.C)[param] : 0.f;
    }
    // The dB/dC parts of rows past `rows` stay zero, so the sum over rows needs no bound.
    for (int i = rows * kScanChunk + tid; i < kRows * kScanChunk; i += kThreads)
      for (int k = 0; k < 4; ++k) s_parts[k * kRows * kScanChunk + i] = 0.f;
  };
  float* const row_values = s_rows + warp * N * kRowValues;  // this warp's state n: row_values + n * kRowValues

  // dB/dC rows start at multiples of seqlen floats in zero-filled (aligned) buffers.
  const bool atomics_aligned = p.seqlen % 4 == 0;
  // The sums over rows of input-dependent dB/dC: thread tid < 2 * kQuads adds one quad (4 positions)
  // of dB (first kQuads threads) or dC in every state, from the parts of buffer 0 at red_in (buffer 1
  // follows 2 * kRows * kScanChunk floats later) into red_out, the group's (dstate, seqlen) dB or dC.
  constexpr int kQuads = kScanChunk / 4;
  const int red_part = tid / kQuads, red_q = tid % kQuads;
  const bool reducer = tid < 2 * kQuads && (red_part == 0 ? var_B : var_C);
  const float4* const red_in = s_parts4 + red_part * kRows * kQuads + chunk_slot(4 * red_q) / 4;
  float* const red_out = (red_part == 0 ? p.dB : p.dC) + (static_cast<size_t>(b) * p.n_groups + group) * N * p.seqlen;
  float dD_sum = 0.f, dbias_sum = 0.f;
  int buf = 0;  // parts buffer and tile stage of the current state

#pragma unroll 1
  for (int c = p.n_chunks - 1; c >= 0; --c) {
    const int first = c * kScanChunk + lane * kItems;
    // This thread's quad of the sums over rows (if a reducer) in every state of the chunk: red_global is
    // the global-space address of its dB or dC at state n, advanced by a row (seqlen) per state.
    const int red_first = c * kScanChunk + 4 * red_q;
    const bool red_live = reducer && red_first < p.seqlen;
    size_t red_global = __cvta_generic_to_global(red_out + red_first);  // this state's quad, global space
    // Kept through the state loop: dt, dt * u, dy = dL/dy before gating, and the sums S, E.
    float dt[kItems], dtu[kItems], dy[kItems], S[kItems], E[kItems];
    float4* y4 = s_y4 + warp * kScanChunk / 4 + lane;  // this lane's y: y4[32 j] holds items 4j .. 4j + 3
    unsigned starts = 0;  // bit i: position first + i starts a sequence
    if (kVarlen) starts = sequence_starts(p.seq_idx + static_cast<size_t>(b) * p.seqlen, first, p.seqlen, lane);
    ChunkBC<T> chunk_bc;
    if constexpr (kChunkBC) chunk_bc.load(bc_row, N, p.seqlen, bc_aligned, first, warp);
    {
      float u[kItems], raw[kItems], dout[kItems], z[kItems];
      r.load(p.u, p, first, u);
      r.load(p.delta, p, first, raw);
      r.load(p.dout, p, first, dout);
      if (p.z) r.load(p.z, p, first, z);
      if (c == p.n_chunks - 1) init_rows();  // while the loads are in flight
      // kChunkBC: the previous chunk's B/C were last read before its last state's barrier; the barrier
      // below publishes these.
      if constexpr (kChunkBC) chunk_bc.store(s_bc, warp, lane);
      r.steps(p, first, raw, dt);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        dy[i] = p.z ? dout[i] * z[i] * sigmoid(z[i]) : dout[i];
        dtu[i] = dt[i] * u[i];
        // Kept as is: without this the compiler keeps u and forms dt * u again in every state.
        asm("" : "+f"(dtu[i]));
        S[i] = E[i] = 0.f;
      }
#pragma unroll
      for (int j = 0; j < kItems / 4; ++j)
        y4[32 * j] = make_float4(r.D * u[4 * j], r.D * u[4 * j + 1], r.D * u[4 * j + 2], r.D * u[4 * j + 3]);
    }
    if (active) {  // the states entering this chunk (the previous chunk's reads ended at a warp barrier)
      // The state entering chunk 0 is the zero state (the forward has no initial state), so a row of
      // one chunk reads nothing here.
      const float* saved = p.saved + ((static_cast<size_t>(b) * p.dim + d0 + warp) * p.n_chunks + c) * N;
      for (int n = lane; n < N; n += 32) row_values[n * kRowValues + kSaved] = c > 0 ? saved[n] : 0.f;
      __syncwarp();
    }
    if constexpr (kChunkBC) {
      __syncthreads();  // the chunk's B/C (and in the first chunk the per-row values and zeroed parts)
    } else {
      if (c == p.n_chunks - 1) {  // the first chunk: the per-row values, zeroed parts and first tile
        if (tiled) tile_loader.finish(s_tile);
        __syncthreads();
      }
      if (kVarBC) tile_loader.start_chunk(c);
    }
    float* v_next = row_values;  // state n's per-row values, advanced by a state in every iteration
    const float* bc_next = s_bc;  // kChunkBC: state n's B/C, advanced likewise
#pragma unroll 1
    for (int n = 0; n < N; ++n) {
      float* const v = v_next;
      v_next += kRowValues;
      float* parts = s_parts + buf * 2 * kRows * kScanChunk;  // [B, C][kRows][kScanChunk]
      const float* tile = kChunkBC ? bc_next : s_tile + buf * 2 * kScanChunk;  // [B, C][kScanChunk]
      bc_next += 2 * kScanChunk;
      float* next_tile = s_tile + (buf ^ 1) * 2 * kScanChunk;
      // The next state's B/C: state n + 1 of this chunk, or state 0 of the previous chunk.
      // With both B and C input-dependent, the last state of chunk 0 loads chunk 0's state 0 again, into
      // the stage nobody reads after it: no condition in the loop.
      const bool prefetch = !kChunkBC && (kVarBC || (tiled && (n + 1 < N || c > 0)));
      if (kVarBC && !kChunkBC)
        tile_loader.issue_next(n + 1 == N, next_tile);
      else if (prefetch)
        tile_loader.issue(n + 1 < N ? c * kScanChunk : (c - 1) * kScanChunk, n + 1 < N ? n + 1 : 0, next_tile);
      if (active) {
        const float An = v[kRowA], An2 = An * kLog2e;
        float Bv[kItems], Cv[kItems], a[kItems], x[kItems];
        if (var_B) {
          load_chunk_items(tile, lane, Bv);
        } else {
#pragma unroll
          for (int i = 0; i < kItems; ++i) Bv[i] = v[kRowB];
        }
        if (var_C) {
          load_chunk_items(tile + kScanChunk, lane, Cv);
        } else {
#pragma unroll
          for (int i = 0; i < kItems; ++i) Cv[i] = v[kRowC];
        }
        // 1. states of this chunk. The lane's map over its items x -> a x + b, and the adjoint's below,
        // share the decay product of items 1 .. kItems - 1 (inner).
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          a[i] = kVarlen && (starts >> i & 1) ? 0.f : exp2f(dt[i] * An2);
          x[i] = dtu[i] * Bv[i];
        }
        float inner = a[1];
#pragma unroll
        for (int i = 2; i < kItems; ++i) inner *= a[i];
        float2 map = make_float2(a[0] * inner, x[0]);
#pragma unroll
        for (int i = 1; i < kItems; ++i) map.y = fmaf(a[i], map.y, x[i]);
        const float adj_in = v[kAdj];  // read before the scans' warp barriers; lane 0 rewrites it below
        const float x_in = warp_scan_affine<false>(map, v[kSaved]);
        float xs = x_in;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          xs = fmaf(a[i], xs, x[i]);
          x[i] = xs;
        }
#pragma unroll
        for (int j = 0; j < kItems / 4; ++j) {
          float4 yj = y4[32 * j];
          yj.x = fmaf(Cv[4 * j], x[4 * j], yj.x);
          yj.y = fmaf(Cv[4 * j + 1], x[4 * j + 1], yj.y);
          yj.z = fmaf(Cv[4 * j + 2], x[4 * j + 2], yj.z);
          yj.w = fmaf(Cv[4 * j + 3], x[4 * j + 3], yj.w);
          y4[32 * j] = yj;
        }
#pragma unroll
        for (int i = 0; i < kItems; ++i) Cv[i] *= dy[i];  // from here on Cv holds C dy, the adjoint's input
        // 2. adjoint: g_i = a_{i+1} g_{i+1} + C_i dy_i; the chunk's last position takes adj_in as is.
        bool below;  // the lane after this one is in the warp (not for lane 31)
        float a_next = shfl_in_warp<true>(a[0], 1, below);
        if (!below) a_next = 1.f;
        map = make_float2(inner * a_next, Cv[kItems - 1]);
#pragma unroll
        for (int i = kItems - 2; i >= 0; --i) map.y = fmaf(a[i + 1], map.y, Cv[i]);
        float g = warp_scan_affine<true>(map, adj_in);
        // 3. gradients, walking the lane's positions backwards. Input-dependent dB/dC of 4 positions
        // at a time go to this row's parts (16-byte stores, chunk_slot's layout).
        float4* dB_part = reinterpret_cast<float4*>(parts + warp * kScanChunk) + lane;
        float4* dC_part = reinterpret_cast<float4*>(parts + (kRows + warp) * kScanChunk) + lane;
        float dA = 0.f, dB = 0.f, dC = 0.f, dBv[kItems], dCv[kItems];
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          g = fmaf(i + 1 < kItems ? a[i + 1] : a_next, g, Cv[i]);
          const float gd = g * (a[i] * (i > 0 ? x[i - 1] : x_in));  // dL/d(delta_i A_n)
          dBv[i] = g * dtu[i];
          dCv[i] = dy[i] * x[i];
          S[i] = fmaf(g, Bv[i], S[i]);
          E[i] = fmaf(An, gd, E[i]);
          dA = fmaf(dt[i], gd, dA);
          if (!var_B) dB += dBv[i];
          if (!var_C) dC += dCv[i];
          if (i % 4 == 0) {
            if (var_B) dB_part[32 * (i / 4)] = make_float4(dBv[i], dBv[i + 1], dBv[i + 2], dBv[i + 3]);
            if (var_C) dC_part[32 * (i / 4)] = make_float4(dCv[i], dCv[i + 1], dCv[i + 2], dCv[i + 3]);
          }
        }
        // Positions past seqlen have dt = u = dy = 0, so they add nothing to dA, dB, dC.
        dA = warp_sum(dA);
        if (!var_B) dB = warp_sum(dB);
        if (!var_C) dC = warp_sum(dC);
        __syncwarp();  // every lane has read v[kAdj]
        if (lane == 0) {  // lane 0 alone updates its row's entries
          v[kAdj] = a[0] * g;  // what flows into the previous chunk's last position
          v[kDA] += dA;
          if (!var_B) v[kDB] += dB;
          if (!var_C) v[kDC] += dC;
        }
        __syncwarp();  // and the warp sees them (v[kAdj] is read again in the next chunk)
      }
      if (tiled) {
        // Every row's part of state n is written, and this thread's loads of the next tile are done;
        // after the barrier both are visible to the block. The other parts buffer and this state's tile
        // stage were last read before this barrier, so they are free to write in the next state.
        if (prefetch) tile_loader.finish(next_tile);
        __syncthreads();
        if (red_live) {
          const float4* in = red_in + buf * 2 * kRows * kQuads;
          float4 sum = in[0];
#pragma unroll
          for (int w = 1; w < kRows; ++w) {  // rows past `rows` hold zeros
            const float4 s = in[w * kQuads];
            sum.x += s.x, sum.y += s.y, sum.z += s.z, sum.w += s.w;
          }
          const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
          float* const red_dst = static_cast<float*>(__cvta_global_to_generic(red_global));
          atomic_add_items<4>(red_dst, p.seqlen - red_first, atomics_aligned, s4);
        }
        red_global += p.seqlen * sizeof(float);
        // Opaque: otherwise the compiler derives the scalar atomics' addresses from a 64-bit state count
        // that it advances in every state.
        asm("" : "+l"(red_global));
        buf ^= 1;
      }
    }
    if (active) {
      float u[kItems], raw[kItems], dout[kItems], z[kItems], du[kItems], ddelta[kItems], dz[kItems], y[kItems];
#pragma unroll
      for (int j = 0; j < kItems / 4; ++j) {
        const float4 yj = y4[32 * j];
        y[4 * j] = yj.x, y[4 * j + 1] = yj.y, y[4 * j + 2] = yj.z, y[4 * j + 3] = yj.w;
      }
      r.reload(p.u, p, first, u);
      r.reload(p.delta, p, first, raw);
      r.reload(p.dout, p, first, dout);
      if (p.z) r.reload(p.z, p, first, z);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const float s = p.z ? sigmoid(z[i]) : 0.f;
        dz[i] = p.z ? dout[i] * s * (1.f + z[i] * (1.f - s)) * y[i] : 0.f;
        du[i] = fmaf(dt[i], S[i], r.D * dy[i]);
        const float ddt = fmaf(u[i], S[i], E[i]);
        ddelta[i] = p.delta_softplus ? ddt * sigmoid(raw[i] + r.bias) : ddt;
        if (first + i < p.seqlen) {
          dD_sum += dy[i] * u[i];
          dbias_sum += ddelta[i];
        }
      }
      r.store(p.du, p, first, du);
      r.store(p.ddelta, p, first, ddelta);
      if (p.z) r.store(p.dz, p, first, dz);
    }
  }
  if (!active) return;  // no barrier follows
  const int d = d0 + warp;
  dD_sum = warp_sum(dD_sum);
  dbias_sum = warp_sum(dbias_sum);
  if (lane == 0) {
    if (p.dD) atomicAdd(p.dD + d, dD_sum);
    if (p.ddelta_bias) atomicAdd(p.ddelta_bias + d, dbias_sum);
  }
  __syncwarp();  // lane 0's last updates of this row's shared sums are visible to the warp
  const size_t param_row = static_cast<size_t>(d) * N;
  for (int n = lane; n < N; n += 32) {
    const float* v = row_values + n * kRowValues;
    atomicAdd(p.dA + param_row + n, v[kDA]);
    if (!var_B) atomicAdd(p.dB + param_row + n, v[kDB]);
    if (!var_C) atomicAdd(p.dC + param_row + n, v[kDC]);
  }
}

template <typename T>
int launch(const SelectiveScanParams& p, cudaStream_t stream) {
  const int blocks_per_group = (p.dim / p.n_groups + kRows - 1) / kRows;
  // Grid y is limited to 65535 (batch entries run along x, up to 2^31 - 1).
  if (static_cast<long>(p.n_groups) * blocks_per_group > 65535) return static_cast<int>(cudaErrorInvalidConfiguration);
  const bool var_BC = p.variable_B && p.variable_C;
  // B/C of a chunk at once where they fit two blocks an SM (32 KB of float32 at dstate 16).
  constexpr bool kChunkable = sizeof(T) == 2;
  const bool chunk_bc = kChunkable && var_BC && p.dstate <= kChunkStates;
  auto kernel = chunk_bc ? (p.seq_idx ? selective_scan_bwd_kernel<T, true, true, kChunkable>
                                      : selective_scan_bwd_kernel<T, false, true, kChunkable>)
              : p.seq_idx ? (var_BC ? selective_scan_bwd_kernel<T, true, true, false> : selective_scan_bwd_kernel<T, true, false, false>)
                          : (var_BC ? selective_scan_bwd_kernel<T, false, true, false> : selective_scan_bwd_kernel<T, false, false, false>);
  const size_t smem = smem_bytes(p.dstate, chunk_bc);
  if (smem + static_smem_bytes(chunk_bc) > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  kernel<<<dim3(p.batch, p.n_groups * blocks_per_group), kThreads, smem, stream>>>(p, blocks_per_group);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace ssm_tools_cuda

int selective_scan_bwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    return launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}
