// pybind11 definitions of the CUDA launchers, shared by two modules: nestvec._C (real
// CUDA, or stubs that raise when built without it) and the tests' _nvemu (the same kernels
// on the CPU emulator, tests/nvemu). Pointers are device pointers (host pointers for
// _nvemu) passed as integers; each launcher releases the GIL.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "nestvec/cuda_api.h"

namespace nestvec {
namespace bind {

namespace py = pybind11;

#if defined(NESTVEC_WITH_CUDA)

inline void check_cuda(int rc, const char* what) {
  if (rc != 0) throw std::runtime_error(std::string(what) + ": " + cuda::error_string(rc));
}

inline void def_cuda_hamming(py::module_& m) {
  m.def("cuda_hamming_workspace_bytes",
        [](int64_t n, int64_t nq, int64_t nbytes, int64_t k, int64_t group_bytes) {
          return cuda::hamming_workspace_bytes(n, nq, nbytes, k, group_bytes);
        });
  m.def("cuda_hamming_topk", [](uintptr_t codes, int64_t n, int64_t code_stride, uintptr_t queries,
                                int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k,
                                uintptr_t allow, uintptr_t out_dist, uintptr_t out_idx,
                                int64_t group_bytes, uintptr_t ws, int64_t ws_bytes,
                                uintptr_t stream) {
    int rc;
    {
      py::gil_scoped_release nogil;
      rc = cuda::hamming_topk(reinterpret_cast<const uint8_t*>(codes), n, code_stride,
                              reinterpret_cast<const uint8_t*>(queries), nq, query_stride, nbytes,
                              k, reinterpret_cast<const uint8_t*>(allow),
                              reinterpret_cast<int32_t*>(out_dist),
                              reinterpret_cast<int64_t*>(out_idx), group_bytes,
                              reinterpret_cast<void*>(ws), ws_bytes, stream);
    }
    check_cuda(rc, "cuda_hamming_topk");
  });
}

inline void def_cuda_pool(py::module_& m) {
  m.def("cuda_pool", [](uintptr_t hidden, int dtype, int64_t B, int64_t T, int64_t d, int64_t sb,
                        int64_t st, uintptr_t mask, int mask_itemsize, int64_t mask_sb, int mode,
                        bool normalize, uintptr_t out, uintptr_t codes, uintptr_t stream) {
    int rc;
    {
      py::gil_scoped_release nogil;
      rc = cuda::pool(reinterpret_cast<const void*>(hidden), dtype, B, T, d, sb, st,
                      reinterpret_cast<const void*>(mask), mask_itemsize, mask_sb, mode, normalize,
                      reinterpret_cast<float*>(out), reinterpret_cast<uint8_t*>(codes), stream);
    }
    check_cuda(rc, "cuda_pool");
  });
}

inline void def_cuda_dense(py::module_& m) {
  m.def("cuda_dense_block_rows", [] { return cuda::dense_block_rows(); });
  m.def("cuda_dense_scan", [](uintptr_t db, int dtype, int64_t n, int64_t stride, int64_t dim,
                              uintptr_t queries, int64_t nq, int64_t query_stride, uintptr_t qaux,
                              int metric, uintptr_t allow, int64_t kp, uintptr_t keys,
                              int64_t keys_stride, uintptr_t stream) {
    int rc;
    {
      py::gil_scoped_release nogil;
      rc = cuda::dense_scan(reinterpret_cast<const void*>(db), dtype, n, stride, dim,
                            reinterpret_cast<const float*>(queries), nq, query_stride,
                            reinterpret_cast<const float*>(qaux), metric,
                            reinterpret_cast<const uint8_t*>(allow), kp,
                            reinterpret_cast<int64_t*>(keys), keys_stride, stream);
    }
    check_cuda(rc, "cuda_dense_scan");
  });
  m.def("cuda_dense_gather", [](uintptr_t db, int dtype, int64_t n, int64_t stride, int64_t dim,
                                uintptr_t queries, int64_t nq, int64_t query_stride,
                                uintptr_t qaux, int metric, uintptr_t cand, int64_t ncand,
                                int64_t cand_stride, uintptr_t keys, int64_t keys_stride,
                                uintptr_t stream) {
    int rc;
    {
      py::gil_scoped_release nogil;
      rc = cuda::dense_gather(reinterpret_cast<const void*>(db), dtype, n, stride, dim,
                              reinterpret_cast<const float*>(queries), nq, query_stride,
                              reinterpret_cast<const float*>(qaux), metric,
                              reinterpret_cast<const int64_t*>(cand), ncand, cand_stride,
                              reinterpret_cast<int64_t*>(keys), keys_stride, stream);
    }
    check_cuda(rc, "cuda_dense_gather");
  });

}

inline int lowrank_dtype(const std::string& dtype) {
  if (dtype == "f32") return 0;
  if (dtype == "f16") return 1;
  if (dtype == "bf16") return 2;
  throw std::invalid_argument("dtype: expected 'f32', 'f16' or 'bf16'");
}

inline void def_cuda_lowrank(py::module_& m) {
  m.def("cuda_lowrank_sparse_workspace_bytes",
        [](const std::string& dtype, int64_t M, int64_t N, int64_t r, int64_t c) -> int64_t {
          return cuda::lowrank_sparse_workspace_bytes(lowrank_dtype(dtype), M, N, r, c);
        });
  m.def("cuda_lowrank_sparse_matmul",
        [](const std::string& dtype, uintptr_t x, int64_t M, int64_t K, int64_t ldx, uintptr_t A,
           int64_t r, uintptr_t B, int64_t N, uintptr_t S, int64_t c, uintptr_t channels,
           uintptr_t bias, uintptr_t y, uintptr_t ws, int64_t ws_bytes, uintptr_t stream) {
          const int dt = lowrank_dtype(dtype);
          int rc;
          {
            py::gil_scoped_release nogil;
            rc = cuda::lowrank_sparse_matmul(
                dt, reinterpret_cast<const void*>(x), M, K, ldx, reinterpret_cast<const void*>(A),
                r, reinterpret_cast<const void*>(B), N, reinterpret_cast<const void*>(S), c,
                reinterpret_cast<const int64_t*>(channels), reinterpret_cast<const void*>(bias),
                reinterpret_cast<void*>(y), reinterpret_cast<void*>(ws), ws_bytes, stream);
          }
          check_cuda(rc, "cuda_lowrank_sparse_matmul");
        });
}

#else  // built without CUDA: the same names, raising when called

inline void def_missing(py::module_& m, std::initializer_list<const char*> names) {
  for (const char* name : names)
    m.def(name, [](py::args, py::kwargs) -> py::object {
      throw std::runtime_error("nestvec was built without CUDA");
    });
}
inline void def_cuda_hamming(py::module_& m) {
  def_missing(m, {"cuda_hamming_workspace_bytes", "cuda_hamming_topk"});
}
inline void def_cuda_pool(py::module_& m) { def_missing(m, {"cuda_pool"}); }
inline void def_cuda_dense(py::module_& m) {
  def_missing(m, {"cuda_dense_block_rows", "cuda_dense_scan", "cuda_dense_gather"});
}
inline void def_cuda_lowrank(py::module_& m) {
  def_missing(m, {"cuda_lowrank_sparse_workspace_bytes", "cuda_lowrank_sparse_matmul"});
}

#endif

}  // namespace bind
}  // namespace nestvec
