// Torch-free CPU kernels of the selective scan, one (batch, dim) channel at a time:
//   dt_t = softplus(delta_t + delta_bias),  x_t = exp(dt_t A) * x_{t-1} + dt_t B_t u_t,
//   out_t = (<C_t, x_t> + D u_t) * silu(z_t)
// and its backward. The callers (selective_scan_cpu.cpp, selective_state_update_cpu.cpp) convert
// tensors, spread the channels over threads and reduce the per-channel gradient sums. The
// elementwise parts run as vectorised passes over a chunk of positions, inside the kernel: as
// separate ATen ops they cost about as much as the scan itself (extra passes over memory).
//
// Speed: the inner loops run over dstate with unit stride (B/C are handed over time-major) and
// compute one exp per (t, n). For float32 with dstate a multiple of 8 (the common 16), the forward
// scan and the backward's recompute and reverse walk are written in explicit 8-float vectors
// (advance_vec8, reverse_positions_vec8): state and adjoint stay in registers, the per-position dot
// products are reduced 8 positions at a time, and the decay uses a cheaper exp (exp2_eighths).
// Other types and sizes take the auto-vectorised (`omp simd`) loops. Each entry point is compiled
// twice (target_clones): for x86-64-v3 (AVX2 + FMA) and a baseline picked at load time when the CPU
// lacks them, so one wheel runs everywhere.
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

// Explicit 8-float vectors (GCC vector extensions): one AVX2 register in the x86-64-v3 clone, two SSE
// registers in the baseline one. The float32 scan loops are written with them so they are
// vectorised by construction, not left to the auto-vectoriser.
using Vec8 = float __attribute__((vector_size(32)));
using Vec8i = int32_t __attribute__((vector_size(32)));
// The Vec8 helpers must inline into each clone: a call would pass vectors in the baseline ABI.
#define SSM_VEC_INLINE __attribute__((always_inline)) inline

