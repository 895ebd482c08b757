// Device pieces of the decode steps shared by their kernels (causal_conv1d.cu's conv update,
// selective_state_update.cu's state updates): one (batch, channel) row of the conv update, and a
// team's update of one row of the SSM state (its loads apart, to be issued first).
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

// Four consecutive T as float from one 4 * sizeof(T)-byte load (p aligned to that): B and C rows, and
// dt's low-rank input. Read-only inputs: through the non-coherent path.
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
  const float4 q = __ldg(reinterpret_cast<const float4*>(p));
  v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&v)[4]) {
  static_assert(sizeof(T) == 2, "16-bit inputs");
  const uint2 q = __ldg(reinterpret_cast<const uint2*>(p));
  const T* e = reinterpret_cast<const T*>(&q);
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = to_float(e[j]);
}

// One thread's kStates states of a row with the inputs that update them. Loaded apart from the update
// so that a kernel can issue these loads (the state's DRAM round trip) before it computes dt.
struct StateChunk {
  float s[kStates], a[kStates], b[kStates], c[kStates];
};

// Loads states n0 .. n0 + kStates of the row (nothing where n0 >= dstate). `vectorized`: dstate %
// kStates == 0, the state and A rows 16-byte aligned and B, C aligned to 4 * sizeof(T) bytes: one
// load each; else element loads, states past dstate read as 0.
template <typename T>
__device__ __forceinline__ void load_chunk(StateChunk& k, const float* state, const float* A, const T* B, const T* C,
                                           int n0, int dstate, bool vectorized) {
  if (n0 >= dstate) return;
  if (vectorized) {
    const float4 s4 = *reinterpret_cast<const float4*>(state + n0);
    k.s[0] = s4.x, k.s[1] = s4.y, k.s[2] = s4.z, k.s[3] = s4.w;
    load4(A + n0, k.a);
    load4(B + n0, k.b);
    load4(C + n0, k.c);
  } else {
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const bool in = n0 + j < dstate;
      k.s[j] = in ? state[n0 + j] : 0.f;
      k.a[j] = in ? A[n0 + j] : 0.f;
      k.b[j] = in ? to_float(B[n0 + j]) : 0.f;
      k.c[j] = in ? to_float(C[n0 + j]) : 0.f;
    }
  }
}

// Advances one (batch, dim) row's state by one position; this thread updates states member *
// kStates + j * team * kStates, the first kStates of them already in `first` (load_chunk at n0 =
// member * kStates). Returns <C, state> summed over the team (in every member). A is read as is, or
// as A_log with A = -exp(A_log) (the Mamba block's parameter). `vectorized` as for load_chunk.
template <typename T>
__device__ __forceinline__ float update_row(float* state, const float* A, bool A_is_log, const T* B, const T* C,
                                            int dstate, const StateChunk& first, float dt, float dtx, int member,
                                            int team, unsigned team_mask, bool vectorized) {
  float y = 0.f;
  StateChunk k = first;
  for (int n0 = member * kStates; n0 < dstate; n0 += team * kStates) {
    if (n0 != member * kStates) load_chunk(k, state, A, B, C, n0, dstate, vectorized);
#pragma unroll
    for (int j = 0; j < kStates; ++j) {
      const bool in = vectorized || n0 + j < dstate;
      const float a_j = A_is_log ? -expf(k.a[j]) : k.a[j];
      k.s[j] = fmaf(exp2f(dt * a_j * kLog2e), k.s[j], in ? dtx * k.b[j] : 0.f);
      y = fmaf(in ? k.c[j] : 0.f, k.s[j], y);
    }
    if (vectorized) {
      *reinterpret_cast<float4*>(state + n0) = make_float4(k.s[0], k.s[1], k.s[2], k.s[3]);
    } else {
#pragma unroll
      for (int j = 0; j < kStates; ++j)
        if (n0 + j < dstate) state[n0 + j] = k.s[j];
    }
  }
  for (int off = team / 2; off > 0; off /= 2) y += __shfl_xor_sync(team_mask, y, off);
  return y;
}

// y = (<C, state> + D x) * silu(z), written by the team's first member; D_d = D[d] and zv = z's value
// (loaded by the caller before the state update, so that no load waits at the row's end), each used
// only where present.
template <typename T>
__device__ __forceinline__ void finish_row(float y, float x, bool has_D, float D_d, bool has_z, float zv, T* out) {
  if (has_D) y = fmaf(D_d, x, y);
  if (has_z) y *= zv * sigmoid(zv);
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
