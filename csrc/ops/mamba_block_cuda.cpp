// CUDA kernels of the Mamba block's ops other than the scan (schemas in registration.cpp): checks
// the tensors (mamba_block_checks.h), makes them contiguous where the kernels need it, fills the
// params of csrc/kernels/mamba_block_params.h and launches on the current stream. Inputs in float32,
// bfloat16 or float16; weights, biases and states in float32.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>

#include "ops/mamba_block_checks.h"

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using namespace ssm_tools::mamba_block;

ScanInputType input_type(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScanInputType::kFloat32;
    case at::kBFloat16: return ScanInputType::kBFloat16;
    case at::kHalf: return ScanInputType::kFloat16;
    default: TORCH_CHECK(false, op, ": inputs must be float32, bfloat16 or float16 on CUDA, got ", c10::toString(t.scalar_type()));
  }
}

// A float32 parameter (weight, bias, A_log, D), contiguous (checked to be on x's device).
Tensor param(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

Tensor opt_param(const OptTensor& t) { return t ? param(*t) : Tensor(); }

const float* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// A float32 state updated in place: must be contiguous (the kernel writes through it).
float* state_ptr(const Tensor& state, const char* op, const char* name) {
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.is_contiguous(), op, ": ", name,
              " must be a contiguous float32 tensor on CUDA (it is updated in place)");
  return state.data_ptr<float>();
}

// A (batch, dim) input read row by row: unit stride along dim, any row stride.
Tensor rows(const Tensor& t, const Tensor& x) {
  const Tensor r = t.to(x.scalar_type());
  return r.stride(1) == 1 ? r : r.contiguous();
}

