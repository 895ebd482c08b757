// CUDA kernels of the ssm_tools ops (schemas in registration.cpp): checks the tensors (ops/checks.h,
// plus what only the CUDA kernels cannot take), makes them contiguous, fills the plain params structs
// of csrc/kernels/selective_scan_params.h and launches on the current stream.
//
// Test hooks: with SSM_TOOLS_CUDA_POISON=1 every output the kernels must write in full is allocated
// NaN-filled instead of uninitialised, so tests catch elements a kernel never writes.
// SSM_TOOLS_SCAN_SEGMENT=L (a multiple of kScanChunk) makes the forward split rows into segments of
// L positions whatever the shape, so small tests cover the split that large shapes take.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/selective_scan_params.h"
#include "ops/checks.h"

namespace {

using ssm_tools::OptTensor;
using ssm_tools::text;

bool poison_outputs() {
  const char* v = std::getenv("SSM_TOOLS_CUDA_POISON");
  return v && v[0] == '1';
}

// An output every element of which a kernel writes.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return poison_outputs() ? at::full(sizes, std::numeric_limits<double>::quiet_NaN(), options)
                          : at::empty(sizes, options);
}

// Positions per forward segment: the test hook's, else the launcher's choice for the shape.
int segment_len(const SelectiveScanParams& p) {
  const char* v = std::getenv("SSM_TOOLS_SCAN_SEGMENT");
  const long forced = v ? std::strtol(v, nullptr, 10) : 0;
  if (forced > 0 && forced % kScanChunk == 0) return static_cast<int>(std::min<long>(forced, p.seqlen));
  return selective_scan_fwd_segment_len(p.batch, p.dim, p.n_groups, p.seqlen);
}

ScanInputType input_type(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScanInputType::kFloat32;
    case at::kBFloat16: return ScanInputType::kBFloat16;
    case at::kHalf: return ScanInputType::kFloat16;
    default:
      TORCH_CHECK_VALUE(false, op, ": ", name, " must be float32, bfloat16 or float16 on CUDA, got ",
                  c10::toString(t.scalar_type()));
  }
}

// The device of `t`, which must be a CUDA tensor (checks.h holds the others to it).
at::Device cuda_device(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device().str());
  return t.device();
}

