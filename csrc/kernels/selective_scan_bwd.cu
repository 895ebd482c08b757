// Backward selective scan. A block of kRows warps owns kRows consecutive dims of one batch entry and
// one group of B/C; each warp owns one (batch, dim) row and walks its saved chunks (kScanChunk = 256
// positions, 8 per lane) from last to first. For each chunk and state n the warp
//   1. recomputes the chunk's states x_t by a forward warp scan from the forward's `saved` state,
//   2. runs the adjoint g_t = dL/dx_t = exp(delta_{t+1} A_n) g_{t+1} + C_t dy_t as a reverse warp
//      scan, started from the adjoint carried out of the next chunk (dlast_state for the last one),
//   3. accumulates every gradient from (x_{t-1}, x_t, g_t).
// So it stores nothing of size (batch, dim, seqlen, dstate), and every scan is a warp scan: no block
// barrier inside a row's work. Per-row sums (dA, constant dB/dC, the carried adjoint) live in shared
// memory; sums over rows (dA, dD, ddelta_bias over batch) are float32 atomics into zero-filled outputs.
//
// Input-dependent dB/dC are sums over the dims of a group at every position: the block's warps put
// their rows' values of state n in shared memory, and after one barrier the block adds their sum into
// dB/dC with float4 atomics of consecutive positions (kRows times fewer atomics than one per row, and
// each warp's atomic instruction covers 512 contiguous bytes). Two buffers alternate between states, so
// one barrier per state suffices. The grid runs batch entries fastest, so the blocks resident at once
// add into many different dB/dC rows rather than colliding on one.
//
// Packed rows (kVarlen, p.seq_idx): the decay into a position that starts a sequence is 0, so the
// recomputed state restarts there, no adjoint flows back into the sequence before, and the decay's
// gradient terms vanish, as for separate rows.
//
// Measured on the H100 (results/selective_scan_cuda_notes.md): earlier designs with a block scan per
// row over 2,048-position chunks, and dB/dC pooled over thread-block clusters, were slower at every
// benchmark and training shape.
#include "kernels/scan_row.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kItems = 8;
static_assert(32 * kItems == kScanChunk, "one warp covers one saved chunk");
// 8 rows per block, two blocks (16 warps) per SM at up to 128 registers: measured on the H100 against
// 4 rows (4 or 3 blocks per SM) and 8 rows at one block without the register cap, this was fastest at
// every training and benchmark shape (results/selective_scan_cuda_notes.md).
constexpr int kRows = 8;
constexpr int kThreads = kRows * 32;
constexpr int kMinBlocks = 2;

// Shared memory: the dB/dC parts [2 buffers][B, C][kRows][kScanChunk] (static), and per-row arrays
// [kRows][dstate] (dynamic, this many bytes): the adjoint flowing into the current chunk, dA, constant
// dB and dC.
size_t smem_bytes(int dstate) { return 4 * kRows * static_cast<size_t>(dstate) * sizeof(float); }

template <typename T, bool kVarlen>
__global__ __launch_bounds__(kThreads, kMinBlocks) void selective_scan_bwd_kernel(SelectiveScanParams p, int blocks_per_group) {
  __shared__ float4 s_parts4[kRows * kScanChunk];  // dB/dC parts (see smem_bytes)
  float* s_parts = reinterpret_cast<float*>(s_parts4);
  extern __shared__ float s_rows[];
  const int N = p.dstate;
  float* s_adj = s_rows;
  float* s_dA = s_adj + kRows * N;
  float* s_dB = s_dA + kRows * N;
  float* s_dC = s_dB + kRows * N;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, b = blockIdx.x;
  const int dims_per_group = p.dim / p.n_groups, group = blockIdx.y / blocks_per_group;
  const int d0 = group * dims_per_group + (blockIdx.y % blocks_per_group) * kRows;
  const int rows = min(kRows, (group + 1) * dims_per_group - d0);
  // Warps past `rows` (the group's last block) compute nothing but take part in the barriers.
  const bool active = warp < rows;
  const ScanRow<T> r(p, active ? d0 + warp : d0, b);
  for (int i = tid; i < kRows * N; i += kThreads) {
    const int w = i / N;
    s_adj[i] = w < rows && p.dlast_state ? p.dlast_state[(static_cast<size_t>(b) * p.dim + d0 + w) * N + i % N] : 0.f;
    s_dA[i] = s_dB[i] = s_dC[i] = 0.f;
  }
  __syncthreads();
  float* row_adj = s_adj + warp * N;
  const size_t group_offset = (static_cast<size_t>(b) * p.n_groups + group) * N * p.seqlen;
  float* dB_var = p.variable_B ? p.dB + group_offset : nullptr;
  float* dC_var = p.variable_C ? p.dC + group_offset : nullptr;
  const T* dout_row = static_cast<const T*>(p.dout) + r.row * p.seqlen;
  const float* saved = p.saved + r.row * p.n_chunks * N;
  // dB/dC rows start at multiples of seqlen floats in zero-filled (aligned) buffers.
  const bool atomics_aligned = p.seqlen % 4 == 0;
  float dD_sum = 0.f, dbias_sum = 0.f;
  int buf = 0;

#pragma unroll 1
  for (int c = p.n_chunks - 1; c >= 0; --c) {
    const int first = c * kScanChunk + lane * kItems;
    // Kept through the state loop: u, dt, dy = dL/dy before gating, and the accumulators y, du, ddt.
    // (dout, z and the raw delta are read again after it, for dz and ddelta: fewer live registers.)
    float u[kItems], dt[kItems], dy[kItems], y[kItems], du[kItems], ddt[kItems];
    unsigned starts = 0;  // bit i: position first + i starts a sequence
    if (kVarlen && active) {
      const int32_t* seq = p.seq_idx + static_cast<size_t>(b) * p.seqlen;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const int t = first + i;
        starts |= (t > 0 && t < p.seqlen && seq[t] != seq[t - 1]) ? 1u << i : 0u;
      }
    }
    {
      float raw[kItems], dout[kItems], z[kItems];
      load_items<T, kItems>(r.u, first, p.seqlen, r.aligned, u);
      r.load_delta(p, first, raw, dt);
      load_items<T, kItems>(dout_row, first, p.seqlen, r.aligned, dout);
      if (r.z) load_items<T, kItems>(r.z, first, p.seqlen, r.aligned, z);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        dy[i] = r.z ? dout[i] * z[i] * sigmoid(z[i]) : dout[i];
        y[i] = r.D * u[i];
        du[i] = r.D * dy[i];
        ddt[i] = 0.f;
      }
    }
