// pybind11 definitions of the calls over several segments (include/nestvec/multiseg.h)
// and of the one-call ivf search (include/nestvec/ivf.h). Each segment arrives as a
// tuple, checked here so that nothing the kernels read is out of range.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "bind_common.h"
#include "nestvec/dense.h"
#include "nestvec/dtype.h"
#include "nestvec/ivf.h"
#include "nestvec/multiseg.h"

namespace nestvec {
namespace bind {

// segs[s] of a multiseg call: false for None (a segment the search skips), else the
// tuple of `size` fields (`fields` names them in the error) and its k field (index 3).
inline bool seg_tuple(const py::list& segs, size_t s, size_t size, const char* fields, std::string* at,
                      py::tuple* t, int64_t* k, size_t optional = 0) {
  *at = "segs[" + std::to_string(s) + "]";
  py::object item = segs[s];
  if (item.is_none()) return false;
  if (!py::isinstance<py::tuple>(item) || size_t(py::len(item)) < size || size_t(py::len(item)) > size + optional)
    throw py::type_error(*at + ": expected None or a tuple " + fields);
  *t = item.cast<py::tuple>();
  *k = int_field((*t)[3], *at + ".k");
  if (*k < 0) throw std::invalid_argument(*at + ": k must be >= 0");
  return true;
}

// A segment tuple's array field, kept referenced while the GIL is out; `what` names it
// and its expected shape in the errors.
inline py::array seg_array(const py::tuple& t, size_t i, const std::string& at, const char* what, int ndim,
                           std::vector<py::array>& keep) {
  if (!py::isinstance<py::array>(t[i])) throw py::type_error(at + ": " + what + " must be an array");
  py::array a = t[i].cast<py::array>();
  keep.push_back(a);
  if (a.ndim() != ndim) throw std::invalid_argument(at + ": " + what + " has the wrong number of dimensions");
  return a;
}

// Hamming segments: None or (codes, allow, position, k, ranges, ids). With `with_lists`
// a segment's ranges are its list offsets [nlist + 1] (the smallest nlist goes to
// *min_nlist), else int64 [nq, P, 2].
inline std::vector<multiseg::HammingSeg> hamming_segs(const py::list& segs, int64_t nq, int64_t nbytes,
                                                      bool with_lists, std::vector<py::array>& keep,
                                                      int64_t* min_nlist, bool shared_ranges = false) {
  std::vector<multiseg::HammingSeg> gs(segs.size());
  *min_nlist = std::numeric_limits<int64_t>::max();
  for (size_t s = 0; s < segs.size(); ++s) {
    std::string at;
    py::tuple t;
    multiseg::HammingSeg& g = gs[s];
    if (!seg_tuple(segs, s, 6, "(codes, allow, position, k, ranges, ids[, allow_at[, member_segs, member_base]])",
                   &at, &t, &g.k, 3))
      continue;
    if (t.size() == 8) throw py::type_error(at + ": a span needs both member_segs and member_base");
    py::array codes = seg_array(t, 0, at, "codes (uint8 [n, bytes])", 2, keep);
    View c = view2d(codes, (at + ".codes").c_str(), 1);
    if (c.cols < nbytes && c.rows > 0) throw std::invalid_argument(at + ": codes are narrower than the queries");
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
      if (with_lists) {  // list offsets [nlist + 1]
        if (r.ndim() != 1 || r.shape(0) < 2)
          throw std::invalid_argument(at + ": with lists, ranges are the list offsets [nlist + 1]");
        g.list_offsets = static_cast<const int64_t*>(r.data());
        g.nlist = r.shape(0) - 1;
        *min_nlist = std::min(*min_nlist, g.nlist);
      } else {
        const bool shared = shared_ranges && r.ndim() == 3 && r.shape(0) == 1;
        if (r.ndim() != 3 || (r.shape(0) != nq && !shared) || r.shape(2) != 2)
          throw std::invalid_argument(at + (shared_ranges ? ": ranges must be int64 [Q or 1, P, 2]"
                                                          : ": ranges must be int64 [Q, P, 2]"));
        g.ranges = static_cast<const int64_t*>(r.data());
        g.nranges = r.shape(1);
        g.ranges_shared = shared;
      }
    } else if (with_lists && g.k > 0) {
      throw std::invalid_argument(at + ": with lists, every searched segment needs its list offsets");
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
    if (t.size() >= 7 && !t[6].is_none()) {  // a mask in the codes' order (ids' rows: checked per hit)
      int64_t n_at = 0;
      std::tie(g.allow_at, n_at) = allow_arg(t[6], at + ".allow_at", keep);
      if (!g.ids || n_at != g.n) throw std::invalid_argument(at + ": allow_at needs ids and one entry per code row");
    }
    if (t.size() == 9 && !t[7].is_none()) {  // a span: ids are rows of its members' rows concatenated
      py::array ms = seg_array(t, 7, at, "member_segs (int64 [M])", 1, keep);
      py::array mb = seg_array(t, 8, at, "member_base (int64 [M + 1])", 1, keep);
      auto int64_c = [](const py::array& a) {
        return a.itemsize() == 8 && a.dtype().kind() == 'i' && (a.flags() & py::array::c_style);
      };
      if (!int64_c(ms) || !int64_c(mb) || mb.shape(0) != ms.shape(0) + 1 || ms.shape(0) < 1)
        throw std::invalid_argument(at + ": member_segs / member_base must be contiguous int64 [M] / [M + 1]");
      g.member_segs = static_cast<const int64_t*>(ms.data());
      g.member_base = static_cast<const int64_t*>(mb.data());
      g.n_members = ms.shape(0);
      if (g.member_base[0] != 0) throw std::invalid_argument(at + ": member_base must start at 0");
      for (int64_t m = 0; m < g.n_members; ++m) {
        if (g.member_base[m + 1] < g.member_base[m])
          throw std::invalid_argument(at + ": member_base must be non-decreasing");
        if (g.member_segs[m] < -1 || g.member_segs[m] >= int64_t(segs.size()))
          throw std::invalid_argument(at + ": member_segs must be -1 or a segment index");
      }
      if (g.ids_bytes != 8 || g.allow || !(g.ranges || g.list_offsets))
        throw std::invalid_argument(at + ": a span takes int64 ids, ranges or lists, and no allow by row");
    }
    if (!g.ranges && !g.list_offsets && g.ids) throw std::invalid_argument(at + ": ids need ranges");
    if (!g.ranges && !g.list_offsets && g.allow && g.n_allow != g.n)
      throw std::invalid_argument(at + ": allow must have one entry per row");
  }
  // a span's members: entries of their own (allow, positions), not spans, searched
  // through the span only
  for (size_t s = 0; s < gs.size(); ++s)
    for (int64_t m = 0; m < gs[s].n_members; ++m) {
      const int64_t t = gs[s].member_segs[m];
      if (t < 0) continue;
      if (segs[size_t(t)].is_none() || gs[size_t(t)].member_segs || gs[size_t(t)].k != 0)
        throw std::invalid_argument("segs[" + std::to_string(s) + "]: a span member must be a segment entry "
                                    "with k 0, not None nor a span");
    }
  return gs;
}

// Dense segments: None or (db, dtype code, position, k, allow).
inline std::vector<multiseg::DenseSeg> dense_segs(const py::list& segs, int64_t dim, std::vector<py::array>& keep) {
  std::vector<multiseg::DenseSeg> gs(segs.size());
  for (size_t s = 0; s < segs.size(); ++s) {
    std::string at;
    py::tuple t;
    multiseg::DenseSeg& g = gs[s];
    if (!seg_tuple(segs, s, 5, "(db, dtype, position, k, allow)", &at, &t, &g.k)) continue;
    g.dtype = dtype_from_code(int_field(t[1], at + ".dtype"), (at + ".dtype").c_str());
    py::array db = seg_array(t, 0, at, "db ([n, D])", 2, keep);
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
  return gs;
}

// A float32 query block [Q, >= dim], rows contiguous.
inline View float_queries(const py::array& queries, int64_t dim) {
  if (queries.ndim() != 2 || queries.dtype().kind() != 'f')
    throw std::invalid_argument("queries: expected float32 [Q, >= dim]");
  View q = view2d(queries, "queries", 4);
  if (dim < 1 || q.cols < dim) throw std::invalid_argument("dim: expected 1 <= dim <= the queries' width");
  return q;
}

// [Q, min(k, sum of the segments' k)]: as wide as a merge of their lists.
template <class Seg>
int64_t merged_width(const std::vector<Seg>& gs, int64_t k) {
  int64_t width = 0;
  for (const auto& g : gs)
    if (g.n > 0) width = std::min(k, width + g.k);
  return width;
}

inline void def_multiseg(py::module_& m) {
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
        std::vector<py::array> keep;  // every buffer stays referenced while the GIL is out
        int64_t min_nlist = 0;
        std::vector<multiseg::HammingSeg> gs = hamming_segs(segs, nq, nbytes, lp != nullptr, keep, &min_nlist);
        if (lp) {
          for (int64_t i = 0; i < nq * nprobe; ++i)
            if (lp[i] < 0 || lp[i] >= min_nlist) throw std::invalid_argument("lists: a list number is outside [0, nlist)");
        }
        const int64_t width = merged_width(gs, k);
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

  m.def("multiseg_one_call_rescore", [] { return multiseg::one_call_rescore(); },
        "Whether a shortlist over several segments is rescored in one kernel call.");
  m.def("set_multiseg_one_call_rescore", [](bool on) { multiseg::set_one_call_rescore(on); }, py::arg("enabled"),
        "One kernel call for a shortlist over several segments (default), or one per segment "
        "(the same answers; for comparison). NESTVEC_RESCORE_ONE_CALL=0 starts with it off.");
  m.def(
      "multiseg_rescore",
      [](py::array queries, int64_t dim, int metric, int64_t k, py::list segs, py::object cand_seg_o,
         py::object cand_local_o) {
        if (metric < dense::kCosine || metric > dense::kL2) throw std::invalid_argument("metric: 0, 1 or 2");
        View q = float_queries(queries, dim);
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
        std::vector<py::array> keep;
        std::vector<multiseg::DenseSeg> gs = dense_segs(segs, dim, keep);
        const int64_t width = merged_width(gs, k);
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

  m.def(
      "ivf_search",
      [](py::array queries, py::object qcodes_o, int64_t nbytes, py::object centroids_o, int probe_metric,
         int64_t nprobe, py::list hsegs_o, py::list dsegs_o, int64_t short_k, int64_t dim, int metric, int64_t k,
         int64_t need, int64_t nlist, py::object ids_o) {
        if (metric < dense::kCosine || metric > dense::kL2) throw std::invalid_argument("metric: 0, 1 or 2");
        const bool probing = !centroids_o.is_none();
        py::array centroids;
        View c{nullptr, 0, 0, 0};
        bool blocked = false;
        int kind = dense::kBlockedF16;
        if (probing) {
          if (probe_metric != dense::kIP && probe_metric != dense::kL2)
            throw std::invalid_argument("probe_metric: 1 (ip) or 2 (l2)");
          if (!py::isinstance<py::array>(centroids_o)) throw py::type_error("centroids: expected an array or None");
          centroids = centroids_o.cast<py::array>();
          blocked = centroids.ndim() == 3;
          const bool i8 = centroids.ndim() == 4 && centroids.dtype().kind() == 'i' && centroids.itemsize() == 1;
          const bool bf16 = centroids.ndim() == 4 && !i8;
          if (bf16 || i8) {  // bf16: [nblocks, dim / 2, 16, 2] uint16; i8: [nblocks, dim / 4 + 2, 16, 4] int8
            const int64_t nb = centroids.shape(0);
            const int64_t d = bf16 ? 2 * centroids.shape(1) : 4 * (centroids.shape(1) - 2);
            if ((bf16 && (centroids.dtype().kind() != 'u' || centroids.itemsize() != 2 || centroids.shape(3) != 2)) ||
                (i8 && centroids.shape(3) != 4) || centroids.shape(2) != dense::kBlockRows ||
                !(centroids.flags() & py::array::c_style))
              throw std::invalid_argument("centroids: expected a C-contiguous uint16 [nblocks, dim / 2, 16, 2] "
                                          "bfloat16 pair table or int8 [nblocks, dim / 4 + 2, 16, 4] quad table");
            kind = bf16 ? dense::kBlockedBf16 : dense::kBlockedI8;
            if (!dense::blocked_available(kind))
              throw std::invalid_argument(std::string("centroids: a") + (bf16 ? " bfloat16 pair table needs a CPU with a bf16 dot (AVX512-BF16)"
                                                      : "n int8 quad table needs a CPU with a u8 x s8 dot (AVX512-VNNI)") + "; use the float16 table");
            if (i8 && probe_metric != dense::kIP)
              throw std::invalid_argument("centroids: an int8 quad table serves ip probes (probe_metric 1) only");
            if (nlist < 1 || nb != (nlist + dense::kBlockRows - 1) / dense::kBlockRows || d < 2)
              throw std::invalid_argument("nlist: expected the table's rows (ceil(nlist / 16) blocks)");
            c = View{const_cast<void*>(centroids.data()), nlist, d, d};
            blocked = true;
          } else if (blocked) {  // [nblocks, dim, kBlockRows] float16, C order; nlist: its real rows
            const int64_t nb = centroids.shape(0), d = centroids.shape(1);
            if (centroids.dtype().kind() != 'f' || centroids.itemsize() != 2 ||
                centroids.shape(2) != dense::kBlockRows || !(centroids.flags() & py::array::c_style))
              throw std::invalid_argument("centroids: expected float16 [nlist, dim] / float32, or a C-contiguous "
                                          "float16 [nblocks, dim, 16] blocked table");
            if (nlist < 1 || nb != (nlist + dense::kBlockRows - 1) / dense::kBlockRows || d < 1)
              throw std::invalid_argument("nlist: expected the blocked table's rows (ceil(nlist / 16) blocks)");
            c = View{const_cast<void*>(centroids.data()), nlist, d, d};
          } else {
            if (centroids.ndim() != 2 || centroids.dtype().kind() != 'f' ||
                (centroids.itemsize() != 4 && centroids.itemsize() != 2))
              throw std::invalid_argument("centroids: expected float32 or float16 [nlist, dim]");
            c = view2d(centroids, "centroids", size_t(centroids.itemsize()));
            if (nlist != 0 && nlist != c.rows) throw std::invalid_argument("nlist: expected 0 or the centroids' rows");
          }
          if (c.rows < 1 || c.cols < 1) throw std::invalid_argument("centroids: expected at least one list");
          if (dim < c.cols) throw std::invalid_argument("dim: expected at least the centroids' width");
        }
        View q = float_queries(queries, dim);
        if (nbytes < 1) throw std::invalid_argument("nbytes: expected positive");
        py::array qcodes;
        const uint8_t* qcp = nullptr;
        int64_t qcs = 0;
        if (qcodes_o.is_none()) {  // sign bits of the queries' first 8 * nbytes values
          if (8 * nbytes > q.cols) throw std::invalid_argument("nbytes: the queries hold fewer than 8 * nbytes values");
        } else {
          if (!py::isinstance<py::array>(qcodes_o)) throw py::type_error("qcodes: expected a uint8 array");
          qcodes = qcodes_o.cast<py::array>();
          View qc = view2d(qcodes, "qcodes", 1);
          if (qcodes.ndim() != 2 || qc.rows != q.rows || qc.cols < nbytes)
            throw std::invalid_argument("qcodes: expected uint8 [Q, >= nbytes]");
          qcp = static_cast<const uint8_t*>(qc.ptr);
          qcs = qc.row_stride;
        }
        if ((probing && nprobe < 1) || short_k < 1 || k < 1 || need < 0 || need > k)
          throw std::invalid_argument("nprobe, short_k, k: expected positive; need: in [0, k]");
        if (hsegs_o.size() != dsegs_o.size()) throw std::invalid_argument("hsegs, dsegs: one entry per segment");
        const int64_t nq = q.rows;
        std::vector<py::array> keep;
        int64_t min_nlist = 0;
        std::vector<multiseg::HammingSeg> hs = hamming_segs(hsegs_o, nq, nbytes, probing, keep, &min_nlist, true);
        std::vector<multiseg::DenseSeg> ds = dense_segs(dsegs_o, dim, keep);
        for (size_t s = 0; s < hs.size(); ++s) {
          if (probing && hs[s].k > 0 && hs[s].nlist != c.rows)
            throw std::invalid_argument("hsegs[" + std::to_string(s) + "]: its lists are not the centroids'");
          // a shortlist entry (s, local) is rescored in dsegs[s] (rows beyond it: dropped)
          if (hs[s].k > 0 && ds[s].k == 0 && !hs[s].member_segs)
            throw std::invalid_argument("dsegs[" + std::to_string(s) + "]: a searched segment needs its rows");
          for (int64_t m = 0; hs[s].k > 0 && m < hs[s].n_members; ++m) {  // a span's hits: its members'
            const int64_t t = hs[s].member_segs[m];
            if (t >= 0 && ds[size_t(t)].k == 0)
              throw std::invalid_argument("dsegs[" + std::to_string(t) + "]: a span member needs its rows");
          }
        }
        // ids: each segment's int64 id column (None: no id column), to answer ids
        // without a gather in Python per hit
        std::vector<const int64_t*> id_cols;
        if (!ids_o.is_none()) {
          if (!py::isinstance<py::list>(ids_o)) throw py::type_error("ids: expected a list or None");
          py::list il = ids_o.cast<py::list>();
          if (il.size() != ds.size()) throw std::invalid_argument("ids: one entry per segment");
          id_cols.assign(ds.size(), nullptr);
          for (size_t s = 0; s < ds.size(); ++s) {
            if (il[s].is_none()) continue;
            const std::string at = "ids[" + std::to_string(s) + "]";
            if (!py::isinstance<py::array>(il[s])) throw py::type_error(at + ": expected an int64 array or None");
            py::array a = il[s].cast<py::array>();
            if (a.ndim() != 1 || a.dtype().kind() != 'i' || a.itemsize() != 8 || !(a.flags() & py::array::c_style) ||
                a.shape(0) < ds[s].n)
              throw std::invalid_argument(at + ": expected C-contiguous int64 [n] (the segment's rows)");
            keep.push_back(a);
            id_cols[s] = static_cast<const int64_t*>(a.data());
          }
        }
        const int64_t sw = merged_width(hs, short_k), kw = merged_width(ds, k);
        py::array_t<float> score({nq, kw});
        py::array_t<int64_t> seg({nq, kw}), local({nq, kw});
        py::array_t<uint8_t> lacking(nq);
        py::object ids_out = py::none();
        int64_t scanned = 0, rescored = 0;
        if (sw > 0 && kw > 0) {
          ivf::Probe p;
          p.centroids = probing ? c.ptr : nullptr;
          p.dtype = probing && centroids.itemsize() == 2 ? DType::F16 : DType::F32;
          p.blocked = blocked;
          p.kind = kind;
          p.nlist = c.rows;
          p.stride = c.row_stride;
          p.dim = c.cols;
          p.metric = probe_metric;
          p.nprobe = nprobe;
          float* scp = score.mutable_data();
          int64_t* sp = seg.mutable_data();
          int64_t* lo = local.mutable_data();
          uint8_t* lk = lacking.mutable_data();
          py::gil_scoped_release nogil;
          scanned = ivf::search(p, static_cast<const float*>(q.ptr), nq, q.row_stride, metric == dense::kCosine,
                                qcp, qcs, nbytes, hs.data(), ds.data(),
                                int64_t(hs.size()), sw, dim, metric, kw, std::min(need, kw), scp, sp, lo, lk, &rescored);
        } else {
          std::fill_n(lacking.mutable_data(), nq, uint8_t(need > 0));
        }
        if (!id_cols.empty()) {
          py::array_t<int64_t> ids({nq, kw});
          const int64_t* sp = seg.data();
          const int64_t* lo = local.data();
          int64_t* ip = ids.mutable_data();
          for (int64_t i = 0; i < nq * kw; ++i) {
            const int64_t s = sp[i];  // (rescored hits name dsegs' segments and rows)
            ip[i] = lo[i] >= 0 && s >= 0 && s < int64_t(id_cols.size()) && id_cols[size_t(s)] ? id_cols[size_t(s)][lo[i]] : -1;
          }
          ids_out = std::move(ids);
        }
        return py::make_tuple(score, seg, local, lacking, scanned, rescored, ids_out);
      },
      py::arg("queries"), py::arg("qcodes"), py::arg("nbytes"), py::arg("centroids"), py::arg("probe_metric"), py::arg("nprobe"),
      py::arg("hsegs"), py::arg("dsegs"), py::arg("short_k"), py::arg("dim"), py::arg("metric"), py::arg("k"),
      py::arg("need"), py::arg("nlist") = 0, py::arg("ids") = py::none(),
      "One ivf search (centroids None: the segments' own ranges, [Q or 1, P, 2], or every row) of validated float32 queries (cosine: normalised at dim here): probe the "
      "centroids ([nlist, dim] float32 / float16, the float16 [ceil(nlist / 16), dim, 16] blocked table, or the bfloat16 [ceil(nlist / 16), dim / 2, 16, 2] "
      "pair table (uint16 bits; probe_bf16_available()), or the int8 [ceil(nlist / 16), dim / 4 + 2, 16, 4] quad table (probe_i8_available(); ip), "
      "the blocked ones with nlist) with their first dim values, "
      "Hamming shortlist of short_k (query codes: qcodes [Q, >= nbytes], or None for the sign bits) over the probed lists of every segment (hsegs: (codes, allow, "
      "position, k, list offsets, ids)), exact rescoring at dim (dsegs: (db, dtype, position, k, "
      "None)): (score, seg, local [Q, k'], lacking [Q] (fewer than `need` shortlist hits), rows compared, rows rescored, ids [Q, k'] "
      "(ids: None, or per segment None / its int64 id column: each hit's id, -1 where none)).");
}

}  // namespace bind
}  // namespace nestvec
