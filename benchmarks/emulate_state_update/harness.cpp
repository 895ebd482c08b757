// C entry points to the state update launchers of csrc/kernels/selective_state_update.cu, compiled for
// the CPU by run.py (appended to the kernel's rewritten source), called through ctypes.
extern "C" int emu_mamba_state_update(int batch, int dim, int dstate, int dt_rank, float* state, const void* x,
                                      const void* xdbl, long long xdbl_stride, const void* z, long long z_stride,
                                      const float* dt_weight, const float* dt_bias, const float* A_log,
                                      const float* D, void* y, int type) {
  MambaStateUpdateParams p;
  p.batch = batch, p.dim = dim, p.dstate = dstate, p.dt_rank = dt_rank, p.state = state, p.x = x, p.xdbl = xdbl;
  p.xdbl_stride = xdbl_stride, p.z = z, p.z_stride = z_stride, p.dt_weight = dt_weight, p.dt_bias = dt_bias;
  p.A_log = A_log, p.D = D, p.y = y;
  return mamba_state_update_launch(p, ScanInputType(type), nullptr);
}

extern "C" int emu_selective_state_update(int batch, int dim, int dstate, int n_groups, int softplus, float* state,
                                          const void* x, const void* dt, const void* z, const void* B,
                                          const void* C, const float* A, const float* D, const float* dt_bias,
                                          void* y, int type) {
  SelectiveStateUpdateParams p;
  p.batch = batch, p.dim = dim, p.dstate = dstate, p.n_groups = n_groups, p.dt_softplus = softplus != 0;
  p.state = state, p.x = x, p.dt = dt, p.z = z, p.B = B, p.C = C, p.A = A, p.D = D, p.dt_bias = dt_bias, p.y = y;
  return selective_state_update_launch(p, ScanInputType(type), nullptr);
}
