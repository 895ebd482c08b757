// The SSM part of a Mamba mixer's decode step (conv update + SiLU, x_proj, dt_proj + softplus, the
// state update, D and the z gate) in two kernels instead of three (conv update, cuBLAS x_proj,
// mamba_state_update), each spread over many blocks at every batch (ConvSsmStepParams describes the
// split). x_proj's reduction over channels is the one step that needs a whole batch row: kernel 1
// leaves it as per-slice partial sums and kernel 2 finishes it per block, so neither kernel gives a
// block a whole row's work (what made the one-kernel step of session 7 slower).
#include <algorithm>

#include "kernels/decode_rows.cuh"
#include "kernels/mamba_block_params.h"
#include "kernels/programmatic_launch.cuh"

namespace ssm_tools_cuda {
namespace {

constexpr int kPartialThreads = kConvSsmRows * kConvSsmSlice;  // a (row, channel) pair a thread
constexpr int kPartialWarps = kPartialThreads / 32;
static_assert(kConvSsmSlice == 64, "a lane of kernel 1 takes channels lane and lane + 32 of its slice");
constexpr int kUpdateThreads = 256;
constexpr int kUpdateBlocksPerSm = 6;  // resident blocks of kernel 2 an SM (registers capped for it)
// Kernel 2's blocks per batch row: enough for about this many blocks in all (about one wave: 6
// resident blocks on each of an H100/H200's 132 SMs), fewer at large batches: every block first sums
// its row's partials (slices x (dt_rank + 2 dstate) floats from L2), so more blocks per row means
// more of these redundant reads (at batch 100, 8 blocks a row: 6 MB of L2 reads a layer).
constexpr int kUpdateTargetBlocks = kUpdateBlocksPerSm * 128;

// Kernel 1: block (batch group blockIdx.x, slices blockIdx.y + k gridDim.y). Thread (r, c) updates
// the conv state of row b0 + r, channel slice * kConvSsmSlice + c, and writes u; then warp w sums
// x_proj's outputs j = w, w + kPartialWarps, ... over the slice's channels for each of the rows.
template <typename T>
__global__ __launch_bounds__(kPartialThreads) void conv_xproj_partials_kernel(ConvSsmStepParams p) {
  __shared__ float su[kConvSsmRows][kConvSsmSlice];
  const int b0 = blockIdx.x * kConvSsmRows;
  const int r = threadIdx.x / kConvSsmSlice, c = threadIdx.x % kConvSsmSlice;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int b = b0 + r, rows = min(kConvSsmRows, p.batch - b0), n_out = p.dt_rank + 2 * p.dstate;
  const T* W = static_cast<const T*>(p.x_proj_weight);
  wait_for_previous_grid();  // in_proj's x
  allow_next_grid();         // kernel 2's blocks may be dispatched now (they wait for this grid)
  for (int slice = blockIdx.y; slice < conv_ssm_slices(p.dim); slice += gridDim.y) {
    const int d = slice * kConvSsmSlice + c;
    float u = 0.f;  // outside the batch or dim: adds nothing below
    if (b < p.batch && d < p.dim) {
      const size_t row = static_cast<size_t>(b) * p.dim + d;
      const float x = to_float(static_cast<const T*>(p.x)[static_cast<size_t>(b) * p.x_stride + d]);
      const T u_t = from_float<T>(conv_update_row(p.conv_state + row * p.width,
                                                  p.conv_weight + static_cast<size_t>(d) * p.width,
                                                  p.conv_bias ? p.conv_bias[d] : 0.f, x, p.width, true));
      static_cast<T*>(p.u)[row] = u_t;
      u = to_float(u_t);  // x_proj's input rounded as the separate ops' GEMM reads it
    }
    __syncthreads();  // the previous slice's readers of su are done
    su[r][c] = u;
    __syncthreads();
    const int d0 = slice * kConvSsmSlice + lane, d1 = d0 + 32;
    for (int j = warp; j < n_out; j += kPartialWarps) {
      const T* wj = W + static_cast<size_t>(j) * p.dim;
      const float w0 = d0 < p.dim ? to_float(wj[d0]) : 0.f;
      const float w1 = d1 < p.dim ? to_float(wj[d1]) : 0.f;
#pragma unroll
      for (int i = 0; i < kConvSsmRows; ++i) {
        const float part = warp_sum(fmaf(w1, su[i][lane + 32], w0 * su[i][lane]));
        if (lane == 0 && i < rows)
          p.partials[(static_cast<size_t>(slice) * p.batch + b0 + i) * n_out + j] = part;
      }
    }
  }
}

// Kernel 2: block (batch row blockIdx.x, channel runs blockIdx.y + k gridDim.y). The block sums
// its row's partials into xdbl (shared, float32, in a fixed order: deterministic), then a team of
// 2^team_log2 threads takes a channel: dt = softplus(dt_weight[d] . dt_low + dt_bias[d]) and the
// state update with B, C from xdbl, as mamba_state_update_kernel does from x_proj's output.
template <typename T>
__global__ __launch_bounds__(kUpdateThreads, kUpdateBlocksPerSm) void conv_ssm_update_kernel(ConvSsmStepParams p,
                                                                                             int team_log2,
                                                                                             bool vectorized) {
  extern __shared__ float xdbl[];               // dt_rank + 2 dstate
  __shared__ float group_sums[kUpdateThreads];  // groups x n_out partial sums, n_out <= kUpdateThreads
  const int b = blockIdx.x, n_out = p.dt_rank + 2 * p.dstate, slices = conv_ssm_slices(p.dim);
  const size_t slice_stride = static_cast<size_t>(p.batch) * n_out;
  const float* row_partials = p.partials + static_cast<size_t>(b) * n_out;
  wait_for_previous_grid();  // kernel 1's partials and u (and, through it, in_proj's z)
  if (n_out <= kUpdateThreads) {
    // `groups` threads per output, each summing every groups-th slice, so that all threads have
    // loads in flight at once (n_out = 80, 24 slices: 3 groups of 8 loads); then the groups' sums
    // in group order. The order is fixed: the same xdbl on every run.
    const int groups = kUpdateThreads / n_out, g = threadIdx.x / n_out, j = threadIdx.x % n_out;
    if (g < groups) {
      float v = 0.f;
#pragma unroll 8
      for (int s = g; s < slices; s += groups) v += row_partials[s * slice_stride + j];
      group_sums[threadIdx.x] = v;
    }
    __syncthreads();
    if (threadIdx.x < n_out) {
      float v = 0.f;
      for (int k = 0; k < groups; ++k) v += group_sums[k * n_out + threadIdx.x];
      xdbl[threadIdx.x] = v;
    }
  } else {
    for (int j = threadIdx.x; j < n_out; j += kUpdateThreads) {
      float v = 0.f;
#pragma unroll 8
      for (int s = 0; s < slices; ++s) v += row_partials[s * slice_stride + j];
      xdbl[j] = v;
    }
  }
  __syncthreads();
  // A team is consecutive threads within a warp, all on one channel (or all past the last).
  const int team = 1 << team_log2, member = threadIdx.x & (team - 1);
  const unsigned mask = (team == 32 ? kFullMask : ((1u << team) - 1u)) << (threadIdx.x % 32 & ~(team - 1));
  const int channels_per_pass = kUpdateThreads >> team_log2;
  const float* B = xdbl + p.dt_rank;
  const float* C = B + p.dstate;
  for (int d = blockIdx.y * channels_per_pass + (threadIdx.x >> team_log2); d < p.dim;
       d += gridDim.y * channels_per_pass) {
    const size_t row = static_cast<size_t>(b) * p.dim + d;
    const float* w = p.dt_weight + static_cast<size_t>(d) * p.dt_rank;
    float raw = 0.f;
    for (int k = member; k < p.dt_rank; k += team) raw = fmaf(w[k], xdbl[k], raw);
    for (int off = team / 2; off > 0; off /= 2) raw += __shfl_xor_sync(mask, raw, off);
    const float x = to_float(static_cast<const T*>(p.u)[row]);
    const float dt = step_size(raw, p.dt_bias[d], true);
    const float y = update_row(p.ssm_state + row * p.dstate, p.A_log + static_cast<size_t>(d) * p.dstate, true, B, C,
                               p.dstate, dt, dt * x, member, team, mask, vectorized);
    if (member == 0)
      finish_row(y, x, p.D, d, p.z ? static_cast<const T*>(p.z) + static_cast<size_t>(b) * p.z_stride + d : nullptr,
                 static_cast<T*>(p.y) + row);
  }
}

constexpr unsigned kMaxGridY = 65535;

}  // namespace
}  // namespace ssm_tools_cuda

