// Plain parameter structs of the Mamba block's kernels other than the scan: the causal depthwise
// conv1d (training: forward and backward; decode: one position against a rolling state), the fused
// decode step of the block's SSM, and the transposing concatenation that lays channel-first
// gradients out token-major for the projections' weight gradients. No torch and no CUDA headers:
// the .cu files compile with nvcc alone. Tensors are contiguous unless a stride is given.
#pragma once

#include <cstdint>

#include "kernels/selective_scan_params.h"  // ScanInputType

// The widest causal conv the kernels take (per-thread weights live in registers).
constexpr int kMaxConvWidth = 8;

struct CausalConv1dParams {
  int batch = 0, dim = 0, seqlen = 0, width = 0;
  bool silu = false;             // out = silu(conv(x) + bias)
  const void* x = nullptr;       // (batch, dim, seqlen), input type (as are out, dout, dx)
  const float* weight = nullptr; // (dim, width); out_t = bias + sum_k weight[k] x_{t - width + 1 + k}
  const float* bias = nullptr;   // (dim,) or null
  const int* seq_idx = nullptr;  // (batch, seqlen) or null: packed rows; taps stay in their sequence
  void* out = nullptr;           // forward output
  const void* dout = nullptr;    // backward: gradient of out
  void* dx = nullptr;            // written once: channel-first, or token-major where dx_cols > 0
  int64_t dx_cols = 0;           // > 0: dx is (batch, seqlen, dx_cols) and takes columns [0, dim)
  float* dweight = nullptr;      // written once (a deterministic second pass over per-block sums)
  float* dbias = nullptr;        // null without bias
  float* partials = nullptr;     // backward workspace: causal_conv1d_bwd_partials(p, type) floats
};

// One decode position: state (batch, dim, width) holds the last `width` inputs; it shifts left by
// one, takes x, and out = silu?(bias + <weight, state>).
struct CausalConv1dUpdateParams {
  int batch = 0, dim = 0, width = 0;
  bool silu = false;
  float* state = nullptr;
  const void* x = nullptr;       // (batch, dim) with row stride x_stride, input type (as is out)
  int64_t x_stride = 0;
  const float* weight = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;           // (batch, dim)
};

// The decode step of a Mamba block's SSM straight from x_proj's output xdbl = [dt_low | B | C]
// (batch, dt_rank + 2 dstate), row stride xdbl_stride: dt = softplus(dt_weight @ dt_low + dt_bias),
// A = -exp(A_log), then selective_state_update with one group, D and the z gate.
struct MambaStateUpdateParams {
  int batch = 0, dim = 0, dstate = 0, dt_rank = 0;
  float* state = nullptr;           // (batch, dim, dstate), updated in place
  const void* x = nullptr;          // (batch, dim), input type (as are xdbl, z, y)
  const void* xdbl = nullptr;
  int64_t xdbl_stride = 0;
  const void* z = nullptr;          // (batch, dim) with row stride z_stride, or null
  int64_t z_stride = 0;
  const float* dt_weight = nullptr; // (dim, dt_rank)
  const float* dt_bias = nullptr;   // (dim,)
  const float* A_log = nullptr;     // (dim, dstate)
  const float* D = nullptr;         // (dim,) or null
  void* y = nullptr;                // (batch, dim)
};

// dst[b, t, offset + r] = src[b, r, t] for src (batch, rows, seqlen): one part of a token-major
// (batch, seqlen, dst_cols) concatenation.
struct TransposeParams {
  int batch = 0, rows = 0, seqlen = 0;
  int64_t dst_cols = 0, offset = 0;
  const void* src = nullptr;
  void* dst = nullptr;
};

// The pre-norm of a decode step, with the residual add before it: sum = x + residual (or x), out =
// sum * rsqrt(mean(sum^2) + eps) * weight, per row of `dim`. x and sum are the float32 residual
// stream; residual (the previous layer's output) and out are of input types: the dtype the layer's
// matmuls run in, out float32 for the last norm before the head.
// Without a residual and a sum it is the training backward's recomputed norm (rms_norm), without a
// weight the normalised x alone.
struct AddRmsNormParams {
  int rows = 0, dim = 0;
  float eps = 0.f;
  const float* x = nullptr;         // (rows, dim)
  const void* residual = nullptr;   // (rows, dim) or null
  const float* weight = nullptr;    // (dim,) or null (ones)
  float* sum = nullptr;             // (rows, dim) or null (not written)
  void* out = nullptr;              // (rows, dim)
};

// The backward of out = rms_norm(x) * weight for the float32 residual stream x, per row of `dim`,
// with the stream's other gradient added and the result also written in a second dtype: with r =
// rsqrt(mean(x^2) + eps) and g = grad * weight, dx = r g - x r^3 mean(g x) + grad_sum, and dx_cast =
// dx in the cast type (the previous layer's output's gradient).
struct RmsNormBwdParams {
  int rows = 0, dim = 0;
  float eps = 0.f;
  const void* grad = nullptr;       // (rows, dim), input type
  const float* x = nullptr;         // (rows, dim)
  const float* weight = nullptr;    // (dim,) or null (ones)
  const float* grad_sum = nullptr;  // (rows, dim) or null
  float* dx = nullptr;              // (rows, dim)
  void* dx_cast = nullptr;          // (rows, dim) in the cast type, or null
};

// Launchers (stream: a cudaStream_t); each returns its launch's cudaError_t as an int.
int causal_conv1d_fwd_launch(const CausalConv1dParams& p, ScanInputType type, void* stream);
int causal_conv1d_bwd_launch(const CausalConv1dParams& p, ScanInputType type, void* stream);
// The backward's workspace size, in floats, for p's shape (batch * seqlen below 2^31).
int64_t causal_conv1d_bwd_partials(const CausalConv1dParams& p, ScanInputType type);
int causal_conv1d_update_launch(const CausalConv1dUpdateParams& p, ScanInputType type, void* stream);
int mamba_state_update_launch(const MambaStateUpdateParams& p, ScanInputType type, void* stream);
int transpose_launch(const TransposeParams& p, ScanInputType type, void* stream);
int add_rms_norm_launch(const AddRmsNormParams& p, ScanInputType residual_type, ScanInputType out_type,
                        void* stream);
int rms_norm_bwd_launch(const RmsNormBwdParams& p, ScanInputType grad_type, ScanInputType cast_type, void* stream);
