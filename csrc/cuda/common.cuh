// Helpers shared by the CUDA launchers.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

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

}  // namespace cuda
}  // namespace nestvec