int conv_ssm_step_launch(const ConvSsmStepParams& p, ScanInputType type, void* stream) {
  using namespace ssm_tools_cuda;
  const auto s = static_cast<cudaStream_t>(stream);
  const int team_log2 = team_log2_for(p.dstate);
  const bool vectorized = p.dstate % kStates == 0 && reinterpret_cast<uintptr_t>(p.ssm_state) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(p.A_log) % 16 == 0;
  const unsigned slices = static_cast<unsigned>(conv_ssm_slices(p.dim));
  const dim3 grid1((p.batch + kConvSsmRows - 1) / kConvSsmRows, std::min(slices, kMaxGridY));
  const unsigned runs = (static_cast<unsigned>(p.dim) + (kUpdateThreads >> team_log2) - 1) / (kUpdateThreads >> team_log2);
  const unsigned per_row = std::max(1u, (kUpdateTargetBlocks + static_cast<unsigned>(p.batch) - 1) / p.batch);
  const dim3 grid2(p.batch, std::min({runs, per_row, kMaxGridY}));
  const size_t shared = sizeof(float) * (p.dt_rank + 2 * p.dstate);
  return dispatch_input_type(type, [&](auto tag) {
    using T = decltype(tag);
    // Both programmatic: kernel 1 overlaps in_proj's tail, kernel 2 kernel 1's.
    const cudaError_t err = launch_after_previous(conv_xproj_partials_kernel<T>, grid1, dim3(kPartialThreads), 0, s, p);
    if (err != cudaSuccess) return static_cast<int>(err);
    return static_cast<int>(launch_after_previous(conv_ssm_update_kernel<T>, grid2, dim3(kUpdateThreads), shared, s, p,
                                                  team_log2, vectorized));
  });
}
