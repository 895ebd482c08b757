// Backward selective scan. One thread block per (batch, dim) row walks the chunks from last to
// first. For each chunk and state n it
//   1. recomputes the chunk's states x_t by a forward block scan from the forward's `saved` state,
//   2. runs the adjoint g_t = dL/dx_t = exp(delta_{t+1} A_n) g_{t+1} + C_t dy_t as a reverse block
//      scan, started from the adjoint carried out of the next chunk (dlast_state for the last one),
//   3. accumulates every gradient from (x_{t-1}, x_t, g_t).
// So it stores nothing of size (batch, dim, seqlen, dstate). Per-row sums (dA, constant dB/dC)
// collect in shared memory; sums over rows (dA, dD, ddelta_bias over batch) use float32 atomics into
// zero-filled outputs. Input-dependent dB/dC are sums over the dims of a group at every position:
// the blocks of up to 8 consecutive dims of one group form a thread-block cluster (Hopper) that adds
// its partial sums through distributed shared memory, each block adding one slice of the chunk into
// global memory, so a cluster of 8 issues an eighth of the atomics of one block per dim. The cluster
// barrier for state n is split: blocks arrive after writing their parts of state n and wait only one
// state later, just before summing them, so no block idles while the slowest of its cluster catches up
// (three buffers of parts rotate: see selective_scan_bwd_kernel). Where that pooling does not pay
// (chunk-sized blocks, large batches; see selective_scan_bwd_launch), every block adds its own dB/dC
// with float4 atomics instead, with the grid ordered so that the blocks running at once belong to
// different batch entries and so to different dB/dC rows.
//
// A block covers a tile of kThreads * kItems positions of a chunk per pass. Long sequences use
// 256 threads (a tile is a whole saved chunk); a sequence shorter than that runs on the smallest block
// whose tile holds it (32, 64 or 128 threads), so that training on short trajectories (the paper's
// batches are ~200 tokens) does not pay for 2048 positions per row and state.
#include <cooperative_groups.h>

#include "kernels/scan_row.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kItems = 8;
constexpr int kMaxThreads = 256;  // the block of a long sequence: its tile is one saved chunk
constexpr int kMaxCluster = 8;    // the portable cluster size limit
static_assert(kMaxThreads * kItems == kScanChunk, "one block iteration of the largest block covers one saved chunk");

