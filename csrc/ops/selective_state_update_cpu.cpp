// CPU kernel of selective_state_update (schema in registration.cpp): one decode step for every
// (batch, dim) channel, updating `state` in place. Computes in the state's dtype (float32 or
// float64). python/ssm_tools/ops.py checks arguments with precise messages first; the checks here
// guard what the kernel indexes into.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "ops/message_text.h"
#include "ops/selective_scan_cpu_kernel.h"

namespace ssm_tools_cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using ssm_tools::text;

void check_shape(const Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "selective_state_update: ", name, " must have shape ", text(expected), ", got ",
              text(t.sizes()));
}

// B or C as (batch, groups, dstate), contiguous in the state dtype.
Tensor grouped(const Tensor& t, int64_t batch, int64_t dim, int64_t dstate, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.dim() == 2 || t.dim() == 3, "selective_state_update: ", name,
              " must be (batch, dstate) or (batch, groups, dstate), got ", text(t.sizes()));
  const Tensor t3 = t.dim() == 2 ? t.unsqueeze(1) : t;
  TORCH_CHECK(t3.size(1) >= 1 && dim % t3.size(1) == 0, "selective_state_update: ", name, "'s groups (", text(t3.size(1)),
              ") must divide dim (", text(dim), ")");
  check_shape(t3, {batch, t3.size(1), dstate}, name);
  return t3.to(dtype).contiguous();
}

Tensor optional_input(const OptTensor& t, at::IntArrayRef shape, at::ScalarType dtype, const char* name) {
  if (!t) return Tensor();
  check_shape(*t, shape, name);
  return t->to(dtype).contiguous();
}

Tensor selective_state_update_cpu(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A,
                                  const Tensor& B, const Tensor& C, const OptTensor& D, const OptTensor& z,
                                  const OptTensor& dt_bias, bool dt_softplus) {
  TORCH_CHECK(state.dim() == 3, "selective_state_update: state must be (batch, dim, dstate), got ", text(state.sizes()));
  TORCH_CHECK(state.scalar_type() == at::kFloat || state.scalar_type() == at::kDouble,
              "selective_state_update: state must be float32 or float64, got ", state.scalar_type());
  const int64_t batch = state.size(0), dim = state.size(1), dstate = state.size(2);
  const at::ScalarType dtype = state.scalar_type();
  check_shape(x, {batch, dim}, "x");
  check_shape(dt, {batch, dim}, "dt");
  check_shape(A, {dim, dstate}, "A");
  const Tensor x_c = x.to(dtype).contiguous(), dt_c = dt.to(dtype).contiguous(), A_c = A.to(dtype).contiguous();
  const Tensor B_c = grouped(B, batch, dim, dstate, dtype, "B"), C_c = grouped(C, batch, dim, dstate, dtype, "C");
  const Tensor D_c = optional_input(D, {dim}, dtype, "D"), bias_c = optional_input(dt_bias, {dim}, dtype, "dt_bias");
  const Tensor z_c = optional_input(z, {batch, dim}, dtype, "z");
  // The kernel writes through a contiguous view; a strided state is updated via a copy.
  Tensor st = state.contiguous();
  Tensor y = at::empty({batch, dim}, x_c.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "selective_state_update_cpu", [&] {
    using T = scalar_t;
    const auto value = [](const Tensor& t, int64_t i) { return t.defined() ? t.data_ptr<T>()[i] : T(0); };
    at::parallel_for(0, batch * dim, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / dim, d = row % dim;
        const auto group_row = [&](const Tensor& t) {
          return t.data_ptr<T>() + (b * t.size(1) + d / (dim / t.size(1))) * dstate;
        };
        T step = dt_c.data_ptr<T>()[row] + value(bias_c, d);
        if (dt_softplus) step = softplus(step);
        const T x_row = x_c.data_ptr<T>()[row];
        T out = state_update_channel(st.data_ptr<T>() + row * dstate, A_c.data_ptr<T>() + d * dstate, group_row(B_c),
                                     group_row(C_c), dstate, x_row, step) +
                value(D_c, d) * x_row;
        if (z_c.defined()) out *= silu(z_c.data_ptr<T>()[row]);
        y.data_ptr<T>()[row] = out;
      }
    });
  });
  if (!st.is_same(state)) state.copy_(st);
  return y.to(x.scalar_type());
}

}  // namespace
}  // namespace ssm_tools_cpu

TORCH_LIBRARY_IMPL(ssm_tools, CPU, m) { m.impl("selective_state_update", &ssm_tools_cpu::selective_state_update_cpu); }
