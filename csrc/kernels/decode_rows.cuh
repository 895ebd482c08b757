// Device pieces of the decode steps shared by their kernels (causal_conv1d.cu's conv update,
// selective_state_update.cu's state updates): one (batch, channel) row of the conv update, and a
// team's update of one row of the SSM state.
#pragma once

#include "kernels/scan_common.cuh"

namespace ssm_tools_cuda {

// The conv update of one (batch, channel) row: state (width floats) shifts left by one and takes
// x; returns silu?(bias + <weight, state>) in float32.
__device__ __forceinline__ float conv_update_row(float* state, const float* w, float bias, float x, int width,
                                                 bool silu) {
  float acc = bias;
  for (int k = 0; k + 1 < width; ++k) {
    const float s = state[k + 1];
    state[k] = s;
    acc = fmaf(w[k], s, acc);
  }
  state[width - 1] = x;
  acc = fmaf(w[width - 1], x, acc);
  return silu ? acc * sigmoid(acc) : acc;
}

constexpr int kStates = 4;  // states a thread updates at a time (one 128-bit load and store)

// Advances one (batch, dim) row's state by one position; this thread updates states member *
// kStates + j * team * kStates. Returns <C, state> summed over the team (in every member). A is
// read as is, or as A_log with A = -exp(A_log) (the Mamba block's parameter). `vectorized`: dstate %
// kStates == 0 and 16-byte aligned state and A rows. B and C may be in global or shared memory.
template <typename T>
__device__ __forceinline__ float update_row(float* state, const float* A, bool A_is_log, const T* B, const T* C,
                                            int dstate, float dt, float dtx, int member, int team,
                                            unsigned team_mask, bool vectorized) {
  float y = 0.f;
  for (int n0 = member * kStates; n0 < dstate; n0 += team * kStates) {
    float s[kStates], a[kStates];
    if (vectorized) {
      const float4 s4 = *reinterpret_cast<const float4*>(state + n0);
      const float4 a4 = __ldg(reinterpret_cast<const float4*>(A + n0));
      s[0] = s4.x, s[1] = s4.y, s[2] = s4.z, s[3] = s4.w;
      a[0] = a4.x, a[1] = a4.y, a[2] = a4.z, a[3] = a4.w;
    } else {
#pragma unroll
      for (int j = 0; j < kStates; ++j) {
        s[j] = n0 + j < dstate ? state[n0 + j] : 0.f;
        a[j] = n0 + j < dstate ? A[n0 + j] : 0.f;
      }
    }
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const bool in = n0 + j < dstate;
      const float a_j = A_is_log ? -expf(a[j]) : a[j];
      s[j] = fmaf(exp2f(dt * a_j * kLog2e), s[j], in ? dtx * to_float(B[n0 + j]) : 0.f);
      y = fmaf(in ? to_float(C[n0 + j]) : 0.f, s[j], y);
    }
    if (vectorized) {
      *reinterpret_cast<float4*>(state + n0) = make_float4(s[0], s[1], s[2], s[3]);
    } else {
#pragma unroll
      for (int j = 0; j < kStates; ++j)
        if (n0 + j < dstate) state[n0 + j] = s[j];
    }
  }
  for (int off = team / 2; off > 0; off /= 2) y += __shfl_xor_sync(team_mask, y, off);
  return y;
}

// y = (<C, state> + D x) * silu(z), written by the team's first member.
template <typename T>
__device__ __forceinline__ void finish_row(float y, float x, const float* D, int d, const T* z, T* out) {
  if (D) y = fmaf(D[d], x, y);
  if (z) {
    const float zv = to_float(*z);
    y *= zv * sigmoid(zv);
  }
  *out = from_float<T>(y);
}

// Team size for a state row: enough threads for kStates states each, a power of two, at most a warp.
inline int team_log2_for(int dstate) {
  const int per_thread = (dstate + kStates - 1) / kStates;
  int team_log2 = 0;
  while ((1 << team_log2) < per_thread && team_log2 < 5) ++team_log2;
  return team_log2;
}

}  // namespace ssm_tools_cuda
