// Runs csrc/kernels/selective_scan_bwd.cu (rewritten by run.py for the CPU) on one case that run.py wrote
// to a folder, and writes the gradients there.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>
#include "kernels/selective_scan_params.h"

template <typename E> std::vector<E> read(const std::string& dir, const std::string& name, size_t n) {
  std::vector<E> v(n);
  std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
  if (!f) { fprintf(stderr, "missing %s\n", name.c_str()); exit(1); }
  f.read(reinterpret_cast<char*>(v.data()), n * sizeof(E));
  return v;
}
template <typename E> void write(const std::string& dir, const std::string& name, const std::vector<E>& v) {
  std::ofstream f(dir + "/out_" + name + ".bin", std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(E));
}

int main(int argc, char** argv) {
  std::string dir = argv[1];
  std::ifstream meta(dir + "/meta.txt");
  int batch, dim, seqlen, dstate, groups, varB, varC, hasD, hasZ, hasBias, softplus, hasDlast, hasSeq, esize, dtype;
  meta >> batch >> dim >> seqlen >> dstate >> groups >> varB >> varC >> hasD >> hasZ >> hasBias >> softplus >> hasDlast >> hasSeq >> esize >> dtype;
  const size_t L = size_t(batch) * dim * seqlen, nch = (seqlen + kScanChunk - 1) / kScanChunk;
  const size_t nBC = varB ? size_t(batch) * groups * dstate * seqlen : size_t(dim) * dstate;
  const size_t nCC = varC ? size_t(batch) * groups * dstate * seqlen : size_t(dim) * dstate;
  auto u = read<char>(dir, "u", L * esize), delta = read<char>(dir, "delta", L * esize), dout = read<char>(dir, "dout", L * esize);
  auto z = hasZ ? read<char>(dir, "z", L * esize) : std::vector<char>();
  auto B = read<char>(dir, "B", nBC * (varB ? esize : 4)), C = read<char>(dir, "C", nCC * (varC ? esize : 4));
  auto A = read<float>(dir, "A", size_t(dim) * dstate);
  auto D = hasD ? read<float>(dir, "D", dim) : std::vector<float>();
  auto bias = hasBias ? read<float>(dir, "bias", dim) : std::vector<float>();
  auto dlast = hasDlast ? read<float>(dir, "dlast", size_t(batch) * dim * dstate) : std::vector<float>();
  auto saved = read<float>(dir, "saved", size_t(batch) * dim * nch * dstate);
  auto seq = hasSeq ? read<int32_t>(dir, "seq", size_t(batch) * seqlen) : std::vector<int32_t>();
  std::vector<char> du(L * esize), ddelta(L * esize), dz(hasZ ? L * esize : 0);
  std::vector<float> dA(size_t(dim) * dstate, 0.f), dB(nBC, 0.f), dC(nCC, 0.f), dD(dim, 0.f), dbias(dim, 0.f);
  SelectiveScanParams p;
  p.batch = batch; p.dim = dim; p.seqlen = seqlen; p.dstate = dstate; p.n_groups = groups; p.n_chunks = nch;
  p.variable_B = varB; p.variable_C = varC; p.delta_softplus = softplus;
  p.u = u.data(); p.delta = delta.data(); p.z = hasZ ? z.data() : nullptr; p.B = B.data(); p.C = C.data();
  p.A = A.data(); p.D = hasD ? D.data() : nullptr; p.delta_bias = hasBias ? bias.data() : nullptr;
  p.seq_idx = hasSeq ? seq.data() : nullptr; p.saved = saved.data(); p.dout = dout.data();
  p.dlast_state = hasDlast ? dlast.data() : nullptr;
  p.du = du.data(); p.ddelta = ddelta.data(); p.dz = hasZ ? dz.data() : nullptr;
  p.dA = dA.data(); p.dB = dB.data(); p.dC = dC.data(); p.dD = hasD ? dD.data() : nullptr;
  p.ddelta_bias = hasBias ? dbias.data() : nullptr;
  int err = selective_scan_bwd_launch(p, ScanInputType(dtype), nullptr);
  if (err) { fprintf(stderr, "launch error %d\n", err); return 1; }
  write(dir, "du", du); write(dir, "ddelta", ddelta); write(dir, "dz", dz);
  write(dir, "dA", dA); write(dir, "dB", dB); write(dir, "dC", dC); write(dir, "dD", dD); write(dir, "dbias", dbias);
  return 0;
}
