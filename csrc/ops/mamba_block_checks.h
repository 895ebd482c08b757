// Argument checks of the Mamba block's ops (mamba_block_cpu.cpp, mamba_block_cuda.cpp), one place
// for both backends: floating dtypes, one device, the shapes the kernels index into. Messages name
// the argument as the schema in registration.cpp does.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <utility>
#include <vector>

#include "kernels/mamba_block_params.h"
#include "ops/checks.h"  // check_float, check_shape, check_seq_idx, text

namespace ssm_tools::mamba_block {

// The generic rules (dtype, device, shape) are checks.h's; this file holds only the Mamba block's
// shapes.
inline void check_width(const at::Tensor& weight, const at::Tensor& x, const char* op, const char* name = "weight") {
  check_float(op, name, weight, x.device());
  const int64_t dim = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == dim && weight.size(1) >= 1 && weight.size(1) <= kMaxConvWidth, op,
              ": ", name, " must be (dim=", text(dim), ", width) with width in [1, ", text(kMaxConvWidth), "], got ",
              text(weight.sizes()));
}

struct ConvShape {
  int64_t batch, dim, seqlen, width;
};

// seq_idx: the optional (batch, seqlen) int32 sequence index of packed rows, as the scan's.
inline ConvShape check_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& seq_idx, const char* op) {
  check_float(op, "x", x, x.device());
  TORCH_CHECK_VALUE(x.dim() == 3 && x.numel() > 0, op, ": x must be a non-empty (batch, dim, seqlen), got ", text(x.sizes()));
  check_width(weight, x, op);
  check_optional(op, "bias", bias, {x.size(1)}, x);
  check_seq_idx(op, seq_idx, x.size(0), x.size(2), x.device());
  return {x.size(0), x.size(1), x.size(2), weight.size(1)};
}

struct ConvUpdateShape {
  int64_t batch, dim, width;
};

// A decode step's x: a non-empty (batch, dim) of a floating dtype.
inline void check_step_x(const at::Tensor& x, const char* op) {
  check_float(op, "x", x, x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.numel() > 0, op, ": x must be a non-empty (batch, dim), got ", text(x.sizes()));
}

// A recurrent state updated in place: float32 or float64 (it accumulates) of the given shape.
inline void check_state(const char* op, const char* name, const at::Tensor& state, c10::IntArrayRef shape,
                        const at::Tensor& x) {
  check_float(op, name, state, x.device());
  check_shape(op, name, state, shape);
  TORCH_CHECK_VALUE(state.scalar_type() == at::kFloat || state.scalar_type() == at::kDouble, op, ": ", name,
                    " must be float32 or float64, got ", dtype_text(state));
}

// causal_conv1d_update's arguments.
inline ConvUpdateShape check_conv_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "causal_conv1d_update";
  check_step_x(x, op);
  check_width(weight, x, op, "weight");
  check_optional(op, "bias", bias, {x.size(1)}, x);
  check_state(op, "conv_state", state, {x.size(0), x.size(1), weight.size(1)}, x);
  return {x.size(0), x.size(1), weight.size(1)};
}

struct StateUpdateShape {
  int64_t batch, dim, dstate, dt_rank;
};

// The SSM parameters of a Mamba block's decode step, x (batch, dim) checked: the state (named
// state_name), z, dt_proj's weight and bias, A_log, D. Returns {batch, dim, dstate, dt_rank}.
inline StateUpdateShape check_ssm_step(const char* op, const char* state_name, const at::Tensor& state,
                                       const at::Tensor& x, const std::optional<at::Tensor>& z,
                                       const at::Tensor& dt_weight, const at::Tensor& dt_bias, const at::Tensor& A_log,
                                       const std::optional<at::Tensor>& D) {
  const int64_t batch = x.size(0), dim = x.size(1);
  for (const auto& [t, name] : {std::pair{&dt_weight, "dt_weight"}, {&dt_bias, "dt_bias"}, {&A_log, "A_log"}})
    check_float(op, name, *t, x.device());
  if (z) check_float(op, "z", *z, x.device());
  if (D) check_float(op, "D", *D, x.device());
  TORCH_CHECK_VALUE(A_log.dim() == 2 && A_log.size(0) == dim && A_log.size(1) >= 1, op, ": A_log must be (dim=", text(dim),
              ", dstate), got ", text(A_log.sizes()));
  const int64_t dstate = A_log.size(1);
  TORCH_CHECK_VALUE(dt_weight.dim() == 2 && dt_weight.size(0) == dim && dt_weight.size(1) >= 1, op,
              ": dt_weight must be (dim=", text(dim), ", dt_rank), got ", text(dt_weight.sizes()));
  check_shape(op, "dt_bias", dt_bias, {dim});
  check_state(op, state_name, state, {batch, dim, dstate}, x);
  if (z) check_shape(op, "z", *z, {batch, dim});
  if (D) check_shape(op, "D", *D, {dim});
  return {batch, dim, dstate, dt_weight.size(1)};
}