void check_launch(int err, const char* op) {
  TORCH_CHECK(err == 0, op, ": CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

struct ConvCall {
  Tensor x, weight, bias, seq_idx;
  CausalConv1dParams p;
};

ConvCall conv_call(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu,
                   const OptTensor& seq_idx) {
  constexpr const char* op = "causal_conv1d";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  const ConvShape s = check_conv(x, weight, bias, seq_idx, op);
  // The kernels index the (batch, position) pairs of a channel in 32 bits.
  TORCH_CHECK(s.batch * s.seqlen < (int64_t{1} << 31), op, ": batch * seqlen must be below 2^31 on CUDA, got ",
              ssm_tools::text(s.batch * s.seqlen));
  ConvCall c{x.contiguous(), param(weight), opt_param(bias), seq_idx ? seq_idx->contiguous() : Tensor(), {}};
  c.p.batch = static_cast<int>(s.batch);
  c.p.dim = static_cast<int>(s.dim);
  c.p.seqlen = static_cast<int>(s.seqlen);
  c.p.width = static_cast<int>(s.width);
  c.p.silu = silu;
  c.p.x = c.x.data_ptr();
  c.p.weight = c.weight.data_ptr<float>();
  c.p.bias = ptr(c.bias);
  c.p.seq_idx = c.seq_idx.defined() ? c.seq_idx.data_ptr<int>() : nullptr;
  return c;
}

Tensor causal_conv1d_fwd_cuda(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu,
                              const OptTensor& seq_idx) {
  const c10::cuda::CUDAGuard guard(x.device());
  ConvCall c = conv_call(x, weight, bias, silu, seq_idx);
  Tensor out = at::empty(x.sizes(), c.x.options());
  c.p.out = out.data_ptr();
  check_launch(causal_conv1d_fwd_launch(c.p, input_type(x, "causal_conv1d"), stream()), "causal_conv1d");
  return out;
}

// The conv backward into dx (channel-first, or token-major in rows of dx_cols > 0 columns); returns
// (dweight, dbias).
std::tuple<Tensor, Tensor> conv_bwd_into(ConvCall& c, const Tensor& dout, const Tensor& x, bool has_bias, void* dx,
                                         int64_t dx_cols) {
  ssm_tools::check_input("causal_conv1d", "dout", dout, x.sizes(), x);
  const Tensor g = dout.to(x.scalar_type()).contiguous();
  Tensor dweight = at::empty({c.p.dim, c.p.width}, c.weight.options());
  Tensor dbias = at::empty({has_bias ? c.p.dim : 0}, c.weight.options());
  const ScanInputType type = input_type(x, "causal_conv1d");
  c.p.dx = dx;
  c.p.dx_cols = dx_cols;
  const Tensor partials = at::empty({causal_conv1d_bwd_partials(c.p, type)}, c.weight.options());
  c.p.dout = g.data_ptr();
  c.p.dweight = dweight.data_ptr<float>();
  c.p.dbias = has_bias ? dbias.data_ptr<float>() : nullptr;
  c.p.partials = partials.data_ptr<float>();
  check_launch(causal_conv1d_bwd_launch(c.p, type, stream()), "causal_conv1d");
  return {dweight, dbias};
}

std::tuple<Tensor, Tensor, Tensor> causal_conv1d_bwd_cuda(const Tensor& dout, const Tensor& x, const Tensor& weight,
                                                          const OptTensor& bias, bool silu,
                                                          const OptTensor& seq_idx) {
  const c10::cuda::CUDAGuard guard(x.device());
  ConvCall c = conv_call(x, weight, bias, silu, seq_idx);
  Tensor dx = at::empty(x.sizes(), c.x.options());
  auto [dweight, dbias] = conv_bwd_into(c, dout, x, bias.has_value(), dx.data_ptr(), 0);
  return {dx, dweight, dbias};
}

// Channel-first parts written token-major into out (batch, seqlen, cols) from column `offset` on.
void transpose_into(const Tensor& out, at::TensorList parts, int64_t offset, const char* op) {
  const int64_t batch = out.size(0), seqlen = out.size(1);
  TORCH_CHECK_VALUE(batch <= 65535, op, ": batch must be at most 65535 on CUDA, got ", ssm_tools::text(batch));
  for (const Tensor& t : parts) {
    const Tensor src = t.contiguous();
    TransposeParams p;
    p.batch = static_cast<int>(batch);
    p.rows = static_cast<int>(src.size(1));
    p.seqlen = static_cast<int>(seqlen);
    p.dst_cols = out.size(2);
    p.offset = offset;
    p.src = src.data_ptr();
    p.dst = out.data_ptr();
    if (src.numel()) check_launch(transpose_launch(p, input_type(src, op), stream()), op);
    offset += src.size(1);
  }
}

std::tuple<Tensor, Tensor, Tensor> causal_conv1d_bwd_cat_cuda(const Tensor& dout, const Tensor& x,
                                                              const Tensor& weight, const OptTensor& bias, bool silu,
                                                              const OptTensor& seq_idx, at::TensorList rest) {
  constexpr const char* op = "causal_conv1d_bwd_cat";
  const c10::cuda::CUDAGuard guard(x.device());
  ConvCall c = conv_call(x, weight, bias, silu, seq_idx);
  check_conv_bwd_rest(x, rest);
  int64_t cols = c.p.dim;
  for (const Tensor& t : rest) cols += t.size(1);
  Tensor out = at::empty({c.p.batch, c.p.seqlen, cols}, c.x.options());
  auto [dweight, dbias] = conv_bwd_into(c, dout, x, bias.has_value(), out.data_ptr(), cols);
  transpose_into(out, rest, c.p.dim, op);
  return {out, dweight, dbias};
}

Tensor causal_conv1d_update_cuda(const Tensor& state, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                                 bool silu) {
  constexpr const char* op = "causal_conv1d_update";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const ConvUpdateShape s = check_conv_update(state, x, weight, bias);
  const Tensor x_r = rows(x, x), w = param(weight), b = opt_param(bias);
  Tensor out = at::empty({s.batch, s.dim}, x.options());
  CausalConv1dUpdateParams p;
  p.batch = static_cast<int>(s.batch);
  p.dim = static_cast<int>(s.dim);
  p.width = static_cast<int>(s.width);
  p.silu = silu;
  p.state = state_ptr(state, op, "conv_state");
  p.x = x_r.data_ptr();
  p.x_stride = x_r.stride(0);
  p.weight = w.data_ptr<float>();
  p.bias = ptr(b);
  p.out = out.data_ptr();
  check_launch(causal_conv1d_update_launch(p, input_type(x, op), stream()), op);
  return out;
}

Tensor mamba_state_update_cuda(const Tensor& state, const Tensor& x, const Tensor& xdbl, const OptTensor& z,
                               const Tensor& dt_weight, const Tensor& dt_bias, const Tensor& A_log, const OptTensor& D) {
  constexpr const char* op = "mamba_state_update";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const StateUpdateShape s = check_mamba_state_update(state, x, xdbl, z, dt_weight, dt_bias, A_log, D);
  const Tensor x_c = x.contiguous(), xdbl_r = rows(xdbl, x), z_r = z ? rows(*z, x) : Tensor();
  const Tensor w = param(dt_weight), bias = param(dt_bias), a = param(A_log), d = opt_param(D);
  Tensor y = at::empty({s.batch, s.dim}, x.options());
  MambaStateUpdateParams p;
  p.batch = static_cast<int>(s.batch);
  p.dim = static_cast<int>(s.dim);
  p.dstate = static_cast<int>(s.dstate);
  p.dt_rank = static_cast<int>(s.dt_rank);
  p.state = state_ptr(state, op, "state");
  p.x = x_c.data_ptr();
  p.xdbl = xdbl_r.data_ptr();
  p.xdbl_stride = xdbl_r.stride(0);
  p.z = z_r.defined() ? z_r.data_ptr() : nullptr;
  p.z_stride = z_r.defined() ? z_r.stride(0) : 0;
  p.dt_weight = w.data_ptr<float>();
  p.dt_bias = bias.data_ptr<float>();
  p.A_log = a.data_ptr<float>();
  p.D = ptr(d);
  p.y = y.data_ptr();
  check_launch(mamba_state_update_launch(p, input_type(x, op), stream()), op);
  return y;
}

Tensor transpose_cat_cuda(at::TensorList parts) {
  check_transpose_cat(parts);
  const c10::cuda::CUDAGuard guard(parts[0].device());
  int64_t cols = 0;
  for (const Tensor& t : parts) cols += t.size(1);
  Tensor out = at::empty({parts[0].size(0), parts[0].size(2), cols}, parts[0].options());
  transpose_into(out, parts, 0, "transpose_cat");
  return out;
}

// The residual stream x of the norms (add_rms_norm, rms_norm, rms_norm_bwd): float32 on CUDA, and
// within the kernels' int32 row count.
void check_cuda_stream_rows(const Tensor& x, const char* op) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, op, ": x (the residual stream) must be float32 on CUDA, got ",
                    c10::toString(x.scalar_type()));
  TORCH_CHECK_VALUE(x.size(0) <= std::numeric_limits<int>::max(), op, ": at most 2^31 - 1 rows on CUDA, got ",
                    ssm_tools::text(x.size(0)));
}

