// CPU kernels of selective_scan_fwd / selective_scan_bwd (schemas in registration.cpp): converts
// the tensors to the state dtype (float64 for float64 u, float32 otherwise, so bf16/fp16 inputs
// accumulate in float32), lays input-dependent B/C out time-major for the kernels of
// selective_scan_cpu_kernel.h, and spreads channels over threads with at::parallel_for. Arguments
// are checked by ops/checks.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "ops/checks.h"
#include "ops/selective_scan_cpu_kernel.h"

namespace ssm_tools_cpu {
namespace {

using at::Tensor;
using ssm_tools::OptTensor;

// Channels of one group handled by one backward work item. Items accumulate input-dependent dB/dC
// into their own (seqlen, dstate) buffer, reduced afterwards: larger slices save memory, smaller
// ones give threads more items. The count depends on shapes only, so results do not depend on the
// thread count.
constexpr int64_t kChannelsPerSlice = 64;

at::ScalarType state_dtype(const Tensor& u) { return u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// B or C in the kernels' layout: a constant (dim, dstate) stays as is; an input-dependent
// (batch, groups, dstate, seqlen) or (batch, dstate, seqlen) becomes time-major (batch, groups,
// seqlen, dstate).
struct StateInput {
  Tensor data;
  bool variable = false;
  int64_t groups = 1;
};

StateInput prepare_state_input(const Tensor& t, at::ScalarType dtype) {
  if (t.dim() == 2) return {t.to(dtype).contiguous(), false, 1};
  const Tensor t4 = t.dim() == 3 ? t.unsqueeze(1) : t;
  return {t4.to(dtype).transpose(2, 3).contiguous(), true, t4.size(1)};
}

Tensor optional_input(const OptTensor& t, at::ScalarType dtype) { return t ? t->to(dtype).contiguous() : Tensor(); }

// The inputs shared by forward and backward, checked, in the state dtype and the kernels' layout.
struct ScanInputs {
  Tensor u, delta, A, z, D, delta_bias, seq_idx;
  StateInput B, C;
  ssm_tools::ScanSizes sizes;
  int64_t batch, dim, seqlen, dstate, n_chunks, groups;
  bool softplus;

  ScanInputs(const Tensor& u_, const Tensor& delta_, const Tensor& A_, const Tensor& B_, const Tensor& C_,
             const OptTensor& D_, const OptTensor& z_, const OptTensor& delta_bias_, bool softplus_,
             const OptTensor& seq_idx_)
      : sizes(ssm_tools::check_scan_inputs(u_, delta_, A_, B_, C_, D_, z_, delta_bias_, seq_idx_, kScanChunk)),
        softplus(softplus_) {
    const ssm_tools::ScanSizes& s = sizes;
    batch = s.batch, dim = s.dim, seqlen = s.seqlen, dstate = s.dstate, n_chunks = s.n_chunks, groups = s.groups;
    const at::ScalarType dtype = state_dtype(u_);
    u = u_.to(dtype).contiguous();
    delta = delta_.to(dtype).contiguous();
    A = A_.to(dtype).contiguous();
    B = prepare_state_input(B_, dtype);
    C = prepare_state_input(C_, dtype);
    z = optional_input(z_, dtype);
    D = optional_input(D_, dtype);
    delta_bias = optional_input(delta_bias_, dtype);
    if (seq_idx_) seq_idx = seq_idx_->contiguous();
  }

  template <typename T>
  static void point_at(const StateInput& in, int64_t b, int64_t d, int64_t dim, int64_t seqlen, int64_t dstate,
                       const T*& ptr, int64_t& step) {
    if (in.variable) {
      ptr = in.data.data_ptr<T>() + (b * in.groups + d / (dim / in.groups)) * seqlen * dstate;
      step = dstate;
    } else {
      ptr = in.data.data_ptr<T>() + d * dstate;
      step = 0;
    }
  }

  template <typename T>
  ScanChannel<T> channel(int64_t b, int64_t d) const {
    ScanChannel<T> c;
    const int64_t row = b * dim + d;
    c.seqlen = seqlen;
    c.dstate = dstate;
    c.u = u.data_ptr<T>() + row * seqlen;
    c.delta = delta.data_ptr<T>() + row * seqlen;
    c.z = z.defined() ? z.data_ptr<T>() + row * seqlen : nullptr;
    c.A = A.data_ptr<T>() + d * dstate;
    point_at(B, b, d, dim, seqlen, dstate, c.B, c.B_step);
    point_at(C, b, d, dim, seqlen, dstate, c.C, c.C_step);
    c.D = D.defined() ? D.data_ptr<T>()[d] : T(0);
    c.delta_bias = delta_bias.defined() ? delta_bias.data_ptr<T>()[d] : T(0);
    c.softplus = softplus;
    c.seq_idx = seq_idx.defined() ? seq_idx.data_ptr<int32_t>() + b * seqlen : nullptr;
    return c;
  }
};

std::tuple<Tensor, Tensor, Tensor> selective_scan_fwd_cpu(const Tensor& u, const Tensor& delta, const Tensor& A,
                                                          const Tensor& B, const Tensor& C, const OptTensor& D,
                                                          const OptTensor& z, const OptTensor& delta_bias,
                                                          bool delta_softplus, const OptTensor& seq_idx) {
  const ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_idx);
  const auto opts = in.u.options();
  Tensor out = at::empty({in.batch, in.dim, in.seqlen}, opts);
  Tensor last_state = at::empty({in.batch, in.dim, in.dstate}, opts);
  Tensor saved = at::empty({in.batch, in.dim, in.n_chunks, in.dstate}, opts);
  AT_DISPATCH_FLOATING_TYPES(in.u.scalar_type(), "selective_scan_fwd_cpu", [&] {
    dispatch_dstate(in.dstate, [&](auto kN) {
      at::parallel_for(0, in.batch * in.dim, 1, [&](int64_t begin, int64_t end) {
        ScanScratch<scalar_t> scratch(in.dstate, /*record=*/false);
        for (int64_t row = begin; row < end; ++row) {
          scan_forward_channel<scalar_t, decltype(kN)::value>(
              in.channel<scalar_t>(row / in.dim, row % in.dim), out.data_ptr<scalar_t>() + row * in.seqlen,
              last_state.data_ptr<scalar_t>() + row * in.dstate,
              saved.data_ptr<scalar_t>() + row * in.n_chunks * in.dstate, scratch);
        }
      });
    });
  });
  return {out.to(u.scalar_type()), last_state, saved};
}

// Gradient of an input: cast to the input's dtype, or an empty tensor (in u's dtype) when absent.
Tensor grad_for(const Tensor& grad, const OptTensor& input, const Tensor& u) {
  return input ? grad.to(input->scalar_type()) : at::empty({0}, u.options());
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> selective_scan_bwd_cpu(
    const Tensor& dout, const OptTensor& dlast_state, const Tensor& u, const Tensor& delta, const Tensor& A,
    const Tensor& B, const Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& delta_bias,
    bool delta_softplus, const Tensor& saved, const OptTensor& seq_idx) {
  const ScanInputs in(u, delta, A, B, C, D, z, delta_bias, delta_softplus, seq_idx);
  ssm_tools::check_scan_grads(in.sizes, u, dout, dlast_state, saved);
  const auto opts = in.u.options();
  const at::ScalarType dtype = in.u.scalar_type();
  const Tensor dout_c = dout.to(dtype).contiguous(), saved_c = saved.to(dtype).contiguous();
  const Tensor dlast_c = optional_input(dlast_state, dtype);

  Tensor du = at::empty({in.batch, in.dim, in.seqlen}, opts);
  Tensor ddelta = at::empty_like(du);
  Tensor dz = in.z.defined() ? at::empty_like(du) : Tensor();
  // Per-(batch, dim) sums, reduced over batch at the end so no two threads add into one place.
  Tensor dA = at::zeros({in.batch, in.dim, in.dstate}, opts);
  Tensor dD = at::zeros({in.batch, in.dim}, opts);
  Tensor ddelta_bias = at::zeros({in.batch, in.dim}, opts);
  const int64_t dims_per_group = in.dim / in.groups;
  const int64_t slices = (dims_per_group + kChannelsPerSlice - 1) / kChannelsPerSlice;
  // Input-dependent dB/dC: one time-major buffer per (batch, group, slice); constant: per (batch, dim).
  const auto grad_buffer = [&](const StateInput& s) {
    return s.variable ? at::zeros({in.batch, in.groups, slices, in.seqlen, in.dstate}, opts)
                      : at::zeros({in.batch, in.dim, in.dstate}, opts);
  };
  Tensor dB = grad_buffer(in.B), dC = grad_buffer(in.C);

  AT_DISPATCH_FLOATING_TYPES(dtype, "selective_scan_bwd_cpu", [&] {
    using T = scalar_t;
    const auto grad_row = [&](const StateInput& s, const Tensor& buf, int64_t item, int64_t row, T*& ptr,
                              int64_t& step) {
      ptr = s.variable ? buf.data_ptr<T>() + item * in.seqlen * in.dstate : buf.data_ptr<T>() + row * in.dstate;
      step = s.variable ? in.dstate : 0;
    };
    dispatch_dstate(in.dstate, [&](auto kN) {
      at::parallel_for(0, in.batch * in.groups * slices, 1, [&](int64_t begin, int64_t end) {
        ScanScratch<T> scratch(in.dstate, /*record=*/true);
        for (int64_t item = begin; item < end; ++item) {
          const int64_t b = item / (in.groups * slices), g = item / slices % in.groups, s = item % slices;
          const int64_t d0 = g * dims_per_group + s * kChannelsPerSlice;
          const int64_t d1 = std::min(d0 + kChannelsPerSlice, (g + 1) * dims_per_group);
          for (int64_t d = d0; d < d1; ++d) {
            const int64_t row = b * in.dim + d;
            ChannelGrads<T> grads;
            grads.dout = dout_c.data_ptr<T>() + row * in.seqlen;
            grads.dlast_state = dlast_c.defined() ? dlast_c.data_ptr<T>() + row * in.dstate : nullptr;
            grads.du = du.data_ptr<T>() + row * in.seqlen;
            grads.ddelta = ddelta.data_ptr<T>() + row * in.seqlen;
            grads.dz = dz.defined() ? dz.data_ptr<T>() + row * in.seqlen : nullptr;
            grads.dA = dA.data_ptr<T>() + row * in.dstate;
            grads.dD = dD.data_ptr<T>() + row;
            grads.ddelta_bias = ddelta_bias.data_ptr<T>() + row;
            grad_row(in.B, dB, item, row, grads.dB, grads.dB_step);
            grad_row(in.C, dC, item, row, grads.dC, grads.dC_step);
            scan_backward_channel<T, decltype(kN)::value>(
                in.channel<T>(b, d), saved_c.data_ptr<T>() + row * in.n_chunks * in.dstate, grads, scratch);
          }
        }
      });
    });
  });

  // Back to the inputs' layouts: sum the slices and restore (batch, groups, dstate, seqlen), or sum
  // the constant rows over batch.
  const auto reduce_state_grad = [&](const StateInput& s, const Tensor& buf, const Tensor& input) {
    const Tensor g = s.variable ? buf.sum(2).transpose(2, 3).reshape(input.sizes()) : buf.sum(0);
    return g.to(input.scalar_type()).contiguous();
  };
  return {du.to(u.scalar_type()),
          ddelta.to(delta.scalar_type()),
          dA.sum(0).to(A.scalar_type()),
          reduce_state_grad(in.B, dB, B),
          reduce_state_grad(in.C, dC, C),
          grad_for(dD.sum(0), D, u),
          grad_for(dz, z, u),
          grad_for(ddelta_bias.sum(0), delta_bias, u)};
}

}  // namespace
}  // namespace ssm_tools_cpu

TORCH_LIBRARY_IMPL(ssm_tools, CPU, m) {
  m.impl("selective_scan_fwd", &ssm_tools_cpu::selective_scan_fwd_cpu);
  m.impl("selective_scan_bwd", &ssm_tools_cpu::selective_scan_bwd_cpu);
}
