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
}
