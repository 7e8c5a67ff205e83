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

#include "bind_cuda.h"
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
  if (v.rows == 0 || v.cols == 0) {  // empty: strides are meaningless
    v.row_stride = v.cols;
    return v;
  }
  if (v.cols > 1 && a.strides(1) != ssize_t(itemsize))
    throw std::invalid_argument(std::string(name) + ": last dimension must be contiguous");
  if (a.strides(0) % ssize_t(itemsize) != 0 || a.strides(0) < 0)
    throw std::invalid_argument(std::string(name) + ": unsupported row stride");
  v.row_stride = a.strides(0) / ssize_t(itemsize);
  if (v.rows <= 1) v.row_stride = std::max<int64_t>(v.row_stride, v.cols);
  return v;
}

// An integer (Python or NumPy) field of a segment tuple; anything else is a TypeError
// (pybind11's own cast would raise RuntimeError).
int64_t int_field(const py::handle& h, const std::string& what) {
  if (!PyIndex_Check(h.ptr())) throw py::type_error(what + ": expected an integer");
  return h.cast<int64_t>();
}

// A multiseg segment tuple's `position`: an int (its first row's global position) or
// an int64 array of each row's, at least `min_len` long.
multiseg::Position position_arg(const py::handle& h, const std::string& at, int64_t min_len,
                                std::vector<py::array>& keep) {
  multiseg::Position pos;
  if (!py::isinstance<py::array>(h)) {
    pos.offset = int_field(h, at + ".position");
    return pos;
  }
  py::array p = py::reinterpret_borrow<py::array>(h);
  keep.push_back(p);
  if (p.ndim() != 1 || p.shape(0) < min_len || p.itemsize() != 8 || p.dtype().kind() != 'i')
    throw std::invalid_argument(at + ": position must be an int or an int64 array [n]");
  pos.positions = static_cast<const int64_t*>(view2d(p, (at + ".position").c_str(), 8).ptr);
  pos.n_positions = p.shape(0);
  return pos;
}

