// Runs csrc/kernels/selective_scan_fwd.cu (rewritten by run.py for the CPU) on one case that run.py wrote
// to a folder, and writes out, last_state and saved there. `misalign` 1 starts u, delta, z, B, C and out
// one element past their buffers' (16-byte aligned) start, so that the kernel takes its scalar paths.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>
#include "kernels/selective_scan_params.h"

static std::string dir;
static int esize = 4, misalign = 0;

// A buffer of n elements of `size` bytes read from name.bin, placed `misalign` elements into its storage.
struct Buf {
  std::vector<float> storage;  // float: 16-byte aligned by the allocator
  char* data = nullptr;
  Buf(const std::string& name, size_t n, size_t size, bool read) {
    storage.assign((n + 1) * size / sizeof(float) + 4, 0.f);
    data = reinterpret_cast<char*>(storage.data()) + misalign * size;
    if (!read) return;
    std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
    if (!f) { fprintf(stderr, "missing %s\n", name.c_str()); exit(1); }
    f.read(data, n * size);
  }
};
static void write(const std::string& name, const char* data, size_t bytes) {
  std::ofstream f(dir + "/out_" + name + ".bin", std::ios::binary);
  f.write(data, bytes);
}

int main(int argc, char** argv) {
  if (argc != 2) { fprintf(stderr, "usage: harness FOLDER\n"); return 2; }
  dir = argv[1];
  std::ifstream meta(dir + "/meta.txt");
  int batch, dim, seqlen, dstate, groups, varB, varC, hasD, hasZ, hasBias, softplus, hasSeq, dtype, segment;
  meta >> batch >> dim >> seqlen >> dstate >> groups >> varB >> varC >> hasD >> hasZ >> hasBias >> softplus >> hasSeq
       >> esize >> dtype >> segment >> misalign;
  const size_t L = size_t(batch) * dim * seqlen, nch = (seqlen + kScanChunk - 1) / kScanChunk;
  const size_t nB = varB ? size_t(batch) * groups * dstate * seqlen : size_t(dim) * dstate;
  const size_t nC = varC ? size_t(batch) * groups * dstate * seqlen : size_t(dim) * dstate;
  Buf u("u", L, esize, true), delta("delta", L, esize, true), z("z", hasZ ? L : 0, esize, hasZ);
  Buf B("B", nB, varB ? esize : 4, true), C("C", nC, varC ? esize : 4, true), out("out", L, esize, false);
  std::vector<float> A(size_t(dim) * dstate), D(dim), bias(dim);
  std::vector<int32_t> seq(hasSeq ? size_t(batch) * seqlen : 0);
  auto read = [](const char* name, void* dst, size_t bytes) {
    std::ifstream f(dir + "/" + name + ".bin", std::ios::binary);
    if (!f) { fprintf(stderr, "missing %s\n", name); exit(1); }
    f.read(static_cast<char*>(dst), bytes);
  };
  read("A", A.data(), A.size() * 4);
  if (hasD) read("D", D.data(), D.size() * 4);
  if (hasBias) read("bias", bias.data(), bias.size() * 4);
  if (hasSeq) read("seq", seq.data(), seq.size() * 4);
  SelectiveScanParams p;
  p.batch = batch; p.dim = dim; p.seqlen = seqlen; p.dstate = dstate; p.n_groups = groups; p.n_chunks = nch;
  p.variable_B = varB; p.variable_C = varC; p.delta_softplus = softplus;
  p.u = u.data; p.delta = delta.data; p.z = hasZ ? z.data : nullptr; p.B = B.data; p.C = C.data;
  p.A = A.data(); p.D = hasD ? D.data() : nullptr; p.delta_bias = hasBias ? bias.data() : nullptr;
  p.seq_idx = hasSeq ? seq.data() : nullptr;
  p.segment_len = segment > 0 ? segment : seqlen;
  p.n_segments = (seqlen + p.segment_len - 1) / p.segment_len;
  std::vector<float> last(size_t(batch) * dim * dstate, std::nanf("")), saved(size_t(batch) * dim * nch * dstate, std::nanf(""));
  std::vector<float> seg_end(size_t(batch) * dim * p.n_segments * dstate, std::nanf("")), seg_decay(seg_end);
  p.out = out.data; p.last_state = last.data(); p.saved = saved.data();
  p.segment_end = seg_end.data(); p.segment_decay = seg_decay.data();
  const int err = selective_scan_fwd_launch(p, ScanInputType(dtype), nullptr);
  if (err) { fprintf(stderr, "launch error %d\n", err); return 1; }
  write("out", out.data, L * esize);
  write("last", reinterpret_cast<const char*>(last.data()), last.size() * 4);
  write("saved", reinterpret_cast<const char*>(saved.data()), saved.size() * 4);
  return 0;
}
