// Torch-free CPU kernels of the selective scan's recurrence, one (batch, dim) channel at a time:
//   x_t = exp(dt_t A) * x_{t-1} + dt_t B_t u_t,   y_t = <C_t, x_t>
// and its backward. The callers (selective_scan_cpu.cpp, selective_state_update_cpu.cpp) convert
// tensors, do the elementwise rest (delta_bias, softplus, D u, the z gate) with ATen, spread the
// channels over threads and reduce the per-channel gradient sums.
//
// Speed: the inner loops run over dstate with unit stride (B/C are handed over time-major), compute
// one exp per (t, n) and are auto-vectorised (`omp simd`). Each entry point is compiled twice
// (target_clones): for x86-64-v3 (AVX2 + FMA) and a baseline picked at load time when the CPU lacks
// them, so one wheel runs everywhere.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/selective_scan_params.h"  // kScanChunk, shared with the CUDA kernels

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SSM_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SSM_CPU_MULTIVERSION
#endif

// Scoped to this header: comparisons may not raise FP exceptions (so the clamps of
// exp2_vectorizable vectorise instead of branching), and sums may be reassociated (so the dot
// products over dstate reduce as a tree, not lane by lane). No code here relies on rounding order.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math", "no-signed-zeros", "associative-math")

namespace ssm_tools_cpu {

constexpr double kLog2e = 1.4426950408889634;

// 2^x in a form the compiler vectorises. libm's exp2f is a scalar call without -ffast-math, and it
// would dominate the scan. x = k + f (k = round(x), |f| <= 1/2); 2^f by a degree-6 minimax
// polynomial (relative error < 1e-7, float32 rounding); k is added to the exponent bits. Inputs are
// clamped to [-126, 126] so the result stays a normal float (2^-126 ~ 1.2e-38 stands in for
// anything smaller). __builtin_floorf, not std::floor: the latter is defined outside this pragma
// region, and GCC does not inline across differing optimize options.
inline float exp2_vectorizable(float x) {
  x = x > -126.0f ? x : -126.0f;
  x = x < 126.0f ? x : 126.0f;
  const float k = __builtin_floorf(x + 0.5f);
  const float f = x - k;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  return __builtin_bit_cast(float, __builtin_bit_cast(int32_t, p) + static_cast<int32_t>(k) * (1 << 23));
}
// float64 is the accuracy (gradcheck) path: keep libm.
inline double exp2_vectorizable(double x) { return std::exp2(x); }

// What the scan of one channel reads. dt is the step size (delta + delta_bias, after softplus: the
// callers apply those, and D and the z gate, with vectorised ATen ops, so the kernels keep no scalar
// transcendental per position). B at position t is B + t * B_step: B_step = dstate for
// input-dependent B (a time-major copy), 0 for a constant B row; likewise C.
template <typename T>
struct ScanChannel {
  int64_t seqlen = 0, dstate = 0;
  const T* u = nullptr;
  const T* dt = nullptr;
  const T* A = nullptr;  // (dstate,)
  const T* B = nullptr;
  const T* C = nullptr;
  int64_t B_step = 0, C_step = 0;
};

// What the backward of one channel reads and writes. dy is dL/dy for y_t = <C_t, x_t>. du, ddt and
// (when non-null) y are (seqlen,) and written once; dA, dB, dC are accumulated (+=), dB/dC with the
// same step convention as B/C.
template <typename T>
struct ChannelGrads {
  const T* dy = nullptr;
  const T* dlast_state = nullptr;  // null when the loss does not use the last state
  T* du = nullptr;
  T* ddt = nullptr;
  T* y = nullptr;  // the recomputed y, for the z gate's gradient; null if not needed
  T* dA = nullptr;
  T* dB = nullptr;
  T* dC = nullptr;
  int64_t dB_step = 0, dC_step = 0;
};

// Per-thread working memory: state vectors and, for the backward (`record`), one chunk of
// recomputed states and decays.
template <typename T>
struct ScanScratch {
  std::vector<T> x, A2, adjoint, states, decays;
  ScanScratch(int64_t dstate, bool record)
      : x(dstate), A2(dstate), adjoint(dstate), states(record ? kScanChunk * dstate : 0),
        decays(record ? kScanChunk * dstate : 0) {}
};

// The channel kernels take the state size as kN, a compile-time constant for the common dstate
// (kCommonDstate: fully unrolled inner loops without remainder handling), or 0 for any other,
// read from ScanChannel::dstate at run time. dispatch_dstate calls fn with the right one.
constexpr int kCommonDstate = 16;

template <typename Fn>
inline void dispatch_dstate(int64_t dstate, Fn&& fn) {
  if (dstate == kCommonDstate) {
    fn(std::integral_constant<int, kCommonDstate>());
  } else {
    fn(std::integral_constant<int, 0>());
  }
}

// Advances the state x over positions [t0, t1), writing y[t] (when y is non-null). With kRecord it
// also keeps each position's state and decay in `s` (indexed from t0) for the backward.
// A2 = A * log2(e).
template <typename T, int kN, bool kRecord>
__attribute__((always_inline)) inline void scan_positions(const ScanChannel<T>& c, const T* __restrict A2,
                                                          int64_t t0, int64_t t1, T* __restrict x, T* y,
                                                          ScanScratch<T>& s) {
  const int64_t N = kN ? kN : c.dstate;
  for (int64_t t = t0; t < t1; ++t) {
    const T dt = c.dt[t];
    const T dtu = dt * c.u[t];
    const T* __restrict Bt = c.B + t * c.B_step;
    const T* __restrict Ct = c.C + t * c.C_step;
    T* __restrict decays = s.decays.data() + (t - t0) * N;
    T* __restrict states = s.states.data() + (t - t0) * N;
    T yt = 0;
#pragma omp simd reduction(+ : yt)
    for (int64_t n = 0; n < N; ++n) {
      const T a = exp2_vectorizable(dt * A2[n]);
      x[n] = a * x[n] + dtu * Bt[n];
      yt += Ct[n] * x[n];
      if constexpr (kRecord) {
        decays[n] = a;
        states[n] = x[n];
      }
    }
    if (y) y[t] = yt;
  }
}

template <typename T>
inline void scale_A(const ScanChannel<T>& c, T* A2) {
  for (int64_t n = 0; n < c.dstate; ++n) A2[n] = c.A[n] * T(kLog2e);
}

// Forward of one channel: y (seqlen,), last_state (dstate,), saved (n_chunks, dstate) = the state
// entering each chunk of kScanChunk positions.
template <typename T, int kN>
SSM_CPU_MULTIVERSION void scan_forward_channel(const ScanChannel<T>& c, T* y, T* last_state, T* saved,
                                               ScanScratch<T>& s) {
  const int64_t N = c.dstate;
  scale_A(c, s.A2.data());
  std::fill(s.x.begin(), s.x.end(), T(0));
  for (int64_t t0 = 0; t0 < c.seqlen; t0 += kScanChunk) {
    std::copy(s.x.begin(), s.x.end(), saved + (t0 / kScanChunk) * N);
    scan_positions<T, kN, false>(c, s.A2.data(), t0, std::min<int64_t>(c.seqlen, t0 + kScanChunk), s.x.data(), y, s);
  }
  std::copy(s.x.begin(), s.x.end(), last_state);
}

// Backward of one channel. Walks the chunks from last to first: recomputes the chunk's states from
// `saved`, then runs the adjoint h_t = dL/dx_t backwards through it:
//   h_t = exp(dt_{t+1} A) h_{t+1} + dy_t C_t,  starting from dlast_state at t = seqlen - 1.
template <typename T, int kN>
SSM_CPU_MULTIVERSION void scan_backward_channel(const ScanChannel<T>& c, const T* saved, const ChannelGrads<T>& g,
                                                ScanScratch<T>& s) {
  const int64_t N = kN ? kN : c.dstate;
  scale_A(c, s.A2.data());
  T* __restrict h = s.adjoint.data();
  for (int64_t n = 0; n < N; ++n) h[n] = g.dlast_state ? g.dlast_state[n] : T(0);
  T* __restrict dA = g.dA;
  const int64_t n_chunks = (c.seqlen + kScanChunk - 1) / kScanChunk;
  for (int64_t k = n_chunks - 1; k >= 0; --k) {
    const int64_t t0 = k * kScanChunk, t1 = std::min<int64_t>(c.seqlen, t0 + kScanChunk);
    const T* entry = saved + k * N;
    std::copy(entry, entry + N, s.x.begin());
    scan_positions<T, kN, true>(c, s.A2.data(), t0, t1, s.x.data(), g.y, s);
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0;
      const T dt = c.dt[t], u = c.u[t], dy = g.dy[t];
      const T* __restrict x_prev = i > 0 ? s.states.data() + (i - 1) * N : entry;
      const T* __restrict x_t = s.states.data() + i * N;
      const T* __restrict a = s.decays.data() + i * N;
      const T* __restrict Bt = c.B + t * c.B_step;
      const T* __restrict Ct = c.C + t * c.C_step;
      T* __restrict dBt = g.dB + t * g.dB_step;
      T* __restrict dCt = g.dC + t * g.dC_step;
      const T dtu = dt * u;
      T ddt = 0, hB = 0;
#pragma omp simd reduction(+ : ddt, hB)
      for (int64_t n = 0; n < N; ++n) {
        const T hn = h[n] + dy * Ct[n];
        dCt[n] += dy * x_t[n];
        dBt[n] += hn * dtu;
        const T decay_grad = hn * x_prev[n] * a[n];  // dL/d(dt A_n)
        ddt += decay_grad * c.A[n];
        dA[n] += decay_grad * dt;
        hB += hn * Bt[n];
        h[n] = hn * a[n];
      }
      g.du[t] = hB * dt;
      g.ddt[t] = ddt + hB * u;
    }
  }
}

// One decode step of one channel: updates state (dstate,) in place and returns <C, state>.
template <typename T>
SSM_CPU_MULTIVERSION T state_update_channel(T* __restrict state, const T* __restrict A, const T* __restrict B,
                                            const T* __restrict C, int64_t dstate, T x, T dt) {
  const T dtx = dt * x;
  T y = 0;
#pragma omp simd reduction(+ : y)
  for (int64_t n = 0; n < dstate; ++n) {
    // Same rounding as the scan (dt * (A log2 e)), so stepping reproduces it.
    state[n] = exp2_vectorizable(dt * (A[n] * T(kLog2e))) * state[n] + dtx * B[n];
    y += C[n] * state[n];
  }
  return y;
}

}  // namespace ssm_tools_cpu

#pragma GCC pop_options