#pragma unroll 1
    for (int n = 0; n < N; ++n) {
      float* parts = s_parts + buf * 2 * kRows * kScanChunk;  // [B, C][kRows][kScanChunk]
      if (active) {
        const float An = r.A[n];
        float Bv[kItems], Cv[kItems], a[kItems], x[kItems];
        r.load_state_input(r.B_var, r.B_const, n, p.seqlen, first, Bv);
        r.load_state_input(r.C_var, r.C_const, n, p.seqlen, first, Cv);
        // 1. states of this chunk
        float2 map = make_float2(1.f, 0.f);
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          a[i] = kVarlen && (starts >> i & 1) ? 0.f : exp2f(dt[i] * An * kLog2e);
          x[i] = dt[i] * u[i] * Bv[i];
          map = compose(map, make_float2(a[i], x[i]));
        }
        const float adj_in = row_adj[n];  // read before the scans' warp barriers; lane 0 rewrites it below
        const float x_in = warp_scan_affine<false>(map, saved[c * N + n]);
        float xs = x_in;
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          xs = fmaf(a[i], xs, x[i]);
          x[i] = xs;
          y[i] = fmaf(Cv[i], xs, y[i]);
        }
        // 2. adjoint: g_i = a_{i+1} g_{i+1} + C_i dy_i; the chunk's last position takes adj_in as is.
        float a_next = __shfl_down_sync(kFullMask, a[0], 1);
        if (lane == 31) a_next = 1.f;
        map = make_float2(1.f, 0.f);
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i)
          map = compose(map, make_float2(i + 1 < kItems ? a[i + 1] : a_next, Cv[i] * dy[i]));
        float g = warp_scan_affine<true>(map, adj_in);
        // 3. gradients, walking the lane's positions backwards. Input-dependent dB/dC of 4 positions
        // at a time go to this row's parts (16-byte stores).
        float4* dB_part = reinterpret_cast<float4*>(parts + warp * kScanChunk + lane * kItems);
        float4* dC_part = reinterpret_cast<float4*>(parts + (kRows + warp) * kScanChunk + lane * kItems);
        float dA = 0.f, dB = 0.f, dC = 0.f, dBv[kItems], dCv[kItems];
