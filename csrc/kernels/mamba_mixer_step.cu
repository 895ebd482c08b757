// The SSM part of a Mamba mixer's decode step in one kernel, between in_proj and out_proj:
//   u = silu(conv update of x)                      (the conv state shifts in place)
//   [dt_low | B | C] = x_proj_weight @ u
//   dt = softplus(dt_weight @ dt_low + dt_bias)     (per channel)
//   state = exp(dt A) state + dt B u, y = (<C, state> + D u) silu(z),   A = -exp(A_log)
// A decode step is bound by launch latency (a few microseconds a kernel against bytes that take
// less), so this replaces three kernels of a layer (conv update, x_proj GEMV, state update).
//
// A block takes a few batch rows (rows_per_block, or by default one while the batch is below the SM
// count, up to kMixerMaxRows as it grows), in three phases separated by barriers: (1) the conv
// update of every channel, u into shared memory; (2) x_proj as a block-level GEMV, a warp a row of
// the weight (read from L2 in 16-byte vectors where rows are aligned, once for all the block's
// rows), xdbl into shared memory; (3) the state update, a team of threads a channel, as
// mamba_state_update's kernel (decode_rows.cuh). u and xdbl stay in float32 throughout: only y is rounded to the input type.
#include <algorithm>

#include "kernels/decode_rows.cuh"
#include "kernels/mamba_block_params.h"
#include "kernels/scan_common.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kMixerThreads = 1024;
constexpr int kMixerWarps = kMixerThreads / 32;
// 1024 threads: at batch <= the SM count a block is alone on its SM, and phase 3 is a chain of
// dependent L2 round trips (dt_proj's row, then the state) a channel, so the more channels in flight
// the shorter the chain (1536 channels: 6 a team).
constexpr int kMixerMaxRows = kMixerStepMaxRows;  // x_proj's accumulators: 64 registers a thread at most

