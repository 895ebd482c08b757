// CPU stand-in for the CUDA runtime features csrc/kernels/selective_scan_bwd.cu and selective_scan_fwd.cu
// use, so that their code runs on a machine without a GPU (emulate_scan_bwd/run.py, emulate_scan_fwd/run.py). One std::thread per CUDA thread; blocks run one after
// another; a block's __syncthreads / a warp's __syncwarp are std::barriers; shuffles exchange through
// a per-warp array between two warp barriers. run.py rewrites the kernel's __shared__ arrays into
// emu_static buffers (poisoned with NaN bytes before every block, as is the dynamic shared memory) and
// its cp.async into emu_cp_async (the copy lands at the wait, the latest the hardware may deliver it).
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(threads, blocks)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct EmuIndex { unsigned x, y, z; };
inline thread_local EmuIndex threadIdx, blockIdx, blockDim, gridDim;
struct float2 { float x, y; };
struct float4 { float x, y, z, w; };
struct uint2 { unsigned x, y; };
struct uint4 { unsigned x, y, z, w; };
struct int4 { int x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
// Byte i of the result is byte (s >> 4 i) & 7 of the 8 bytes {x, y} (PTX prmt, default mode).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const uint64_t both = uint64_t(y) << 32 | x;
  unsigned out = 0;
  for (int i = 0; i < 4; ++i) out |= unsigned(both >> (8 * ((s >> (4 * i)) & 7)) & 0xff) << (8 * i);
  return out;
}

typedef void* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9, cudaErrorNoDevice = 100 };
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
inline cudaError_t cudaGetDevice(int*) { return cudaErrorNoDevice; }
inline cudaError_t cudaDeviceGetAttribute(int*, cudaDeviceAttr, int) { return cudaErrorNoDevice; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <typename K> cudaError_t cudaFuncSetAttribute(K, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

template <typename T> T __ldg(const T* p) { return *p; }
inline float __expf(float v) { return std::exp(v); }
using std::exp2f;
using std::log1pf;
using std::max;
using std::min;
inline size_t __cvta_generic_to_shared(const void*) { return 0; }
// The global window is the CPU's own address space.
inline size_t __cvta_generic_to_global(const void* p) { return reinterpret_cast<size_t>(p); }
inline void* __cvta_global_to_generic(size_t a) { return reinterpret_cast<void*>(a); }

inline std::mutex emu_atomic_mutex;
inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> lock(emu_atomic_mutex);
  const float old = *p;
  *p = old + v;
  return old;
}

// The current block.
inline std::barrier<>* emu_block_barrier;
inline std::barrier<>* emu_warp_barrier[32];
inline uint32_t emu_exchange[32][32];
inline float* emu_dyn_smem;
inline std::vector<std::vector<unsigned char>> emu_static_bufs(8, std::vector<unsigned char>(1 << 16));
inline void* emu_static(int slot) { return emu_static_bufs.at(slot).data(); }

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_warp_barrier[threadIdx.x / 32]->arrive_and_wait(); }

// The value of lane src_of(lane) (this lane's own where that is outside the warp, as on the GPU).
template <typename T, typename F>
T emu_shuffle(T v, F src_of, bool* inside = nullptr) {
  static_assert(sizeof(T) == 4, "32-bit shuffles only");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  emu_exchange[warp][lane] = bits;
  __syncwarp();
  const int src = src_of(lane);
  const bool in = src >= 0 && src < 32;
  if (inside) *inside = in;
  const uint32_t got = emu_exchange[warp][in ? src : lane];
  __syncwarp();
  T out;
  std::memcpy(&out, &got, 4);
  return out;
}
inline unsigned __ballot_sync(unsigned, bool pred) {
  unsigned mask = 0;
  for (int l = 0; l < 32; ++l)
    if (emu_shuffle(static_cast<unsigned>(pred), [l](int) { return l; })) mask |= 1u << l;
  return mask;
}
template <typename T> T __shfl_down_sync(unsigned, T v, int off) { return emu_shuffle(v, [off](int l) { return l + off; }); }
template <typename T> T __shfl_up_sync(unsigned, T v, int off) { return emu_shuffle(v, [off](int l) { return l - off; }); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int off) { return emu_shuffle(v, [off](int l) { return l ^ off; }); }

struct EmuCopy { void* dst; const void* src; int bytes; };
inline thread_local std::vector<EmuCopy> emu_pending;
inline void emu_cp_async(void* dst, const void* src, int bytes) { emu_pending.push_back({dst, src, bytes}); }
inline void emu_cp_async_wait_all() {
  for (const EmuCopy& c : emu_pending) {
    std::memset(c.dst, 0, 16);
    std::memcpy(c.dst, c.src, c.bytes);
  }
  emu_pending.clear();
}

template <typename K, typename... Args>
void emu_launch(K kernel, dim3 grid, int threads, size_t smem, Args... args) {
  std::vector<float> dyn(smem / sizeof(float) + 1);
  for (unsigned bz = 0; bz < grid.z; ++bz)
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      std::fill(dyn.begin(), dyn.end(), std::nanf(""));
      for (auto& b : emu_static_bufs) std::memset(b.data(), 0xff, b.size());
      emu_dyn_smem = dyn.data();
      std::barrier<> block(threads);
      emu_block_barrier = &block;
      std::vector<std::unique_ptr<std::barrier<>>> warps;
      for (int w = 0; w < threads / 32; ++w) {
        warps.emplace_back(new std::barrier<>(32));
        emu_warp_barrier[w] = warps.back().get();
      }
      std::vector<std::thread> team;
      for (int t = 0; t < threads; ++t)
        team.emplace_back([=]() {
          threadIdx = {unsigned(t), 0, 0};
          blockIdx = {bx, by, bz};
          blockDim = {unsigned(threads), 1, 1};
          gridDim = {grid.x, grid.y, grid.z};
          kernel(args...);
          // An exited thread no longer takes part in its warp's or block's barriers, as on the GPU
          // (the decode kernels return early for rows past the end; their teammates still shuffle).
          emu_warp_barrier[t / 32]->arrive_and_drop();
          emu_block_barrier->arrive_and_drop();
        });
      for (std::thread& t : team) t.join();
    }
}
