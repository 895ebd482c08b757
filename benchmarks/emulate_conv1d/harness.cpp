// C entry points to the conv launchers of csrc/kernels/causal_conv1d.cu, compiled for the CPU by
// run.py (appended to the kernel's rewritten source), called through ctypes.
static CausalConv1dParams emu_conv_params(int batch, int dim, int seqlen, int width, int silu, const void* x,
                                          const float* weight, const float* bias, const int* seq_idx) {
  CausalConv1dParams p;
  p.batch = batch, p.dim = dim, p.seqlen = seqlen, p.width = width, p.silu = silu != 0;
  p.x = x, p.weight = weight, p.bias = bias, p.seq_idx = seq_idx;
  return p;
}

extern "C" long long emu_conv_partials(int batch, int dim, int seqlen, int width, long long dx_cols, const int* seq_idx,
                                      int type) {
  CausalConv1dParams p = emu_conv_params(batch, dim, seqlen, width, 1, nullptr, nullptr, nullptr, seq_idx);
  p.dx_cols = dx_cols;
  return causal_conv1d_bwd_partials(p, ScanInputType(type));
}

extern "C" int emu_conv_fwd(int batch, int dim, int seqlen, int width, int silu, const void* x, const float* weight,
                            const float* bias, const int* seq_idx, void* out, int type) {
  CausalConv1dParams p = emu_conv_params(batch, dim, seqlen, width, silu, x, weight, bias, seq_idx);
  p.out = out;
  return causal_conv1d_fwd_launch(p, ScanInputType(type), nullptr);
}

extern "C" int emu_conv_bwd(int batch, int dim, int seqlen, int width, int silu, const void* x, const float* weight,
                            const float* bias, const int* seq_idx, const void* dout, void* dx, long long dx_cols,
                            float* dweight, float* dbias, float* partials, int type) {
  CausalConv1dParams p = emu_conv_params(batch, dim, seqlen, width, silu, x, weight, bias, seq_idx);
  p.dout = dout, p.dx = dx, p.dx_cols = dx_cols, p.dweight = dweight, p.dbias = dbias, p.partials = partials;
  return causal_conv1d_bwd_launch(p, ScanInputType(type), nullptr);
}