#pragma unroll
        for (int i = kItems - 1; i >= 0; --i) {
          g = fmaf(i + 1 < kItems ? a[i + 1] : a_next, g, Cv[i] * dy[i]);
          const float x_prev = i > 0 ? x[i - 1] : x_in;
          const float g_decay = g * a[i] * x_prev;  // dL/d(delta_i A_n)
          dBv[i] = g * dt[i] * u[i];
          dCv[i] = dy[i] * x[i];
          du[i] = fmaf(g * dt[i], Bv[i], du[i]);
          ddt[i] += g * Bv[i] * u[i] + An * g_decay;
          dA = fmaf(dt[i], g_decay, dA);
          dB += dBv[i];
          dC += dCv[i];
          if (i % 4 == 0) {
            if (dB_var) dB_part[i / 4] = make_float4(dBv[i], dBv[i + 1], dBv[i + 2], dBv[i + 3]);
            if (dC_var) dC_part[i / 4] = make_float4(dCv[i], dCv[i + 1], dCv[i + 2], dCv[i + 3]);
          }
        }
        // Positions past seqlen have dt = u = dy = 0, so they add nothing to dA, dB, dC.
        dA = warp_sum(dA);
        if (!dB_var) dB = warp_sum(dB);
        if (!dC_var) dC = warp_sum(dC);
        __syncwarp();  // every lane has read row_adj[n]
        if (lane == 0) {  // lane 0 alone updates its row's entries
          row_adj[n] = a[0] * g;  // what flows into the previous chunk's last position
          s_dA[warp * N + n] += dA;
          if (!dB_var) s_dB[warp * N + n] += dB;
          if (!dC_var) s_dC[warp * N + n] += dC;
        }
        __syncwarp();  // and the warp sees them (row_adj[n] is read again in the next chunk)
      }
      if (dB_var || dC_var) {
        // Every row's part of state n is written; sum over rows and add. The other buffer is the next
        // state's: it was last read before this barrier, so it is free to write.
        __syncthreads();
        constexpr int kQuads = kScanChunk / 4;
        for (int v = tid; v < 2 * kQuads; v += kThreads) {
          const int part = v / kQuads, q = v % kQuads;
          float* dst = part == 0 ? dB_var : dC_var;
          if (!dst) continue;
          float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
          for (int w = 0; w < rows; ++w) {
            const float4 s = reinterpret_cast<const float4*>(parts + (part * kRows + w) * kScanChunk)[q];
            sum.x += s.x, sum.y += s.y, sum.z += s.z, sum.w += s.w;
          }
          const float s4[4] = {sum.x, sum.y, sum.z, sum.w};
          const int t = c * kScanChunk + 4 * q;
          if (t < p.seqlen) atomic_add_items<4>(dst + static_cast<size_t>(n) * p.seqlen, t, p.seqlen, atomics_aligned, s4);
        }
        buf ^= 1;
      }
    }
    if (active) {
      float raw[kItems], dout[kItems], z[kItems], dz[kItems], ddelta[kItems];
      load_items<T, kItems>(r.delta, first, p.seqlen, r.aligned, raw);
      load_items<T, kItems>(dout_row, first, p.seqlen, r.aligned, dout);
      if (r.z) load_items<T, kItems>(r.z, first, p.seqlen, r.aligned, z);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const float s = r.z ? sigmoid(z[i]) : 0.f;
        dz[i] = r.z ? dout[i] * s * (1.f + z[i] * (1.f - s)) * y[i] : 0.f;
        ddelta[i] = p.delta_softplus ? ddt[i] * sigmoid(raw[i] + r.bias) : ddt[i];
        if (first + i < p.seqlen) {
          dD_sum += dy[i] * u[i];
          dbias_sum += ddelta[i];
        }
      }
      const size_t offset = r.row * p.seqlen;
      store_items<T, kItems>(static_cast<T*>(p.du) + offset, first, p.seqlen, r.aligned, du);
      store_items<T, kItems>(static_cast<T*>(p.ddelta) + offset, first, p.seqlen, r.aligned, ddelta);
      if (r.z) store_items<T, kItems>(static_cast<T*>(p.dz) + offset, first, p.seqlen, r.aligned, dz);
    }
  }
  if (!active) return;  // no barrier follows
  dD_sum = warp_sum(dD_sum);
  dbias_sum = warp_sum(dbias_sum);
  if (lane == 0) {
    if (p.dD) atomicAdd(p.dD + r.d, dD_sum);
    if (p.ddelta_bias) atomicAdd(p.ddelta_bias + r.d, dbias_sum);
  }
  __syncwarp();  // lane 0's last updates of this row's shared sums are visible to the warp
  const size_t param_row = static_cast<size_t>(r.d) * N;
  for (int n = lane; n < N; n += 32) {
    atomicAdd(p.dA + param_row + n, s_dA[warp * N + n]);
    if (!dB_var) atomicAdd(p.dB + param_row + n, s_dB[warp * N + n]);
    if (!dC_var) atomicAdd(p.dC + param_row + n, s_dC[warp * N + n]);
  }
}

template <typename T>
int launch(const SelectiveScanParams& p, cudaStream_t stream) {
  const int blocks_per_group = (p.dim / p.n_groups + kRows - 1) / kRows;
  // Grid y is limited to 65535 (batch entries run along x, up to 2^31 - 1).
  if (static_cast<long>(p.n_groups) * blocks_per_group > 65535) return static_cast<int>(cudaErrorInvalidConfiguration);
  auto kernel = p.seq_idx ? selective_scan_bwd_kernel<T, true> : selective_scan_bwd_kernel<T, false>;
  const size_t smem = smem_bytes(p.dstate);
  if (smem + 4 * kRows * kScanChunk * sizeof(float) > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  kernel<<<dim3(p.batch, p.n_groups * blocks_per_group), kThreads, smem, stream>>>(p, blocks_per_group);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace ssm_tools_cuda

int selective_scan_bwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  return dispatch_input_type(type, [&](auto tag) {
    return launch<decltype(tag)>(p, static_cast<cudaStream_t>(stream));
  });
}
