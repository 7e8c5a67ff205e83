#include "common.cuh"
#include "nestvec/cuda_api.h"

namespace nestvec {
namespace cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky error, report none
    return 0;
  }
  return n;
}

const char* error_string(int code) { return cudaGetErrorString(cudaError_t(code)); }

}  // namespace cuda
}  // namespace nestvec
