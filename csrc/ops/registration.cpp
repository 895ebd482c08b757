// The one place where the ssm_tools ops are declared. Kernels are registered per backend in
// selective_scan_cpu.cpp / selective_scan_cuda.cpp (TORCH_LIBRARY_IMPL); autograd and fake
// (meta) kernels are registered in python/ssm_tools/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(ssm_tools, m) {
  // Forward scan. Returns out (batch, dim, seqlen) in u's dtype, the last state
  // (batch, dim, dstate) and `saved`: the states entering each chunk of kScanChunk positions,
  // (batch, dim, nchunks, dstate), which the backward recomputes from.
  // State dtype: float64 for float64 inputs, float32 otherwise.
  m.def("selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? delta_bias, bool delta_softplus) -> (Tensor out, Tensor last_state, Tensor saved)");
  // Backward. dlast_state may be None. Returns grads of (u, delta, A, B, C, D, z, delta_bias); the
  // grads of absent optional inputs are empty tensors.
  m.def("selective_scan_bwd(Tensor dout, Tensor? dlast_state, Tensor u, Tensor delta, Tensor A, Tensor B, "
        "Tensor C, Tensor? D, Tensor? z, Tensor? delta_bias, bool delta_softplus, Tensor saved) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // One decode step: updates state (batch, dim, dstate) in place and returns y (batch, dim).
  m.def("selective_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, "
        "Tensor? D, Tensor? z, Tensor? dt_bias, bool dt_softplus) -> Tensor");
}
