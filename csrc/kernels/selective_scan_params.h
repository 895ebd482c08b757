// Plain parameter structs shared by the selective-scan kernels and their bindings. No torch and no
// CUDA headers here: the CPU kernels include this file for kScanChunk, and the .cu files compile with
// nvcc alone. Every tensor is contiguous (the bindings make it so); pointers may be null for absent
// optional inputs.
#pragma once

#include <cstdint>

// The forward saves the state entering every chunk of kScanChunk positions; the backward recomputes
// each chunk's states from there, so it never stores (batch, dim, seqlen, dstate).
constexpr int kScanChunk = 256;

// The largest dstate the CUDA kernels take (per-state accumulators live in shared memory).
constexpr int kMaxDstate = 256;

// Element type of u, delta, z, dout, out and of input-dependent B/C (and x, dt, z, B, C in decode).
// State, A, D, delta_bias, constant B/C and all accumulation are float32.
enum class ScanInputType { kFloat32, kBFloat16, kFloat16 };

struct SelectiveScanParams {
  int batch = 0, dim = 0, seqlen = 0, dstate = 0;
  int n_groups = 1;   // groups of input-dependent B/C; dims d share group d / (dim / n_groups)
  int n_chunks = 0;   // ceil(seqlen / kScanChunk)
  bool variable_B = false, variable_C = false;  // (batch, groups, dstate, seqlen) vs (dim, dstate)
  bool delta_softplus = false;

  // Inputs. u, delta, z: (batch, dim, seqlen); A: (dim, dstate); D, delta_bias: (dim,).
  const void* u = nullptr;
  const void* delta = nullptr;
  const void* z = nullptr;
  const void* B = nullptr;  // element type: input type if variable_B, else float32
  const void* C = nullptr;  // likewise
  const float* A = nullptr;
  const float* D = nullptr;
  const float* delta_bias = nullptr;
  // Packed rows: (batch, seqlen) sequence index, or null for one sequence per row. The state restarts
  // from zero where it changes (registration.cpp).
  const int32_t* seq_idx = nullptr;
  // Forward only: each row's sequence runs as n_segments segments of segment_len positions (a
  // multiple of kScanChunk) in separate blocks; segment_end / segment_decay, (batch, dim, n_segments,
  // dstate) float32 scratch, hold each segment's end state from the zero state and its decay product.
  int n_segments = 1, segment_len = 0;
  float* segment_end = nullptr;
  float* segment_decay = nullptr;

  // Forward outputs: out (batch, dim, seqlen) in the input type; last_state (batch, dim, dstate);
  // saved (batch, dim, n_chunks, dstate), the state entering each chunk.
  void* out = nullptr;
  float* last_state = nullptr;
  float* saved = nullptr;

  // Backward inputs: dout (batch, dim, seqlen), dlast_state (batch, dim, dstate) or null, and the
  // forward's `saved` (read through the pointer above).
  const void* dout = nullptr;
  const float* dlast_state = nullptr;
  // Backward outputs. du, ddelta, dz: input type, written once. dA, dD, ddelta_bias, dB, dC: float32,
  // accumulated with atomics, so the caller zero-fills them. dB/dC have the shape of B/C.
  void* du = nullptr;
  void* ddelta = nullptr;
  void* dz = nullptr;
  float* dA = nullptr;
  float* dD = nullptr;
  float* ddelta_bias = nullptr;
  float* dB = nullptr;
  float* dC = nullptr;
};

struct SelectiveStateUpdateParams {
  int batch = 0, dim = 0, dstate = 0;
  int n_groups = 1;  // B/C: (batch, groups, dstate); dims d share group d / (dim / n_groups)
  bool dt_softplus = false;
  float* state = nullptr;       // (batch, dim, dstate), updated in place
  const void* x = nullptr;      // (batch, dim), input type, as are dt, z, B, C and y
  const void* dt = nullptr;
  const void* z = nullptr;
  const void* B = nullptr;
  const void* C = nullptr;
  const float* A = nullptr;     // (dim, dstate)
  const float* D = nullptr;     // (dim,)
  const float* dt_bias = nullptr;
  void* y = nullptr;            // (batch, dim)
};

// Launchers, one per kernel, dispatching on the input type. `stream` is a cudaStream_t. Each
// returns the cudaError_t of its launch as an int (0 on success), so this header needs no CUDA.
int selective_scan_fwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream);
// Positions per forward segment for this shape on the current device (seqlen: no split).
int selective_scan_fwd_segment_len(int batch, int dim, int n_groups, int seqlen);
int selective_scan_bwd_launch(const SelectiveScanParams& p, ScanInputType type, void* stream);
int selective_state_update_launch(const SelectiveStateUpdateParams& p, ScanInputType type, void* stream);