std::tuple<Tensor, Tensor> add_rms_norm_cuda(const Tensor& x, const OptTensor& residual, const Tensor& weight,
                                             double eps, at::ScalarType out_dtype) {
  constexpr const char* op = "add_rms_norm";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  check_add_rms_norm(x, residual, weight, out_dtype);
  check_cuda_stream_rows(x, op);
  const Tensor x_c = x.contiguous(), r = residual ? residual->contiguous() : Tensor(), w = param(weight);
  Tensor sum = at::empty(x.sizes(), x.options());
  Tensor out = at::empty(x.sizes(), x.options().dtype(out_dtype));
  AddRmsNormParams p;
  p.rows = static_cast<int>(x.size(0));
  p.dim = static_cast<int>(x.size(1));
  p.eps = static_cast<float>(eps);
  p.x = x_c.data_ptr<float>();
  p.residual = r.defined() ? r.data_ptr() : nullptr;
  p.weight = w.data_ptr<float>();
  p.sum = sum.data_ptr<float>();
  p.out = out.data_ptr();
  const ScanInputType out_type = input_type(out, op);
  check_launch(add_rms_norm_launch(p, r.defined() ? input_type(r, op) : out_type, out_type, stream()), op);
  return {sum, out};
}

Tensor rms_norm_cuda(const Tensor& x, const OptTensor& weight, double eps, at::ScalarType out_dtype) {
  constexpr const char* op = "rms_norm";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  check_rms_norm(x, weight, out_dtype);
  check_cuda_stream_rows(x, op);
  const Tensor x_c = x.contiguous(), w = opt_param(weight);
  Tensor out = at::empty(x.sizes(), x.options().dtype(out_dtype));
  const ScanInputType out_type = input_type(out, op);
  AddRmsNormParams p;  // no residual, no sum: the add_rms_norm kernels' norm alone
  p.rows = static_cast<int>(x.size(0));
  p.dim = static_cast<int>(x.size(1));
  p.eps = static_cast<float>(eps);
  p.x = x_c.data_ptr<float>();
  p.weight = ptr(w);
  p.out = out.data_ptr();
  check_launch(add_rms_norm_launch(p, out_type, out_type, stream()), op);
  return out;
}