// Contiguous float32 copy (or the tensor itself when it already is one).
at::Tensor as_float(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// An optional (dim,) input (D, delta_bias, dt_bias) as contiguous float32, or undefined if absent.
at::Tensor per_dim_input(const OptTensor& t) { return t ? as_float(*t) : at::Tensor(); }

// An optional input of u's (x's) shape and dtype (z), contiguous, or undefined if absent.
at::Tensor like_input(const OptTensor& t) { return t ? t->contiguous() : at::Tensor(); }

void check_launch(int err, const char* op) {
  TORCH_CHECK(err == 0, op, ": CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The inputs shared by forward and backward, checked and made contiguous; `p` points into them, so
// a ScanInputs must outlive the launch call (the caching allocator keeps memory valid for the stream).
struct ScanInputs {
  at::Tensor u, delta, A, B, C, D, z, delta_bias, seq_idx;
  ssm_tools::ScanSizes sizes;
  SelectiveScanParams p;
  ScanInputType type;
};

// B or C: a constant (dim, dstate) as float32, an input-dependent one in u's dtype; contiguous.
at::Tensor prepare_state_input(const at::Tensor& t, const at::Tensor& u) {
  return t.dim() == 2 ? as_float(t) : t.to(u.scalar_type()).contiguous();
}

ScanInputs prepare_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
                        bool delta_softplus, const OptTensor& seq_idx, const char* op) {
  ScanInputs s;
  s.type = input_type(u, op, "u");
  s.sizes = ssm_tools::check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, seq_idx, kScanChunk);
  const ssm_tools::ScanSizes& n = s.sizes;
  TORCH_CHECK_VALUE(n.batch <= 65535, op, ": batch must be at most 65535 on CUDA, got ", text(n.batch));
  TORCH_CHECK_VALUE(n.seqlen <= std::numeric_limits<int>::max() - kScanChunk && n.dim <= std::numeric_limits<int>::max(),
                    op, ": seqlen and dim must fit in int32, got shape ", text(u.sizes()));
  TORCH_CHECK_VALUE(n.dstate <= kMaxDstate, op, ": dstate (A.shape[1]) must be at most ", text(kMaxDstate),
                    " on CUDA, got ", text(n.dstate));
  s.u = u.contiguous();
  s.delta = delta.contiguous();
  s.A = as_float(A);
  SelectiveScanParams& p = s.p;
  p.batch = static_cast<int>(n.batch);
  p.dim = static_cast<int>(n.dim);
  p.seqlen = static_cast<int>(n.seqlen);
  p.dstate = static_cast<int>(n.dstate);
  p.n_chunks = static_cast<int>(n.n_chunks);
  p.delta_softplus = delta_softplus;
  p.segment_len = p.seqlen;
  p.variable_B = n.variable_B;
  p.variable_C = n.variable_C;
  p.n_groups = static_cast<int>(n.groups);
  s.B = prepare_state_input(B, u);
  s.C = prepare_state_input(C, u);
  s.D = per_dim_input(D);
  s.delta_bias = per_dim_input(delta_bias);
  s.z = like_input(z);
  if (seq_idx) s.seq_idx = seq_idx->contiguous();
  p.seq_idx = s.seq_idx.defined() ? s.seq_idx.data_ptr<int32_t>() : nullptr;
  p.u = s.u.data_ptr();
  p.delta = s.delta.data_ptr();
  p.A = s.A.data_ptr<float>();
  p.B = s.B.data_ptr();
  p.C = s.C.data_ptr();
  p.D = s.D.defined() ? s.D.data_ptr<float>() : nullptr;
  p.z = s.z.defined() ? s.z.data_ptr() : nullptr;
  p.delta_bias = s.delta_bias.defined() ? s.delta_bias.data_ptr<float>() : nullptr;
  return s;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> selective_scan_fwd_cuda(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
    const OptTensor& seq_idx) {
  constexpr const char* op = "selective_scan_fwd";
  const c10::cuda::CUDAGuard guard(cuda_device(u, op, "u"));
  ScanInputs s = prepare_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_idx, op);
  SelectiveScanParams& p = s.p;
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor out = new_output(u.sizes(), u.options());
  at::Tensor last_state = new_output({p.batch, p.dim, p.dstate}, f32);
  at::Tensor saved = new_output({p.batch, p.dim, p.n_chunks, p.dstate}, f32);
  p.out = out.data_ptr();
  p.last_state = last_state.data_ptr<float>();
  p.saved = saved.data_ptr<float>();
  p.segment_len = segment_len(p);
  p.n_segments = (p.seqlen + p.segment_len - 1) / p.segment_len;
  at::Tensor segment_end, segment_decay;  // scratch of the split forward, alive until the launch is queued
  if (p.n_segments > 1) {
    segment_end = at::empty({p.batch, p.dim, p.n_segments, p.dstate}, f32);
    segment_decay = at::empty_like(segment_end);
    p.segment_end = segment_end.data_ptr<float>();
    p.segment_decay = segment_decay.data_ptr<float>();
  }
  check_launch(selective_scan_fwd_launch(p, s.type, current_stream()), op);
  return {out, last_state, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd_cuda(const at::Tensor& dout, const OptTensor& dlast_state, const at::Tensor& u,
                        const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                        const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                        const at::Tensor& saved, const OptTensor& seq_idx) {
  constexpr const char* op = "selective_scan_bwd";
  const c10::cuda::CUDAGuard guard(cuda_device(u, op, "u"));
  ScanInputs s = prepare_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_idx, op);
  SelectiveScanParams& p = s.p;
  ssm_tools::check_scan_grads(s.sizes, u, dout, dlast_state, saved);
  const at::Tensor dout_c = dout.to(u.scalar_type()).contiguous();
  const at::Tensor dlast_c = dlast_state ? as_float(*dlast_state) : at::Tensor();
  at::Tensor saved_c = as_float(saved);

  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor du = new_output(u.sizes(), u.options());
  at::Tensor ddelta = new_output(u.sizes(), u.options());
  at::Tensor dz = s.z.defined() ? new_output(u.sizes(), u.options()) : at::Tensor();
  // Accumulated with atomics: zero-filled, float32, converted to the inputs' dtypes below.
  at::Tensor dA = at::zeros(s.A.sizes(), f32);
  at::Tensor dB = at::zeros(s.B.sizes(), f32);
  at::Tensor dC = at::zeros(s.C.sizes(), f32);
  at::Tensor dD = s.D.defined() ? at::zeros(s.D.sizes(), f32) : at::Tensor();
  at::Tensor ddelta_bias = s.delta_bias.defined() ? at::zeros(s.delta_bias.sizes(), f32) : at::Tensor();
  p.dout = dout_c.data_ptr();
  p.dlast_state = dlast_c.defined() ? dlast_c.data_ptr<float>() : nullptr;
  p.saved = saved_c.data_ptr<float>();
  p.du = du.data_ptr();
  p.ddelta = ddelta.data_ptr();
  p.dz = dz.defined() ? dz.data_ptr() : nullptr;
  p.dA = dA.data_ptr<float>();
  p.dB = dB.data_ptr<float>();
  p.dC = dC.data_ptr<float>();
  p.dD = dD.defined() ? dD.data_ptr<float>() : nullptr;
  p.ddelta_bias = ddelta_bias.defined() ? ddelta_bias.data_ptr<float>() : nullptr;
  check_launch(selective_scan_bwd_launch(p, s.type, current_stream()), op);

  // The grad of an optional input, in its dtype; an empty tensor for an absent one.
  const auto like = [&u](const at::Tensor& grad, const OptTensor& input) {
    return input ? grad.to(input->scalar_type()).view(input->sizes()) : at::empty({0}, u.options());
  };
  return {du,
          ddelta,
          dA.to(A.scalar_type()),
          dB.to(B.scalar_type()),
          dC.to(C.scalar_type()),
          like(dD, D),
          like(dz, z),
          like(ddelta_bias, delta_bias)};
}

at::Tensor selective_state_update_cuda(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                       const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                       const OptTensor& D, const OptTensor& z, const OptTensor& dt_bias,
                                       bool dt_softplus) {
  constexpr const char* op = "selective_state_update";
  const c10::cuda::CUDAGuard guard(cuda_device(x, op, "x"));
  const ScanInputType type = input_type(x, op, "x");
  const ssm_tools::StepSizes n = ssm_tools::check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias);
  TORCH_CHECK_VALUE(state.scalar_type() == at::kFloat && state.is_contiguous(), op,
                    ": state must be a contiguous float32 tensor on CUDA (it is updated in place), got ",
                    c10::toString(state.scalar_type()), state.is_contiguous() ? "" : " (non-contiguous)");
  SelectiveStateUpdateParams p;
  p.batch = static_cast<int>(n.batch);
  p.dim = static_cast<int>(n.dim);
  p.dstate = static_cast<int>(n.dstate);
  p.dt_softplus = dt_softplus;
  p.n_groups = static_cast<int>(n.groups);
  const at::Tensor B_c = B.to(x.scalar_type()).contiguous(), C_c = C.to(x.scalar_type()).contiguous();
  const at::Tensor x_c = x.contiguous(), dt_c = dt.contiguous(), A_c = as_float(A);
  const at::Tensor D_c = per_dim_input(D), bias_c = per_dim_input(dt_bias);
  const at::Tensor z_c = like_input(z);
  at::Tensor y = new_output(x.sizes(), x.options());
  p.state = state.data_ptr<float>();
  p.x = x_c.data_ptr();
  p.dt = dt_c.data_ptr();
  p.z = z_c.defined() ? z_c.data_ptr() : nullptr;
  p.B = B_c.data_ptr();
  p.C = C_c.data_ptr();
  p.A = A_c.data_ptr<float>();
  p.D = D_c.defined() ? D_c.data_ptr<float>() : nullptr;
  p.dt_bias = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
  p.y = y.data_ptr();
  check_launch(selective_state_update_launch(p, type, current_stream()), op);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssm_tools, CUDA, m) {
  m.impl("selective_scan_fwd", &selective_scan_fwd_cuda);
  m.impl("selective_scan_bwd", &selective_scan_bwd_cuda);
  m.impl("selective_state_update", &selective_state_update_cuda);
}
