// Helpers shared by the CUDA launchers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

// Kernel launches and dynamic shared memory go through these two macros so that the
// same source also builds for nvemu (tests/nvemu: the kernels on the CPU, for the tests).
#if defined(NESTVEC_CUDA_EMU)
#define NV_LAUNCH(grid, block, smem, stream, ...) ::nvemu::launch(__VA_ARGS__, grid, block, smem, stream)
#define NV_DYNAMIC_SMEM(type, name, align) type* const name = reinterpret_cast<type*>(::nvemu::tl_smem)
#else
#define NV_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define NV_DYNAMIC_SMEM(type, name, align) extern __shared__ __align__(align) type name[]
#endif

#define NV_CUDA_TRY(expr)                  \
  do {                                     \
    cudaError_t e_ = (expr);               \
    if (e_ != cudaSuccess) return int(e_); \
  } while (0)

namespace nestvec {
namespace cuda {

__host__ __device__ inline int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// Carves aligned sub-buffers out of one caller-provided workspace.
struct Carver {
  char* base;
  int64_t used = 0;
  template <class T>
  T* take(int64_t count) {
    T* p = reinterpret_cast<T*>(base + used);
    used = align_up(used + count * int64_t(sizeof(T)), 256);
    return p;
  }
};

inline int last_error() { return int(cudaGetLastError()); }

// float <-> storage type (float, __half, __nv_bfloat16), round to nearest even.
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

}  // namespace cuda
}  // namespace nestvec
