// CPU kernels of the Mamba block's ops other than the scan (schemas in registration.cpp): the
// causal depthwise conv1d (forward, backward, decode update), the block's SSM decode step and the
// transposing concatenation. They compute in float64 for float64 inputs, float32 otherwise.
// python/ssm_tools/ops.py checks arguments with precise messages; the checks here guard what the
// kernels index into.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "ops/mamba_block_checks.h"
#include "ops/selective_scan_cpu_kernel.h"

namespace ssm_tools_cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using namespace ssm_tools::mamba_block;

at::ScalarType compute_dtype(const Tensor& t) { return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

Tensor as(const Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

template <typename T>
T conv_at(const T* x, const T* w, T bias, int64_t width, int64_t t) {
  T acc = bias;
  for (int64_t k = std::max<int64_t>(0, width - 1 - t); k < width; ++k) acc += w[k] * x[t - width + 1 + k];
  return acc;
}

Tensor causal_conv1d_fwd_cpu(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu) {
  const ConvShape s = check_conv(x, weight, bias, "causal_conv1d");
  const at::ScalarType dtype = compute_dtype(x);
  const Tensor x_c = as(x, dtype), w_c = as(weight, dtype);
  const Tensor b_c = bias ? as(*bias, dtype) : Tensor();
  Tensor out = at::empty(x.sizes(), x_c.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "causal_conv1d_fwd_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, s.batch * s.dim, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t d = row % s.dim;
        const T* xr = x_c.data_ptr<T>() + row * s.seqlen;
        const T* w = w_c.data_ptr<T>() + d * s.width;
        const T b = b_c.defined() ? b_c.data_ptr<T>()[d] : T(0);
        T* o = out.data_ptr<T>() + row * s.seqlen;
        for (int64_t t = 0; t < s.seqlen; ++t) {
          const T pre = conv_at(xr, w, b, s.width, t);
          o[t] = silu ? ssm_tools_cpu::silu(pre) : pre;
        }
      }
    });
  });
  return out.to(x.scalar_type());
}

// Parallel over channels (each sums its weight gradient over the batch in a fixed order, so the
// result does not depend on the thread count).
std::tuple<Tensor, Tensor, Tensor> causal_conv1d_bwd_cpu(const Tensor& dout, const Tensor& x, const Tensor& weight,
                                                         const OptTensor& bias, bool silu) {
  const ConvShape s = check_conv(x, weight, bias, "causal_conv1d");
  check_same_shape(dout, x, "causal_conv1d", "dout");
  const at::ScalarType dtype = compute_dtype(x);
  const Tensor x_c = as(x, dtype), w_c = as(weight, dtype), g_c = as(dout, dtype);
  const Tensor b_c = bias ? as(*bias, dtype) : Tensor();
  Tensor dx = at::empty(x.sizes(), x_c.options());
  Tensor dweight = at::zeros({s.dim, s.width}, x_c.options());
  Tensor dbias = bias ? at::zeros({s.dim}, x_c.options()) : at::empty({0}, x_c.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "causal_conv1d_bwd_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, s.dim, 4, [&](int64_t begin, int64_t end) {
      std::vector<T> g(s.seqlen + s.width);
      for (int64_t d = begin; d < end; ++d) {
        const T* w = w_c.data_ptr<T>() + d * s.width;
        const T b = b_c.defined() ? b_c.data_ptr<T>()[d] : T(0);
        T* dw = dweight.data_ptr<T>() + d * s.width;
        T db = 0;
        for (int64_t bi = 0; bi < s.batch; ++bi) {
          const int64_t row = bi * s.dim + d;
          const T* xr = x_c.data_ptr<T>() + row * s.seqlen;
          const T* gr = g_c.data_ptr<T>() + row * s.seqlen;
          for (int64_t t = 0; t < s.seqlen; ++t)
            g[t] = silu ? gr[t] * silu_grad(conv_at(xr, w, b, s.width, t)) : gr[t];
          std::fill(g.begin() + s.seqlen, g.end(), T(0));
          T* dxr = dx.data_ptr<T>() + row * s.seqlen;
          for (int64_t t = 0; t < s.seqlen; ++t) {
            T acc = 0;
            for (int64_t k = 0; k < s.width; ++k) acc += w[k] * g[t + s.width - 1 - k];
            dxr[t] = acc;
            db += g[t];
          }
          for (int64_t k = 0; k < s.width; ++k) {
            T acc = 0;
            for (int64_t t = std::max<int64_t>(0, s.width - 1 - k); t < s.seqlen; ++t) acc += g[t] * xr[t - s.width + 1 + k];
            dw[k] += acc;
          }
        }
        if (dbias.numel()) dbias.data_ptr<T>()[d] = db;
      }
    });
  });
  return {dx.to(x.scalar_type()), dweight, dbias};
}