// Asks for the 128-byte line holding `p` in L1 without waiting for it (a hint: no result depends on it).
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// Block blockIdx.x takes batch rows b0 .. b0 + rows - 1 (b0 = blockIdx.x * rows_per_block), so that
// each weight read from L2 serves `rows` rows: x_proj's from registers, dt_proj's and A_log's from L1.
// `team_log2`: log2 of the threads a channel in phase 3 (team_log2_for(dstate)); `vectorized`:
// update_row's 128-bit state path (dstate % kStates == 0, aligned state and A_log); `vector_rows`:
// x_proj's rows are 16-byte aligned (aligned weight, dim * sizeof(T) a multiple of 16).
template <typename T>
__global__ __launch_bounds__(kMixerThreads) void mamba_mixer_step_kernel(MambaMixerStepParams p, int rows_per_block,
                                                                         int team_log2, bool vectorized,
                                                                         bool vector_rows) {
  const size_t b0 = static_cast<size_t>(blockIdx.x) * rows_per_block;
  const int rows = static_cast<int>(min(static_cast<size_t>(rows_per_block), p.batch - b0));
  const int n_out = p.dt_rank + 2 * p.dstate;
  // u of the block's rows (rows x dim), then their xdbl (rows x n_out); float4: 16-byte aligned for
  // the GEMV's vector reads of u (row r starts at r * dim, a multiple of 4 when vector_rows).
  extern __shared__ float4 shared4[];
  float* u_s = reinterpret_cast<float*>(shared4);
  float* xdbl_s = u_s + static_cast<size_t>(rows) * p.dim;
  const int tid = threadIdx.x;

  // (1) The conv update of every channel of the block's rows.
  for (int i = tid; i < rows * p.dim; i += kMixerThreads) {
    const int r = i / p.dim, d = i - r * p.dim;
    const size_t b = b0 + r;
    const float pre = conv_update_row(p.conv_state + (b * p.dim + d) * p.width,
                                      p.conv_weight + static_cast<size_t>(d) * p.width,
                                      p.conv_bias ? p.conv_bias[d] : 0.f,
                                      to_float(static_cast<const T*>(p.x)[b * p.x_stride + d]), p.width);
    u_s[i] = pre * sigmoid(pre);
  }
  __syncthreads();

  // (2) xdbl = x_proj_weight @ u: a warp a weight row, lanes along the row, each weight element
  // multiplying the block's rows (acc[r] for row r).
  const int lane = tid % 32, warp = tid / 32;
  const T* W = static_cast<const T*>(p.x_proj_weight);
  for (int j = warp; j < n_out; j += kMixerWarps) {
    const T* w = W + static_cast<size_t>(j) * p.dim;
    float acc[kMixerMaxRows] = {};
    if (vector_rows) {
      constexpr int kVec = 16 / sizeof(T);
#pragma unroll 2
      for (int i = lane * kVec; i < p.dim; i += 32 * kVec) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w + i));
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int r = 0; r < kMixerMaxRows; ++r) {
          if (r >= rows) break;
          const float* u = u_s + static_cast<size_t>(r) * p.dim + i;
#pragma unroll
          for (int k = 0; k < kVec; k += 4) {
            const float4 u4 = *reinterpret_cast<const float4*>(u + k);
            acc[r] = fmaf(to_float(e[k]), u4.x, acc[r]);
            acc[r] = fmaf(to_float(e[k + 1]), u4.y, acc[r]);
            acc[r] = fmaf(to_float(e[k + 2]), u4.z, acc[r]);
            acc[r] = fmaf(to_float(e[k + 3]), u4.w, acc[r]);
          }
        }
      }
    } else {
      for (int i = lane; i < p.dim; i += 32) {
        const float e = to_float(w[i]);
#pragma unroll
        for (int r = 0; r < kMixerMaxRows; ++r) {
          if (r >= rows) break;
          acc[r] = fmaf(e, u_s[static_cast<size_t>(r) * p.dim + i], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kMixerMaxRows; ++r) {
      if (r >= rows) break;
      const float sum = warp_sum(acc[r]);  // every lane of the warp takes part (rows is block-uniform)
      if (lane == 0) xdbl_s[r * n_out + j] = sum;
    }
  }
  __syncthreads();

  // (3) The state update, a team a channel, the block's rows one after the other (the channel's
  // dt_proj and A_log rows are L1 hits after the first). Teams never straddle a warp, so every
  // member of a team runs the same iterations and the team's shuffles see all of it.
  const int team = 1 << team_log2;
  const int member = tid & (team - 1);
  const unsigned mask = (team == 32 ? kFullMask : ((1u << team) - 1u)) << (lane & ~(team - 1));
  for (int d = tid >> team_log2; d < p.dim; d += kMixerThreads >> team_log2) {
    const float* w = p.dt_weight + static_cast<size_t>(d) * p.dt_rank;
    const float* A_log = p.A_log + static_cast<size_t>(d) * p.dstate;
    const float dt_bias = p.dt_bias[d];
    for (int r = 0; r < rows; ++r) {
      const size_t b = b0 + r;
      float* state = p.ssm_state + (b * p.dim + d) * p.dstate;
      // The state and A_log do not depend on dt: their first loads are asked for before dt's loads
      // and shuffles, so that the update finds them in L1 rather than making a second round trip.
      if (member * kStates < p.dstate) {
        prefetch_l1(state + member * kStates);
        if (r == 0) prefetch_l1(A_log + member * kStates);
      }
      const float* xdbl = xdbl_s + r * n_out;  // [dt_low | B | C] of row r
      float raw = 0.f;
      for (int k = member; k < p.dt_rank; k += team) raw = fmaf(__ldg(w + k), xdbl[k], raw);
      for (int off = team / 2; off > 0; off /= 2) raw += __shfl_xor_sync(mask, raw, off);
      const float u = u_s[static_cast<size_t>(r) * p.dim + d];
      const float dt = step_size(raw, dt_bias, true);
      const float out = update_row(state, A_log, true, xdbl + p.dt_rank, xdbl + p.dt_rank + p.dstate, p.dstate, dt,
                                   dt * u, member, team, mask, vectorized);
      if (member == 0)
        finish_row(out, u, p.D, d, p.z ? static_cast<const T*>(p.z) + b * p.z_stride + d : nullptr,
                   static_cast<T*>(p.y) + b * p.dim + d);
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace
}  // namespace ssm_tools_cuda

int mamba_mixer_step_launch(const MambaMixerStepParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const int row_floats = p.dim + p.dt_rank + 2 * p.dstate;  // a row's u and xdbl
  int rows = p.rows_per_block;
  if (rows == 0) {
    // One row a block while there are SMs to spare (the work spread widest), more as the batch
    // outgrows the SMs (each weight byte read from L2 then serves several rows), at most
    // kMixerMaxRows and what shared memory holds.
    int device = 0, sms = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return static_cast<int>(err);
    rows = static_cast<int>((static_cast<int64_t>(p.batch) + sms - 1) / sms);
    rows = std::max(1, std::min({rows, kMixerMaxRows, kMixerStepMaxSharedFloats / row_floats}));
  }
  if (rows < 1 || rows > kMixerMaxRows || rows * row_floats > kMixerStepMaxSharedFloats)
    return static_cast<int>(cudaErrorInvalidValue);
  const unsigned blocks = static_cast<unsigned>((static_cast<int64_t>(p.batch) + rows - 1) / rows);
  const size_t shared = static_cast<size_t>(rows) * row_floats * sizeof(float);
  const int team_log2 = team_log2_for(p.dstate);
  const bool vectorized = p.dstate % kStates == 0 && aligned16(p.ssm_state) && aligned16(p.A_log);
  return dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    const bool vector_rows = aligned16(p.x_proj_weight) && (static_cast<size_t>(p.dim) * sizeof(T)) % 16 == 0;
    mamba_mixer_step_kernel<T><<<blocks, kMixerThreads, shared, static_cast<cudaStream_t>(stream)>>>(
        p, rows, team_log2, vectorized, vector_rows);
    return static_cast<int>(cudaGetLastError());
  });
}
