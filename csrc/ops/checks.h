// The argument rules of the ssm_tools ops, in one place for the CPU and CUDA kernels (and so for the
// Python face, python/ssm_tools/ops.py, which checks only what C++ cannot: values of A). Each failed
// rule raises ValueError (TORCH_CHECK_VALUE) with a message naming the argument, the expected shape
// and what was given. What one backend cannot do (float64 or a huge dstate on CUDA) stays in that
// backend's file.
//
// Messages stream strings only, never integers: on the GPU machine (gcc 13 there, a different
// libstdc++ inside torch) streaming an integer into c10::str's ostringstream from this library crashed
// (std::num_put through a foreign locale) while strings streamed fine.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ssm_tools {

using OptTensor = std::optional<at::Tensor>;

// A free entry of an expected shape (printed as *).
constexpr int64_t kAny = -1;

inline std::string text(int64_t v) { return std::to_string(v); }

// A shape as Python prints it: (2, 4, 6); (4,) for one entry; kAny as *.
inline std::string text(c10::IntArrayRef sizes) {
  std::string out = "(";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + (sizes[i] == kAny ? "*" : std::to_string(sizes[i]));
  return out + (sizes.size() == 1 ? ",)" : ")");
}

inline std::string dtype_text(const at::Tensor& t) { return c10::toString(t.scalar_type()); }

inline void check_shape(const char* op, const char* name, const at::Tensor& t, c10::IntArrayRef expected) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] == kAny || expected[i] == t.size(i);
  TORCH_CHECK_VALUE(ok, op, ": ", name, " must have shape ", text(expected), ", got ", text(t.sizes()));
}

// A floating-point tensor on `device` (float16, bfloat16, float32 or float64).
inline void check_float(const char* op, const char* name, const at::Tensor& t, const at::Device& device) {
  TORCH_CHECK_VALUE(t.is_floating_point(), op, ": ", name, " must be float16, bfloat16, float32 or float64, got ",
                    dtype_text(t));
  TORCH_CHECK_VALUE(t.device() == device, op, ": ", name, " must be on ", device.str(), " like the other inputs, got ",
                    t.device().str());
}

// A floating tensor of the given shape on `like`'s device; with same_dtype also of `like`'s dtype.
inline void check_input(const char* op, const char* name, const at::Tensor& t, c10::IntArrayRef shape,
                        const at::Tensor& like, bool same_dtype = false) {
  check_float(op, name, t, like.device());
  check_shape(op, name, t, shape);
  TORCH_CHECK_VALUE(!same_dtype || t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ",
                    dtype_text(like), " like u/x, got ", dtype_text(t));
}

inline void check_optional(const char* op, const char* name, const OptTensor& t, c10::IntArrayRef shape,
                           const at::Tensor& like, bool same_dtype = false) {
  if (t) check_input(op, name, *t, shape, like, same_dtype);
}

// The sequence index of packed rows: (batch, seqlen) int32 on `device` (see registration.cpp).
inline void check_seq_idx(const char* op, const OptTensor& seq_idx, int64_t batch, int64_t seqlen,
                          const at::Device& device) {
  if (!seq_idx) return;
  TORCH_CHECK_VALUE(seq_idx->scalar_type() == at::kInt, op, ": seq_idx must be int32, got ", dtype_text(*seq_idx));
  TORCH_CHECK_VALUE(seq_idx->device() == device, op, ": seq_idx must be on ", device.str(),
                    " like the other inputs, got ", seq_idx->device().str());
  check_shape(op, "seq_idx", *seq_idx, {batch, seqlen});
}

// B or C. `forms` lists the accepted shapes by rank (kAny in the groups entry, at index 1); returns
// the number of groups (1 for a form without a groups axis), which must divide dim.
struct StateInputForm {
  std::vector<int64_t> shape;
  const char* label;
  bool grouped;
};

inline int64_t check_state_input(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                                 const std::vector<StateInputForm>& forms, const at::Device& device) {
  std::string labels;
  for (const StateInputForm& f : forms) {
    if (t.dim() == static_cast<int64_t>(f.shape.size())) {
      check_float(op, name, t, device);
      check_shape(op, name, t, f.shape);
      const int64_t groups = f.grouped ? t.size(1) : 1;
      TORCH_CHECK_VALUE(groups >= 1 && dim % groups == 0, op, ": ", name, " has ", text(groups), " groups ", f.label,
                        ", which must divide dim=", text(dim));
      return groups;
    }
    labels += std::string(labels.empty() ? "" : " or ") + f.label;
  }
  TORCH_CHECK_VALUE(false, op, ": ", name, " must be ", labels, ", got shape ", text(t.sizes()));
  return 0;
}

// The sizes of a checked scan; groups and variable_* describe input-dependent B/C.
struct ScanSizes {
  int64_t batch, dim, seqlen, dstate, groups = 1, n_chunks;
  bool variable_B, variable_C;
};

