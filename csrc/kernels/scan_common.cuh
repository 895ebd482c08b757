// Device helpers shared by the selective-scan kernels: element conversion, vectorised chunk
// loads/stores, the warp-wide scan of affine maps (x -> a*x + b) and small activations.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/selective_scan_params.h"

namespace ssm_tools_cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }

__device__ __forceinline__ bool is_aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

// softplus(v) = max(v, 0) + log1p(t), t = exp(-|v|) in (0, 1], without a branch: log1p(t) = 2 atanh(s)
// with s = t / (2 + t) <= 1/3, whose odd series is cut where the next term, s^15 / 15 against s, is
// below float rounding (9^-7 / 15 < 2^-24). One more MUFU than log1pf(__expf(v)) and about a
// third of its instructions (its log1pf is a 30-instruction polynomial with branches). Above 20 it
// gives v, as torch.nn.functional.softplus's threshold does (log1p(exp(-20)) is under half an ulp
// of 20); NaN and +-inf as log1pf(expf(v)) does. Relative error: results/emulate_scan_fwd.txt.
__device__ __forceinline__ float softplus(float v) {
  const float t = __expf(-fabsf(v));
  const float s = t / (2.f + t), s2 = s * s;
  // Twice the series (every coefficient doubled: exact in binary, so the result is bit for bit that of
  // 2 * s * series, one multiplication fewer).
  float series = 2.f / 13.f;
  series = fmaf(series, s2, 2.f / 11.f);
  series = fmaf(series, s2, 2.f / 9.f);
  series = fmaf(series, s2, 2.f / 7.f);
  series = fmaf(series, s2, 2.f / 5.f);
  series = fmaf(series, s2, 2.f / 3.f);
  series = fmaf(series, s2, 2.f);
  return fmaxf(v, 0.f) + s * series;
}

// The step size from the raw delta: delta + bias, through softplus if asked.
__device__ __forceinline__ float step_size(float raw, float bias, bool use_softplus) {
  return use_softplus ? softplus(raw + bias) : raw + bias;
}

// Loads row[first .. first + kItems) as float; positions at or past `end` read as 0. When the whole
// run is in range and `aligned` (row is 16-byte aligned; `first` is a multiple of the vector width
// because every thread starts at a multiple of kItems), it uses 128-bit loads.
template <typename T, int kItems>
__device__ __forceinline__ void load_items(const T* row, int first, int end, bool aligned, float (&v)[kItems]) {
  constexpr int kVec = 16 / sizeof(T);
  static_assert(kItems % kVec == 0, "kItems must be a multiple of the 128-bit vector width");
  if (aligned && first + kItems <= end) {
    uint4 raw[kItems / kVec];
    const uint4* src = reinterpret_cast<const uint4*>(row + first);
#pragma unroll
    for (int j = 0; j < kItems / kVec; ++j) raw[j] = __ldg(src + j);
#pragma unroll
    for (int j = 0; j < kItems / kVec; ++j) {
      const T* e = reinterpret_cast<const T*>(&raw[j]);
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[j * kVec + k] = to_float(e[k]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) v[i] = first + i < end ? to_float(row[first + i]) : 0.f;
  }
}

// Stores v to row[first .. first + kItems), skipping positions at or past `end`.
template <typename T, int kItems>
__device__ __forceinline__ void store_items(T* row, int first, int end, bool aligned, const float (&v)[kItems]) {
  constexpr int kVec = 16 / sizeof(T);
  if (aligned && first + kItems <= end) {
    uint4* dst = reinterpret_cast<uint4*>(row + first);
#pragma unroll
    for (int j = 0; j < kItems / kVec; ++j) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int k = 0; k < kVec; ++k) e[k] = from_float<T>(v[j * kVec + k]);
      dst[j] = raw;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (first + i < end) row[first + i] = from_float<T>(v[i]);
  }
}

// Adds v[i] to dst[i] for i < min(count, kItems) with float32 atomics. Hopper has 128-bit atomic adds:
// a quarter of the atomic operations when `aligned` (dst 16-byte aligned), which is what bounds the
// backward's input-dependent dB/dC.
template <int kItems>
__device__ __forceinline__ void atomic_add_items(float* dst, int count, bool aligned, const float (&v)[kItems]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (aligned && count >= kItems) {
    static_assert(kItems % 4 == 0, "kItems must be a multiple of 4");
#pragma unroll
    for (int j = 0; j < kItems; j += 4)
      atomicAdd(reinterpret_cast<float4*>(dst + j), make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]));
    return;
  }
