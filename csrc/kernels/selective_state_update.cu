// One decode step of the selective SSM: state = exp(dt A) state + dt B x, y = <C, state> + D x,
// gated by silu(z); and the Mamba block's variant that reads dt's low-rank input, B and C from
// x_proj's output and A as A_log. A team of `team` consecutive threads (a power of two, at most a warp) owns one
// (batch, dim) row; each thread updates kStates consecutive states at a time (one 128-bit load and
// store of the state when rows are 16-byte aligned), so a warp streams whole rows of the state; the
// team then sums y with shuffles. The step is memory-bound: the state is read and written once.
#include "kernels/decode_rows.cuh"
#include "kernels/mamba_block_params.h"

namespace ssm_tools_cuda {
namespace {

constexpr int kThreads = 256;

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

template <typename T>
__global__ __launch_bounds__(kThreads) void selective_state_update_kernel(SelectiveStateUpdateParams p,
                                                                          int team_log2, bool vectorized) {
  const Team t(team_log2);
  if (t.row >= static_cast<size_t>(p.batch) * p.dim) return;
  const int d = static_cast<int>(t.row % p.dim);
  const size_t b = t.row / p.dim;
  const size_t group = (b * p.n_groups + d / (p.dim / p.n_groups)) * p.dstate;
  const float x = to_float(static_cast<const T*>(p.x)[t.row]);
  const float dt = step_size(to_float(static_cast<const T*>(p.dt)[t.row]), p.dt_bias ? p.dt_bias[d] : 0.f, p.dt_softplus);
  const float y = update_row(p.state + t.row * p.dstate, p.A + static_cast<size_t>(d) * p.dstate, false,
                             static_cast<const T*>(p.B) + group, static_cast<const T*>(p.C) + group, p.dstate, dt,
                             dt * x, t.member, t.team, t.mask, vectorized);
  if (t.member == 0)
    finish_row(y, x, p.D, d, p.z ? static_cast<const T*>(p.z) + t.row : nullptr, static_cast<T*>(p.y) + t.row);
}

// The Mamba block's decode step: the team first computes dt = dt_weight[d] . dt_low (dt_rank
// products split over its members), then updates the row with B, C read in place from xdbl.
template <typename T>
__global__ __launch_bounds__(kThreads) void mamba_state_update_kernel(MambaStateUpdateParams p, int team_log2,
                                                                      bool vectorized) {
  const Team t(team_log2);
  if (t.row >= static_cast<size_t>(p.batch) * p.dim) return;
  const int d = static_cast<int>(t.row % p.dim);
  const size_t b = t.row / p.dim;
  const T* xdbl = static_cast<const T*>(p.xdbl) + b * p.xdbl_stride;
  const float* w = p.dt_weight + static_cast<size_t>(d) * p.dt_rank;
  float raw = 0.f;
  for (int r = t.member; r < p.dt_rank; r += t.team) raw = fmaf(w[r], to_float(xdbl[r]), raw);
  for (int off = t.team / 2; off > 0; off /= 2) raw += __shfl_xor_sync(t.mask, raw, off);
  const float x = to_float(static_cast<const T*>(p.x)[t.row]);
  const float dt = step_size(raw, p.dt_bias[d], true);
  const float y = update_row(p.state + t.row * p.dstate, p.A_log + static_cast<size_t>(d) * p.dstate, true,
                             xdbl + p.dt_rank, xdbl + p.dt_rank + p.dstate, p.dstate, dt, dt * x, t.member, t.team,
                             t.mask, vectorized);
  if (t.member == 0)
    finish_row(y, x, p.D, d, p.z ? static_cast<const T*>(p.z) + b * p.z_stride + d : nullptr,
               static_cast<T*>(p.y) + t.row);
}

unsigned blocks_for(int batch, int dim, int team_log2) {
  const size_t threads = (static_cast<size_t>(batch) * dim) << team_log2;
  return static_cast<unsigned>((threads + kThreads - 1) / kThreads);
}

}  // namespace
}  // namespace ssm_tools_cuda

int selective_state_update_launch(const SelectiveStateUpdateParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const int team_log2 = team_log2_for(p.dstate);
  const bool vectorized = p.dstate % kStates == 0 && reinterpret_cast<uintptr_t>(p.state) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(p.A) % 16 == 0;
  return dispatch_input_type(type, [&](auto tag) {
    selective_state_update_kernel<decltype(tag)><<<blocks_for(p.batch, p.dim, team_log2), kThreads, 0,
                                                   static_cast<cudaStream_t>(stream)>>>(p, team_log2, vectorized);
    return static_cast<int>(cudaGetLastError());
  });
}

int mamba_state_update_launch(const MambaStateUpdateParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const int team_log2 = team_log2_for(p.dstate);
  const bool vectorized = p.dstate % kStates == 0 && reinterpret_cast<uintptr_t>(p.state) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(p.A_log) % 16 == 0;
  return dispatch_input_type(type, [&](auto tag) {
    mamba_state_update_kernel<decltype(tag)><<<blocks_for(p.batch, p.dim, team_log2), kThreads, 0,
                                               static_cast<cudaStream_t>(stream)>>>(p, team_log2, vectorized);
    return static_cast<int>(cudaGetLastError());
  });
}
