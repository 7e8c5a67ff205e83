// nvemu: runs the CUDA kernels of csrc/cuda/ on the CPU, for tests on machines without
// a GPU (the role TRITON_INTERPRET=1 plays for the Triton kernels). A .cu file is
// compiled as C++ with include/ first on the path, so <cuda_runtime.h>, <cuda_fp16.h>,
// <cuda_bf16.h> and <mma.h> land here.
//
// Model: a launch runs its blocks one after another; the threads of a block are fibers
// (ucontext) on the calling OS thread, switched only at __syncthreads, __syncwarp and
// warp shuffles. So `__shared__` is `thread_local` (one copy per block being run) and
// every barrier is checked: threads of a block meeting at different __syncthreads()
// lines are an error, and a barrier that some live threads never reach is reported as
// a deadlock instead of hanging. Threads that have exited count as arrived (sm_70+).
// A thread spinning on memory another thread writes would hang (no preemption); our
// kernels never do that. WMMA fragments are warp-collective:
// lane 0 of the warp does the whole 16x16x16 product in float32 and the other lanes
// skip it, which holds as long as fragments leave the warp only through
// store_matrix_sync (true of our kernels). Pointers and leading dimensions of WMMA
// loads / stores are checked against the hardware's alignment rules, launch shapes and
// dynamic shared memory against the sm_80 limits, and dynamic shared memory ends at a
// guard page and starts filled with 0xFF bytes, so an overrun faults and a read of
// never-written shared memory shows up as NaN or -1.
//
// Not modelled: the memory model between threads (fibers run until they block, which
// hides some races; NVEMU_SCHEDULE=reverse | random[:seed] changes the order threads run
// in between barriers, so the slow suite's reruns expose order-dependent results),
// warp divergence, streams (everything is synchronous),
// cp.async copies are queued per thread and done at the matching wait_group, so a
// read before the wait sees the old shared memory.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

#include "nestvec/half.h"

#ifndef NESTVEC_CUDA_EMU
#define NESTVEC_CUDA_EMU 1
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ thread_local

// ---------------------------------------------------------------- types
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(2) __half {
  uint16_t bits;
};
struct alignas(2) __nv_bfloat16 {
  uint16_t bits;
};

inline float __half2float(__half h) { return nestvec::f16_to_f32(h.bits); }
inline __half __float2half_rn(float f) { return __half{nestvec::f32_to_f16(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline float __bfloat162float(__nv_bfloat16 h) { return nestvec::bf16_to_f32(h.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{nestvec::f32_to_bf16(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---------------------------------------------------------------- device intrinsics
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
// Fibers of a block share one OS thread and switch only at barriers: a plain
// read-modify-write is atomic here.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <typename T>
inline T min(T a, T b) { return a < b ? a : b; }
template <typename T>
inline T max(T a, T b) { return a > b ? a : b; }

// ---------------------------------------------------------------- runtime API
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef struct CUstream_st* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);

namespace nvemu {

struct Fiber {
  dim3 tid;
  int linear = 0;
};
struct Block {
  dim3 bid, bdim, gdim;
};
extern thread_local Fiber* tl_fiber;
extern thread_local Block* tl_block;
extern thread_local unsigned char* tl_smem;

void set_dynamic_smem_limit(const void* kernel, int bytes);
void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);
void syncthreads(const char* file, int line);
void syncwarp(unsigned mask);
uint64_t shfl_raw(unsigned mask, uint64_t v, int src_lane, int kind, int width);  // kind 0 idx, 1 xor, 2 up, 3 down
unsigned ballot(unsigned mask, bool pred);
inline int lane() { return tl_fiber->linear % 32; }
// cp.async: a 16-byte copy (zeros when !valid) queued in the thread's open group;
// commit closes the group; wait(n) performs all but the n most recent groups.
void async_copy16(void* smem, const void* gmem, bool valid);
void async_commit();
void async_wait(int n);
[[noreturn]] void fail(const char* what);

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  template <typename... A>
  void operator()(A&&... a) const {
    // Arguments convert to the parameter types once, as a kernel launch copies them.
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    auto k = kernel;
    run_grid(reinterpret_cast<const void*>(kernel), grid, block, smem, [&] { std::apply(k, args); });
  }
};
template <typename... P>
Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return Launch<P...>{kernel, grid, block, smem};
}

template <typename T>
T shfl(unsigned mask, T v, int arg, int kind, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a large type");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  u = shfl_raw(mask, u, arg, kind, width);
  T r;
  std::memcpy(&r, &u, sizeof(T));
  return r;
}

}  // namespace nvemu

template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > 166912) return cudaErrorInvalidValue;  // sm_80: 163 KB per block
  nvemu::set_dynamic_smem_limit(reinterpret_cast<const void*>(kernel), value);
  return cudaSuccess;
}

#define threadIdx (::nvemu::tl_fiber->tid)
#define blockIdx (::nvemu::tl_block->bid)
#define blockDim (::nvemu::tl_block->bdim)
#define gridDim (::nvemu::tl_block->gdim)

// A macro so that each barrier knows its line: threads of one block meeting at
// different __syncthreads() (divergent code) is an error, not a silent match.
#define __syncthreads() ::nvemu::syncthreads(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { nvemu::syncwarp(mask); }
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) { return nvemu::shfl(mask, v, src, 0, width); }
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int o, int width = 32) { return nvemu::shfl(mask, v, o, 1, width); }
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) { return nvemu::shfl(mask, v, int(d), 2, width); }
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) { return nvemu::shfl(mask, v, int(d), 3, width); }
inline unsigned __ballot_sync(unsigned mask, int pred) { return nvemu::ballot(mask, pred != 0); }

