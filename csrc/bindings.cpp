// The only pybind11 file. It unpacks buffers that python/nestvec/ops.py has already
// validated and allocated, re-checks what would otherwise crash, and releases the GIL
// around every kernel. Sections follow the op families in include/nestvec/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "nestvec/cuda_api.h"
#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/hamming.h"

namespace py = pybind11;
using namespace nestvec;

namespace {

struct View {
  void* ptr;
  int64_t rows, cols, row_stride;  // row_stride in elements
};

// A 1-D or 2-D buffer whose last dimension is contiguous (rows may be strided).
View view2d(const py::array& a, const char* name, size_t itemsize, bool writable = false) {
  if (a.ndim() != 2 && a.ndim() != 1)
    throw std::invalid_argument(std::string(name) + ": expected a 1-D or 2-D array");
  if (size_t(a.itemsize()) != itemsize)
    throw std::invalid_argument(std::string(name) + ": unexpected item size");
  if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + ": not writable");
  View v;
  v.ptr = const_cast<void*>(a.data());
  if (a.ndim() == 1) {
    v.rows = 1;
    v.cols = a.shape(0);
    if (v.cols > 1 && a.strides(0) != ssize_t(itemsize))
      throw std::invalid_argument(std::string(name) + ": must be contiguous");
    v.row_stride = v.cols;
    return v;
  }
  v.rows = a.shape(0);
  v.cols = a.shape(1);
  if (v.cols > 1 && a.strides(1) != ssize_t(itemsize))
    throw std::invalid_argument(std::string(name) + ": last dimension must be contiguous");
  if (a.strides(0) % ssize_t(itemsize) != 0 || a.strides(0) < 0)
    throw std::invalid_argument(std::string(name) + ": unsupported row stride");
  v.row_stride = a.strides(0) / ssize_t(itemsize);
  if (v.rows <= 1) v.row_stride = std::max<int64_t>(v.row_stride, v.cols);
  return v;
}

void check_cuda(int rc, const char* what) {
  if (rc != 0) throw std::runtime_error(std::string(what) + ": " + cuda::error_string(rc));
}

#if !defined(NESTVEC_WITH_CUDA)
[[noreturn]] void no_cuda() { throw std::runtime_error("nestvec was built without CUDA"); }
#endif

Isa parse_isa(const std::string& s) {
  if (s == "scalar") return Isa::Scalar;
  if (s == "avx2") return Isa::Avx2;
  if (s == "avx512") return Isa::Avx512;
  throw std::invalid_argument("isa: expected 'scalar', 'avx2' or 'avx512', got '" + s + "'");
}

}  // namespace