std::tuple<Tensor, Tensor> rms_norm_bwd_cuda(const Tensor& grad, const Tensor& x, const OptTensor& weight, double eps,
                                             const OptTensor& grad_sum, std::optional<at::ScalarType> cast_dtype) {
  constexpr const char* op = "rms_norm_bwd";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  check_rms_norm_bwd(grad, x, weight, grad_sum, cast_dtype);
  check_cuda_stream_rows(x, op);
  const Tensor x_c = x.contiguous(), g = grad.contiguous(), w = opt_param(weight);
  const Tensor s = grad_sum ? grad_sum->to(at::kFloat).contiguous() : Tensor();
  Tensor dx = at::empty(x.sizes(), x.options());
  Tensor dx_cast = cast_dtype ? at::empty(x.sizes(), x.options().dtype(*cast_dtype)) : at::empty({0}, x.options());
  RmsNormBwdParams p;
  p.rows = static_cast<int>(x.size(0));
  p.dim = static_cast<int>(x.size(1));
  p.eps = static_cast<float>(eps);
  p.grad = g.data_ptr();
  p.x = x_c.data_ptr<float>();
  p.weight = ptr(w);
  p.grad_sum = ptr(s);
  p.dx = dx.data_ptr<float>();
  p.dx_cast = cast_dtype ? dx_cast.data_ptr() : nullptr;
  const ScanInputType cast_type = cast_dtype ? input_type(dx_cast, op) : ScanInputType::kFloat32;
  check_launch(rms_norm_bwd_launch(p, input_type(g, op), cast_type, stream()), op);
  return {dx, dx_cast};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssm_tools, CUDA, m) {
  m.impl("causal_conv1d_fwd", &causal_conv1d_fwd_cuda);
  m.impl("causal_conv1d_bwd", &causal_conv1d_bwd_cuda);
  m.impl("causal_conv1d_bwd_cat", &causal_conv1d_bwd_cat_cuda);
  m.impl("causal_conv1d_update", &causal_conv1d_update_cuda);
  m.impl("mamba_state_update", &mamba_state_update_cuda);
  m.impl("transpose_cat", &transpose_cat_cuda);
  m.impl("add_rms_norm", &add_rms_norm_cuda);
  m.impl("rms_norm", &rms_norm_cuda);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cuda);
}
