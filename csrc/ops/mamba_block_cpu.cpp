// CPU kernels of the Mamba block's ops other than the scan (schemas in registration.cpp): the
// causal depthwise conv1d (forward, backward, decode update), the block's SSM decode step and the
// transposing concatenation.
// They compute in float64 for float64 inputs, float32 otherwise.
// python/ssm_tools/ops.py checks arguments with precise messages; the checks here guard what the
// kernels index into.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>
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

// A tensor's data as T*, or null for an undefined one. Taken once per kernel: data_ptr<T>() checks the
// dtype on every call, which costs more than a row of these decode kernels.
template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T conv_at(const T* x, const T* w, T bias, int64_t width, int64_t t) {
  T acc = bias;
  for (int64_t k = std::max<int64_t>(0, width - 1 - t); k < width; ++k) acc += w[k] * x[t - width + 1 + k];
  return acc;
}

// pre[t] = bias + sum_k w[k] x[t - width + 1 + k] for one row: tap-major, so each inner loop is a
// unit-stride axpy the compiler vectorises.
template <typename T>
SSM_CPU_MULTIVERSION void conv_row(const T* __restrict x, const T* __restrict w, T bias, int64_t seqlen, int64_t width,
                                   T* __restrict pre) {
  for (int64_t t = 0; t < seqlen; ++t) pre[t] = bias;
  for (int64_t k = 0; k < width; ++k) {
    const int64_t shift = width - 1 - k;  // pre[t] += w[k] x[t - shift]
    const T wk = w[k];
#pragma omp simd
    for (int64_t t = shift; t < seqlen; ++t) pre[t] += wk * x[t - shift];
  }
}

// One row's backward from g, the gradient of the pre-activation: dx[t] = sum_k w[k] g[t + width - 1
// - k], dweight[k] += sum_t g[t] x[t - width + 1 + k]; returns sum_t g[t] (dbias).
template <typename T>
SSM_CPU_MULTIVERSION T conv_row_backward(const T* __restrict x, const T* __restrict g, const T* __restrict w,
                                         int64_t seqlen, int64_t width, T* __restrict dx, T* __restrict dw) {
  T db = 0;
#pragma omp simd reduction(+ : db)
  for (int64_t t = 0; t < seqlen; ++t) {
    db += g[t];
    dx[t] = 0;
  }
  for (int64_t k = 0; k < width; ++k) {
    const int64_t shift = width - 1 - k;
    const T wk = w[k];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t t = shift; t < seqlen; ++t) {
      dx[t - shift] += wk * g[t];
      acc += g[t] * x[t - shift];
    }
    dw[k] += acc;
  }
  return db;
}

// The [start, end) spans of the sequences of each batch row: one span a row without seq_idx, else a
// span per run of equal seq_idx values. The kernels take each span as a row of its own (x = 0 before
// its start), which is the packed rows' conv, forward and backward, with no per-position test.
using Spans = std::vector<std::vector<std::pair<int64_t, int64_t>>>;

Spans sequence_spans(const OptTensor& seq_idx, int64_t batch, int64_t seqlen) {
  Spans spans(batch);
  const Tensor q = seq_idx ? seq_idx->contiguous() : Tensor();
  const int32_t* q_p = ptr<int32_t>(q);
  for (int64_t b = 0; b < batch; ++b) {
    const int32_t* row = q_p ? q_p + b * seqlen : nullptr;
    int64_t start = 0;
    for (int64_t t = 1; t <= seqlen; ++t) {
      if (t == seqlen || (row && row[t] != row[t - 1])) {
        spans[b].emplace_back(start, t);
        start = t;
      }
    }
  }
  return spans;
}

// The pre-activation of every row (parallel over rows). The SiLU and its gradient run as ATen's
// vectorised kernels over the whole tensor.
void conv_rows(const Tensor& x, const Tensor& w, const Tensor& b, const Spans& spans, const ConvShape& s, Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_cpu", [&] {
    using T = scalar_t;
    const T *x_p = ptr<T>(x), *w_p = ptr<T>(w), *b_p = ptr<T>(b);
    T* out_p = ptr<T>(out);
    at::parallel_for(0, s.batch * s.dim, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t d = row % s.dim, offset = row * s.seqlen;
        for (const auto& [s0, s1] : spans[row / s.dim])
          conv_row(x_p + offset + s0, w_p + d * s.width, b_p ? b_p[d] : T(0), s1 - s0, s.width, out_p + offset + s0);
      }
    });
  });
}