// selective_scan_fwd's inputs (and the same inputs of the backward). seq_idx: optional (batch, seqlen)
// int32 sequence index of packed rows (see registration.cpp).
inline ScanSizes check_scan_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                   const at::Tensor& B, const at::Tensor& C, const OptTensor& D, const OptTensor& z,
                                   const OptTensor& delta_bias, const OptTensor& seq_idx, int64_t chunk) {
  constexpr const char* op = "selective_scan";
  check_float(op, "u", u, u.device());
  TORCH_CHECK_VALUE(u.dim() == 3 && u.numel() > 0, op, ": u must be a non-empty (batch, dim, seqlen), got shape ",
                    text(u.sizes()));
  ScanSizes s;
  s.batch = u.size(0), s.dim = u.size(1), s.seqlen = u.size(2);
  check_input(op, "delta", delta, u.sizes(), u, /*same_dtype=*/true);
  check_input(op, "A", A, {s.dim, kAny}, u);
  s.dstate = A.size(1);
  TORCH_CHECK_VALUE(s.dstate >= 1, op, ": A must have dstate >= 1 columns, got shape ", text(A.sizes()));
  s.n_chunks = (s.seqlen + chunk - 1) / chunk;
  const std::vector<StateInputForm> forms = {
      StateInputForm{{s.dim, s.dstate}, "(dim, dstate)", false},
      StateInputForm{{s.batch, s.dstate, s.seqlen}, "(batch, dstate, seqlen)", false},
      StateInputForm{{s.batch, kAny, s.dstate, s.seqlen}, "(batch, groups, dstate, seqlen)", true},
  };
  const int64_t groups_B = check_state_input(op, "B", B, s.dim, forms, u.device());
  const int64_t groups_C = check_state_input(op, "C", C, s.dim, forms, u.device());
  s.variable_B = B.dim() > 2, s.variable_C = C.dim() > 2;
  TORCH_CHECK_VALUE(!(s.variable_B && s.variable_C) || groups_B == groups_C, op,
                    ": B and C must have the same number of groups, got ", text(groups_B), " and ", text(groups_C));
  s.groups = s.variable_B ? groups_B : groups_C;
  check_optional(op, "D", D, {s.dim}, u);
  check_optional(op, "delta_bias", delta_bias, {s.dim}, u);
  check_optional(op, "z", z, u.sizes(), u, /*same_dtype=*/true);
  check_seq_idx(op, seq_idx, s.batch, s.seqlen, u.device());
  return s;
}

// The backward's own inputs: dout (like u), dlast_state (batch, dim, dstate), saved (the forward's).
inline void check_scan_grads(const ScanSizes& s, const at::Tensor& u, const at::Tensor& dout,
                             const OptTensor& dlast_state, const at::Tensor& saved) {
  constexpr const char* op = "selective_scan";
  check_input(op, "dout", dout, u.sizes(), u);
  check_optional(op, "dlast_state", dlast_state, {s.batch, s.dim, s.dstate}, u);
  check_input(op, "saved", saved, {s.batch, s.dim, s.n_chunks, s.dstate}, u);
}

struct StepSizes {
  int64_t batch, dim, dstate, groups;
};

// selective_state_update's inputs. state: float32 or float64 (it accumulates), updated in place.
inline StepSizes check_state_update_inputs(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                           const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                           const OptTensor& D, const OptTensor& z, const OptTensor& dt_bias) {
  constexpr const char* op = "selective_state_update";
  check_float(op, "x", x, x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.numel() > 0, op, ": x must be a non-empty (batch, dim), got shape ",
                    text(x.sizes()));
  StepSizes s;
  s.batch = x.size(0), s.dim = x.size(1);
  check_input(op, "dt", dt, x.sizes(), x, /*same_dtype=*/true);
  check_input(op, "A", A, {s.dim, kAny}, x);
  s.dstate = A.size(1);
  TORCH_CHECK_VALUE(s.dstate >= 1, op, ": A must have dstate >= 1 columns, got shape ", text(A.sizes()));
  const std::vector<StateInputForm> forms = {
      StateInputForm{{s.batch, s.dstate}, "(batch, dstate)", false},
      StateInputForm{{s.batch, kAny, s.dstate}, "(batch, groups, dstate)", true},
  };
  const int64_t groups_B = check_state_input(op, "B", B, s.dim, forms, x.device());
  const int64_t groups_C = check_state_input(op, "C", C, s.dim, forms, x.device());
  TORCH_CHECK_VALUE(groups_B == groups_C, op, ": B and C must have the same number of groups, got ", text(groups_B),
                    " and ", text(groups_C));
  s.groups = groups_B;
  check_optional(op, "D", D, {s.dim}, x);
  check_optional(op, "dt_bias", dt_bias, {s.dim}, x);
  check_optional(op, "z", z, x.sizes(), x, /*same_dtype=*/true);
  check_input(op, "state", state, {s.batch, s.dim, s.dstate}, x);
  TORCH_CHECK_VALUE(state.scalar_type() == at::kFloat || state.scalar_type() == at::kDouble, op,
                    ": state must be float32 or float64 (it accumulates), got ", dtype_text(state));
  return s;
}

}  // namespace ssm_tools