SSM_VEC_INLINE Vec8 load8(const float* p) {
  Vec8 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
SSM_VEC_INLINE void store8(float* p, Vec8 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// Float <-> int conversions (truncating) for scalars and Vec8 alike, so exp2_approx is written once.
SSM_VEC_INLINE int32_t truncate_to_int(float x) { return static_cast<int32_t>(x); }
SSM_VEC_INLINE Vec8i truncate_to_int(Vec8 x) { return __builtin_convertvector(x, Vec8i); }
SSM_VEC_INLINE float int_to_float(int32_t k) { return static_cast<float>(k); }
SSM_VEC_INLINE Vec8 int_to_float(Vec8i k) { return __builtin_convertvector(k, Vec8); }

// 2^x for float or Vec8, in a form that vectorises (libm's exp2f is a scalar call without
// -ffast-math, and it would dominate the scan). x = k + f (k = round(x), |f| <= 1/2); 2^f by a
// degree-6 minimax polynomial (relative error < 1e-7, float32 rounding); k is added to the exponent
// bits. Inputs are clamped to [-126, 126] so the result stays a normal float (2^-126 ~ 1.2e-38 stands
// in for anything smaller). k = trunc(x + 127.5) - 127: the argument is positive after the clamp, so
// truncation is floor, and it needs no SSE4.1 rounding instruction in the baseline clone.
template <typename F>
SSM_VEC_INLINE F exp2_approx(F x) {
  const F lo = F{} - 126.0f, hi = F{} + 126.0f;
  x = x > lo ? x : lo;
  x = x < hi ? x : hi;
  const auto k = truncate_to_int(x + 127.5f) - 127;
  const F f = x - int_to_float(k);
  F p = F{} + 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  return __builtin_bit_cast(F, __builtin_bit_cast(decltype(k), p) + k * (1 << 23));
}
inline float exp2_vectorizable(float x) { return exp2_approx(x); }

// float64 is the accuracy (gradcheck) path: keep libm.
inline double exp2_vectorizable(double x) { return std::exp2(x); }

inline float exp_vectorizable(float x) { return exp2_vectorizable(x * static_cast<float>(kLog2e)); }
inline double exp_vectorizable(double x) { return std::exp(x); }

// 2^(y/8) for Vec8, the float32 scan loops' decay: fewer vector operations than exp2_approx, which
// matters because those loops are bound by vector-instruction throughput (the exp is over half of
// the forward). y = 8k + j + g (j in 0..7, |g| <= 1/2): 2^(j/8) from an 8-entry table (one lane
// permute), 2^(g/8) by a degree-3 polynomial. Relative error < 2e-7 in float32 (exp2_approx: 1e-7).
// With kClamp, y is clamped to +-1008 (2^(+-126), like exp2_approx); without, the caller guarantees
// |y| <= kEighthsRange (dropping the clamps measured 4% faster on the whole forward).
// finite-math-only: so that the clamps compile to min/max instructions.
constexpr float kEighthsRange = 1008.0f;

template <bool kClamp>
__attribute__((optimize("finite-math-only"))) SSM_VEC_INLINE Vec8 exp2_eighths(Vec8 y) {
  if constexpr (kClamp) {
    const Vec8 lo = Vec8{} - kEighthsRange, hi = Vec8{} + kEighthsRange;
    y = y > lo ? y : lo;
    y = y < hi ? y : hi;
  }
  const Vec8i k8 = truncate_to_int(y + 1016.5f) - 1016;  // round(y); the argument is positive
  const Vec8 g = y - int_to_float(k8);
  Vec8 p = Vec8{} + 1.0839629248948768e-4f;
  p = p * g + 3.754126140847802e-3f;
  p = p * g + 8.664339780807495e-2f;
  p = p * g + 1.0f;
  const Vec8 table = {1.0f, 1.0905077457427979f, 1.1892070770263672f, 1.2968395948410034f,
                      1.4142135381698608f, 1.5422108173370361f, 1.6817928552627563f, 1.8340080976486206f};
  const Vec8 scaled = __builtin_shuffle(table, k8 & 7) * p;
  return __builtin_bit_cast(Vec8, __builtin_bit_cast(Vec8i, scaled) + (k8 >> 3) * (1 << 23));
}

// log(1 + e) for e in [0, 1], as 2 atanh(s) with s = e / (2 + e) <= 1/3 by its odd series; the
// first omitted term is below 1e-8.
inline float log1p_unit(float e) {
  const float s = e / (2.0f + e), s2 = s * s;
  float p = 1.0f / 13;
  p = p * s2 + 1.0f / 11;
  p = p * s2 + 1.0f / 9;
  p = p * s2 + 1.0f / 7;
  p = p * s2 + 1.0f / 5;
  p = p * s2 + 1.0f / 3;
  p = p * s2 + 1.0f;
  return 2.0f * s * p;
}
inline double log1p_unit(double e) { return std::log1p(e); }

// The elementwise parts, vectorisable in loops over positions.
template <typename T> inline T sigmoid(T v) { return T(1) / (T(1) + exp_vectorizable(-v)); }
template <typename T> inline T silu(T v) { return v * sigmoid(v); }
template <typename T> inline T silu_grad(T v) {
  const T s = sigmoid(v);
  return s * (T(1) + v * (T(1) - s));
}
// Same threshold as torch.nn.functional.softplus (linear above 20); log(1 + e^v) written as
// max(v, 0) + log(1 + e^-|v|) so the exp never overflows.
template <typename T> inline T softplus(T v) {
  const T pos = v > T(0) ? v : T(0), minus_abs = v > T(0) ? -v : v;
  return v > T(20) ? v : pos + log1p_unit(exp_vectorizable(minus_abs));
}
template <typename T> inline T softplus_grad(T v) { return v > T(20) ? T(1) : sigmoid(v); }

// What the scan of one channel reads. B at position t is B + t * B_step: B_step = dstate for
// input-dependent B (a time-major copy), 0 for a constant B row; likewise C.
template <typename T>
struct ScanChannel {
  int64_t seqlen = 0, dstate = 0;
  const T* u = nullptr;
  const T* delta = nullptr;
  const T* z = nullptr;  // null without the gate
  const T* A = nullptr;  // (dstate,)
  const T* B = nullptr;
  const T* C = nullptr;
  int64_t B_step = 0, C_step = 0;
  T D = 0, delta_bias = 0;
  bool softplus = false;
  const int32_t* seq_idx = nullptr;  // (seqlen,) sequence index of a packed row, or null for one sequence
};

// Where the backward of one channel writes. du, ddelta, dz are (seqlen,) and written once; dA, dB,
// dC, dD, ddelta_bias are accumulated (+=), dB/dC with the same step convention as B/C.
template <typename T>
struct ChannelGrads {
  const T* dout = nullptr;
  const T* dlast_state = nullptr;  // null when the loss does not use the last state
  T* du = nullptr;
  T* ddelta = nullptr;
  T* dz = nullptr;  // null without the gate
  T* dA = nullptr;
  T* dB = nullptr;
  T* dC = nullptr;
  int64_t dB_step = 0, dC_step = 0;
  T* dD = nullptr;
  T* ddelta_bias = nullptr;
};

// Per-thread working memory: state vectors, one chunk of step sizes, y and dL/dy, and for the
// backward (`record`) one chunk of recomputed states and decays.
template <typename T>
struct ScanScratch {
  std::vector<T> x, A2, adjoint, dt, y, dy, states, decays;
  ScanScratch(int64_t dstate, bool record)
      : x(dstate), A2(dstate), adjoint(dstate), dt(kScanChunk), y(kScanChunk), dy(record ? kScanChunk : 0),
        states(record ? kScanChunk * dstate : 0), decays(record ? kScanChunk * dstate : 0) {}
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

// Step sizes dt = delta + delta_bias (softplus'd if asked) of positions [t0, t1) into dt (indexed from t0).
template <typename T>
inline void step_sizes(const ScanChannel<T>& c, int64_t t0, int64_t t1, T* __restrict dt) {
  const T* __restrict delta = c.delta + t0;
  const T bias = c.delta_bias;
  if (c.softplus) {
#pragma omp simd
    for (int64_t i = 0; i < t1 - t0; ++i) dt[i] = softplus(delta[i] + bias);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < t1 - t0; ++i) dt[i] = delta[i] + bias;
  }
}

// r[i] = sum of the 8 entries of w[i], by a transpose-add tree.
SSM_VEC_INLINE Vec8 sum_each(const Vec8 (&w)[8]) {
  Vec8 pair[4], quad[2];
  for (int i = 0; i < 4; ++i) {  // [w0_01 w1_01 w0_23 w1_23 | w0_45 w1_45 w0_67 w1_67] for w = w[2i], w[2i+1]
    pair[i] = __builtin_shufflevector(w[2 * i], w[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
              __builtin_shufflevector(w[2 * i], w[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
  }
  for (int i = 0; i < 2; ++i) {  // [w0_0-3 w1_0-3 w2_0-3 w3_0-3 | the same of entries 4-7]
    quad[i] = __builtin_shufflevector(pair[2 * i], pair[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
              __builtin_shufflevector(pair[2 * i], pair[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  return __builtin_shufflevector(quad[0], quad[1], 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(quad[0], quad[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

// The float32 scan's hot loop for dstate a multiple of 8, in explicit vectors. The state stays in
// registers over the chunk; the decay uses exp2_eighths. y_t = <C_t, x_t> is not summed
// horizontally at every position: each position leaves one vector of partial sums, and 8 positions'
// vectors are reduced together by sum_each. (Interleaving several channels to hide the state FMA's
// latency was measured slower: the loop is bound by vector throughput, and the extra live registers
// spill.)
template <int kN, bool kRecord, bool kClamp>
SSM_VEC_INLINE void advance_vec8(const ScanChannel<float>& c, const Vec8 (&A8)[kN / 8], int64_t base, int64_t t0,
                                 int64_t t1, Vec8 (&x)[kN / 8], ScanScratch<float>& s) {
  constexpr int kV = kN / 8;
  for (int64_t tb = t0; tb < t1; tb += 8) {
    const int steps = static_cast<int>(std::min<int64_t>(8, t1 - tb));
    Vec8 partial[8];  // per position, C_t * x_t folded to 8 lanes; zero past the end
    for (int i = steps; i < 8; ++i) partial[i] = Vec8{};
    for (int i = 0; i < steps; ++i) {
      const int64_t t = tb + i;
      const float dt = s.dt[t - base], dtu = dt * c.u[t];
      const float* __restrict Bt = c.B + t * c.B_step;
      const float* __restrict Ct = c.C + t * c.C_step;
      Vec8 sum{};
#pragma GCC unroll 32
      for (int v = 0; v < kV; ++v) {
        const Vec8 a = exp2_eighths<kClamp>(dt * A8[v]);
        x[v] = a * x[v] + dtu * load8(Bt + 8 * v);
        sum += load8(Ct + 8 * v) * x[v];
        if constexpr (kRecord) {
          store8(s.decays.data() + (t - base) * kN + 8 * v, a);
          store8(s.states.data() + (t - base) * kN + 8 * v, x[v]);
        }
      }
      partial[i] = sum;
    }
    const Vec8 y = sum_each(partial);
    if (steps == 8) {
      store8(s.y.data() + (tb - base), y);
    } else {
      __builtin_memcpy(s.y.data() + (tb - base), &y, steps * sizeof(float));
    }
  }
}

// scan_positions for float32 and dstate a multiple of 8: advance_vec8 on the state at `state`,
// without the exp clamps when no dt * 8 A log2(e) of the chunk can leave their range (always, for the
// usual step sizes and A): |dt| <= limit = range / max |8 A log2(e)|, a little under it for the
// product's rounding. NaN fails the test and takes the clamped path.
template <int kN, bool kRecord>
SSM_VEC_INLINE void scan_positions_vec8(const ScanChannel<float>& c, int64_t base, int64_t t0, int64_t t1,
                                        float* state, ScanScratch<float>& s) {
  constexpr int kV = kN / 8;
  Vec8 A8[kV], x[kV];  // A8 = 8 A log2(e), for exp2_eighths
  float A8_max = 0;
  for (int v = 0; v < kV; ++v) {
    A8[v] = load8(c.A + 8 * v) * static_cast<float>(8 * kLog2e);
    x[v] = load8(state + 8 * v);
    for (int k = 0; k < 8; ++k) A8_max = std::max(A8_max, std::abs(A8[v][k]));
  }
  const float limit = 0.999f * kEighthsRange / A8_max;  // +inf for A = 0
  const float* __restrict dt = s.dt.data() + (t0 - base);
  int outside = 0;
#pragma omp simd reduction(| : outside)
  for (int64_t i = 0; i < t1 - t0; ++i) outside |= !(dt[i] <= limit && dt[i] >= -limit);
  if (outside) {
    advance_vec8<kN, kRecord, true>(c, A8, base, t0, t1, x, s);
  } else {
    advance_vec8<kN, kRecord, false>(c, A8, base, t0, t1, x, s);
  }
  for (int v = 0; v < kV; ++v) store8(state + 8 * v, x[v]);
}

// scan_positions for any type and dstate, auto-vectorised over dstate.
template <typename T, int kN, bool kRecord>
__attribute__((always_inline)) inline void scan_positions_generic(const ScanChannel<T>& c, const T* __restrict A2,
                                                                  int64_t base, int64_t t0, int64_t t1,
                                                                  T* __restrict x, ScanScratch<T>& s) {
  const int64_t N = kN ? kN : c.dstate;
  for (int64_t t = t0; t < t1; ++t) {
    const T dt = s.dt[t - base];
    const T dtu = dt * c.u[t];
    const T* __restrict Bt = c.B + t * c.B_step;
    const T* __restrict Ct = c.C + t * c.C_step;
    T* __restrict decays = kRecord ? s.decays.data() + (t - base) * N : nullptr;
    T* __restrict states = kRecord ? s.states.data() + (t - base) * N : nullptr;
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
    s.y[t - base] = yt;
  }
}

// Advances the state x over positions [t0, t1) given s.dt, writing y_t = <C_t, x_t> into s.y. With
// kRecord it also keeps each position's state and decay in `s` for the backward. Scratch is
// indexed from base (the chunk's first position; t0 > base for a sequence starting inside the
// chunk). A2 = A * log2(e) (the float32 vector path scales A itself).
template <typename T, int kN, bool kRecord>
__attribute__((always_inline)) inline void scan_positions(const ScanChannel<T>& c, const T* __restrict A2,
                                                          int64_t base, int64_t t0, int64_t t1, T* __restrict x,
                                                          ScanScratch<T>& s) {
  if constexpr (std::is_same_v<T, float> && kN > 0 && kN % 8 == 0) {
    scan_positions_vec8<kN, kRecord>(c, base, t0, t1, x, s);
  } else {
    scan_positions_generic<T, kN, kRecord>(c, A2, base, t0, t1, x, s);
  }
}

// Packed rows: a sequence starts at t > 0 where seq_idx changes; its state starts from zero.
template <typename T>
inline bool starts_sequence(const ScanChannel<T>& c, int64_t t) {
  return c.seq_idx && t > 0 && c.seq_idx[t] != c.seq_idx[t - 1];
}

// The end of the run of positions from t0 (before t1) that belongs to one sequence.
template <typename T>
inline int64_t sequence_end(const ScanChannel<T>& c, int64_t t0, int64_t t1) {
  if (!c.seq_idx) return t1;
  int64_t t = t0 + 1;
  while (t < t1 && c.seq_idx[t] == c.seq_idx[t - 1]) ++t;
  return t;
}

// scan_positions over the chunk [t0, t1), zeroing the state where a sequence starts. With kRecord
// the decay recorded at such a position is 0: no state flows into a sequence from the one before,
// so the reverse walk passes no adjoint back and takes no decay gradient there.
template <typename T, int kN, bool kRecord>
__attribute__((always_inline)) inline void scan_chunk(const ScanChannel<T>& c, int64_t t0, int64_t t1,
                                                      ScanScratch<T>& s) {
  const int64_t N = kN ? kN : c.dstate;
  for (int64_t a = t0, b; a < t1; a = b) {
    b = sequence_end(c, a, t1);
    const bool reset = starts_sequence(c, a);
    if (reset) std::fill(s.x.begin(), s.x.end(), T(0));
    scan_positions<T, kN, kRecord>(c, s.A2.data(), t0, a, b, s.x.data(), s);
    if (kRecord && reset) std::fill_n(s.decays.data() + (a - t0) * N, N, T(0));
  }
}

template <typename T>
inline void scale_A(const ScanChannel<T>& c, T* A2) {
  for (int64_t n = 0; n < c.dstate; ++n) A2[n] = c.A[n] * T(kLog2e);
}

// out = (y + D u) * silu(z) for positions [t0, t1), y indexed from t0.
template <typename T>
inline void gate_output(const ScanChannel<T>& c, const T* __restrict y, int64_t t0, int64_t t1, T* out) {
  const T* __restrict u = c.u + t0;
  T* __restrict o = out + t0;
  const T D = c.D;
  if (c.z) {
    const T* __restrict z = c.z + t0;
#pragma omp simd
    for (int64_t i = 0; i < t1 - t0; ++i) o[i] = (y[i] + D * u[i]) * silu(z[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < t1 - t0; ++i) o[i] = y[i] + D * u[i];
  }
}

// Forward of one channel: out (seqlen,), last_state (dstate,), saved (n_chunks, dstate) = the state
// entering each chunk of kScanChunk positions. In a packed row (c.seq_idx) every sequence starts from
// the zero state, and last_state is that of the row's last sequence.
template <typename T, int kN>
SSM_CPU_MULTIVERSION void scan_forward_channel(const ScanChannel<T>& c, T* out, T* last_state, T* saved,
                                               ScanScratch<T>& s) {
  const int64_t N = c.dstate;
  scale_A(c, s.A2.data());
  std::fill(s.x.begin(), s.x.end(), T(0));
  for (int64_t t0 = 0; t0 < c.seqlen; t0 += kScanChunk) {
    const int64_t t1 = std::min<int64_t>(c.seqlen, t0 + kScanChunk);
    std::copy(s.x.begin(), s.x.end(), saved + (t0 / kScanChunk) * N);
    step_sizes(c, t0, t1, s.dt.data());
    scan_chunk<T, kN, false>(c, t0, t1, s);
    gate_output(c, s.y.data(), t0, t1, out);
  }
  std::copy(s.x.begin(), s.x.end(), last_state);
}

// dL/dy of positions [t0, t1) into s.dy: dout through the gate.
template <typename T>
inline void gate_backward_input(const ScanChannel<T>& c, const ChannelGrads<T>& g, int64_t t0, int64_t t1,
                                ScanScratch<T>& s) {
  const T* __restrict dout = g.dout + t0;
  T* __restrict dy = s.dy.data();
  if (c.z) {
    const T* __restrict z = c.z + t0;
#pragma omp simd
    for (int64_t i = 0; i < t1 - t0; ++i) dy[i] = dout[i] * silu(z[i]);
  } else {
    std::copy(dout, dout + (t1 - t0), dy);
  }
}

// The elementwise gradients of positions [t0, t1) once the reverse walk has written du (state part)
// and ddelta (as dL/d dt): adds D's skip term, applies the softplus, and sums dD, ddelta_bias.
template <typename T>
inline void elementwise_backward(const ScanChannel<T>& c, const ChannelGrads<T>& g, int64_t t0, int64_t t1,
                                 const ScanScratch<T>& s) {
  const T* __restrict dy = s.dy.data();
  const T* __restrict y = s.y.data();
  const T* __restrict u = c.u + t0;
  const T* __restrict delta = c.delta + t0;
  T* __restrict du = g.du + t0;
  T* __restrict ddelta = g.ddelta + t0;
  const T D = c.D, bias = c.delta_bias;
  T dD = 0, dbias = 0;
#pragma omp simd reduction(+ : dD, dbias)
  for (int64_t i = 0; i < t1 - t0; ++i) {
    du[i] += dy[i] * D;
    dD += dy[i] * u[i];
    if (c.softplus) ddelta[i] *= softplus_grad(delta[i] + bias);
    dbias += ddelta[i];
  }
  *g.dD += dD;
  *g.ddelta_bias += dbias;
  if (c.z) {
    const T* __restrict z = c.z + t0;
    const T* __restrict dout = g.dout + t0;
    T* __restrict dz = g.dz + t0;
#pragma omp simd
    for (int64_t i = 0; i < t1 - t0; ++i) dz[i] = dout[i] * (y[i] + D * u[i]) * silu_grad(z[i]);
  }
}

// The rows the reverse walk reads and writes at position t of the chunk starting at t0.
template <typename T>
struct ReverseRows {
  const T *x_prev, *x_t, *a, *B, *C;
  T *dB, *dC;
  ReverseRows(const ScanChannel<T>& c, const ChannelGrads<T>& g, const ScanScratch<T>& s, const T* entry,
              int64_t t, int64_t t0, int64_t N) {
    const int64_t i = t - t0;
    x_prev = i > 0 ? s.states.data() + (i - 1) * N : entry;
    x_t = s.states.data() + i * N;
    a = s.decays.data() + i * N;
    B = c.B + t * c.B_step;
    C = c.C + t * c.C_step;
    dB = g.dB + t * g.dB_step;
    dC = g.dC + t * g.dC_step;
  }
};

// The reverse walk over the positions [t0, t1) of one chunk, whose states and decays are in `s`
// (entry: the state before t0): updates the adjoint s.adjoint, writes du (state part) and ddelta
// (as dL/d dt), accumulates dA, dB, dC.
template <typename T, int kN>
__attribute__((always_inline)) inline void reverse_positions_generic(const ScanChannel<T>& c,
                                                                     const ChannelGrads<T>& g, const T* entry,
                                                                     int64_t t0, int64_t t1, ScanScratch<T>& s) {
  const int64_t N = kN ? kN : c.dstate;
  T* __restrict h = s.adjoint.data();
  T* __restrict dA = g.dA;
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const int64_t i = t - t0;
    const T dt = s.dt[i], u = c.u[t], dy = s.dy[i];
    const ReverseRows<T> r(c, g, s, entry, t, t0, N);
    const T* __restrict x_prev = r.x_prev;
    const T* __restrict x_t = r.x_t;
    const T* __restrict a = r.a;
    const T* __restrict Bt = r.B;
    const T* __restrict Ct = r.C;
    T* __restrict dBt = r.dB;
    T* __restrict dCt = r.dC;
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
    g.ddelta[t] = ddt + hB * u;
  }
}

// reverse_positions_generic for float32 and dstate a multiple of 8, in explicit vectors: the adjoint
// and dA's sums stay in registers, and the two dot products of each position are summed 8
// positions at a time by sum_each, as in advance_vec8.
template <int kN>
SSM_VEC_INLINE void reverse_positions_vec8(const ScanChannel<float>& c, const ChannelGrads<float>& g,
                                           const float* entry, int64_t t0, int64_t t1, ScanScratch<float>& s) {
  constexpr int kV = kN / 8;
  Vec8 A[kV], h[kV], dA[kV];
  for (int v = 0; v < kV; ++v) {
    A[v] = load8(c.A + 8 * v);
    h[v] = load8(s.adjoint.data() + 8 * v);
    dA[v] = load8(g.dA + 8 * v);
  }
  for (int64_t te = t1; te > t0; te -= 8) {  // blocks [tb, te), last first
    const int64_t tb = std::max<int64_t>(t0, te - 8);
    Vec8 ddt_part[8], hB_part[8];  // per position tb + i; zero past te
    for (int i = static_cast<int>(te - tb); i < 8; ++i) ddt_part[i] = hB_part[i] = Vec8{};
    for (int64_t t = te - 1; t >= tb; --t) {
      const float dt = s.dt[t - t0], dy = s.dy[t - t0], dtu = dt * c.u[t];
      const ReverseRows<float> r(c, g, s, entry, t, t0, kN);
      Vec8 ddt{}, hB{};
#pragma GCC unroll 32
      for (int v = 0; v < kV; ++v) {
        const Vec8 hn = h[v] + dy * load8(r.C + 8 * v);
        store8(r.dC + 8 * v, load8(r.dC + 8 * v) + dy * load8(r.x_t + 8 * v));
        store8(r.dB + 8 * v, load8(r.dB + 8 * v) + hn * dtu);
        const Vec8 decay = load8(r.a + 8 * v);
        const Vec8 decay_grad = hn * load8(r.x_prev + 8 * v) * decay;  // dL/d(dt A_n)
        ddt += decay_grad * A[v];
        dA[v] += decay_grad * dt;
        hB += hn * load8(r.B + 8 * v);
        h[v] = hn * decay;
      }
      ddt_part[t - tb] = ddt;
      hB_part[t - tb] = hB;
    }
    const Vec8 ddt = sum_each(ddt_part), hB = sum_each(hB_part);
    for (int64_t t = tb; t < te; ++t) {
      g.du[t] = hB[t - tb] * s.dt[t - t0];
      g.ddelta[t] = ddt[t - tb] + hB[t - tb] * c.u[t];
    }
  }
  for (int v = 0; v < kV; ++v) {
    store8(s.adjoint.data() + 8 * v, h[v]);
    store8(g.dA + 8 * v, dA[v]);
  }
}

template <typename T, int kN>
__attribute__((always_inline)) inline void reverse_positions(const ScanChannel<T>& c, const ChannelGrads<T>& g,
                                                             const T* entry, int64_t t0, int64_t t1,
                                                             ScanScratch<T>& s) {
  if constexpr (std::is_same_v<T, float> && kN > 0 && kN % 8 == 0) {
    reverse_positions_vec8<kN>(c, g, entry, t0, t1, s);
  } else {
    reverse_positions_generic<T, kN>(c, g, entry, t0, t1, s);
  }
}

// Backward of one channel. Walks the chunks from last to first: recomputes the chunk's states from
// `saved`, then runs the adjoint h_t = dL/dx_t backwards through it:
//   h_t = exp(dt_{t+1} A) h_{t+1} + dy_t C_t,  starting from dlast_state at t = seqlen - 1.
template <typename T, int kN>
SSM_CPU_MULTIVERSION void scan_backward_channel(const ScanChannel<T>& c, const T* saved, const ChannelGrads<T>& g,
                                                ScanScratch<T>& s) {
  const int64_t N = kN ? kN : c.dstate;
  scale_A(c, s.A2.data());
  for (int64_t n = 0; n < N; ++n) s.adjoint[n] = g.dlast_state ? g.dlast_state[n] : T(0);
  const int64_t n_chunks = (c.seqlen + kScanChunk - 1) / kScanChunk;
  for (int64_t k = n_chunks - 1; k >= 0; --k) {
    const int64_t t0 = k * kScanChunk, t1 = std::min<int64_t>(c.seqlen, t0 + kScanChunk);
    const T* entry = saved + k * N;
    std::copy(entry, entry + N, s.x.begin());
    step_sizes(c, t0, t1, s.dt.data());
    scan_chunk<T, kN, true>(c, t0, t1, s);
    gate_backward_input(c, g, t0, t1, s);
    reverse_positions<T, kN>(c, g, entry, t0, t1, s);
    elementwise_backward(c, g, t0, t1, s);
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
