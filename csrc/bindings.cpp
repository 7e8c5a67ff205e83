// The only pybind11 file. It unpacks buffers that python/nestvec/ops.py has already
// validated and allocated, re-checks what would otherwise crash, and releases the GIL
// around every kernel. Sections follow the op families in include/nestvec/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bind_common.h"
#include "bind_cuda.h"
#include "bind_multiseg.h"
#include "nestvec/cuda_api.h"
#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"
#include "nestvec/hamming.h"
#include "nestvec/hamming_ranges.h"
#include "nestvec/pooling.h"
#include "nestvec/lowrank_sparse.h"
#include "nestvec/multiseg.h"

namespace py = pybind11;
using namespace nestvec;
using namespace nestvec::bind;

namespace {

Isa isa_arg(const std::string& s) {
  Isa isa;
  if (!parse_isa(s.c_str(), &isa))
    throw std::invalid_argument("isa: expected 'scalar', 'avx2', 'avx512' or 'neon', got '" + s + "'");
  return isa;
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
    d["cpu_features"] = cpu_features();
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
    Isa isa = isa_arg(s);
    if (!set_isa(isa))
      throw std::invalid_argument("isa: '" + s + "' is not supported on this CPU");
  });
  m.def("get_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("isa_supported", [](const std::string& s) { return isa_supported(isa_arg(s)); });
  // The dtype codes the functions below take (include/nestvec/dtype.h).
  m.def("dtype_codes", [] {
    py::dict d;
    for (int i = 0; i < kNumDTypes; ++i) d[dtype_name(DType(i))] = i;
    return d;
  });
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

  bind::def_cuda_hamming(m);

  m.def(
      "hamming_topk_ranges",
      [](py::array codes, py::array queries, py::array ranges, py::object ids, py::object allow,
         int64_t k, py::array out_dist, py::array out_idx) {
        View c = view2d(codes, "codes", 1), q = view2d(queries, "queries", 1);
        View od = view2d(out_dist, "out_dist", 4, true), oi = view2d(out_idx, "out_idx", 8, true);
        if (q.cols != c.cols) throw std::invalid_argument("queries: byte width differs from codes");
        if (k <= 0) throw std::invalid_argument("k must be positive");
        if (od.rows != q.rows || od.cols != k || oi.rows != q.rows || oi.cols != k ||
            od.row_stride != k || oi.row_stride != k)
          throw std::invalid_argument("out: expected contiguous [Q, k]");
        if (ranges.ndim() != 3 || ranges.shape(0) != q.rows || ranges.shape(2) != 2 ||
            ranges.itemsize() != 8 || !(ranges.flags() & py::array::c_style))
          throw std::invalid_argument("ranges: expected a contiguous int64 [Q, P, 2]");
        const void* idp = nullptr;
        int id_bytes = 0;
        py::array ids_arr, allow_arr;
        if (!ids.is_none()) {
          ids_arr = ids.cast<py::array>();
          View iv = view2d(ids_arr, "ids", size_t(ids_arr.itemsize()));
          if (iv.rows * iv.cols != c.rows || (ids_arr.itemsize() != 4 && ids_arr.itemsize() != 8))
            throw std::invalid_argument("ids: expected int32 or int64 [N]");
          idp = iv.ptr;
          id_bytes = int(ids_arr.itemsize());
        }
        const uint8_t* al = nullptr;
        int64_t n_allow = 0;
        if (!allow.is_none()) {
          allow_arr = allow.cast<py::array>();
          View a = view2d(allow_arr, "allow", 1);
          al = static_cast<const uint8_t*>(a.ptr);
          n_allow = a.rows * a.cols;
        }
        if (c.rows >= (int64_t(1) << 40)) throw std::invalid_argument("codes: too many rows");
        py::gil_scoped_release nogil;
        hamming::topk_ranges(static_cast<const uint8_t*>(c.ptr), c.rows, c.row_stride,
                             static_cast<const uint8_t*>(q.ptr), q.rows, q.row_stride, c.cols,
                             static_cast<const int64_t*>(ranges.data()), ranges.shape(1), idp,
                             id_bytes, al, n_allow, k, static_cast<int32_t*>(od.ptr),
                             static_cast<int64_t*>(oi.ptr));
      },
      py::arg("codes"), py::arg("queries"), py::arg("ranges"), py::arg("ids"), py::arg("allow"),
      py::arg("k"), py::arg("out_dist"), py::arg("out_idx"));


  // ---------------------------------------------------------------- dense (elastic top-k)
  m.def(
      "dense_topk",
      [](py::array db, int dtype, int64_t dim, py::array queries, int64_t k, int metric,
         py::object allow, py::object candidates, py::array out_score, py::array out_idx) {
        const DType dt = dtype_from_code(dtype);
        if (metric < dense::kCosine || metric > dense::kL2) throw std::invalid_argument("metric: 0, 1 or 2");
        View x = view2d(db, "db", size_t(dtype_size(dt)));
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
        dense::topk(x.ptr, dt, x.rows, x.row_stride, dim, static_cast<const float*>(q.ptr),
                    q.rows, q.row_stride, k, metric, al, cand, ncand,
                    static_cast<float*>(os.ptr), static_cast<int64_t*>(oi.ptr));
      },
      py::arg("db"), py::arg("dtype"), py::arg("dim"), py::arg("queries"), py::arg("k"),
      py::arg("metric"), py::arg("allow"), py::arg("candidates"), py::arg("out_score"),
      py::arg("out_idx"));

  m.def("dense_bf16_stats", [] {
    int64_t certified = 0, fallback = 0;
    dense::bf16_stats(&certified, &fallback);
    return py::make_tuple(certified, fallback);
  }, "Queries the two-pass bf16 route certified / handed to the float32 scan (counters).");
  m.def("dense_bf16_enabled", [] { return dense::bf16_pass_enabled(); });
  m.def("probe_bf16_available", [] { return dense::blocked_available(dense::kBlockedBf16); },
        "Whether the active ISA scores the ivf probe's bfloat16 pair table (AVX512-BF16).");
  m.def("probe_i8_available", [] { return dense::blocked_available(dense::kBlockedI8); },
        "Whether the active ISA scores the ivf probe's int8 quad table (AVX512-VNNI).");
  m.def("dense_two_pass", [] {
    const int kind = dense::active_kernels().approx.kind;
    return std::string(kind == dense::kApproxBf16 ? "bf16" : kind == dense::kApproxI16 ? "int16" : "");
  }, "The active ISA's approximate first pass of the two-pass route ('' when it has none).");
  m.def("dense_two_pass_min_batch", [] { return dense::two_pass_min_queries(); },
        "Fewest queries that take the two-pass route with the active ISA (0: no such route).");
  m.def("set_dense_bf16", [](bool on) { dense::set_bf16_pass(on); }, py::arg("enabled"),
        "Two-pass bf16 route for large CPU batches on AVX512-BF16 CPUs (results stay exact).");
  bind::def_cuda_dense(m);

  // ---------------------------------------------------------------- multi-segment top-k, ivf
  bind::def_multiseg(m);

  // ---------------------------------------------------------------- pooling

  m.def(
      "pool",
      [](py::array hidden, int dtype, py::array mask, int mode, int64_t d, bool normalize,
         py::array out, py::object codes) {
        if (hidden.ndim() != 3) throw std::invalid_argument("hidden: expected [B, T, H]");
        const DType dt = dtype_from_code(dtype);
        const ssize_t es = ssize_t(dtype_size(dt));
        if (hidden.itemsize() != es) throw std::invalid_argument("hidden: item size does not match dtype");
        const int64_t B = hidden.shape(0), T = hidden.shape(1), H = hidden.shape(2);
        if (H > 1 && hidden.strides(2) != es)
          throw std::invalid_argument("hidden: last dimension must be contiguous");
        if (hidden.strides(0) % es || hidden.strides(1) % es || hidden.strides(0) < 0 ||
            hidden.strides(1) < 0)
          throw std::invalid_argument("hidden: unsupported strides");
        if (d < 1 || d > H) throw std::invalid_argument("d: expected 1 <= d <= H");
        if (mode < 0 || mode > 4) throw std::invalid_argument("mode: unknown");
        if (mask.ndim() != 2 || mask.shape(0) != B || mask.shape(1) != T)
          throw std::invalid_argument("mask: expected [B, T]");
        const ssize_t ms = mask.itemsize();
        if ((ms != 1 && ms != 2 && ms != 4 && ms != 8) || (T > 1 && mask.strides(1) != ms) ||
            mask.strides(0) % ms || mask.strides(0) < 0)
          throw std::invalid_argument("mask: expected rows of contiguous 1/2/4/8-byte values");
        View o = view2d(out, "out", 4, true);
        if (o.rows != B || o.cols != d || o.row_stride != d)
          throw std::invalid_argument("out: expected contiguous float32 [B, d]");
        uint8_t* cp = nullptr;
        py::array codes_arr;
        if (!codes.is_none()) {
          codes_arr = codes.cast<py::array>();
          View c = view2d(codes_arr, "codes", 1, true);
          if (c.rows != B || c.cols != (d + 7) / 8 || c.row_stride != c.cols)
            throw std::invalid_argument("codes: expected contiguous uint8 [B, ceil(d/8)]");
          cp = static_cast<uint8_t*>(c.ptr);
        }
        const int64_t sb = hidden.strides(0) / es, st = hidden.strides(1) / es;
        const int64_t msb = mask.strides(0) / ms;
        py::gil_scoped_release nogil;
        pooling::pool(hidden.data(), dt, B, T, d, sb, st, mask.data(), int(ms), msb, mode,
                      normalize, static_cast<float*>(o.ptr), cp);
      },
      py::arg("hidden"), py::arg("dtype"), py::arg("mask"), py::arg("mode"), py::arg("d"),
      py::arg("normalize"), py::arg("out"), py::arg("codes"));

  bind::def_cuda_pool(m);

  // ---------------------------------------------------------------- lowrank_sparse
  m.def(
      "lowrank_sparse_matmul",
      [](int64_t dtype, py::array x, py::array A, py::array B, py::array S,
         py::array channels, py::object bias, py::array y) {
        const DType dt = dtype_from_code(dtype);
        const size_t es = size_t(dtype_size(dt));
        if (x.ndim() != 2 || A.ndim() != 2 || B.ndim() != 2 || S.ndim() != 2 || y.ndim() != 2)
          throw std::invalid_argument("x, A, B, S, y: expected 2-D arrays");
        View xv = view2d(x, "x", es), av = view2d(A, "A", es), bv = view2d(B, "B", es),
             sv = view2d(S, "S", es), yv = view2d(y, "y", es, true);
        View cv = view2d(channels, "channels", 8);
        const int64_t M = xv.rows, K = xv.cols, r = av.rows, N = bv.rows, c = sv.rows;
        if (av.cols != K || sv.cols != K) throw std::invalid_argument("A, S: expected K columns");
        if (bv.cols != r) throw std::invalid_argument("B: expected r columns");
        if (cv.rows * cv.cols != c) throw std::invalid_argument("channels: expected c entries");
        if (yv.rows != M || yv.cols != N) throw std::invalid_argument("y: expected [M, N]");
        const int64_t* ch = static_cast<const int64_t*>(cv.ptr);
        for (int64_t j = 0; j < c; ++j)
          if (ch[j] < 0 || ch[j] >= N) throw std::invalid_argument("channels: id out of range");
        const void* bptr = nullptr;
        py::array bias_arr;
        if (!bias.is_none()) {
          bias_arr = bias.cast<py::array>();
          View bb = view2d(bias_arr, "bias", es);
          if (bb.rows * bb.cols != N) throw std::invalid_argument("bias: expected N entries");
          bptr = bb.ptr;
        }
        lowrank_sparse::Args a{dt,     xv.ptr, M,      K, xv.row_stride, av.ptr, r,
                               av.row_stride, bv.ptr, N, bv.row_stride, sv.ptr, c,
                               sv.row_stride, ch,     bptr, yv.ptr, yv.row_stride};
        py::gil_scoped_release nogil;
        lowrank_sparse::matmul(a);
      },
      py::arg("dtype"), py::arg("x"), py::arg("A"), py::arg("B"), py::arg("S"),
      py::arg("channels"), py::arg("bias"), py::arg("y"));

  bind::def_cuda_lowrank(m);
}