// ---------------------------------------------------------------- WMMA
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K>
struct shape_of;
template <int M, int N, int K>
struct shape_of<matrix_a, M, N, K> { static constexpr int R = M, C = K; };
template <int M, int N, int K>
struct shape_of<matrix_b, M, N, K> { static constexpr int R = K, C = N; };
template <int M, int N, int K>
struct shape_of<accumulator, M, N, K> { static constexpr int R = M, C = N; };

// The whole tile, held by lane 0 of the warp (see the header comment).
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int R = shape_of<Use, M, N, K>::R, C = shape_of<Use, M, N, K>::C;
  float v[R * C];
};

inline float as_float(float x) { return x; }
inline float as_float(__half x) { return __half2float(x); }
inline float as_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
inline void check_ptr(const T* p, unsigned ldm, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) nvemu::fail(what);   // 256-bit aligned
  if ((ldm * sizeof(T)) % 16 != 0) nvemu::fail(what);                  // ldm: 16 bytes
}

template <typename Use, int M, int N, int K, typename T, typename L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  if (nvemu::lane() != 0) return;
  for (float& x : f.v) x = v;
}

template <typename Use, int M, int N, int K, typename T, typename L>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<L, void>::value, "operand fragments need a layout");
  if (nvemu::lane() != 0) return;
  check_ptr(p, ldm, "wmma::load_matrix_sync: pointer not 32-byte aligned or ldm not 16 bytes");
  constexpr bool col = std::is_same<L, col_major>::value;
  for (int r = 0; r < f.R; ++r)
    for (int c = 0; c < f.C; ++c) f.v[r * f.C + c] = as_float(col ? p[c * ldm + r] : p[r * ldm + c]);
}

template <int M, int N, int K, typename TA, typename TB, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b,
              const fragment<accumulator, M, N, K, float>& c) {
  if (nvemu::lane() != 0) return;
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = c.v[i * N + j];
      for (int k = 0; k < K; ++k) s = std::fma(a.v[i * K + k], b.v[k * N + j], s);
      out[i * N + j] = s;
    }
  std::memcpy(d.v, out, sizeof(out));
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm,
                       layout_t layout) {
  if (nvemu::lane() != 0) return;
  check_ptr(p, ldm, "wmma::store_matrix_sync: pointer not 32-byte aligned or ldm not 16 bytes");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c)
      (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.v[r * N + c];
}

}  // namespace wmma
}  // namespace nvcuda