// The cluster of blocks that pool their dB/dC partial sums. Before sm_90 (the PTX fallback) there are
// no clusters and the launcher never pools; these reduce to the block alone so that the code compiles.
__device__ __forceinline__ unsigned cluster_rank() {
#if __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}
__device__ __forceinline__ unsigned cluster_size() {
#if __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().num_blocks();
#else
  return 1;
#endif
}
// The two halves of a barrier over every thread of the cluster: shared-memory writes before a
// thread's arrive are visible to reads after any thread's matching wait, in any block of the cluster.
// Each thread alternates arrive and wait. Without clusters, arrive is the block barrier and wait a no-op.
__device__ __forceinline__ void cluster_arrive() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#else
  __syncthreads();
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
// `local` (an address in this block's shared memory) in the shared memory of cluster block `rank`.
__device__ __forceinline__ const float* cluster_shared(float* local, unsigned rank) {
#if __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(local, rank);
#else
  return local;
#endif
}

// Adds the block's sum of v into *out (one atomic per block).
template <int kThreads>
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

// Input-dependent dB and dC of one state over the tile of chunk `c`: each block of the cluster has put
// its dims' values in `parts` ([B or C][position in tile], one array per input-dependent one) and
// arrived at the cluster barrier; after waiting, this block sums its slice of the tile over the
// cluster and adds it into dB/dC (rows of state n, or null where that input is constant).
template <int kThreads>
__device__ void cluster_add_state_grads(float* parts, float* dB_state, float* dC_state, int c, int seqlen,
                                        bool aligned) {
  constexpr int kTile = kThreads * kItems;
  static_assert(kTile % (4 * kMaxCluster) == 0, "every cluster rank sums whole float4s of a tile");
  cluster_wait();
  const unsigned n_ranks = cluster_size(), rank = cluster_rank();
  const int span = kTile / static_cast<int>(n_ranks), quads = span / 4;
  const int n_parts = (dB_state ? 1 : 0) + (dC_state ? 1 : 0);
  for (int v = threadIdx.x; v < n_parts * quads; v += kThreads) {
    const int part = v / quads, pos = static_cast<int>(rank) * span + v % quads * 4;
    float* local = parts + part * kTile + pos;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (unsigned k = 0; k < kMaxCluster; ++k) {  // unrolled: all remote loads in flight at once
      if (k < n_ranks) {
        const float4 q = *reinterpret_cast<const float4*>(cluster_shared(local, k));
        sum.x += q.x, sum.y += q.y, sum.z += q.z, sum.w += q.w;
      }
    }
    const float s[4] = {sum.x, sum.y, sum.z, sum.w};
    float* dst = part == 0 && dB_state ? dB_state : dC_state;
    atomic_add_items<4>(dst, c * kScanChunk + pos, seqlen, aligned, s);
  }
}

// 512 threads per SM (at most 128 registers): with one block of 256, the block scans' barriers left
// the SM idle. A block with kThreads < kMaxThreads only runs sequences that fit one tile (one chunk).
template <typename T, int kThreads>
__global__ __launch_bounds__(kThreads, 512 / kThreads) void selective_scan_bwd_kernel(SelectiveScanParams p, bool pool, bool batch_major) {
  constexpr int kWarps = kThreads / 32;
  constexpr int kTile = kThreads * kItems;
  __shared__ float s_adj[kMaxDstate];  // adjoint flowing into the current chunk from the right
  __shared__ float s_dA[kMaxDstate], s_dB[kMaxDstate], s_dC[kMaxDstate];
  __shared__ float s_a_first[kThreads];  // each thread's first decay, for its left neighbour
  __shared__ float2 s_scan[2 * kWarps];
  __shared__ float s_red[kWarps];
  // Per-dim dB/dC of one state for the cluster's sum, three buffers used in turn (see below).
  extern __shared__ float4 s_parts4[];
  float* s_parts = reinterpret_cast<float*>(s_parts4);
  // Pooling clusters are consecutive dims of one batch entry (grid x = dim). Without pooling, grid x
  // is the batch entry (batch_major), so that the blocks running at once belong to many batch entries
  // and their atomics on dB/dC (whose rows are per batch entry) spread over many addresses.
  const ScanRow<T> r(p, batch_major ? blockIdx.y : blockIdx.x, batch_major ? blockIdx.x : blockIdx.y);
  const int tid = threadIdx.x, lane = tid % 32;
  const size_t state_row = r.row * p.dstate;
  for (int n = tid; n < p.dstate; n += kThreads) {
    s_adj[n] = p.dlast_state ? p.dlast_state[state_row + n] : 0.f;
    s_dA[n] = s_dB[n] = s_dC[n] = 0.f;
  }
  const size_t group_offset = (r.row / p.dim * p.n_groups + r.d / (p.dim / p.n_groups)) * p.dstate * p.seqlen;
  float* dB_var = p.variable_B ? p.dB + group_offset : nullptr;
  float* dC_var = p.variable_C ? p.dC + group_offset : nullptr;
  // pool: input-dependent dB/dC are summed over the cluster first (see above); otherwise every block
  // adds its own into global memory with float4 atomics.
  const int n_parts = pool ? (dB_var ? 1 : 0) + (dC_var ? 1 : 0) : 0;
  const T* dout_row = static_cast<const T*>(p.dout) + r.row * p.seqlen;
  const float* saved = p.saved + r.row * p.n_chunks * p.dstate;
  // dB/dC rows start at multiples of seqlen floats in zero-filled (aligned) buffers.
  const bool atomics_aligned = p.seqlen % 4 == 0;
  float dD_sum = 0.f, dbias_sum = 0.f;
  int parity = 0;
  // The state whose parts await their sum (deferred by one state): its buffer, state and chunk.
  int pending_buf = -1, pending_n = 0, pending_c = 0, next_buf = 0;
  auto add_pending = [&] {
    cluster_add_state_grads<kThreads>(s_parts + pending_buf * n_parts * kTile,
                            dB_var ? dB_var + static_cast<size_t>(pending_n) * p.seqlen : nullptr,
                            dC_var ? dC_var + static_cast<size_t>(pending_n) * p.seqlen : nullptr, pending_c,
                            p.seqlen, atomics_aligned);
  };

  for (int c = p.n_chunks - 1; c >= 0; --c) {
    __syncthreads();  // s_adj / s_dA of the previous chunk are complete
    const int first = c * kScanChunk + tid * kItems;
    // Kept through the state loop: u, dt, dy = dL/dy before gating, the factors that turn the
    // pre-gating y into dz and ddt into ddelta, and the accumulators y, du, ddt.
    float u[kItems], dt[kItems], dy[kItems], dz_per_y[kItems], dsoftplus[kItems], y[kItems], du[kItems],
        ddt[kItems];
    {
      float raw[kItems], dout[kItems], z[kItems];
      load_items<T, kItems>(r.u, first, p.seqlen, r.aligned, u);
      r.load_delta(p, first, raw, dt);
      load_items<T, kItems>(dout_row, first, p.seqlen, r.aligned, dout);
      if (r.z) load_items<T, kItems>(r.z, first, p.seqlen, r.aligned, z);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        const float s = r.z ? sigmoid(z[i]) : 1.f;
        dy[i] = r.z ? dout[i] * z[i] * s : dout[i];
        dz_per_y[i] = r.z ? dout[i] * s * (1.f + z[i] * (1.f - s)) : 0.f;
        dsoftplus[i] = p.delta_softplus ? sigmoid(raw[i] + r.bias) : 1.f;
        y[i] = r.D * u[i];
        du[i] = r.D * dy[i];
        ddt[i] = 0.f;
      }
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
      // 3. gradients, walking the thread's positions backwards. dB/dC per position go to this
      // block's half of s_parts in use for this state (B's array first when both are there).
      float* parts = s_parts + next_buf * n_parts * kTile;
      float4* dB_part = reinterpret_cast<float4*>(parts + tid * kItems);
      float4* dC_part = reinterpret_cast<float4*>(parts + (dB_var ? kTile : 0) + tid * kItems);
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
        if (i % 4 == 0) {  // positions i .. i + 3 are done: one 16-byte store each
          if (n_parts) {
            if (dB_var) dB_part[i / 4] = make_float4(dBv[i], dBv[i + 1], dBv[i + 2], dBv[i + 3]);
            if (dC_var) dC_part[i / 4] = make_float4(dCv[i], dCv[i + 1], dCv[i + 2], dCv[i + 3]);
          } else {
            const float b4[4] = {dBv[i], dBv[i + 1], dBv[i + 2], dBv[i + 3]};
            const float c4[4] = {dCv[i], dCv[i + 1], dCv[i + 2], dCv[i + 3]};
            if (dB_var) atomic_add_items<4>(dB_var + static_cast<size_t>(n) * p.seqlen, first + i, p.seqlen, atomics_aligned, b4);
            if (dC_var) atomic_add_items<4>(dC_var + static_cast<size_t>(n) * p.seqlen, first + i, p.seqlen, atomics_aligned, c4);
          }
        }
      }
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
      // Sum the previous state's parts (its barrier has had a whole state to complete), then arrive
      // for this one. The buffer written here is rewritten three states later: by then this block
      // has waited on the barrier of the state after next, which every block of the cluster reaches
      // only after summing this state's parts.
      if (n_parts) {
        if (pending_buf >= 0) add_pending();
        cluster_arrive();
        pending_buf = next_buf, pending_n = n, pending_c = c;
        next_buf = (next_buf + 1) % 3;
      }
    }
    float dz[kItems], ddelta[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      dz[i] = dz_per_y[i] * y[i];
      ddelta[i] = ddt[i] * dsoftplus[i];
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
  if (p.dD) block_sum_atomic<kThreads>(dD_sum, s_red, p.dD + r.d);
  if (p.ddelta_bias) block_sum_atomic<kThreads>(dbias_sum, s_red, p.ddelta_bias + r.d);
  __syncthreads();
  const size_t param_row = static_cast<size_t>(r.d) * p.dstate;
  for (int n = tid; n < p.dstate; n += kThreads) {
    atomicAdd(p.dA + param_row + n, s_dA[n]);
    if (!dB_var) atomicAdd(p.dB + param_row + n, s_dB[n]);
    if (!dC_var) atomicAdd(p.dC + param_row + n, s_dC[n]);
  }
  if (n_parts) {
    add_pending();
    cluster_arrive();  // no block leaves while another may still read its s_parts
    cluster_wait();
  }
}

}  // namespace
}  // namespace ssm_tools_cuda

