// Exact rescoring of a shortlist spread over several segments (include/nestvec/multiseg.h):
// a dense::topk call per segment (or one over all of them), folded by (score, position).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

#include "multiseg_fold.h"
#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/multiseg.h"
#include "nestvec/prefetch.h"

namespace nestvec {
namespace multiseg {

using detail::Fold;
using detail::fold_lists;
using detail::write_fold;

namespace {
// Candidates of a rescoring below which its per-segment calls stay on one thread.
constexpr int64_t kSplitCandidates = 64;
std::atomic<int> g_one_call{-1};  // -1: not read yet
}  // namespace

void set_one_call_rescore(bool on) { g_one_call = on ? 1 : 0; }

bool one_call_rescore() {
  int e = g_one_call.load();
  if (e < 0) {
    const char* s = std::getenv("NESTVEC_RESCORE_ONE_CALL");
    e = (s && !std::strcmp(s, "0")) ? 0 : 1;
    g_one_call = e;
  }
  return e == 1;
}

namespace {

// Every segment's candidates scored in one dense::topk call, where a call per segment
// restarted the kernel's setup and its prefetch pipeline for each segment's few rows (a
// 10M ivf span's ~200 candidates lie in ten segments, ~20 each, and most rows were
// read before any prefetch reached them). The rows are addressed from one base in whole
// elements (stride one element, candidate = (row address - base) / element size), so
// the kernel and its scores are the ones of the per-segment calls; the fold applies the
// (score, position) rule to what comes back. False (the caller scores segment by
// segment) for fewer than two segments, more than kOneCallRowsPerSegment candidates a
// segment on average, mixed dtypes, rows not a whole number of elements apart,
// overlapping segments (an address would name two rows), or a segment whose own k is
// below k (its list is cut first).
// Merged only where the segments hold few candidates each, where it measured faster: 3M
// x 384 with ~10 a segment (20 segments) 11-15% faster in one call; with ~53 (3
// segments) and ~20 (10M, 10 segments) no change (README, the 10M x 384 run).
constexpr int64_t kOneCallRowsPerSegment = 16;

bool rescore_one_call(const DenseSeg* segs, int64_t nseg, int64_t dim, const float* queries, int64_t nq,
                      int64_t query_stride, int metric, int64_t k, const std::vector<int64_t>& start,
                      const std::vector<int64_t>& grouped, int64_t ncand, const std::vector<int64_t>& width,
                      Fold<float>& fold) {
  if (k <= 0 || !one_call_rescore()) return false;
  struct Span {
    uintptr_t b, e;
    int64_t s;
  };
  std::vector<Span> used;
  DType dt = DType::F32;
  for (int64_t s = 0; s < nseg; ++s) {
    const DenseSeg& g = segs[s];
    if (g.k <= 0 || width[size_t(s)] == 0) continue;
    if (used.empty()) dt = g.dtype;
    const int64_t es = dtype_size(g.dtype);
    const uintptr_t b = reinterpret_cast<uintptr_t>(g.db);
    if (g.k < k || g.dtype != dt || b % uintptr_t(es) != 0 || g.n <= 0 || g.stride <= 0) return false;
    used.push_back({b, b + uintptr_t(g.n * g.stride * es), s});
  }
  if (used.size() < 2) return false;
  const int64_t ns1 = nseg + 1;
  int64_t w = 0, total = 0;
  for (int64_t q = 0; q < nq; ++q) {
    w = std::max(w, start[size_t(q * ns1 + nseg)]);
    total += start[size_t(q * ns1 + nseg)];
  }
  if (total > kOneCallRowsPerSegment * int64_t(used.size()) * nq) return false;
  const int64_t es = dtype_size(dt);
  std::sort(used.begin(), used.end(), [](const Span& x, const Span& y) { return x.b < y.b; });
  for (size_t i = 1; i < used.size(); ++i)
    if (used[i].b < used[i - 1].e) return false;
  const uintptr_t base = used[0].b;
  std::vector<int64_t> cand(size_t(nq * w), -1);
  int64_t top = 0;
  for (int64_t q = 0; q < nq; ++q) {
    const int64_t* st = start.data() + q * ns1;
    const int64_t* gq = grouped.data() + q * ncand;
    int64_t* out = cand.data() + q * w;
    for (const Span& u : used) {
      const DenseSeg& g = segs[u.s];
      const int64_t first = int64_t((u.b - base) / uintptr_t(es));
      for (int64_t j = st[u.s]; j < st[u.s + 1]; ++j)
        if (gq[j] < g.n) {  // (dense::topk drops it)
          *out = first + gq[j] * g.stride;
          top = std::max(top, *out++);
        }
    }
  }
  // k + 1 best by (score, address) a query: enough wherever the (k+1)-th scores below
  // the k-th, since every row left out then scores below it too; a tie there (the
  // address order is not the position order) takes every candidate's score instead
  int64_t kk = std::min(w, k + 1);
  std::vector<float> sc;
  std::vector<int64_t> ix;
  for (;;) {
    sc.resize(size_t(nq * kk));
    ix.resize(size_t(nq * kk));
    dense::topk(reinterpret_cast<const void*>(base), dt, top + 1, 1, dim, queries, nq, query_stride, kk, metric,
                nullptr, cand.data(), w, sc.data(), ix.data());
    bool tie = false;
    for (int64_t q = 0; q < nq && kk < w && !tie; ++q)
      tie = ix[size_t(q * kk + kk - 1)] >= 0 && sc[size_t(q * kk + kk - 1)] == sc[size_t(q * kk + k - 1)];
    if (!tie) break;
    kk = w;
  }
  const bool larger_better = metric != dense::kL2;
  for (int64_t q = 0; q < nq; ++q) {
    const float* v = sc.data() + q * kk;
    const int64_t* x = ix.data() + q * kk;
    fold.add(q, kk, [&](int64_t i, Fold<float>::Entry& e) {
      if (x[i] < 0) return false;
      const uintptr_t at = base + uintptr_t(x[i]) * uintptr_t(es);
      const Span& u = *std::prev(std::upper_bound(used.begin(), used.end(), at,
                                                  [](uintptr_t a, const Span& y) { return a < y.b; }));
      const DenseSeg& g = segs[u.s];
      const int64_t local = int64_t((at - u.b) / uintptr_t(es)) / g.stride;
      if (g.pos.positions && local >= g.pos.n_positions)
        throw std::invalid_argument("ids: a row id is beyond the segment's positions");
      e = {larger_better ? -v[i] : v[i], g.pos.at(local), u.s, local};
      return true;
    });
  }
  return true;
}

}  // namespace

void rescore(const DenseSeg* segs, int64_t nseg, int64_t dim, const float* queries, int64_t nq,
             int64_t query_stride, int metric, const int64_t* cand_seg, const int64_t* cand_local,
             int64_t ncand, int64_t k, float* out_score, int64_t* out_seg, int64_t* out_local) {
  const bool larger_better = metric != dense::kL2;
  Fold<float> fold(nq, k);
  std::vector<float> sc;
  std::vector<int64_t> ix;
  // segment s's kk-long lists from offset `at` of sc and ix
  auto fold_segment = [&](int64_t s, int64_t kk, size_t at = 0) {
    fold_lists(fold, segs[s].pos, s, nq, kk, sc.data() + at, ix.data() + at,
               [&](float v) { return larger_better ? -v : v; });
  };
  const float pad = larger_better ? -std::numeric_limits<float>::infinity()
                                  : std::numeric_limits<float>::infinity();
  auto write = [&] {
    write_fold(fold, k, pad, [&](float key) { return larger_better ? -key : key; }, out_score, out_seg,
               out_local);
  };
  if (!cand_seg) {
    for (int64_t s = 0; s < nseg; ++s) {
      const DenseSeg& g = segs[s];
      if (g.k <= 0 || g.n <= 0 || nq == 0) continue;
      sc.resize(size_t(nq * g.k));
      ix.resize(size_t(nq * g.k));
      dense::topk(g.db, g.dtype, g.n, g.stride, dim, queries, nq, query_stride, g.k, metric, g.allow,
                  nullptr, 0, sc.data(), ix.data());
      fold_segment(s, g.k);
    }
    return write();
  }
  // Each query's candidates grouped by segment (a counting sort): start[q][s] ..
  // start[q][s + 1] in `grouped`.
  const int64_t ns1 = nseg + 1;
  std::vector<int64_t> start(size_t(nq * ns1 + 1), 0), grouped(size_t(nq * ncand));
  std::vector<int64_t> width(size_t(nseg), 0);
  for (int64_t q = 0; q < nq; ++q) {
    int64_t* st = start.data() + q * ns1;
    const int64_t* cs = cand_seg + q * ncand;
    const int64_t* cl = cand_local + q * ncand;
    std::fill(st, st + ns1, 0);
    for (int64_t j = 0; j < ncand; ++j)
      if (cl[j] >= 0 && cs[j] >= 0 && cs[j] < nseg && segs[cs[j]].k > 0) ++st[cs[j] + 1];
    for (int64_t s = 0; s < nseg; ++s) {
      width[size_t(s)] = std::max(width[size_t(s)], st[s + 1]);
      st[s + 1] += st[s];
    }
    std::vector<int64_t> cur(st, st + nseg);
    for (int64_t j = 0; j < ncand; ++j)
      if (cl[j] >= 0 && cs[j] >= 0 && cs[j] < nseg && segs[cs[j]].k > 0)
        grouped[size_t(q * ncand + cur[size_t(cs[j])]++)] = cl[j];
  }
  // the first line of every candidate row at once (touch_first): they lie on scattered pages
  for (int64_t q = 0; q < nq; ++q) {
    const int64_t* st = start.data() + q * ns1;
    const int64_t* gq = grouped.data() + q * ncand;
    int64_t s = 0;
    touch_first(st[nseg], [&](int64_t j) -> const uint8_t* {
      while (j >= st[s + 1]) ++s;
      const DenseSeg& g = segs[s];
      if (gq[j] >= g.n) return nullptr;  // (dense::topk drops it)
      return static_cast<const uint8_t*>(g.db) + gq[j] * g.stride * dtype_size(g.dtype);
    });
  }
  if (rescore_one_call(segs, nseg, dim, queries, nq, query_stride, metric, k, start, grouped, ncand, width, fold))
    return write();
  // A call per segment, each into its own stretch of sc / ix, folded in segment order
  // after. Fewer queries than threads and enough candidates: the calls split over the
  // threads (the same entries in the same order as one thread's).
  std::vector<int64_t> todo;
  std::vector<size_t> at(1, 0);  // todo[i]'s lists start at at[i]
  int64_t total = 0;
  for (int64_t s = 0; s < nseg; ++s)
    if (segs[s].k > 0 && width[size_t(s)] > 0) {
      todo.push_back(s);
      at.push_back(at.back() + size_t(nq * std::min(segs[s].k, width[size_t(s)])));
    }
  for (int64_t q = 0; q < nq; ++q) total += start[size_t(q * ns1 + nseg)];
  const int nthreads = nq < num_threads() && total >= kSplitCandidates && todo.size() > 1
                           ? int(std::min<int64_t>(num_threads(), int64_t(todo.size())))
                           : 1;
  sc.resize(at.back());
  ix.resize(at.back());
  parallel_for_pooled(int64_t(todo.size()), nthreads, 1, [&](int, int64_t i0, int64_t i1) {
    std::optional<SerialScope> serial;  // split: dense::topk's own split would start fresh threads
    if (nthreads > 1) serial.emplace();
    std::vector<int64_t> cand;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t s = todo[size_t(i)];
      const DenseSeg& g = segs[s];
      const int64_t w = width[size_t(s)];
      cand.assign(size_t(nq * w), -1);
      for (int64_t q = 0; q < nq; ++q) {
        const int64_t* st = start.data() + q * ns1;
        std::copy(grouped.begin() + q * ncand + st[s], grouped.begin() + q * ncand + st[s + 1],
                  cand.begin() + q * w);
      }
      dense::topk(g.db, g.dtype, g.n, g.stride, dim, queries, nq, query_stride, std::min(g.k, w), metric, nullptr,
                  cand.data(), w, sc.data() + at[size_t(i)], ix.data() + at[size_t(i)]);
    }
  });
  for (size_t i = 0; i < todo.size(); ++i)
    fold_segment(todo[i], std::min(segs[todo[i]].k, width[size_t(todo[i])]), at[i]);
  write();
}

}  // namespace multiseg
}  // namespace nestvec
