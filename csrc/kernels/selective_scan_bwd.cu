// Backward selective scan. One thread block per (batch, dim) row walks the chunks from last to
// first. For each chunk and state n it
//   1. recomputes the chunk's states x_t by a forward block scan from the forward's `saved` state,
//   2. runs the adjoint g_t = dL/dx_t = exp(delta_{t+1} A_n) g_{t+1} + C_t dy_t as a reverse block
//      scan, started from the adjoint carried out of the next chunk (dlast_state for the last one),
//   3. accumulates every gradient from (x_{t-1}, x_t, g_t).
// So it stores nothing of size (batch, dim, seqlen, dstate). Per-row sums (dA, constant dB/dC)
// collect in shared memory; sums over rows (dA, dD, ddelta_bias over batch, input-dependent dB/dC
// over the dims of a group) use float32 atomics into zero-filled outputs.
#include "kernels/scan_row.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 8;
static_assert(kThreads * kItems == kScanChunk, "one block iteration covers one saved chunk");

// Adds the block's sum of v into *out (one atomic per block).
__device__ void block_sum_atomic(float v, float* s_red, float* out) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) s_red[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) total += s_red[w];
    atomicAdd(out, total);
  }
  __syncthreads();
}

template <typename T>
__global__ __launch_bounds__(kThreads) void selective_scan_bwd_kernel(SelectiveScanParams p) {
  constexpr int kWarps = kThreads / 32;
  __shared__ float s_adj[kMaxDstate];  // adjoint flowing into the current chunk from the right
  __shared__ float s_dA[kMaxDstate], s_dB[kMaxDstate], s_dC[kMaxDstate];
  __shared__ float s_a_first[kThreads];  // each thread's first decay, for its left neighbour
  __shared__ float2 s_scan[2 * kWarps];
  __shared__ float s_red[kWarps];
  const ScanRow<T> r(p);
  const int tid = threadIdx.x, lane = tid % 32;
  const size_t state_row = r.row * p.dstate;
  for (int n = tid; n < p.dstate; n += kThreads) {
    s_adj[n] = p.dlast_state ? p.dlast_state[state_row + n] : 0.f;
    s_dA[n] = s_dB[n] = s_dC[n] = 0.f;
  }
  const size_t group_offset = (r.row / p.dim * p.n_groups + r.d / (p.dim / p.n_groups)) * p.dstate * p.seqlen;
  float* dB_var = p.variable_B ? p.dB + group_offset : nullptr;
  float* dC_var = p.variable_C ? p.dC + group_offset : nullptr;
  const T* dout_row = static_cast<const T*>(p.dout) + r.row * p.seqlen;
  const float* saved = p.saved + r.row * p.n_chunks * p.dstate;
  // dB/dC rows start at multiples of seqlen floats in zero-filled (aligned) buffers.
  const bool atomics_aligned = p.seqlen % 4 == 0;
  float dD_sum = 0.f, dbias_sum = 0.f;
  int parity = 0;

  for (int c = p.n_chunks - 1; c >= 0; --c) {
    __syncthreads();  // s_adj / s_dA of the previous chunk are complete
    const int first = c * kScanChunk + tid * kItems;
    float u[kItems], raw[kItems], dt[kItems], dout[kItems], dy[kItems], z[kItems], y[kItems], du[kItems],
        ddt[kItems];
    load_items<T, kItems>(r.u, first, p.seqlen, r.aligned, u);
    r.load_delta(p, first, raw, dt);
    load_items<T, kItems>(dout_row, first, p.seqlen, r.aligned, dout);
    if (r.z) load_items<T, kItems>(r.z, first, p.seqlen, r.aligned, z);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      dy[i] = r.z ? dout[i] * z[i] * sigmoid(z[i]) : dout[i];  // dL/dy before gating
      y[i] = r.D * u[i];
      du[i] = r.D * dy[i];
      ddt[i] = 0.f;
    }
    for (int n = 0; n < p.dstate; ++n) {
      const float An = r.A[n];
      float Bv[kItems], Cv[kItems], a[kItems], x[kItems];
      r.load_state_input(r.B_var, r.B_const, n, p.seqlen, first, Bv);
      r.load_state_input(r.C_var, r.C_const, n, p.seqlen, first, Cv);
      // 1. states of this chunk
      float2 map = make_float2(1.f, 0.f);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        a[i] = exp2f(dt[i] * An * kLog2e);
        x[i] = dt[i] * u[i] * Bv[i];
        map = compose(map, make_float2(a[i], x[i]));
      }
      s_a_first[tid] = a[0];
      const float adj_in = s_adj[n];  // read before the scans' barriers; thread 0 rewrites it below
      const float x_in = block_scan_affine<kThreads, false>(map, saved[c * p.dstate + n], s_scan + parity * kWarps);
      parity ^= 1;
      float xs = x_in;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        xs = fmaf(a[i], xs, x[i]);
        x[i] = xs;
        y[i] = fmaf(Cv[i], xs, y[i]);
      }
      // 2. adjoint: g_i = a_{i+1} g_{i+1} + C_i dy_i; the chunk's last position takes adj_in as is.
      // The barrier inside the forward scan made every thread's s_a_first visible.
      const float a_next = tid + 1 < kThreads ? s_a_first[tid + 1] : 1.f;
      map = make_float2(1.f, 0.f);
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i)
        map = compose(map, make_float2(i + 1 < kItems ? a[i + 1] : a_next, Cv[i] * dy[i]));
      float g = block_scan_affine<kThreads, true>(map, adj_in, s_scan + parity * kWarps);
      parity ^= 1;
      // 3. gradients, walking the thread's positions backwards
      float dA = 0.f, dB = 0.f, dC = 0.f, dBv[kItems], dCv[kItems];
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) {
        g = fmaf(i + 1 < kItems ? a[i + 1] : a_next, g, Cv[i] * dy[i]);
        const float x_prev = i > 0 ? x[i - 1] : x_in;
        const float g_decay = g * a[i] * x_prev;  // dL/d(delta_i A_n)
        const float dBi = g * dt[i] * u[i];
        const float dCi = dy[i] * x[i];
        du[i] = fmaf(g * dt[i], Bv[i], du[i]);
        ddt[i] += g * Bv[i] * u[i] + An * g_decay;
        dA = fmaf(dt[i], g_decay, dA);
        dBv[i] = dBi;
        dCv[i] = dCi;
        dB += dBi;
        dC += dCi;
      }
      if (dB_var) atomic_add_items(dB_var + static_cast<size_t>(n) * p.seqlen, first, p.seqlen, atomics_aligned, dBv);
      if (dC_var) atomic_add_items(dC_var + static_cast<size_t>(n) * p.seqlen, first, p.seqlen, atomics_aligned, dCv);
      // Positions past seqlen have dt = u = dy = 0, so they add nothing to dA, dB, dC.
      if (tid == 0) s_adj[n] = a[0] * g;  // what flows into the previous chunk's last position
      dA = warp_sum(dA);
      if (!dB_var) dB = warp_sum(dB);
      if (!dC_var) dC = warp_sum(dC);
      if (lane == 0) {
        atomicAdd(&s_dA[n], dA);
        if (!dB_var) atomicAdd(&s_dB[n], dB);
        if (!dC_var) atomicAdd(&s_dC[n], dC);
      }
    }
    float dz[kItems], ddelta[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const bool valid = first + i < p.seqlen;
      if (r.z) {
        const float s = sigmoid(z[i]);
        dz[i] = dout[i] * y[i] * s * (1.f + z[i] * (1.f - s));
      }
      const float v = raw[i] + r.bias;
      ddelta[i] = p.delta_softplus ? ddt[i] * sigmoid(v) : ddt[i];
      if (valid) {
        dD_sum += dy[i] * u[i];
        dbias_sum += ddelta[i];
      }
    }
    const size_t offset = r.row * p.seqlen;
    store_items<T, kItems>(static_cast<T*>(p.du) + offset, first, p.seqlen, r.aligned, du);
    store_items<T, kItems>(static_cast<T*>(p.ddelta) + offset, first, p.seqlen, r.aligned, ddelta);
    if (r.z) store_items<T, kItems>(static_cast<T*>(p.dz) + offset, first, p.seqlen, r.aligned, dz);
  }
  if (p.dD) block_sum_atomic(dD_sum, s_red, p.dD + r.d);
  if (p.ddelta_bias) block_sum_atomic(dbias_sum, s_red, p.ddelta_bias + r.d);
  __syncthreads();
  const size_t param_row = static_cast<size_t>(r.d) * p.dstate;
  for (int n = tid; n < p.dstate; n += kThreads) {
    atomicAdd(p.dA + param_row + n, s_dA[n]);
    if (!dB_var) atomicAdd(p.dB + param_row + n, s_dB[n]);
    if (!dC_var) atomicAdd(p.dC + param_row + n, s_dC[n]);
  }
}

}  // namespace
}  // namespace ssm_tools_cuda

int selective_scan_bwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    auto s = static_cast<cudaStream_t>(stream);
    selective_scan_bwd_kernel<decltype(tag)><<<dim3(p.dim, p.batch), kThreads, 0, s>>>(p);
    return static_cast<int>(cudaGetLastError());
  });
}