Tensor causal_conv1d_update_cpu(const Tensor& state, const Tensor& x, const Tensor& weight, const OptTensor& bias,
                                bool silu) {
  const ConvUpdateShape s = check_conv_update(state, x, weight, bias);
  const at::ScalarType dtype = state.scalar_type();
  const Tensor x_c = as(x, dtype), w_c = as(weight, dtype);
  const Tensor b_c = bias ? as(*bias, dtype) : Tensor();
  Tensor st = state.contiguous();
  Tensor out = at::empty({s.batch, s.dim}, x_c.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "causal_conv1d_update_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, s.batch * s.dim, 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t d = row % s.dim;
        T* sr = st.data_ptr<T>() + row * s.width;
        std::copy(sr + 1, sr + s.width, sr);
        sr[s.width - 1] = x_c.data_ptr<T>()[row];
        const T pre = conv_at(sr, w_c.data_ptr<T>() + d * s.width, b_c.defined() ? b_c.data_ptr<T>()[d] : T(0), s.width,
                              s.width - 1);
        out.data_ptr<T>()[row] = silu ? ssm_tools_cpu::silu(pre) : pre;
      }
    });
  });
  if (!st.is_same(state)) state.copy_(st);
  return out.to(x.scalar_type());
}

Tensor mamba_state_update_cpu(const Tensor& state, const Tensor& x, const Tensor& xdbl, const OptTensor& z,
                              const Tensor& dt_weight, const Tensor& dt_bias, const Tensor& A_log, const OptTensor& D) {
  const StateUpdateShape s = check_mamba_state_update(state, x, xdbl, z, dt_weight, dt_bias, A_log, D);
  const at::ScalarType dtype = state.scalar_type();
  const Tensor x_c = as(x, dtype), xdbl_c = as(xdbl, dtype), w_c = as(dt_weight, dtype), bias_c = as(dt_bias, dtype);
  const Tensor A_c = as(A_log, dtype).exp().neg().contiguous();
  const Tensor z_c = z ? as(*z, dtype) : Tensor(), D_c = D ? as(*D, dtype) : Tensor();
  Tensor st = state.contiguous();
  Tensor y = at::empty({s.batch, s.dim}, x_c.options());
  const int64_t row_len = s.dt_rank + 2 * s.dstate;
  AT_DISPATCH_FLOATING_TYPES(dtype, "mamba_state_update_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, s.batch * s.dim, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / s.dim, d = row % s.dim;
        const T* xd = xdbl_c.data_ptr<T>() + b * row_len;
        const T* w = w_c.data_ptr<T>() + d * s.dt_rank;
        T raw = bias_c.data_ptr<T>()[d];
        for (int64_t r = 0; r < s.dt_rank; ++r) raw += w[r] * xd[r];
        const T x_row = x_c.data_ptr<T>()[row];
        T out = state_update_channel(st.data_ptr<T>() + row * s.dstate, A_c.data_ptr<T>() + d * s.dstate,
                                     xd + s.dt_rank, xd + s.dt_rank + s.dstate, s.dstate, x_row, softplus(raw));
        if (D_c.defined()) out += D_c.data_ptr<T>()[d] * x_row;
        if (z_c.defined()) out *= ssm_tools_cpu::silu(z_c.data_ptr<T>()[row]);
        y.data_ptr<T>()[row] = out;
      }
    });
  });
  if (!st.is_same(state)) state.copy_(st);
  return y.to(x.scalar_type());
}

Tensor transpose_cat_cpu(at::TensorList parts) {
  check_transpose_cat(parts);
  std::vector<Tensor> t;
  for (const Tensor& p : parts) t.push_back(p.transpose(1, 2));
  return at::cat(t, 2);
}

}  // namespace
}  // namespace ssm_tools_cpu

TORCH_LIBRARY_IMPL(ssm_tools, CPU, m) {
  m.impl("causal_conv1d_fwd", &ssm_tools_cpu::causal_conv1d_fwd_cpu);
  m.impl("causal_conv1d_bwd", &ssm_tools_cpu::causal_conv1d_bwd_cpu);
  m.impl("causal_conv1d_update", &ssm_tools_cpu::causal_conv1d_update_cpu);
  m.impl("mamba_state_update", &ssm_tools_cpu::mamba_state_update_cpu);
  m.impl("transpose_cat", &ssm_tools_cpu::transpose_cat_cpu);
}
