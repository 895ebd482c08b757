// CUDA kernels of the ssm_tools ops (schemas in registration.cpp): checks the tensors, makes them
// contiguous, fills the plain params structs of csrc/kernels/selective_scan_params.h and launches
// on the current stream. Argument checks that do not depend on the device live in
// python/ssm_tools/ops.py; the checks here guard what the kernels rely on (device, dtype, shape).
//
// Test hook: with SSM_TOOLS_CUDA_POISON=1 every output the kernels must write in full is allocated
// NaN-filled instead of uninitialised, so tests catch elements a kernel never writes.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/selective_scan_params.h"
#include "ops/message_text.h"

namespace {

using OptTensor = std::optional<at::Tensor>;
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

ScanInputType input_type(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScanInputType::kFloat32;
    case at::kBFloat16: return ScanInputType::kBFloat16;
    case at::kHalf: return ScanInputType::kFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name, " must be float32, bfloat16 or float16 on CUDA, got ",
                  c10::toString(t.scalar_type()));
  }
}

// The device of `t`, which must be a CUDA tensor (the other inputs must be on it too).
at::Device cuda_device(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got one on ", t.device().str());
  return t.device();
}

void check_on(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device().str(),
              " like the other inputs, got ", t.device().str());
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be a floating-point tensor, got ",
              c10::toString(t.scalar_type()));
}

void check_sizes(const at::Tensor& t, at::IntArrayRef expected, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", text(expected), ", got ", text(t.sizes()));
}

