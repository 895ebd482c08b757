// CPU kernel of selective_state_update (schema in registration.cpp): one decode step for every
// (batch, dim) channel, updating `state` in place. Computes in the state's dtype (float32 or
// float64). Arguments are checked by ops/checks.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "ops/checks.h"
#include "ops/selective_scan_cpu_kernel.h"

namespace ssm_tools_cpu {
namespace {

using at::Tensor;
using ssm_tools::OptTensor;

// B or C as (batch, groups, dstate), contiguous in the state dtype.
Tensor grouped(const Tensor& t, at::ScalarType dtype) {
  return (t.dim() == 2 ? t.unsqueeze(1) : t).to(dtype).contiguous();
}

Tensor optional_input(const OptTensor& t, at::ScalarType dtype) { return t ? t->to(dtype).contiguous() : Tensor(); }

Tensor selective_state_update_cpu(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A,
                                  const Tensor& B, const Tensor& C, const OptTensor& D, const OptTensor& z,
                                  const OptTensor& dt_bias, bool dt_softplus) {
  const ssm_tools::StepSizes s = ssm_tools::check_state_update_inputs(state, x, dt, A, B, C, D, z, dt_bias);
  const int64_t batch = s.batch, dim = s.dim, dstate = s.dstate;
  const at::ScalarType dtype = state.scalar_type();
  const Tensor x_c = x.to(dtype).contiguous(), dt_c = dt.to(dtype).contiguous(), A_c = A.to(dtype).contiguous();
  const Tensor B_c = grouped(B, dtype), C_c = grouped(C, dtype);
  const Tensor D_c = optional_input(D, dtype), bias_c = optional_input(dt_bias, dtype);
  const Tensor z_c = optional_input(z, dtype);
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