// A multiseg segment tuple's `allow`: None, or a 1-D bool array (the caller checks its
// length); returns the data and the length.
std::pair<const uint8_t*, int64_t> allow_arg(const py::handle& h, const std::string& at,
                                             std::vector<py::array>& keep) {
  if (h.is_none()) return {nullptr, 0};
  if (!py::isinstance<py::array>(h)) throw py::type_error(at + ": allow must be a bool array");
  py::array a = py::reinterpret_borrow<py::array>(h);
  keep.push_back(a);
  if (a.ndim() != 1 || a.itemsize() != 1) throw std::invalid_argument(at + ": allow must be bool [n]");
  return {static_cast<const uint8_t*>(view2d(a, (at + ".allow").c_str(), 1).ptr), a.shape(0)};
}

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
  m.def("dense_two_pass", [] {
    const int kind = dense::active_kernels().approx.kind;
    return std::string(kind == dense::kApproxBf16 ? "bf16" : kind == dense::kApproxI16 ? "int16" : "");
  }, "The active ISA's approximate first pass of the two-pass route ('' when it has none).");
  m.def("dense_two_pass_min_batch", [] { return dense::two_pass_min_queries(); },
        "Fewest queries that take the two-pass route with the active ISA (0: no such route).");
  m.def("set_dense_bf16", [](bool on) { dense::set_bf16_pass(on); }, py::arg("enabled"),
        "Two-pass bf16 route for large CPU batches on AVX512-BF16 CPUs (results stay exact).");
  bind::def_cuda_dense(m);

  // ---------------------------------------------------------------- multi-segment top-k
  // One call per search over a snapshot's segments (include/nestvec/multiseg.h); each
  // segment is a tuple, checked here so that nothing the kernels read is out of range.
  m.def(
      "multiseg_hamming_topk",
      [](py::array queries, int64_t k, py::list segs, py::object lists) {
        View q = view2d(queries, "queries", 1);
        if (queries.ndim() != 2) throw std::invalid_argument("queries: expected uint8 [Q, B]");
        if (k <= 0) throw std::invalid_argument("k must be positive");
        const int64_t nq = q.rows, nbytes = q.cols;
        py::array lists_arr;
        const int64_t* lp = nullptr;
        int64_t nprobe = 0;
        if (!lists.is_none()) {
          if (!py::isinstance<py::array>(lists)) throw py::type_error("lists: expected an int64 array [Q, P]");
          lists_arr = lists.cast<py::array>();
          if (lists_arr.ndim() != 2 || lists_arr.shape(0) != nq || lists_arr.itemsize() != 8 ||
              lists_arr.dtype().kind() != 'i' || !(lists_arr.flags() & py::array::c_style))
            throw std::invalid_argument("lists: expected a contiguous int64 [Q, P]");
          lp = static_cast<const int64_t*>(lists_arr.data());
          nprobe = lists_arr.shape(1);
        }
        std::vector<multiseg::HammingSeg> gs(segs.size());
        std::vector<py::array> keep;  // every buffer stays referenced while the GIL is out
        int64_t min_nlist = std::numeric_limits<int64_t>::max();
        for (size_t s = 0; s < segs.size(); ++s) {
          const std::string at = "segs[" + std::to_string(s) + "]";
          py::object item = segs[s];
          if (item.is_none()) continue;  // a segment this search skips
          if (!py::isinstance<py::tuple>(item) || py::len(item) != 6)
            throw py::type_error(at + ": expected None or a tuple (codes, allow, position, k, ranges, ids)");
          py::tuple t = item.cast<py::tuple>();
          multiseg::HammingSeg& g = gs[s];
          g.k = int_field(t[3], at + ".k");
          if (g.k < 0) throw std::invalid_argument(at + ": k must be >= 0");
          if (!py::isinstance<py::array>(t[0])) throw py::type_error(at + ": codes must be a uint8 array");
          py::array codes = t[0].cast<py::array>();
          keep.push_back(codes);
          if (codes.ndim() != 2) throw std::invalid_argument(at + ": codes must be 2-D [n, bytes]");
          View c = view2d(codes, (at + ".codes").c_str(), 1);
          if (c.cols < nbytes && c.rows > 0)
            throw std::invalid_argument(at + ": codes are narrower than the queries");
          if (c.rows >= (int64_t(1) << 40)) throw std::invalid_argument(at + ": too many rows");
          g.codes = static_cast<const uint8_t*>(c.ptr);
          g.n = c.rows;
          g.code_stride = c.row_stride;
          std::tie(g.allow, g.n_allow) = allow_arg(t[1], at, keep);
          if (g.allow && g.n_allow < g.n) throw std::invalid_argument(at + ": allow is shorter than the segment");
          // without ids the local rows are the code rows; with ids they are checked per hit
          g.pos = position_arg(t[2], at, t[5].is_none() ? g.n : 0, keep);
          if (!t[4].is_none()) {
            if (!py::isinstance<py::array>(t[4])) throw py::type_error(at + ": ranges must be an int64 array");
            py::array r = t[4].cast<py::array>();
            keep.push_back(r);
            if (r.itemsize() != 8 || r.dtype().kind() != 'i' || !(r.flags() & py::array::c_style))
              throw std::invalid_argument(at + ": ranges must be contiguous int64");
            if (lp) {  // list offsets [nlist + 1]
              if (r.ndim() != 1 || r.shape(0) < 2)
                throw std::invalid_argument(at + ": with lists, ranges are the list offsets [nlist + 1]");
              g.list_offsets = static_cast<const int64_t*>(r.data());
              g.nlist = r.shape(0) - 1;
              min_nlist = std::min(min_nlist, g.nlist);
            } else {
              if (r.ndim() != 3 || r.shape(0) != nq || r.shape(2) != 2)
                throw std::invalid_argument(at + ": ranges must be int64 [Q, P, 2]");
              g.ranges = static_cast<const int64_t*>(r.data());
              g.nranges = r.shape(1);
            }
          }
          if (!t[5].is_none()) {
            if (!py::isinstance<py::array>(t[5])) throw py::type_error(at + ": ids must be an int array");
            py::array ia = t[5].cast<py::array>();
            keep.push_back(ia);
            if (ia.ndim() != 1 || ia.shape(0) < g.n || (ia.itemsize() != 4 && ia.itemsize() != 8) ||
                ia.dtype().kind() != 'i')
              throw std::invalid_argument(at + ": ids must be int32 or int64 [n]");
            g.ids = view2d(ia, (at + ".ids").c_str(), size_t(ia.itemsize())).ptr;
            g.ids_bytes = int(ia.itemsize());
          }
          if (!g.ranges && !g.list_offsets && g.ids)
            throw std::invalid_argument(at + ": ids need ranges");
          if (!g.ranges && !g.list_offsets && g.allow && g.n_allow != g.n)
            throw std::invalid_argument(at + ": allow must have one entry per row");
        }
        if (lp) {
          for (int64_t i = 0; i < nq * nprobe; ++i)
            if (lp[i] < 0 || lp[i] >= min_nlist)
              throw std::invalid_argument("lists: a list number is outside [0, nlist)");
        }
        // [Q, min(k, sum of the segments' k)], as a merge of their lists is wide
        int64_t width = 0;
        for (const auto& g : gs)
          if (g.n > 0) width = std::min(k, width + g.k);
        py::array_t<int32_t> dist({nq, width});
        py::array_t<int64_t> seg({nq, width}), local({nq, width});
        int32_t* dp = dist.mutable_data();
        int64_t* sp = seg.mutable_data();
        int64_t* lo = local.mutable_data();
        int64_t scanned;
        {
          py::gil_scoped_release nogil;
          scanned = multiseg::hamming_topk(gs.data(), int64_t(gs.size()), static_cast<const uint8_t*>(q.ptr),
                                           nq, q.row_stride, nbytes, lp, nprobe, width, dp, sp, lo);
        }
        return py::make_tuple(dist, seg, local, scanned);
      },
      py::arg("queries"), py::arg("k"), py::arg("segs"), py::arg("lists") = py::none(),
      "Hamming top-k over several segments: (dist, seg, local [Q, min(k, sum of k_i)], rows compared).");

  m.def(
      "multiseg_rescore",
      [](py::array queries, int64_t dim, int metric, int64_t k, py::list segs, py::object cand_seg_o,
         py::object cand_local_o) {
        if (metric < dense::kCosine || metric > dense::kL2) throw std::invalid_argument("metric: 0, 1 or 2");
        if (queries.ndim() != 2 || queries.dtype().kind() != 'f')
          throw std::invalid_argument("queries: expected float32 [Q, >= dim]");
        View q = view2d(queries, "queries", 4);
        if (dim < 1 || q.cols < dim) throw std::invalid_argument("dim: expected 1 <= dim <= the queries' width");
        if (k <= 0) throw std::invalid_argument("k must be positive");
        const int64_t nq = q.rows;
        py::array cand_seg, cand_local;
        const int64_t *csp = nullptr, *clp = nullptr;
        int64_t ncand = 0;
        if (cand_seg_o.is_none() != cand_local_o.is_none())
          throw std::invalid_argument("cand_seg, cand_local: pass both or neither");
        if (!cand_seg_o.is_none()) {
          if (!py::isinstance<py::array>(cand_seg_o) || !py::isinstance<py::array>(cand_local_o))
            throw py::type_error("cand_seg, cand_local: expected int64 arrays [Q, C]");
          cand_seg = cand_seg_o.cast<py::array>();
          cand_local = cand_local_o.cast<py::array>();
          for (auto* a : {&cand_seg, &cand_local})
            if (a->ndim() != 2 || a->shape(0) != nq || a->itemsize() != 8 || a->dtype().kind() != 'i' ||
                !(a->flags() & py::array::c_style))
              throw std::invalid_argument("cand_seg, cand_local: expected contiguous int64 [Q, C]");
          if (cand_seg.shape(1) != cand_local.shape(1))
            throw std::invalid_argument("cand_seg, cand_local: shapes differ");
          ncand = cand_seg.shape(1);
          csp = static_cast<const int64_t*>(cand_seg.data());
          clp = static_cast<const int64_t*>(cand_local.data());
        }
        std::vector<multiseg::DenseSeg> gs(segs.size());
        std::vector<py::array> keep;
        for (size_t s = 0; s < segs.size(); ++s) {
          const std::string at = "segs[" + std::to_string(s) + "]";
          py::object item = segs[s];
          if (item.is_none()) continue;  // a segment this search skips
          if (!py::isinstance<py::tuple>(item) || py::len(item) != 5)
            throw py::type_error(at + ": expected None or a tuple (db, dtype, position, k, allow)");
          py::tuple t = item.cast<py::tuple>();
          multiseg::DenseSeg& g = gs[s];
          g.k = int_field(t[3], at + ".k");
          if (g.k < 0) throw std::invalid_argument(at + ": k must be >= 0");
          g.dtype = dtype_from_code(int_field(t[1], at + ".dtype"), (at + ".dtype").c_str());
          if (!py::isinstance<py::array>(t[0])) throw py::type_error(at + ": db must be an array");
          py::array db = t[0].cast<py::array>();
          keep.push_back(db);
          if (db.ndim() != 2) throw std::invalid_argument(at + ": db must be 2-D [n, D]");
          View x = view2d(db, (at + ".db").c_str(), size_t(dtype_size(g.dtype)));
          if (x.cols < dim && x.rows > 0) throw std::invalid_argument(at + ": db has fewer than dim values");
          g.db = x.ptr;
          g.n = x.rows;
          g.stride = x.row_stride;
          g.pos = position_arg(t[2], at, g.n, keep);
          int64_t n_allow = 0;
          std::tie(g.allow, n_allow) = allow_arg(t[4], at, keep);
          if (g.allow && n_allow != g.n) throw std::invalid_argument(at + ": allow must be bool [n]");
        }
        int64_t width = 0;
        for (const auto& g : gs)
          if (g.n > 0) width = std::min(k, width + g.k);
        py::array_t<float> score({nq, width});
        py::array_t<int64_t> seg({nq, width}), local({nq, width});
        float* scp = score.mutable_data();
        int64_t* sp = seg.mutable_data();
        int64_t* lo = local.mutable_data();
        {
          py::gil_scoped_release nogil;
          multiseg::rescore(gs.data(), int64_t(gs.size()), dim, static_cast<const float*>(q.ptr), nq,
                            q.row_stride, metric, csp, clp, ncand, width, scp, sp, lo);
        }
        return py::make_tuple(score, seg, local);
      },
      py::arg("queries"), py::arg("dim"), py::arg("metric"), py::arg("k"), py::arg("segs"),
      py::arg("cand_seg"), py::arg("cand_local"),
      "Exact top-k over several segments of a shortlist (cand_seg, cand_local), or of every "
      "allowed row (None, None): (score, seg, local [Q, min(k, sum of k_i)]).");

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
