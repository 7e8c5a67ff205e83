// Kernels that check nvemu itself (tests/test_nvemu.py): that it computes what the
// hardware computes where our kernels rely on it, and that it reports the mistakes it
// claims to catch instead of hiding them.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "nvemu.h"

namespace {

namespace py = pybind11;

// out[t * 6 + j]: the j-th collective seen by thread t of a 64-thread block.
__global__ void shuffles_kernel(int* out) {
  const int t = threadIdx.x, lane = t % 32;
  __shared__ int s[64];
  s[t] = t;
  __syncthreads();
  int* o = out + t * 6;
  o[0] = s[63 - t];                                   // the barrier published every write
  o[1] = __shfl_xor_sync(0xffffffffu, t, 5);
  o[2] = __shfl_up_sync(0xffffffffu, t, 3);
  o[3] = __shfl_down_sync(0xffffffffu, t, 3, 16);
  o[4] = __shfl_sync(0xffffffffu, t, 7);
  o[5] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
}

// mode 0: warp 1 exits before the barrier (fine); 1: the warps wait at different
// __syncthreads (an error); 2: lane 0 waits at __syncwarp while the rest of its warp
// waits at __syncthreads (a deadlock).
__global__ void barrier_kernel(int* out, int mode) {
  if (mode == 0 && threadIdx.x >= 32) return;
  if (mode == 1) {
    if (threadIdx.x < 32)
      __syncthreads();
    else
      __syncthreads();
  } else if (mode == 2 && threadIdx.x == 0) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void wmma_kernel(const __half* a, int offset, float* c) {
  using namespace nvcuda;
  __shared__ __align__(128) __half tile[16 * 16 + 16];
  for (int i = threadIdx.x; i < 256; i += 32) tile[offset + i] = a[i];
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  wmma::load_matrix_sync(fa, tile + offset, 16);
  wmma::load_matrix_sync(fb, tile + offset, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

__global__ void cp_async_order_kernel(const float* src, float* out, bool wait_first) {
  __shared__ __align__(16) float buf[4];
  if (threadIdx.x == 0) {
    buf[0] = buf[1] = buf[2] = buf[3] = -1.0f;
    nvemu::async_copy16(buf, src, true);
    nvemu::async_commit();
    if (wait_first) nvemu::async_wait(0);
    out[0] = buf[0];  // before the wait: the old contents
    nvemu::async_wait(0);
    out[1] = buf[0];
  }
}

// out[0] = 1 when the dynamic shared memory starts poisoned (0xFF); writes byte `at`.
__global__ void dyn_smem_kernel(int* out, int at) {
  unsigned char* sm = nvemu::tl_smem;
  if (threadIdx.x == 0) {
    out[0] = sm[0] == 0xFF ? 1 : 2;
    sm[at] = 0;
  }
}

// A race on purpose: thread 63 writes v while the others read it, with no barrier in
// between. What each thread sees depends on the schedule (NVEMU_SCHEDULE).
__global__ void race_kernel(int* out) {
  __shared__ int v;
  if (threadIdx.x == 0) v = 0;
  __syncthreads();
  if (threadIdx.x == 63) v = 1;
  out[threadIdx.x] = v;
}

int run_barrier(int mode) {
  int out[64] = {};
  nvemu::launch(barrier_kernel, 1, 64, 0, nullptr)(out, mode);
  int s = 0;
  for (int v : out) s += v;
  return s;
}

}  // namespace

void def_selftest(py::module_& m) {
  m.def("selftest_shuffles", [] {
    int out[64 * 6];
    nvemu::launch(shuffles_kernel, 1, 64, 0, nullptr)(out);
    py::list l;
    for (int v : out) l.append(v);
    return l;
  });
  m.def("selftest_barrier", &run_barrier, py::arg("mode"));
  m.def("selftest_race", [] {
    int out[64] = {};
    nvemu::launch(race_kernel, 1, 64, 0, nullptr)(out);
    int seen = 0;
    for (int v : out) seen += v;
    return seen;  // how many threads saw thread 63's write
  });
  m.def("selftest_wmma", [](int offset) {
    __half a[256];
    for (int i = 0; i < 256; ++i) a[i] = __float2half_rn(float(i % 7) - 3.0f);
    alignas(32) float c[256];
    nvemu::launch(wmma_kernel, 1, 32, 0, nullptr)(a, offset, c);
    py::list l;
    for (float v : c) l.append(v);
    return l;
  }, py::arg("offset"));
  m.def("selftest_cp_async", [](bool wait_first) {
    alignas(16) float src[4] = {5.0f, 6.0f, 7.0f, 8.0f};
    float out[2];
    nvemu::launch(cp_async_order_kernel, 1, 32, 0, nullptr)(src, out, wait_first);
    return py::make_tuple(out[0], out[1]);
  }, py::arg("wait_first"));
  // at = bytes writes one past the end: the guard page faults (SIGSEGV).
  m.def("selftest_dynamic_smem", [](int bytes, int raise_limit_to, int at) {
    int out[1] = {0};
    if (raise_limit_to >= 0) {
      const cudaError_t e = cudaFuncSetAttribute(dyn_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, raise_limit_to);
      if (e != cudaSuccess) return -int(e);
    }
    nvemu::launch(dyn_smem_kernel, 1, 32, size_t(bytes), nullptr)(out, at < 0 ? bytes - 1 : at);
    const cudaError_t e = cudaGetLastError();
    return e != cudaSuccess ? -int(e) : out[0];
  }, py::arg("bytes"), py::arg("raise_limit_to") = -1, py::arg("at") = -1);
}
