// The (batch, dim) row that one warp of the backward scan owns: where it starts in every tensor of
// shape (batch, dim, seqlen), its per-dim scalars, and whether vector loads are allowed. Pointers are
// formed from the kernel parameters when used (one 64-bit offset kept, not one pointer per tensor),
// which keeps the backward's register count down.
#pragma once

#include "kernels/scan_common.cuh"

namespace ssm_tools_cuda {

template <typename T>
struct ScanRow {
  size_t offset;  // (b * dim + d) * seqlen
  float D, bias;
  bool aligned;   // every per-position pointer is 16-byte aligned: vector loads allowed

  __device__ ScanRow(const SelectiveScanParams& p, int d, int b) {
    offset = (static_cast<size_t>(b) * p.dim + d) * p.seqlen;
    D = p.D ? p.D[d] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    // Rows start at multiples of seqlen elements, so alignment holds for all rows or none. Absent
    // tensors (null) count as aligned.
    auto ok = [](const void* ptr) { return !ptr || is_aligned16(ptr); };
    aligned = (p.seqlen * sizeof(T)) % 16 == 0 && ok(p.u) && ok(p.delta) && ok(p.z) && ok(p.dout) && ok(p.du) &&
              ok(p.ddelta) && ok(p.dz);
  }

  // This row of a (batch, dim, seqlen) tensor.
  __device__ __forceinline__ const T* in(const void* base) const { return static_cast<const T*>(base) + offset; }
  __device__ __forceinline__ T* out(void* base) const { return static_cast<T*>(base) + offset; }

  template <int kItems>
  __device__ __forceinline__ void load(const void* base, const SelectiveScanParams& p, int first,
                                       float (&v)[kItems]) const {
    load_items<T, kItems>(in(base), first, p.seqlen, aligned, v);
  }

  // Loads again what an earlier load() of the same tensor read. The pointer goes through an empty asm
  // the compiler cannot see through: read-only loads of one address would otherwise be merged, which
  // keeps the first load's registers live in between (the backward's state loop).
  template <int kItems>
  __device__ __forceinline__ void reload(const void* base, const SelectiveScanParams& p, int first,
                                         float (&v)[kItems]) const {
    const T* ptr = in(base);
    asm volatile("" : "+l"(ptr));
    load_items<T, kItems>(ptr, first, p.seqlen, aligned, v);
  }

  template <int kItems>
  __device__ __forceinline__ void store(void* base, const SelectiveScanParams& p, int first,
                                        const float (&v)[kItems]) const {
    store_items<T, kItems>(out(base), first, p.seqlen, aligned, v);
  }

  // delta after bias and softplus from the loaded delta `raw`; 0 past seqlen so that padded positions
  // are identity steps. Separate from the load, so that the loads of all of a chunk's rows can be
  // issued before the first of them is used.
  template <int kItems>
  __device__ __forceinline__ void steps(const SelectiveScanParams& p, int first, const float (&raw)[kItems],
                                        float (&dt)[kItems]) const {
    // One branch on softplus for the run and selects for the bound: per position, the compiler had
    // branched around each softplus (two branches and their reconvergence each).
    if (p.delta_softplus) {
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const float v = step_size(raw[i], bias, true);
        dt[i] = first + i < p.seqlen ? v : 0.f;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kItems; ++i) dt[i] = first + i < p.seqlen ? step_size(raw[i], bias, false) : 0.f;
    }
  }
};

}  // namespace ssm_tools_cuda