int selective_scan_bwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  // Clusters: the largest power of two up to kMaxCluster that divides the dims of a group (so a
  // cluster never spans two groups), on sm_90 and later; otherwise clusters of one.
  int device = 0, major = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err != cudaSuccess) return static_cast<int>(err);
  const int dims_per_group = p.dim / p.n_groups;
  // The smallest block whose tile holds the whole sequence, else the chunk-sized one.
  int threads = 32;
  while (threads < kMaxThreads && threads * kItems < p.seqlen) threads *= 2;
  // Pool input-dependent dB/dC over clusters, or let every block add its own (grid x = batch entry)?
  // Measured on the H100 (bf16, dstate 16; results/selective_scan_cuda_notes.md): direct atomics win
  // for chunk-sized blocks (seqlen > 1024: 3.7 vs 4.7 ms at batch 8, seqlen 2048) and when few blocks
  // of each batch entry run at once (batch 512, seqlen 100: 28 vs 40 ms); pooling wins for short
  // sequences at small batch, where many resident blocks would hit the same dB/dC row (batch 128,
  // seqlen 215: 11.6 vs 16.3 ms; batch 64, seqlen 637: 13.4 vs 24 ms).
  int n_sms = 0;
  if (cudaDeviceGetAttribute(&n_sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) n_sms = 1;
  const long resident_per_batch = static_cast<long>(n_sms) * (512 / threads) / p.batch;
  // Grid y is limited to 65535: the dim-major grid (pooling) needs batch <= 65535, the batch-major one
  // dim <= 65535; direct atomics run on either, batch-major where it fits.
  const bool pooled = (p.variable_B || p.variable_C) && major >= 9 && threads < kMaxThreads &&
                      resident_per_batch > 8 && p.batch <= 65535;
  const bool batch_major = !pooled && p.dim <= 65535;
  if (!batch_major && p.batch > 65535) return static_cast<int>(cudaErrorInvalidConfiguration);
  int cluster = 1;
  while (pooled && cluster < kMaxCluster && dims_per_group % (2 * cluster) == 0) cluster *= 2;
  const size_t smem = pooled ? 3 * ((p.variable_B ? 1 : 0) + (p.variable_C ? 1 : 0)) * threads * kItems * sizeof(float) : 0;
  return dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    auto kernel = threads == 32    ? selective_scan_bwd_kernel<T, 32>
                  : threads == 64  ? selective_scan_bwd_kernel<T, 64>
                  : threads == 128 ? selective_scan_bwd_kernel<T, 128>
                                   : selective_scan_bwd_kernel<T, kMaxThreads>;
    const cudaError_t attr_err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                      static_cast<int>(smem));
    if (attr_err != cudaSuccess) return static_cast<int>(attr_err);
    cudaLaunchConfig_t config = {};
    config.gridDim = batch_major ? dim3(p.batch, p.dim) : dim3(p.dim, p.batch);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    config.stream = static_cast<cudaStream_t>(stream);
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = cluster;
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.attrs = &attribute;
    config.numAttrs = major >= 9 ? 1 : 0;
    return static_cast<int>(cudaLaunchKernelEx(&config, kernel, p, pooled, batch_major));
  });
}
