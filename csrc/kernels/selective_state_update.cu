// One decode step of the selective SSM: state = exp(dt A) state + dt B x, y = <C, state> + D x,
// gated by silu(z); and the Mamba block's variant that reads dt's low-rank input, B and C from
// x_proj's output and A as A_log. A team of `team` consecutive threads (a power of two, at most a warp) owns one
// (batch, dim) row; each thread updates kStates consecutive states at a time (one 128-bit load and
// store of the state when rows are 16-byte aligned), so a warp streams whole rows of the state; the
// team then sums y with shuffles. The state is read and written once; every load that does not depend
// on dt is issued before dt is computed.
#include "kernels/decode_rows.cuh"
#include "kernels/mamba_block_params.h"

namespace ssm_tools_cuda {
namespace {

constexpr int kThreads = 256;
// Runs of four dt_rank inputs a team member loads per pass of dt's dot product: in the general kernel
// (two: three would take it from 63 to 75 registers) and in the lean one (dt_rank 48, a team of 4: one pass).
constexpr int kDtRuns = 2, kDtRunsLean = 3;

// The team layout shared by both kernels: `team` consecutive threads (a power of two, at most a
// warp) own one row; teams never straddle a warp, and a team is entirely in or out of range.
struct Team {
  size_t row;
  int member, team;
  unsigned mask;
  __device__ Team(int team_log2) {
    team = 1 << team_log2;
    const size_t gid = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
    row = gid >> team_log2;
    member = static_cast<int>(gid & (team - 1));
    mask = (team == 32 ? kFullMask : ((1u << team) - 1u)) << (threadIdx.x % 32 & ~(team - 1));
  }
};

// This member's share of dt_weight[d] . dt_low over runs of four (dt_rank % 4 == 0, w 16-byte and
// dt_low 4 * sizeof(T)-byte aligned): the runs at 4 (member + k team), k < kRuns, per pass, one load
// each of w and dt_low per run, all of a pass's loads issued before its FMAs.
template <int kRuns, typename T>
__device__ __forceinline__ float dt_runs_dot(const float* w, const T* dt_low, int dt_rank, int member, int team) {
  float raw = 0.f;
#pragma unroll 1
  for (int base = 0; base < dt_rank; base += kRuns * 4 * team) {
    float wv[kRuns][4], uv[kRuns][4];
#pragma unroll
    for (int k = 0; k < kRuns; ++k) {
      const int r0 = base + (member + k * team) * 4;
      if (r0 < dt_rank) {
        load4(w + r0, wv[k]);
        load4(dt_low + r0, uv[k]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j) wv[k][j] = uv[k][j] = 0.f;
      }
    }
#pragma unroll
    for (int k = 0; k < kRuns; ++k)
#pragma unroll
      for (int j = 0; j < 4; ++j) raw = fmaf(wv[k][j], uv[k][j], raw);
  }
  return raw;
}

template <typename T>
__global__ __launch_bounds__(kThreads) void selective_state_update_kernel(SelectiveStateUpdateParams p,
                                                                          int team_log2, bool vectorized) {
  const Team t(team_log2);
  if (t.row >= static_cast<size_t>(p.batch) * p.dim) return;
  const int d = static_cast<int>(t.row % p.dim);
  const size_t b = t.row / p.dim;
  const size_t group = (b * p.n_groups + d / (p.dim / p.n_groups)) * p.dstate;
  const T* B = static_cast<const T*>(p.B) + group;
  const T* C = static_cast<const T*>(p.C) + group;
  float* state = p.state + t.row * p.dstate;
  const float* A = p.A + static_cast<size_t>(d) * p.dstate;
  StateChunk first;
  load_chunk(first, state, A, B, C, t.member * kStates, p.dstate, vectorized);
  const float x = to_float(static_cast<const T*>(p.x)[t.row]);
  const float D_d = p.D ? p.D[d] : 0.f;
  const float zv = p.z ? to_float(static_cast<const T*>(p.z)[t.row]) : 0.f;
  const float dt = step_size(to_float(static_cast<const T*>(p.dt)[t.row]), p.dt_bias ? p.dt_bias[d] : 0.f, p.dt_softplus);
  const float y = update_row(state, A, false, B, C, p.dstate, first, dt, dt * x, t.member, t.team, t.mask, vectorized);
  if (t.member == 0) finish_row(y, x, p.D != nullptr, D_d, p.z != nullptr, zv, static_cast<T*>(p.y) + t.row);
}

// The Mamba block's decode step: the team computes dt = dt_weight[d] . dt_low (dt_rank products split
// over its members), then updates the row with B, C read in place from xdbl. Every load that does not
// depend on dt is issued first (the state's, A_log's, B's and C's, x, z, D, dt_bias), so the state's DRAM
// round trip overlaps dt's loads and arithmetic instead of following them. With `dt_vectorized`
// (dt_rank % 4 == 0, dt_weight 16-byte and xdbl's rows 4 * sizeof(T)-byte aligned) the dot product goes
// over runs of four (dt_runs_dot), else over single inputs.
template <typename T>
__global__ __launch_bounds__(kThreads) void mamba_state_update_kernel(MambaStateUpdateParams p, int team_log2,
                                                                      bool vectorized, bool dt_vectorized) {
  const Team t(team_log2);
  if (t.row >= static_cast<size_t>(p.batch) * p.dim) return;
  const int d = static_cast<int>(t.row % p.dim);
  const size_t b = t.row / p.dim;
  const T* xdbl = static_cast<const T*>(p.xdbl) + b * p.xdbl_stride;
  const T* B = xdbl + p.dt_rank;
  const T* C = B + p.dstate;
  float* state = p.state + t.row * p.dstate;
  const float* A_log = p.A_log + static_cast<size_t>(d) * p.dstate;
  StateChunk first;
  load_chunk(first, state, A_log, B, C, t.member * kStates, p.dstate, vectorized);
  const float x = to_float(static_cast<const T*>(p.x)[t.row]);
  const float bias = p.dt_bias[d];
  const float D_d = p.D ? p.D[d] : 0.f;
  const float zv = p.z ? to_float(static_cast<const T*>(p.z)[b * p.z_stride + d]) : 0.f;
  const float* w = p.dt_weight + static_cast<size_t>(d) * p.dt_rank;
  float raw = 0.f;
  if (dt_vectorized) {
    raw = dt_runs_dot<kDtRuns>(w, xdbl, p.dt_rank, t.member, t.team);
  } else {
#pragma unroll 4
    for (int r = t.member; r < p.dt_rank; r += t.team) raw = fmaf(w[r], to_float(xdbl[r]), raw);
  }
  for (int off = t.team / 2; off > 0; off /= 2) raw += __shfl_xor_sync(t.mask, raw, off);
  const float dt = step_size(raw, bias, true);
  const float y = update_row(state, A_log, true, B, C, p.dstate, first, dt, dt * x, t.member, t.team, t.mask,
                             vectorized);
  if (t.member == 0) finish_row(y, x, p.D != nullptr, D_d, p.z != nullptr, zv, static_cast<T*>(p.y) + t.row);
}

// The same step for the decode's common case in fewer instructions per state (a team of kTeam, one run
// of kStates states per member: dstate % 4 == 0 and dstate <= 4 kTeam, the vectorized loads and the
// dt runs, batch * dim < 2^31): 32-bit row indices, no loop over runs of states, and shuffles over the
// full warp with constant offsets (rows past the end compute the last row and store nothing, so every
// lane is there). Its arithmetic is the general kernel's vectorized path, in the same order.
template <typename T, int kTeamLog2>
__global__ __launch_bounds__(kThreads) void mamba_state_update_rows_kernel(MambaStateUpdateParams p) {
  constexpr int kTeam = 1 << kTeamLog2;
  const unsigned rows = static_cast<unsigned>(p.batch) * p.dim, dim = p.dim;
  const int member = static_cast<int>(threadIdx.x) & (kTeam - 1);
  const unsigned row_in = blockIdx.x * (kThreads / kTeam) + (threadIdx.x >> kTeamLog2);
  const bool live = row_in < rows;
  const unsigned row = live ? row_in : rows - 1;
  const unsigned b = row / dim, d = row - b * dim;
  const int n0 = member * kStates;
  const bool has_states = n0 < p.dstate;  // members past dstate hold none (dstate 12: the fourth)
  const T* xdbl = static_cast<const T*>(p.xdbl) + static_cast<size_t>(b) * p.xdbl_stride;
  float* state = p.state + static_cast<size_t>(row) * p.dstate + n0;
  StateChunk k;
  if (has_states) {
    const float4 s4 = *reinterpret_cast<const float4*>(state);
    k.s[0] = s4.x, k.s[1] = s4.y, k.s[2] = s4.z, k.s[3] = s4.w;
    load4(p.A_log + static_cast<size_t>(d) * p.dstate + n0, k.a);
    load4(xdbl + p.dt_rank + n0, k.b);
    load4(xdbl + p.dt_rank + p.dstate + n0, k.c);
  }
  const float x = to_float(static_cast<const T*>(p.x)[row]);
  const float bias = p.dt_bias[d];
  const float D_d = p.D ? p.D[d] : 0.f;
  const float zv = p.z ? to_float(static_cast<const T*>(p.z)[static_cast<size_t>(b) * p.z_stride + d]) : 0.f;
  const float* w = p.dt_weight + static_cast<size_t>(d) * p.dt_rank;
  float raw = dt_runs_dot<kDtRunsLean>(w, xdbl, p.dt_rank, member, kTeam);
#pragma unroll
  for (int off = kTeam / 2; off > 0; off /= 2) raw += __shfl_xor_sync(kFullMask, raw, off);
  const float dt = step_size(raw, bias, true), dtx = dt * x;
  float y = 0.f;
  if (has_states) {
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const float a_j = -expf(k.a[j]);
      k.s[j] = fmaf(exp2f(dt * a_j * kLog2e), k.s[j], dtx * k.b[j]);
      y = fmaf(k.c[j], k.s[j], y);
    }
    if (live) *reinterpret_cast<float4*>(state) = make_float4(k.s[0], k.s[1], k.s[2], k.s[3]);
  }
#pragma unroll
  for (int off = kTeam / 2; off > 0; off /= 2) y += __shfl_xor_sync(kFullMask, y, off);
  if (live && member == 0) finish_row(y, x, p.D != nullptr, D_d, p.z != nullptr, zv, static_cast<T*>(p.y) + row);
}

unsigned blocks_for(int batch, int dim, int team_log2) {
  const size_t threads = (static_cast<size_t>(batch) * dim) << team_log2;
  return static_cast<unsigned>((threads + kThreads - 1) / kThreads);
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace
}  // namespace ssm_tools_cuda

int selective_state_update_launch(const SelectiveStateUpdateParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const int team_log2 = team_log2_for(p.dstate);
  return dispatch_input_type(type, [&](auto tag) {
    constexpr size_t run = 4 * sizeof(tag);  // four B or C elements: one load
    const bool vectorized = p.dstate % kStates == 0 && aligned(p.state, 16) && aligned(p.A, 16) &&
                            aligned(p.B, run) && aligned(p.C, run);
    const unsigned blocks = blocks_for(p.batch, p.dim, team_log2);
    const auto cuda_stream = static_cast<cudaStream_t>(stream);
    selective_state_update_kernel<decltype(tag)><<<blocks, kThreads, 0, cuda_stream>>>(p, team_log2, vectorized);
    return static_cast<int>(cudaGetLastError());
  });
}

int mamba_state_update_launch(const MambaStateUpdateParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const int team_log2 = team_log2_for(p.dstate);
  return dispatch_input_type(type, [&](auto tag) {
    constexpr size_t run = 4 * sizeof(tag);  // four xdbl elements (dt_low, B or C): one load
    // xdbl's runs of four start aligned: its rows, dt_rank (B's start) and dstate (C's start).
    const bool xdbl_runs = aligned(p.xdbl, run) && p.xdbl_stride % 4 == 0 && p.dt_rank % 4 == 0;
    const bool vectorized = p.dstate % kStates == 0 && aligned(p.state, 16) && aligned(p.A_log, 16) && xdbl_runs;
    const bool dt_vectorized = xdbl_runs && aligned(p.dt_weight, 16);
    const unsigned blocks = blocks_for(p.batch, p.dim, team_log2);
    const auto cuda_stream = static_cast<cudaStream_t>(stream);
    using T = decltype(tag);
    // team_log2_for makes dstate <= 4 team; teams of 2 to 8 (dstate 8, 12, 16, 32, ...) take the lean kernel.
    const bool rows_kernel = vectorized && dt_vectorized && team_log2 >= 1 && team_log2 <= 3 &&
                             static_cast<int64_t>(p.batch) * p.dim < (int64_t{1} << 31);
    if (rows_kernel && team_log2 == 1)
      mamba_state_update_rows_kernel<T, 1><<<blocks, kThreads, 0, cuda_stream>>>(p);
    else if (rows_kernel && team_log2 == 2)
      mamba_state_update_rows_kernel<T, 2><<<blocks, kThreads, 0, cuda_stream>>>(p);
    else if (rows_kernel)
      mamba_state_update_rows_kernel<T, 3><<<blocks, kThreads, 0, cuda_stream>>>(p);
    else
      mamba_state_update_kernel<T><<<blocks, kThreads, 0, cuda_stream>>>(p, team_log2, vectorized, dt_vectorized);
    return static_cast<int>(cudaGetLastError());
  });
}
