// One decode step of the selective SSM: state = exp(dt A) state + dt B x, y = <C, state> + D x,
// gated by silu(z). A team of `team` consecutive threads (a power of two, at most a warp) owns one
// (batch, dim) row; each thread updates kStates consecutive states at a time (one 128-bit load and
// store of the state when rows are 16-byte aligned), so a warp streams whole rows of the state; the
// team then sums y with shuffles. The step is memory-bound: the state is read and written once.
#include "kernels/scan_common.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kStates = 4;

template <typename T>
__global__ __launch_bounds__(kThreads) void selective_state_update_kernel(SelectiveStateUpdateParams p,
                                                                          int team_log2, bool vectorized) {
  const int team = 1 << team_log2;
  const size_t gid = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  const size_t row = gid >> team_log2;
  const int member = static_cast<int>(gid & (team - 1));
  // Teams never straddle a warp, and a team is entirely in or out of range.
  if (row >= static_cast<size_t>(p.batch) * p.dim) return;
  const unsigned team_mask = (team == 32 ? kFullMask : ((1u << team) - 1u)) << (threadIdx.x % 32 & ~(team - 1));
  const int d = static_cast<int>(row % p.dim);
  const size_t b = row / p.dim;
  const size_t group = (b * p.n_groups + d / (p.dim / p.n_groups)) * p.dstate;
  const float x = to_float(static_cast<const T*>(p.x)[row]);
  const float dt = step_size(to_float(static_cast<const T*>(p.dt)[row]), p.dt_bias ? p.dt_bias[d] : 0.f, p.dt_softplus);
  const float dtx = dt * x;
  const T* B = static_cast<const T*>(p.B) + group;
  const T* C = static_cast<const T*>(p.C) + group;
  const float* A = p.A + static_cast<size_t>(d) * p.dstate;
  float* state = p.state + row * p.dstate;
  float y = 0.f;
  for (int n0 = member * kStates; n0 < p.dstate; n0 += team * kStates) {
    float s[kStates], a[kStates];
    if (vectorized) {  // dstate % kStates == 0 and 16-byte aligned rows
      const float4 s4 = *reinterpret_cast<const float4*>(state + n0);
      const float4 a4 = __ldg(reinterpret_cast<const float4*>(A + n0));
      s[0] = s4.x, s[1] = s4.y, s[2] = s4.z, s[3] = s4.w;
      a[0] = a4.x, a[1] = a4.y, a[2] = a4.z, a[3] = a4.w;
    } else {
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        s[j] = n0 + j < p.dstate ? state[n0 + j] : 0.f;
        a[j] = n0 + j < p.dstate ? A[n0 + j] : 0.f;
      }
    }
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const bool in = n0 + j < p.dstate;
      s[j] = fmaf(exp2f(dt * a[j] * kLog2e), s[j], in ? dtx * to_float(B[n0 + j]) : 0.f);
      y = fmaf(in ? to_float(C[n0 + j]) : 0.f, s[j], y);
    }
    if (vectorized) {
      *reinterpret_cast<float4*>(state + n0) = make_float4(s[0], s[1], s[2], s[3]);
    } else {
#pragma unroll
      for (int j = 0; j < kStates; ++j)
        if (n0 + j < p.dstate) state[n0 + j] = s[j];
    }
  }
  for (int off = team / 2; off > 0; off /= 2) y += __shfl_xor_sync(team_mask, y, off);
  if (member != 0) return;
  if (p.D) y = fmaf(p.D[d], x, y);
  if (p.z) {
    const float z = to_float(static_cast<const T*>(p.z)[row]);
    y *= z * sigmoid(z);
  }
  static_cast<T*>(p.y)[row] = from_float<T>(y);
}

}  // namespace
}  // namespace ssm_tools_cuda

int selective_state_update_launch(const SelectiveStateUpdateParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const int per_thread = (p.dstate + kStates - 1) / kStates;
  int team_log2 = 0;
  while ((1 << team_log2) < per_thread && team_log2 < 5) ++team_log2;
  const bool vectorized = p.dstate % kStates == 0 && reinterpret_cast<uintptr_t>(p.state) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(p.A) % 16 == 0;
  const size_t threads = (static_cast<size_t>(p.batch) * p.dim) << team_log2;
  const unsigned blocks = static_cast<unsigned>((threads + kThreads - 1) / kThreads);
  return dispatch_input_type(type, [&](auto tag) {
    auto s = static_cast<cudaStream_t>(stream);
    selective_state_update_kernel<decltype(tag)><<<blocks, kThreads, 0, s>>>(p, team_log2, vectorized);
    return static_cast<int>(cudaGetLastError());
  });
}