// Contiguous float32 copy (or the tensor itself when it already is one).
at::Tensor as_float(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// An optional (dim,) input (D, delta_bias, dt_bias) as contiguous float32, or undefined if absent.
at::Tensor per_dim_input(const OptTensor& t, const at::Tensor& ref, int64_t dim, const char* op, const char* name) {
  if (!t) return at::Tensor();
  check_on(*t, ref, op, name);
  check_sizes(*t, {dim}, op, name);
  return as_float(*t);
}

// An optional input shaped and typed like `ref` (z), contiguous, or undefined if absent.
at::Tensor like_input(const OptTensor& t, const at::Tensor& ref, const char* op, const char* name) {
  if (!t) return at::Tensor();
  check_on(*t, ref, op, name);
  check_sizes(*t, ref.sizes(), op, name);
  return t->to(ref.scalar_type()).contiguous();
}

void check_launch(int err, const char* op) {
  TORCH_CHECK(err == 0, op, ": CUDA kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// The inputs shared by forward and backward, checked and made contiguous; `p` points into them, so
// a ScanInputs must outlive the launch call (the caching allocator keeps memory valid for the stream).
struct ScanInputs {
  at::Tensor u, delta, A, B, C, D, z, delta_bias;
  SelectiveScanParams p;
  ScanInputType type;
};

// B or C: (dim, dstate) constant, or input-dependent (batch, groups, dstate, seqlen) / (batch,
// dstate, seqlen) (one group). Returns the contiguous tensor and sets variable / groups.
at::Tensor prepare_state_input(const at::Tensor& t, const at::Tensor& u, int64_t dstate, const char* op,
                               const char* name, bool& variable, int& groups) {
  check_on(t, u, op, name);
  const int64_t batch = u.size(0), dim = u.size(1), seqlen = u.size(2);
  if (t.dim() == 2) {
    check_sizes(t, {dim, dstate}, op, name);
    variable = false;
    return as_float(t);
  }
  TORCH_CHECK(t.dim() == 3 || t.dim() == 4, op, ": ", name,
              " must be (dim, dstate), (batch, dstate, seqlen) or (batch, groups, dstate, seqlen), got shape ",
              text(t.sizes()));
  const int64_t g = t.dim() == 4 ? t.size(1) : 1;
  TORCH_CHECK(g >= 1 && dim % g == 0, op, ": ", name, "'s groups (", text(g), ") must divide dim (", text(dim), ")");
  if (t.dim() == 4) check_sizes(t, {batch, g, dstate, seqlen}, op, name);
  else check_sizes(t, {batch, dstate, seqlen}, op, name);
  variable = true;
  groups = static_cast<int>(g);
  return t.to(u.scalar_type()).contiguous();
}

ScanInputs prepare_scan(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
                        bool delta_softplus, const char* op) {
  ScanInputs s;
  s.type = input_type(u, op, "u");
  TORCH_CHECK(u.dim() == 3, op, ": u must be (batch, dim, seqlen), got shape ", text(u.sizes()));
  TORCH_CHECK(u.numel() > 0, op, ": u must be non-empty, got shape ", text(u.sizes()));
  const int64_t batch = u.size(0), dim = u.size(1), seqlen = u.size(2);
  TORCH_CHECK(batch <= 65535, op, ": batch must be at most 65535 on CUDA, got ", text(batch));
  TORCH_CHECK(seqlen <= std::numeric_limits<int>::max() - kScanChunk && dim <= std::numeric_limits<int>::max(), op,
              ": seqlen and dim must fit in int32, got ", text(u.sizes()));
  check_on(delta, u, op, "delta");
  check_sizes(delta, u.sizes(), op, "delta");
  check_on(A, u, op, "A");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, op, ": A must be (dim=", text(dim), ", dstate), got shape ",
              text(A.sizes()));
  const int64_t dstate = A.size(1);
  TORCH_CHECK(dstate >= 1 && dstate <= kMaxDstate, op, ": dstate (A.shape[1]) must be in 1..", text(kMaxDstate),
              " on CUDA, got ", text(dstate));
  s.u = u.contiguous();
  s.delta = delta.to(u.scalar_type()).contiguous();
  s.A = as_float(A);
  SelectiveScanParams& p = s.p;
  p.batch = static_cast<int>(batch);
  p.dim = static_cast<int>(dim);
  p.seqlen = static_cast<int>(seqlen);
  p.dstate = static_cast<int>(dstate);
  p.n_chunks = static_cast<int>((seqlen + kScanChunk - 1) / kScanChunk);
  p.delta_softplus = delta_softplus;
  int groups_B = 1, groups_C = 1;
  s.B = prepare_state_input(B, u, dstate, op, "B", p.variable_B, groups_B);
  s.C = prepare_state_input(C, u, dstate, op, "C", p.variable_C, groups_C);
  TORCH_CHECK(!(p.variable_B && p.variable_C) || groups_B == groups_C, op, ": B and C must have the same groups, got ",
              text(groups_B), " and ", text(groups_C));
  p.n_groups = p.variable_B ? groups_B : groups_C;
  s.D = per_dim_input(D, u, dim, op, "D");
  s.delta_bias = per_dim_input(delta_bias, u, dim, op, "delta_bias");
  s.z = like_input(z, u, op, "z");
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
    const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus) {
  constexpr const char* op = "selective_scan_fwd";
  const c10::cuda::CUDAGuard guard(cuda_device(u, op, "u"));
  ScanInputs s = prepare_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, op);
  SelectiveScanParams& p = s.p;
  const auto f32 = u.options().dtype(at::kFloat);
  at::Tensor out = new_output(u.sizes(), u.options());
  at::Tensor last_state = new_output({p.batch, p.dim, p.dstate}, f32);
  at::Tensor saved = new_output({p.batch, p.dim, p.n_chunks, p.dstate}, f32);
  p.out = out.data_ptr();
  p.last_state = last_state.data_ptr<float>();
  p.saved = saved.data_ptr<float>();
  check_launch(selective_scan_fwd_launch(p, s.type, current_stream()), op);
  return {out, last_state, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_bwd_cuda(const at::Tensor& dout, const OptTensor& dlast_state, const at::Tensor& u,
                        const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                        const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias, bool delta_softplus,
                        const at::Tensor& saved) {
  constexpr const char* op = "selective_scan_bwd";
  const c10::cuda::CUDAGuard guard(cuda_device(u, op, "u"));
  ScanInputs s = prepare_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, op);
  SelectiveScanParams& p = s.p;
  check_on(dout, u, op, "dout");
  check_sizes(dout, u.sizes(), op, "dout");
  const at::Tensor dout_c = dout.to(u.scalar_type()).contiguous();
  at::Tensor dlast_c;
  if (dlast_state) {
    check_on(*dlast_state, u, op, "dlast_state");
    check_sizes(*dlast_state, {p.batch, p.dim, p.dstate}, op, "dlast_state");
    dlast_c = as_float(*dlast_state);
  }
  check_on(saved, u, op, "saved");
  check_sizes(saved, {p.batch, p.dim, p.n_chunks, p.dstate}, op, "saved");
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
  TORCH_CHECK(x.dim() == 2 && x.numel() > 0, op, ": x must be a non-empty (batch, dim), got shape ", text(x.sizes()));
  const int64_t batch = x.size(0), dim = x.size(1);
  check_on(A, x, op, "A");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == dim, op, ": A must be (dim=", text(dim), ", dstate), got shape ",
              text(A.sizes()));
  const int64_t dstate = A.size(1);
  TORCH_CHECK(dstate >= 1, op, ": dstate (A.shape[1]) must be at least 1, got ", text(dstate));
  check_on(state, x, op, "state");
  check_sizes(state, {batch, dim, dstate}, op, "state");
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.is_contiguous(), op,
              ": state must be a contiguous float32 tensor (it is updated in place), got ",
              c10::toString(state.scalar_type()),
              state.is_contiguous() ? "" : " (non-contiguous)");
  check_on(dt, x, op, "dt");
  check_sizes(dt, x.sizes(), op, "dt");
  SelectiveStateUpdateParams p;
  p.batch = static_cast<int>(batch);
  p.dim = static_cast<int>(dim);
  p.dstate = static_cast<int>(dstate);
  p.dt_softplus = dt_softplus;
  const auto group_input = [&](const at::Tensor& t, const char* name) {
    check_on(t, x, op, name);
    TORCH_CHECK(t.dim() == 2 || t.dim() == 3, op, ": ", name,
                " must be (batch, dstate) or (batch, groups, dstate), got shape ", text(t.sizes()));
    const int64_t g = t.dim() == 3 ? t.size(1) : 1;
    TORCH_CHECK(g >= 1 && dim % g == 0, op, ": ", name, "'s groups (", text(g), ") must divide dim (", text(dim), ")");
    if (t.dim() == 3) check_sizes(t, {batch, g, dstate}, op, name);
    else check_sizes(t, {batch, dstate}, op, name);
    return std::make_pair(t.to(x.scalar_type()).contiguous(), static_cast<int>(g));
  };
  const auto [B_c, groups_B] = group_input(B, "B");
  const auto [C_c, groups_C] = group_input(C, "C");
  TORCH_CHECK(groups_B == groups_C, op, ": B and C must have the same groups, got ", text(groups_B), " and ",
              text(groups_C));
  p.n_groups = groups_B;
  const at::Tensor x_c = x.contiguous(), dt_c = dt.to(x.scalar_type()).contiguous(), A_c = as_float(A);
  const at::Tensor D_c = per_dim_input(D, x, dim, op, "D"), bias_c = per_dim_input(dt_bias, x, dim, op, "dt_bias");
  const at::Tensor z_c = like_input(z, x, op, "z");
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
