// The one place where the ssm_tools ops are declared. Kernels are registered per backend in
// selective_scan_cpu.cpp / selective_scan_cuda.cpp (TORCH_LIBRARY_IMPL); autograd and fake
// (meta) kernels are registered in python/ssm_tools/ops.py. Argument rules: checks.h.
#include <torch/library.h>

TORCH_LIBRARY(ssm_tools, m) {
  // Forward scan. Returns out (batch, dim, seqlen) in u's dtype, the last state
  // (batch, dim, dstate) and `saved`: the states entering each chunk of kScanChunk positions,
  // (batch, dim, nchunks, dstate), which the backward recomputes from.
  // State dtype: float64 for float64 inputs, float32 otherwise.
  //
  // Packed rows: seq_idx (batch, seqlen) int32 names the sequence of every position; a sequence
  // starts where seq_idx[b, t] != seq_idx[b, t - 1], and there the state restarts from zero (no
  // state flows from one sequence into the next, forward or backward). The values need not be
  // sorted or contiguous: only changes matter. last_state is the state after a row's last position,
  // that is of its last sequence; every sequence starts from the zero state. A per-position index
  // rather than cu_seqlens: it fits the (batch, dim, seqlen) layout with any number of rows, each
  // packing its own sequences (cu_seqlens assumes one row of concatenated tokens), a kernel reads it
  // per position with no search, and it is the convention of mamba2's and FLA's varlen kernels.
  m.def("selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? delta_bias, bool delta_softplus, Tensor? seq_idx=None) -> "
        "(Tensor out, Tensor last_state, Tensor saved)");
  // Backward. dlast_state may be None. Returns grads of (u, delta, A, B, C, D, z, delta_bias); the
  // grads of absent optional inputs are empty tensors.
  m.def("selective_scan_bwd(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, Tensor B, "
        "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor saved, "
        "Tensor? seq_idx=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // One decode step: updates state (batch, dim, dstate) in place and returns y (batch, dim).
  m.def("selective_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, "
        "Tensor? D, Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor");

  // The rest of the Mamba block (kernels in mamba_block_cpu.cpp / mamba_block_cuda.cpp).
  // Causal depthwise conv1d, x (batch, dim, seqlen), weight (dim, width), bias (dim,), optionally
  // through SiLU; out in x's dtype. The backward recomputes the pre-activation from x and returns
  // dx (x's dtype), dweight and dbias (float32, float64 for float64 x; dbias empty without bias).
  // Packed rows: seq_idx (batch, seqlen) int32, as the scan's; a tap reads x only within the output
  // position's own sequence (no change of seq_idx between the two), as if x were 0 before each start.
  m.def("causal_conv1d_fwd(Tensor x, Tensor weight, Tensor? bias, bool silu, Tensor? seq_idx=None) -> Tensor");
  m.def("causal_conv1d_bwd(Tensor dout, Tensor x, Tensor weight, Tensor? bias, bool silu, Tensor? seq_idx=None) -> "
        "(Tensor dx, Tensor dweight, Tensor dbias)");
  // The backward with dx laid out token-major beside the transposes of `rest` (channel-first parts
  // (batch, dim_i, seqlen) of x's dtype): dx_cat = transpose_cat([dx, *rest]), (batch, seqlen, dim +
  // sum dim_i), the Mamba layer's in_proj gradient [dx, dz] as its GEMMs read it. On CUDA dx goes
  // there straight from the conv kernel (no channel-first dx, no transpose of it).
  m.def("causal_conv1d_bwd_cat(Tensor dout, Tensor x, Tensor weight, Tensor? bias, bool silu, Tensor? seq_idx, "
        "Tensor[] rest) -> (Tensor dx_cat, Tensor dweight, Tensor dbias)");
  // One decode position: conv_state (batch, dim, width) shifts left in place and takes x (batch,
  // dim); returns the conv's output (batch, dim) in x's dtype.
  m.def("causal_conv1d_update(Tensor(a!) conv_state, Tensor x, Tensor weight, Tensor? bias, bool silu) -> Tensor");
  // The block's SSM decode step from x_proj's output xdbl = [dt_low | B | C] (batch, dt_rank + 2
  // dstate): dt = softplus(dt_low @ dt_weight^T + dt_bias), A = -exp(A_log), state updated in place
  // as by selective_state_update; returns y (batch, dim) in x's dtype.
  m.def("mamba_state_update(Tensor(a!) state, Tensor x, Tensor xdbl, Tensor? z, Tensor dt_weight, Tensor dt_bias, "
        "Tensor A_log, Tensor? D) -> Tensor");
  // A decode step's pre-norm with the residual add before it: sum = x + residual (x alone without
  // one), out = rms_norm(sum) * weight cast to out_dtype. x and sum: the float32 (float64) residual
  // stream; residual: the previous layer's output, of any floating dtype.
  m.def("add_rms_norm(Tensor x, Tensor? residual, Tensor weight, float eps, ScalarType out_dtype) -> "
        "(Tensor sum, Tensor out)");
  // The training step's norm recomputed in the backward: rms_norm(x) * weight (no weight: the
  // normalised x alone) in out_dtype, x the float32 (float64) residual stream (rows, dim).
  m.def("rms_norm(Tensor x, Tensor? weight, float eps, ScalarType out_dtype) -> Tensor");
  // Its backward with the residual stream's other gradient added: dx = d(rms_norm(x) * weight)/dx
  // applied to grad, plus grad_sum (the gradient the stream gets from its later use), in x's dtype;
  // dx_cast = a copy of dx in cast_dtype (an empty tensor without one), for the previous layer's
  // output.
  m.def("rms_norm_bwd(Tensor grad, Tensor x, Tensor? weight, float eps, Tensor? grad_sum, ScalarType? cast_dtype) "
        "-> (Tensor dx, Tensor dx_cast)");
  // Channel-first parts (batch, dim_i, seqlen) concatenated token-major: (batch, seqlen, sum dim_i).
  m.def("transpose_cat(Tensor[] parts) -> Tensor");
}