#if !defined(NESTVEC_WITH_CUDA)
namespace nestvec {
namespace cuda {
int device_count() { return 0; }
const char* error_string(int) { return "built without CUDA"; }
}  // namespace cuda
}  // namespace nestvec
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "nestvec native kernels (CPU, CUDA launchers)";

  // ---------------------------------------------------------------- dispatch / info
  m.def("build_info", [] {
    py::dict d;
    py::list isas;
    for (Isa i : compiled_isas()) isas.append(isa_name(i));
    d["isas_compiled"] = isas;
    d["isa_detected"] = isa_name(detected_isa());
    d["isa_active"] = isa_name(active_isa());
#if defined(NESTVEC_WITH_CUDA)
    d["cuda_compiled"] = true;
#else
    d["cuda_compiled"] = false;
#endif
    d["num_threads"] = num_threads();
    return d;
  });
  m.def("cuda_device_count", [] { return cuda::device_count(); });
  m.def("set_isa", [](const std::string& s) {
    Isa isa = parse_isa(s);
    if (!set_isa(isa))
      throw std::invalid_argument("isa: '" + s + "' is not supported on this CPU");
  });
  m.def("get_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("isa_supported", [](const std::string& s) { return isa_supported(parse_isa(s)); });
  m.def("set_num_threads", [](int n) { set_num_threads(n); });
  m.def("get_num_threads", [] { return num_threads(); });

  // ---------------------------------------------------------------- hamming
  m.def(
      "hamming_topk",
      [](py::array codes, py::array queries, int64_t k, py::object allow, py::array out_dist,
         py::array out_idx) {
        View c = view2d(codes, "codes", 1), q = view2d(queries, "queries", 1);
        View od = view2d(out_dist, "out_dist", 4, true), oi = view2d(out_idx, "out_idx", 8, true);
        if (q.cols != c.cols) throw std::invalid_argument("queries: byte width differs from codes");
        if (k <= 0) throw std::invalid_argument("k must be positive");
        if (od.rows != q.rows || od.cols != k || oi.rows != q.rows || oi.cols != k ||
            od.row_stride != k || oi.row_stride != k)
          throw std::invalid_argument("out: expected contiguous [Q, k]");
        const uint8_t* al = nullptr;
        py::array allow_arr;
        if (!allow.is_none()) {
          allow_arr = allow.cast<py::array>();
          View a = view2d(allow_arr, "allow", 1);
          if (a.rows * a.cols != c.rows) throw std::invalid_argument("allow: expected length N");
          al = static_cast<const uint8_t*>(a.ptr);
        }
        if (c.rows >= (int64_t(1) << 40)) throw std::invalid_argument("codes: too many rows");
        py::gil_scoped_release nogil;
        hamming::topk(static_cast<const uint8_t*>(c.ptr), c.rows, c.row_stride,
                      static_cast<const uint8_t*>(q.ptr), q.rows, q.row_stride, c.cols, k, al,
                      static_cast<int32_t*>(od.ptr), static_cast<int64_t*>(oi.ptr));
      },
      py::arg("codes"), py::arg("queries"), py::arg("k"), py::arg("allow"), py::arg("out_dist"),
      py::arg("out_idx"));

  m.def("cuda_hamming_workspace_bytes", [](int64_t n, int64_t nq, int64_t nbytes, int64_t k) {
#if defined(NESTVEC_WITH_CUDA)
    return cuda::hamming_workspace_bytes(n, nq, nbytes, k);
#else
    (void)n, (void)nq, (void)nbytes, (void)k;
    no_cuda();
#endif
  });
  m.def("cuda_hamming_topk", [](uintptr_t codes, int64_t n, int64_t code_stride, uintptr_t queries,
                                int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k,
                                uintptr_t allow, uintptr_t out_dist, uintptr_t out_idx,
                                uintptr_t ws, int64_t ws_bytes, uintptr_t stream) {
#if defined(NESTVEC_WITH_CUDA)
    int rc;
    {
      py::gil_scoped_release nogil;
      rc = cuda::hamming_topk(reinterpret_cast<const uint8_t*>(codes), n, code_stride,
                              reinterpret_cast<const uint8_t*>(queries), nq, query_stride, nbytes,
                              k, reinterpret_cast<const uint8_t*>(allow),
                              reinterpret_cast<int32_t*>(out_dist),
                              reinterpret_cast<int64_t*>(out_idx), reinterpret_cast<void*>(ws),
                              ws_bytes, stream);
    }
    check_cuda(rc, "cuda_hamming_topk");
#else
    (void)codes, (void)n, (void)code_stride, (void)queries, (void)nq, (void)query_stride;
    (void)nbytes, (void)k, (void)allow, (void)out_dist, (void)out_idx, (void)ws, (void)ws_bytes;
    (void)stream;
    no_cuda();
#endif
  });

  // ---------------------------------------------------------------- dense (elastic top-k)
  m.def(
      "dense_topk",
      [](py::array db, int dtype, int64_t dim, py::array queries, int64_t k, int metric,
         py::object allow, py::object candidates, py::array out_score, py::array out_idx) {
        if (dtype < dense::kF32 || dtype > dense::kBF16) throw std::invalid_argument("dtype: 0, 1 or 2");
        if (metric < dense::kCosine || metric > dense::kL2) throw std::invalid_argument("metric: 0, 1 or 2");
        View x = view2d(db, "db", dtype == dense::kF32 ? 4 : 2);
        if (db.ndim() != 2) throw std::invalid_argument("db: expected [N, D]");
        View q = view2d(queries, "queries", 4);
        if (queries.dtype().kind() != 'f') throw std::invalid_argument("queries: expected float32");
        if (dim < 1 || dim > x.cols) throw std::invalid_argument("dim: expected 1 <= dim <= D");
        if (q.cols < dim) throw std::invalid_argument("queries: fewer than dim values");
        if (k <= 0) throw std::invalid_argument("k must be positive");
        View os = view2d(out_score, "out_score", 4, true), oi = view2d(out_idx, "out_idx", 8, true);
        if (os.rows != q.rows || os.cols != k || oi.rows != q.rows || oi.cols != k ||
            os.row_stride != k || oi.row_stride != k)
          throw std::invalid_argument("out: expected contiguous [Q, k]");
        const uint8_t* al = nullptr;
        py::array allow_arr, cand_arr;
        if (!allow.is_none()) {
          allow_arr = allow.cast<py::array>();
          View a = view2d(allow_arr, "allow", 1);
          if (a.rows * a.cols != x.rows) throw std::invalid_argument("allow: expected length N");
          al = static_cast<const uint8_t*>(a.ptr);
        }
        const int64_t* cand = nullptr;
        int64_t ncand = 0;
        if (!candidates.is_none()) {
          cand_arr = candidates.cast<py::array>();
          View c = view2d(cand_arr, "candidates", 8);
          if (cand_arr.ndim() != 2 || c.rows != q.rows || c.row_stride != c.cols)
            throw std::invalid_argument("candidates: expected contiguous int64 [Q, C]");
          cand = static_cast<const int64_t*>(c.ptr);
          ncand = c.cols;
        }
        py::gil_scoped_release nogil;
        dense::topk(x.ptr, dtype, x.rows, x.row_stride, dim, static_cast<const float*>(q.ptr),
                    q.rows, q.row_stride, k, metric, al, cand, ncand,
                    static_cast<float*>(os.ptr), static_cast<int64_t*>(oi.ptr));
      },
      py::arg("db"), py::arg("dtype"), py::arg("dim"), py::arg("queries"), py::arg("k"),
      py::arg("metric"), py::arg("allow"), py::arg("candidates"), py::arg("out_score"),
      py::arg("out_idx"));

  m.def("cuda_dense_block_rows", [] {
#if defined(NESTVEC_WITH_CUDA)
    return cuda::dense_block_rows();
#else
    no_cuda();
#endif
  });
  m.def("cuda_dense_scan", [](uintptr_t db, int dtype, int64_t n, int64_t stride, int64_t dim,
                              uintptr_t queries, int64_t nq, int64_t query_stride, uintptr_t qaux,
                              int metric, uintptr_t allow, int64_t kp, uintptr_t keys,
                              int64_t keys_stride, uintptr_t stream) {
#if defined(NESTVEC_WITH_CUDA)
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
#else
    (void)db, (void)dtype, (void)n, (void)stride, (void)dim, (void)queries, (void)nq;
    (void)query_stride, (void)qaux, (void)metric, (void)allow, (void)kp, (void)keys;
    (void)keys_stride, (void)stream;
    no_cuda();
#endif
  });
  m.def("cuda_dense_gather", [](uintptr_t db, int dtype, int64_t n, int64_t stride, int64_t dim,
                                uintptr_t queries, int64_t nq, int64_t query_stride,
                                uintptr_t qaux, int metric, uintptr_t cand, int64_t ncand,
                                int64_t cand_stride, uintptr_t keys, int64_t keys_stride,
                                uintptr_t stream) {
#if defined(NESTVEC_WITH_CUDA)
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
#else
    (void)db, (void)dtype, (void)n, (void)stride, (void)dim, (void)queries, (void)nq;
    (void)query_stride, (void)qaux, (void)metric, (void)cand, (void)ncand, (void)cand_stride;
    (void)keys, (void)keys_stride, (void)stream;
    no_cuda();
#endif
  });

  // ---------------------------------------------------------------- pooling

  // ---------------------------------------------------------------- lowrank_sparse
}