inline StateUpdateShape check_mamba_state_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& xdbl,
                                                 const std::optional<at::Tensor>& z, const at::Tensor& dt_weight,
                                                 const at::Tensor& dt_bias, const at::Tensor& A_log,
                                                 const std::optional<at::Tensor>& D) {
  constexpr const char* op = "mamba_state_update";
  check_step_x(x, op);
  check_float(op, "xdbl", xdbl, x.device());
  const StateUpdateShape s = check_ssm_step(op, "state", state, x, z, dt_weight, dt_bias, A_log, D);
  check_shape(op, "xdbl", xdbl, {s.batch, s.dt_rank + 2 * s.dstate});
  return s;
}

// The residual stream the norms of a training step read: a non-empty (rows, dim) x of float32 or
// float64.
inline void check_stream_rows(const char* op, const at::Tensor& x) {
  check_float(op, "x", x, x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.numel() > 0, op, ": x must be a non-empty (rows, dim), got ", text(x.sizes()));
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                    ": x (the residual stream) must be float32 or float64, got ", dtype_text(x));
}

inline void check_floating_dtype(const char* op, const char* name, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(at::isFloatingType(dtype), op, ": ", name, " must be a floating dtype, got ", c10::toString(dtype));
}

// x (rows, dim) the residual stream (float32 or float64), residual (rows, dim) of any floating dtype
// (the previous layer's output, in its matmul dtype) or None, weight (dim,); out_dtype floating.
inline void check_add_rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                               const at::Tensor& weight, at::ScalarType out_dtype) {
  constexpr const char* op = "add_rms_norm";
  check_stream_rows(op, x);
  check_optional(op, "residual", residual, {x.size(0), x.size(1)}, x);
  check_input(op, "weight", weight, {x.size(1)}, x);
  check_floating_dtype(op, "out_dtype", out_dtype);
}

// rms_norm: x (rows, dim) the residual stream, weight (dim,) or None; out_dtype floating.
inline void check_rms_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight, at::ScalarType out_dtype) {
  constexpr const char* op = "rms_norm";
  check_stream_rows(op, x);
  check_optional(op, "weight", weight, {x.size(1)}, x);
  check_floating_dtype(op, "out_dtype", out_dtype);
}

// rms_norm_bwd: grad (rows, dim), the gradient of rms_norm(x) * weight, of any floating dtype; x the
// residual stream; weight (dim,) or None; grad_sum (rows, dim) of any floating dtype or None;
// cast_dtype floating or None.
inline void check_rms_norm_bwd(const at::Tensor& grad, const at::Tensor& x, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& grad_sum,
                               const std::optional<at::ScalarType>& cast_dtype) {
  constexpr const char* op = "rms_norm_bwd";
  check_stream_rows(op, x);
  check_input(op, "grad", grad, {x.size(0), x.size(1)}, x);
  check_optional(op, "weight", weight, {x.size(1)}, x);
  check_optional(op, "grad_sum", grad_sum, {x.size(0), x.size(1)}, x);
  if (cast_dtype) check_floating_dtype(op, "cast_dtype", *cast_dtype);
}

// Channel-first parts (batch, dim_i, seqlen) of one batch, seqlen, dtype and device, to be laid out
// token-major side by side; `name` the argument they come in (causal_conv1d_bwd_cat: x then `rest`).
inline void check_transpose_cat(at::TensorList parts, const char* op = "transpose_cat", const char* name = "parts") {
  TORCH_CHECK_VALUE(!parts.empty(), op, ": needs at least one part");
  for (const at::Tensor& p : parts) {
    check_float(op, name, p, parts[0].device());
    TORCH_CHECK_VALUE(p.dim() == 3 && p.size(0) == parts[0].size(0) && p.size(2) == parts[0].size(2) &&
                    p.scalar_type() == parts[0].scalar_type() && p.device() == parts[0].device(),
                op, ": ", name, " must be (batch, dim_i, seqlen) of one batch, seqlen, dtype and device, got ",
                text(p.sizes()), " after ", text(parts[0].sizes()));
  }
}

// causal_conv1d_bwd_cat's `rest`, after x: parts of x's batch, seqlen, dtype and device.
inline void check_conv_bwd_rest(const at::Tensor& x, at::TensorList rest) {
  std::vector<at::Tensor> parts{x};
  parts.insert(parts.end(), rest.begin(), rest.end());
  check_transpose_cat(parts, "causal_conv1d_bwd_cat", "rest");
}

}  // namespace ssm_tools::mamba_block
