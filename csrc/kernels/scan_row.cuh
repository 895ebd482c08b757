// The (batch, dim) row that one thread block of the backward scan owns: its slices of every
// tensor, and loads of B/C for one state whether they are constant or input-dependent.
#pragma once

#include "kernels/scan_common.cuh"

namespace ssm_tools_cuda {

template <typename T>
struct ScanRow {
  size_t row;           // b * dim + d
  int d;
  const T* u;
  const T* delta;
  const T* z;           // null without z gating
  const T* B_var;       // (dstate, seqlen) of this row's group, or null for constant B
  const T* C_var;
  const float* B_const; // (dstate,) of this dim, or null for input-dependent B
  const float* C_const;
  const float* A;       // (dstate,)
  float D, bias;
  bool aligned;         // every per-position pointer is 16-byte aligned: vector loads allowed

  __device__ ScanRow(const SelectiveScanParams& p, int d_, int b) {
    d = d_;
    row = static_cast<size_t>(b) * p.dim + d;
    const size_t offset = row * p.seqlen;
    u = static_cast<const T*>(p.u) + offset;
    delta = static_cast<const T*>(p.delta) + offset;
    z = p.z ? static_cast<const T*>(p.z) + offset : nullptr;
    const size_t group_offset = (static_cast<size_t>(b) * p.n_groups + d / (p.dim / p.n_groups)) * p.dstate * p.seqlen;
    B_var = p.variable_B ? static_cast<const T*>(p.B) + group_offset : nullptr;
    C_var = p.variable_C ? static_cast<const T*>(p.C) + group_offset : nullptr;
    B_const = p.variable_B ? nullptr : static_cast<const float*>(p.B) + static_cast<size_t>(d) * p.dstate;
    C_const = p.variable_C ? nullptr : static_cast<const float*>(p.C) + static_cast<size_t>(d) * p.dstate;
    A = p.A + static_cast<size_t>(d) * p.dstate;
    D = p.D ? p.D[d] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    // Rows start at multiples of seqlen elements, so alignment holds for all rows or none; the
    // group slices of B/C start at multiples of seqlen too. Absent tensors (null) count as aligned.
    auto ok = [](const void* ptr) { return !ptr || is_aligned16(ptr); };
    aligned = (p.seqlen * sizeof(T)) % 16 == 0 && ok(p.u) && ok(p.delta) && ok(p.z) && ok(p.out) &&
              ok(p.dout) && ok(p.du) && ok(p.ddelta) && ok(p.dz) && (!p.variable_B || ok(p.B)) &&
              (!p.variable_C || ok(p.C));
  }

  // B (or C) of state n at this thread's positions; 0 past `end` for input-dependent B/C.
  template <int kItems>
  __device__ __forceinline__ void load_state_input(const T* var, const float* constant, int n, int seqlen,
                                                   int first, float (&v)[kItems]) const {
    if (var) {
      load_items<T, kItems>(var + static_cast<size_t>(n) * seqlen, first, seqlen, aligned, v);
    } else {
      const float c = constant[n];
#pragma unroll
      for (int i = 0; i < kItems; ++i) v[i] = c;
    }
  }

  // delta after bias and softplus; 0 past `end` so that padded positions are identity steps.
  template <int kItems>
  __device__ __forceinline__ void load_delta(const SelectiveScanParams& p, int first, float (&raw)[kItems],
                                             float (&dt)[kItems]) const {
    load_items<T, kItems>(delta, first, p.seqlen, aligned, raw);
#pragma unroll
    for (int i = 0; i < kItems; ++i) dt[i] = first + i < p.seqlen ? step_size(raw[i], bias, p.delta_softplus) : 0.f;
  }
};

}  // namespace ssm_tools_cuda
