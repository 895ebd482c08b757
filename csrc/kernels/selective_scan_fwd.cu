// Forward selective scan. One thread block per (batch, dim) row walks the sequence in chunks of
// kScanChunk = kThreads * kItems positions; each thread owns kItems consecutive positions. For each
// state n the chunk is one block-wide scan of the affine maps x -> exp(delta A_n) x + delta B_n u,
// started from the state carried out of the previous chunk (kept in shared memory), which is also
// what `saved` records for the backward. Templated on the input type only; options are run-time.
#include "kernels/scan_row.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kItems = 16;
static_assert(kThreads * kItems == kScanChunk, "one block iteration covers one saved chunk");

template <typename T>
__global__ __launch_bounds__(kThreads) void selective_scan_fwd_kernel(SelectiveScanParams p) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float s_state[kMaxDstate];
  __shared__ float2 s_scan[2 * kWarps];
  const ScanRow<T> r(p);
  const int tid = threadIdx.x;
  for (int n = tid; n < p.dstate; n += kThreads) s_state[n] = 0.f;
  float* saved = p.saved + r.row * p.n_chunks * p.dstate;
  int parity = 0;

  for (int c = 0; c < p.n_chunks; ++c) {
    __syncthreads();  // the previous chunk's final states are in s_state
    for (int n = tid; n < p.dstate; n += kThreads) saved[c * p.dstate + n] = s_state[n];
    const int first = c * kScanChunk + tid * kItems;
    float u[kItems], raw[kItems], dt[kItems], y[kItems];
    load_items<T, kItems>(r.u, first, p.seqlen, r.aligned, u);
    r.load_delta(p, first, raw, dt);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      y[i] = r.D * u[i];
      u[i] *= dt[i];  // from here on u holds delta * u
    }
    for (int n = 0; n < p.dstate; ++n) {
      const float A2 = r.A[n] * kLog2e;
      float Bv[kItems], Cv[kItems], a[kItems], bx[kItems];
      r.load_state_input(r.B_var, r.B_const, n, p.seqlen, first, Bv);
      r.load_state_input(r.C_var, r.C_const, n, p.seqlen, first, Cv);
      float2 map = make_float2(1.f, 0.f);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        a[i] = exp2f(dt[i] * A2);
        bx[i] = u[i] * Bv[i];
        map = compose(map, make_float2(a[i], bx[i]));
      }
      float x = block_scan_affine<kThreads, false>(map, s_state[n], s_scan + parity * kWarps);
      parity ^= 1;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        x = fmaf(a[i], x, bx[i]);
        y[i] = fmaf(Cv[i], x, y[i]);
      }
      // Every thread read s_state[n] before the scan's barrier, so the last thread may overwrite it.
      if (tid == kThreads - 1) s_state[n] = x;
    }
    if (r.z) {
      float z[kItems];
      load_items<T, kItems>(r.z, first, p.seqlen, r.aligned, z);
#pragma unroll
      for (int i = 0; i < kItems; ++i) y[i] *= z[i] * sigmoid(z[i]);
    }
    store_items<T, kItems>(static_cast<T*>(p.out) + r.row * p.seqlen, first, p.seqlen, r.aligned, y);
  }
  __syncthreads();
  for (int n = tid; n < p.dstate; n += kThreads) p.last_state[r.row * p.dstate + n] = s_state[n];
}

}  // namespace
}  // namespace ssm_tools_cuda

int selective_scan_fwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    selective_scan_fwd_kernel<decltype(tag)><<<dim3(p.dim, p.batch), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}