Tensor causal_conv1d_fwd_cpu(const Tensor& x, const Tensor& weight, const OptTensor& bias, bool silu,
                             const OptTensor& seq_idx) {
  const ConvShape s = check_conv(x, weight, bias, seq_idx, "causal_conv1d");
  const at::ScalarType dtype = compute_dtype(x);
  const Tensor x_c = as(x, dtype), w_c = as(weight, dtype);
  const Tensor b_c = bias ? as(*bias, dtype) : Tensor();
  Tensor out = at::empty(x.sizes(), x_c.options());
  conv_rows(x_c, w_c, b_c, sequence_spans(seq_idx, s.batch, s.seqlen), s, out);
  if (silu) at::silu_(out);
  return out.to(x.scalar_type());
}

// Parallel over channels (each sums its weight gradient over the batch in a fixed order, so the
// result does not depend on the thread count).
std::tuple<Tensor, Tensor, Tensor> causal_conv1d_bwd_cpu(const Tensor& dout, const Tensor& x, const Tensor& weight,
                                                         const OptTensor& bias, bool silu, const OptTensor& seq_idx) {
  const ConvShape s = check_conv(x, weight, bias, seq_idx, "causal_conv1d");
  ssm_tools::check_input("causal_conv1d", "dout", dout, x.sizes(), x);
  const at::ScalarType dtype = compute_dtype(x);
  const Tensor x_c = as(x, dtype), w_c = as(weight, dtype), g_c = as(dout, dtype);
  const Tensor b_c = bias ? as(*bias, dtype) : Tensor();
  const Spans spans = sequence_spans(seq_idx, s.batch, s.seqlen);
  Tensor g = g_c;
  if (silu) {
    Tensor pre = at::empty(x.sizes(), x_c.options());
    conv_rows(x_c, w_c, b_c, spans, s, pre);
    g = at::silu_backward(g_c, pre);
  }
  Tensor dx = at::empty(x.sizes(), x_c.options());
  Tensor dweight = at::zeros({s.dim, s.width}, x_c.options());
  Tensor dbias = bias ? at::zeros({s.dim}, x_c.options()) : at::empty({0}, x_c.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "causal_conv1d_bwd_cpu", [&] {
    using T = scalar_t;
    const T *x_p = ptr<T>(x_c), *g_p = ptr<T>(g), *w_p = ptr<T>(w_c);
    T *dx_p = ptr<T>(dx), *dw_p = ptr<T>(dweight), *db_p = dbias.numel() ? ptr<T>(dbias) : nullptr;
    at::parallel_for(0, s.dim, 4, [&](int64_t begin, int64_t end) {
      for (int64_t d = begin; d < end; ++d) {
        T db = 0;
        for (int64_t bi = 0; bi < s.batch; ++bi) {
          const int64_t offset = (bi * s.dim + d) * s.seqlen;
          for (const auto& [s0, s1] : spans[bi])
            db += conv_row_backward(x_p + offset + s0, g_p + offset + s0, w_p + d * s.width, s1 - s0, s.width,
                                    dx_p + offset + s0, dw_p + d * s.width);
        }
        if (db_p) db_p[d] = db;
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
    T *state_p = ptr<T>(st), *out_p = ptr<T>(out);
    const T *x_p = ptr<T>(x_c), *w_p = ptr<T>(w_c), *b_p = ptr<T>(b_c);
    at::parallel_for(0, s.batch * s.dim, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t d = row % s.dim;
        T* sr = state_p + row * s.width;
        std::copy(sr + 1, sr + s.width, sr);
        sr[s.width - 1] = x_p[row];
        const T pre = conv_at(sr, w_p + d * s.width, b_p ? b_p[d] : T(0), s.width, s.width - 1);
        out_p[row] = silu ? ssm_tools_cpu::silu(pre) : pre;
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
    T *state_p = ptr<T>(st), *y_p = ptr<T>(y);
    const T *x_p = ptr<T>(x_c), *xdbl_p = ptr<T>(xdbl_c), *w_p = ptr<T>(w_c), *bias_p = ptr<T>(bias_c);
    const T *A_p = ptr<T>(A_c), *z_p = ptr<T>(z_c), *D_p = ptr<T>(D_c);
    at::parallel_for(0, s.batch * s.dim, 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / s.dim, d = row % s.dim;
        const T* xd = xdbl_p + b * row_len;
        const T* w = w_p + d * s.dt_rank;
        T raw = bias_p[d];
        for (int64_t r = 0; r < s.dt_rank; ++r) raw += w[r] * xd[r];
        const T x_row = x_p[row];
        T out = state_update_channel(state_p + row * s.dstate, A_p + d * s.dstate, xd + s.dt_rank,
                                     xd + s.dt_rank + s.dstate, s.dstate, x_row, softplus(raw));
        if (D_p) out += D_p[d] * x_row;
        if (z_p) out *= ssm_tools_cpu::silu(z_p[row]);
        y_p[row] = out;
      }
    });
  });
  if (!st.is_same(state)) state.copy_(st);
  return y.to(x.scalar_type());
}

std::tuple<Tensor, Tensor> add_rms_norm_cpu(const Tensor& x, const OptTensor& residual, const Tensor& weight,
                                            double eps, at::ScalarType out_dtype) {
  check_add_rms_norm(x, residual, weight, out_dtype);
  const Tensor sum = residual ? x + residual->to(x.scalar_type()) : x.clone();
  return {sum, at::rms_norm(sum, {x.size(1)}, weight.to(x.scalar_type()), eps).to(out_dtype)};
}

Tensor transpose_cat_cpu(at::TensorList parts) {
  check_transpose_cat(parts);
  std::vector<Tensor> t;
  for (const Tensor& p : parts) t.push_back(p.transpose(1, 2));
  return at::cat(t, 2);
}

// The composition of the two CPU ops, so that the CPU keeps their numbers.
std::tuple<Tensor, Tensor, Tensor> causal_conv1d_bwd_cat_cpu(const Tensor& dout, const Tensor& x, const Tensor& weight,
                                                             const OptTensor& bias, bool silu, const OptTensor& seq_idx,
                                                             at::TensorList rest) {
  check_conv(x, weight, bias, seq_idx, "causal_conv1d");
  check_conv_bwd_rest(x, rest);
  auto [dx, dweight, dbias] = causal_conv1d_bwd_cpu(dout, x, weight, bias, silu, seq_idx);
  std::vector<Tensor> parts{dx};
  parts.insert(parts.end(), rest.begin(), rest.end());
  return {transpose_cat_cpu(parts), dweight, dbias};
}

Tensor rms_norm_cpu(const Tensor& x, const OptTensor& weight, double eps, at::ScalarType out_dtype) {
  check_rms_norm(x, weight, out_dtype);
  const OptTensor w = weight ? OptTensor(weight->to(x.scalar_type())) : std::nullopt;
  return at::rms_norm(x, {x.size(1)}, w, eps).to(out_dtype);
}

// The composition of ATen ops in x's dtype: with r = rsqrt(mean(x^2) + eps), xhat = x r and g = grad
// * weight, dx = r (g - xhat mean(g xhat)) + grad_sum.
std::tuple<Tensor, Tensor> rms_norm_bwd_cpu(const Tensor& grad, const Tensor& x, const OptTensor& weight, double eps,
                                            const OptTensor& grad_sum, std::optional<at::ScalarType> cast_dtype) {
  check_rms_norm_bwd(grad, x, weight, grad_sum, cast_dtype);
  const at::ScalarType dtype = x.scalar_type();
  const Tensor rstd = at::rsqrt(x.pow(2).mean(-1, true) + eps), xhat = x * rstd;
  Tensor g = grad.to(dtype);
  if (weight) g = g * weight->to(dtype);
  Tensor dx = rstd * (g - xhat * (g * xhat).mean(-1, true));
  if (grad_sum) dx.add_(grad_sum->to(dtype));
  // A copy even in x's dtype: an op's outputs must not alias each other.
  Tensor cast = cast_dtype ? dx.to(*cast_dtype, false, true) : at::empty({0}, x.options());
  return {dx, cast};
}


}  // namespace
}  // namespace ssm_tools_cpu

TORCH_LIBRARY_IMPL(ssm_tools, CPU, m) {
  m.impl("causal_conv1d_fwd", &ssm_tools_cpu::causal_conv1d_fwd_cpu);
  m.impl("causal_conv1d_bwd", &ssm_tools_cpu::causal_conv1d_bwd_cpu);
  m.impl("causal_conv1d_bwd_cat", &ssm_tools_cpu::causal_conv1d_bwd_cat_cpu);
  m.impl("causal_conv1d_update", &ssm_tools_cpu::causal_conv1d_update_cpu);
  m.impl("mamba_state_update", &ssm_tools_cpu::mamba_state_update_cpu);
  m.impl("transpose_cat", &ssm_tools_cpu::transpose_cat_cpu);
  m.impl("add_rms_norm", &ssm_tools_cpu::add_rms_norm_cpu);
  m.impl("rms_norm", &ssm_tools_cpu::rms_norm_cpu);
  m.impl("rms_norm_bwd", &ssm_tools_cpu::rms_norm_bwd_cpu);
}