#endif
#pragma unroll
  for (int i = 0; i < kItems; ++i)
    if (i < count) atomicAdd(dst + i, v[i]);
}

// The warp scans below compose affine maps x -> a*x + b, stored as float2 {a, b}: the recurrence
// x_t = a_t x_{t-1} + b_t is a left-to-right composition of such maps.
// __shfl_up_sync(kFullMask, v, off) (kDown: __shfl_down_sync), also telling whether the source lane
// was inside the warp: the shuffle's own predicate, so that no lane comparison is kept live (the
// compiler kept the ten comparisons of the two scans in a register's bits otherwise). volatile: a
// warp-synchronous instruction, not to be moved or merged.
template <bool kDown>
__device__ __forceinline__ float shfl_in_warp(float v, int off, bool& inside) {
  float out;
  unsigned in;
  if (kDown) {
    asm volatile("{\n .reg .pred p;\n shfl.sync.down.b32 %0|p, %2, %3, 0x1f, 0xffffffff;\n selp.u32 %1, 1, 0, p;\n}"
        : "=f"(out), "=r"(in) : "f"(v), "r"(off));
  } else {
    asm volatile("{\n .reg .pred p;\n shfl.sync.up.b32 %0|p, %2, %3, 0x0, 0xffffffff;\n selp.u32 %1, 1, 0, p;\n}"
        : "=f"(out), "=r"(in) : "f"(v), "r"(off));
  }
  inside = in != 0;
  return out;
}

// One step of the warp scan of affine maps below: composes this lane's map (a, b) after the map of
// lane -off (kDown: +off), where that lane is inside the warp. The shuffle's own predicate guards the
// two FP instructions, which update the map in place: no selects, no lane comparison kept live (the
// compiler kept the scans' ten comparisons in a register's bits otherwise, or selected the identity
// map for lanes without a partner). volatile: warp-synchronous, not to be moved or merged.
template <bool kDown>
__device__ __forceinline__ void scan_step(float& a, float& b, int off) {
  if (kDown) {
    asm volatile("{\n .reg .pred p;\n .reg .f32 oa, ob;\n"
                 " shfl.sync.down.b32 oa|p, %0, %2, 0x1f, 0xffffffff;\n"
                 " shfl.sync.down.b32 ob, %1, %2, 0x1f, 0xffffffff;\n"
                 " @p fma.rn.ftz.f32 %1, %0, ob, %1;\n"
                 " @p mul.rn.ftz.f32 %0, %0, oa;\n}"
                 : "+f"(a), "+f"(b) : "r"(off));
  } else {
    asm volatile("{\n .reg .pred p;\n .reg .f32 oa, ob;\n"
                 " shfl.sync.up.b32 oa|p, %0, %2, 0x0, 0xffffffff;\n"
                 " shfl.sync.up.b32 ob, %1, %2, 0x0, 0xffffffff;\n"
                 " @p fma.rn.ftz.f32 %1, %0, ob, %1;\n"
                 " @p mul.rn.ftz.f32 %0, %0, oa;\n}"
                 : "+f"(a), "+f"(b) : "r"(off));
  }
}

// Warp-wide exclusive scan of one affine map per lane, in lane order (kReverse: from the last lane
// to the first, for the adjoint recurrence that runs backwards in time). Returns the value entering
// this lane's first item: the maps of all lanes before it applied to `carry`. Also a warp barrier.
template <bool kReverse>
__device__ __forceinline__ float warp_scan_affine(float2 map, float carry) {
#pragma unroll
  for (int off = 1; off < 32; off *= 2) scan_step<kReverse>(map.x, map.y, off);
  // map is now this lane's inclusive map; the value it gives is what enters the next lane, and the
  // first lane (no lane before it) takes the carry itself.
  bool inside;
  const float prev = shfl_in_warp<kReverse>(fmaf(map.x, carry, map.y), 1, inside);
  return inside ? prev : carry;
}

// Sum over the warp, result in every lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Calls f(T{}) with T the C++ type of `type`; returns f's cudaError_t as an int.
template <typename F>
int dispatch_input_type(ScanInputType type, F&& f) {
  switch (type) {
    case ScanInputType::kFloat32: return f(float{});
    case ScanInputType::kBFloat16: return f(__nv_bfloat16{});
    case ScanInputType::kFloat16: return f(__half{});
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace ssm_tools_cuda
