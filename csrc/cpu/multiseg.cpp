// Multi-segment top-k (include/nestvec/multiseg.h): each segment's list comes from the
// per-segment kernel a single-segment search calls (so keys are bit-identical to it),
// and is folded into a running top-k per query by (key, global position) after every
// segment: memory stays at ~2k entries per query whatever the number of segments.
#include "nestvec/multiseg.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <vector>

#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/hamming.h"
#include "nestvec/hamming_ranges.h"
#include "nestvec/prefetch.h"

namespace nestvec {
namespace multiseg {
namespace {

// Running top-k per query, ascending by (key, gpos).
template <class Key>
class Fold {
 public:
  struct Entry {
    Key key;
    int64_t gpos, seg, local;
  };
  Fold(int64_t nq, int64_t k) : k_(k), best_(size_t(nq)) {}

  // One segment's list of query q (any order).
  template <class Get>
  void add(int64_t q, int64_t m, Get&& get) {
    auto& b = best_[size_t(q)];
    const size_t before = b.size();
    for (int64_t i = 0; i < m; ++i) {
      Entry e;
      if (get(i, e)) b.push_back(e);
    }
    if (b.size() == before) return;
    auto less = [](const Entry& x, const Entry& y) {
      return x.key < y.key || (x.key == y.key && x.gpos < y.gpos);
    };
    std::sort(b.begin() + std::ptrdiff_t(before), b.end(), less);
    std::inplace_merge(b.begin(), b.begin() + std::ptrdiff_t(before), b.end(), less);
    if (int64_t(b.size()) > k_) b.resize(size_t(k_));
  }

  template <class Write>
  void write(Write&& w) {
    for (size_t q = 0; q < best_.size(); ++q) w(int64_t(q), best_[q]);
  }

 private:
  int64_t k_;
  std::vector<std::vector<Entry>> best_;
};

// One segment's per-query lists (kk entries a query; idx < 0: none) into the fold,
// keyed by key_of(value) and placed by the segment's global positions.
template <class Key, class Val, class KeyOf>
void fold_lists(Fold<Key>& fold, const Position& pos, int64_t s, int64_t nq, int64_t kk, const Val* vals,
                const int64_t* idx, KeyOf key_of) {
  for (int64_t q = 0; q < nq; ++q) {
    const Val* v = vals + q * kk;
    const int64_t* x = idx + q * kk;
    fold.add(q, kk, [&](int64_t i, typename Fold<Key>::Entry& e) {
      if (x[i] < 0) return false;
      // ids name the segment's rows: one past them would read outside its positions
      if (pos.positions && x[i] >= pos.n_positions)
        throw std::invalid_argument("ids: a row id is beyond the segment's positions");
      e = {key_of(v[i]), pos.at(x[i]), s, x[i]};
      return true;
    });
  }
}

// The fold's top-k of every query into [nq, k] outputs: value_of(key), or `pad`, seg
// and local -1 where a query has fewer than k.
template <class Key, class Out, class ValueOf>
void write_fold(Fold<Key>& fold, int64_t k, Out pad, ValueOf value_of, Out* out, int64_t* out_seg,
                int64_t* out_local) {
  fold.write([&](int64_t q, const std::vector<typename Fold<Key>::Entry>& b) {
    const int64_t m = int64_t(b.size());
    for (int64_t i = 0; i < k; ++i) {
      const bool has = i < m;
      out[q * k + i] = has ? value_of(b[size_t(i)].key) : pad;
      out_seg[q * k + i] = has ? b[size_t(i)].seg : -1;
      out_local[q * k + i] = has ? b[size_t(i)].local : -1;
    }
  });
}

// k smallest (distance, global position) hits of one query; hits come in any order.
// Accepts dist < bound(): a hit tying the k-th distance may still win on position.
class HamSel {
 public:
  struct Hit {
    uint32_t dist;
    int64_t gpos, seg, local;
  };
  static bool less(const Hit& a, const Hit& b) {
    return a.dist < b.dist || (a.dist == b.dist && a.gpos < b.gpos);
  }
  void reset(int64_t k, uint32_t bound) {
    k_ = k;
    cap_ = std::max<int64_t>(2 * k, k + 256);
    buf_.clear();
    buf_.reserve(size_t(std::min<int64_t>(cap_, 1 << 16)));
    bound_ = bound;
  }
  uint32_t bound() const { return bound_; }
  void push(const Hit& h) {
    if (h.dist >= bound_) return;  // (k kept hits beat it; a selector folded in may hold such)
    buf_.push_back(h);
    if (int64_t(buf_.size()) >= cap_) compact();
  }
  // Keeps the k best: distances are small integers below bound_, so a count per
  // distance finds the k-th one (d), and only the hits at d are ordered, by position
  // (an nth_element over every hit by (distance, position) was ~7% of a 10M search).
  void compact() {
    if (int64_t(buf_.size()) <= k_) return;
    count_.assign(size_t(bound_), 0);
    for (const Hit& h : buf_) ++count_[h.dist];
    uint32_t d = 0;
    int64_t below = 0;  // hits at distances < d
    while (below + count_[d] < k_) below += count_[d++];
    size_t w = 0;  // hits below d first, then those at d
    for (size_t i = 0; i < buf_.size(); ++i)
      if (buf_[i].dist < d) std::swap(buf_[w++], buf_[i]);
    auto at_d = buf_.begin() + std::ptrdiff_t(w);
    auto end = std::partition(at_d, buf_.end(), [d](const Hit& h) { return h.dist == d; });
    const std::ptrdiff_t need = std::ptrdiff_t(k_ - below);
    if (end - at_d > need)
      std::nth_element(at_d, at_d + (need - 1), end, [](const Hit& a, const Hit& b) { return a.gpos < b.gpos; });
    buf_.resize(size_t(k_));
    bound_ = std::min(bound_, d + 1);
  }
  std::vector<Hit>& finish() {
    compact();
    std::sort(buf_.begin(), buf_.end(), less);
    return buf_;
  }

 private:
  int64_t k_ = 0, cap_ = 0;
  uint32_t bound_ = 0;
  std::vector<Hit> buf_;
  std::vector<int64_t> count_;
};

// Rows per thread below which a second thread costs more than it saves.
constexpr int64_t kThreadRows = int64_t(1) << 16;

// Rows [b, e) of segment s against one query: every hit below bound() goes into
// `into` as (distance, global position, s, local row); ids map code rows to local
// rows (full scans have none); a span's map them to its members' rows in `segs`.
// Returns false when an id is negative or beyond the segment's allow mask or
// positions (that hit is skipped).
template <class Bound>
bool scan_range(hamming::TileFn tile, const HammingSeg* segs, const HammingSeg& g, int64_t s, const uint8_t* qv,
                int64_t query_stride, int64_t nbytes, int64_t b, int64_t e, int64_t tile_rows, uint32_t* hit_rows,
                uint32_t* hit_dist, HamSel& into, Bound bound) {
  const int32_t* ids32 = g.ids_bytes == 4 ? static_cast<const int32_t*>(g.ids) : nullptr;
  const int64_t* ids64 = g.ids_bytes == 8 ? static_cast<const int64_t*>(g.ids) : nullptr;
  bool ok = true;
  for (int64_t r0 = b; r0 < e; r0 += tile_rows) {
    const int64_t n = std::min(tile_rows, e - r0);
    const uint32_t thr = bound();
    uint32_t cnt = 0;
    tile(g.codes + r0 * g.code_stride, n, g.code_stride, qv, 1, query_stride, nbytes, &thr, hit_rows, hit_dist,
         tile_rows, &cnt);
    for (uint32_t i = 0; i < cnt; ++i) {
      const int64_t at = r0 + hit_rows[i];
      if (g.allow_at && !g.allow_at[at]) continue;
      if (g.member_segs) {
        const int64_t row = ids64[at];
        const int64_t* mb = g.member_base;
        if (row < 0 || row >= mb[g.n_members]) {
          ok = false;
          continue;
        }
        const int64_t m = int64_t(std::upper_bound(mb, mb + g.n_members + 1, row) - mb) - 1;
        const int64_t t = g.member_segs[m];
        if (t < 0) continue;
        const HammingSeg& tg = segs[t];
        const int64_t id = row - mb[m];
        if (id >= tg.n || (tg.allow && id >= tg.n_allow) || (tg.pos.positions && id >= tg.pos.n_positions)) {
          ok = false;
          continue;
        }
        if (tg.allow && !tg.allow[id]) continue;
        into.push({hit_dist[i], tg.pos.at(id), t, id});
        continue;
      }
      const int64_t id = ids32 ? int64_t(ids32[at]) : ids64 ? ids64[at] : at;
      if (id < 0 || (g.allow && id >= g.n_allow) || (g.pos.positions && id >= g.pos.n_positions)) {
        ok = false;
        continue;
      }
      if (g.allow && !g.allow[id]) continue;
      into.push({hit_dist[i], g.pos.at(id), s, id});
    }
  }
  return ok;
}

// Whether each fully scanned segment's own list (seg.k) holds all its allowed rows
// or at least the call's k, so that one selector over all of them picks what the
// per-segment lists merged would.
bool full_scans_uncapped(const HammingSeg* segs, int64_t nseg, const std::vector<char>& ranged, int64_t k) {
  for (int64_t s = 0; s < nseg; ++s) {
    const HammingSeg& g = segs[s];
    if (g.k <= 0 || g.n <= 0 || ranged[size_t(s)] || g.k >= k) continue;
    int64_t allowed = g.n;
    if (g.allow) allowed = std::count_if(g.allow, g.allow + g.n, [](uint8_t a) { return a != 0; });
    if (allowed > g.k) return false;
  }
  return true;
}

// The full scans of a few queries: blocks of rows of every scanned segment split over
// the threads, one selector per (thread, query) by (distance, global position), then
// folded. Same hits as the per-segment kernel: each keeps the k best of its rows.
template <class FoldT>
void scan_rows(const HammingSeg* segs, int64_t nseg, const std::vector<char>& ranged, const uint8_t* queries,
               int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k, FoldT& fold) {
  const int64_t tile_rows = hamming::tile_rows(nbytes);
  const int64_t block = 16 * tile_rows;
  struct Block {
    int64_t s, r0, r1;
  };
  std::vector<Block> blocks;
  int64_t rows = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const HammingSeg& g = segs[s];
    if (g.k <= 0 || g.n <= 0 || ranged[size_t(s)]) continue;
    for (int64_t r0 = 0; r0 < g.n; r0 += block) blocks.push_back({s, r0, std::min(g.n, r0 + block)});
    rows += g.n;
  }
  if (blocks.empty()) return;
  const hamming::TileFn tile = hamming::active_tile();
  const uint32_t max_bound = uint32_t(8 * nbytes + 1);
  const int nthreads = int(std::min<int64_t>(num_threads(), std::max<int64_t>(1, rows / kThreadRows)));
  std::vector<std::vector<HamSel>> sel(static_cast<size_t>(nthreads), std::vector<HamSel>(static_cast<size_t>(nq)));
  for (auto& per_thread : sel)
    for (auto& x : per_thread) x.reset(k, max_bound);
  std::vector<std::vector<uint32_t>> hit_buf(static_cast<size_t>(2 * nthreads));
  parallel_blocks(int64_t(blocks.size()), nthreads, 1, [&](int t, int64_t b0, int64_t b1) {
    auto& hit_rows = hit_buf[size_t(2 * t)];
    auto& hit_dist = hit_buf[size_t(2 * t + 1)];
    hit_rows.resize(size_t(tile_rows));
    hit_dist.resize(size_t(tile_rows));
    auto& mine = sel[size_t(t)];
    for (int64_t b = b0; b < b1; ++b) {
      const Block& bl = blocks[size_t(b)];
      for (int64_t q = 0; q < nq; ++q) {
        HamSel& into = mine[size_t(q)];
        // (full scans: no ids, allow and positions cover the segment, so no hit is out of range)
        scan_range(tile, segs, segs[bl.s], bl.s, queries + q * query_stride, query_stride, nbytes, bl.r0, bl.r1,
                   tile_rows, hit_rows.data(), hit_dist.data(), into, [&] { return into.bound(); });
      }
    }
  });
  for (int64_t q = 0; q < nq; ++q) {
    std::vector<HamSel::Hit> all;
    for (auto& per_thread : sel) {
      auto& hits = per_thread[size_t(q)].finish();
      all.insert(all.end(), hits.begin(), hits.end());
    }
    fold.add(q, int64_t(all.size()), [&](int64_t i, auto& e) {
      const auto& h = all[size_t(i)];
      e = {int32_t(h.dist), h.gpos, h.seg, h.local};
      return true;
    });
  }
}

}  // namespace

int64_t hamming_topk(const HammingSeg* segs, int64_t nseg, const uint8_t* queries, int64_t nq,
                     int64_t query_stride, int64_t nbytes, const int64_t* lists, int64_t nprobe,
                     int64_t k, int32_t* out_dist, int64_t* out_seg, int64_t* out_local) {
  // Each segment's ranges [nq, nr, 2]: given, or from its lists; a full scan goes to
  // hamming::topk (its selector and query blocks beat a scan of one range per query).
  std::vector<std::vector<int64_t>> own(static_cast<size_t>(nseg));
  std::vector<const int64_t*> rng(size_t(nseg), nullptr);
  std::vector<char> ranged_seg(size_t(nseg), 0);  // rng may be null for zero ranges
  std::vector<int64_t> nr(size_t(nseg), 0);
  int64_t scanned = 0, ranged = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const HammingSeg& g = segs[s];
    if (g.k <= 0 || g.n <= 0 || nq == 0) continue;
    if (g.list_offsets) {
      auto& r = own[size_t(s)];
      r.resize(size_t(nq * nprobe * 2));
      for (int64_t i = 0; i < nq * nprobe; ++i) {
        r[size_t(2 * i)] = g.list_offsets[lists[i]];
        r[size_t(2 * i + 1)] = g.list_offsets[lists[i] + 1];
      }
      rng[size_t(s)] = r.data();
      nr[size_t(s)] = nprobe;
    } else if (g.ranges) {
      rng[size_t(s)] = g.ranges;
      nr[size_t(s)] = g.nranges;
    } else {
      scanned += nq * g.n;
      continue;
    }
    ranged_seg[size_t(s)] = 1;
    for (int64_t i = 0; i < nq * nr[size_t(s)]; ++i) {
      const int64_t* p = rng[size_t(s)] + 2 * i;
      ranged += std::max<int64_t>(0, std::min(g.n, p[1]) - std::max<int64_t>(0, p[0]));
    }
  }
  scanned += ranged;

  Fold<int32_t> fold(nq, k);
  std::vector<int32_t> dist;
  std::vector<int64_t> idx;
  auto fold_list = [&](int64_t s, int64_t kk) {
    fold_lists(fold, segs[s].pos, s, nq, kk, dist.data(), idx.data(), [](int32_t d) { return d; });
  };
  // Full scans. Fewer queries than threads: every scanned segment's rows split over the
  // threads in one parallel region (a kernel call per segment split each segment on its
  // own: eight 125k-row segments cost ~0.3 ms more than two of 500k at batch 1).
  // Otherwise the threaded kernel, segment by segment (its query blocks reuse each
  // tile of codes for many queries).
  if (nq > 0 && nq < num_threads() && full_scans_uncapped(segs, nseg, ranged_seg, k)) {
    scan_rows(segs, nseg, ranged_seg, queries, nq, query_stride, nbytes, k, fold);
  } else {
    for (int64_t s = 0; s < nseg; ++s) {
      const HammingSeg& g = segs[s];
      if (g.k <= 0 || g.n <= 0 || nq == 0 || ranged_seg[size_t(s)]) continue;
      dist.resize(size_t(nq * g.k));
      idx.resize(size_t(nq * g.k));
      hamming::topk(g.codes, g.n, g.code_stride, queries, nq, query_stride, nbytes, g.k, g.allow,
                    dist.data(), idx.data());
      fold_list(s, g.k);
    }
  }

  // Ranges. A few queries over many rows: the range kernel, which splits rows over
  // threads. Otherwise each query scans every segment's ranges into one selector (the
  // per-call set-up of a kernel per segment cost more than a probe's few hundred rows).
  const int threads = num_threads();
  // (the range kernel reads no allow_at nor spans: segments with either take the selector path)
  const bool own_path = std::any_of(segs, segs + nseg, [](const HammingSeg& g) {
    return g.allow_at != nullptr || g.member_segs != nullptr;
  });
  if (nq < threads && ranged > 4 * kThreadRows && !own_path) {
    for (int64_t s = 0; s < nseg; ++s) {
      const HammingSeg& g = segs[s];
      if (!ranged_seg[size_t(s)]) continue;
      dist.resize(size_t(nq * g.k));
      idx.resize(size_t(nq * g.k));
      hamming::topk_ranges(g.codes, g.n, g.code_stride, queries, nq, query_stride, nbytes, rng[size_t(s)],
                           nr[size_t(s)], g.ids, g.ids_bytes, g.allow, g.n_allow, g.k, dist.data(), idx.data());
      fold_list(s, g.k);
    }
  } else if (ranged > 0) {
    const hamming::TileFn tile = hamming::active_tile();
    const uint32_t max_bound = uint32_t(8 * nbytes + 1);
    const int64_t tile_rows = hamming::tile_rows(nbytes);
    const int nthreads = int(std::min<int64_t>({int64_t(threads), nq, std::max<int64_t>(1, ranged / kThreadRows)}));
    std::vector<char> bad(size_t(std::max(1, nthreads)), 0);
    parallel_for(nq, nthreads, 1, [&](int t, int64_t q0, int64_t q1) {
      std::vector<uint32_t> hit_rows(static_cast<size_t>(tile_rows)), hit_dist(static_cast<size_t>(tile_rows));
      HamSel sel;
      // A probe's ranges are a few KiB each at scattered places, too short for the
      // hardware prefetcher to ramp up: each scan prefetches the codes of the range
      // kRangesAhead further on into L2 (README, Sub-linear search: the 10M run), at
      // most its first kSpanBytes (a long range's rest the kernel prefetches itself).
      constexpr size_t kRangesAhead = 2;
      constexpr int64_t kSpanBytes = 16384;
      struct Span {
        const HammingSeg* g;
        int64_t b, e;  // rows, clamped to the segment
      };
      std::vector<Span> spans;  // this query's ranges in scan order
      auto prefetch_span = [&](size_t i) {
        if (i >= spans.size()) return;
        const Span& sp = spans[i];
        const uintptr_t c = reinterpret_cast<uintptr_t>(sp.g->codes) + uintptr_t(sp.b * sp.g->code_stride);
        const int64_t n = std::min<int64_t>(std::max<int64_t>(0, sp.e - sp.b) * sp.g->code_stride, kSpanBytes);
        for (int64_t o = 0; o < n; o += 64) prefetch_l2(c + uintptr_t(o));
      };
      for (int64_t q = q0; q < q1; ++q) {
        sel.reset(k, max_bound);
        const uint8_t* qv = queries + q * query_stride;
        spans.clear();
        for (int64_t s = 0; s < nseg; ++s) {
          if (!ranged_seg[size_t(s)]) continue;
          const HammingSeg& g = segs[s];
          for (int64_t p = 0; p < nr[size_t(s)]; ++p) {
            const int64_t* r = rng[size_t(s)] + 2 * (q * nr[size_t(s)] + p);
            spans.push_back({&g, std::max<int64_t>(0, r[0]), std::min<int64_t>(g.n, r[1])});
          }
        }
        // the first line of every range's codes, row ids and mask at once (touch_first)
        touch_first(int64_t(3 * spans.size()), [&](int64_t i) -> const uint8_t* {
          const Span& sp = spans[size_t(i / 3)];
          if (sp.e <= sp.b) return nullptr;
          if (i % 3 == 0) return sp.g->codes + sp.b * sp.g->code_stride;
          if (i % 3 == 1) return sp.g->ids ? static_cast<const uint8_t*>(sp.g->ids) + sp.b * sp.g->ids_bytes : nullptr;
          return sp.g->allow_at ? sp.g->allow_at + sp.b : nullptr;
        });
        for (size_t i = 0; i < kRangesAhead; ++i) prefetch_span(i);
        size_t at = 0;
        for (int64_t s = 0; s < nseg; ++s) {
          const HammingSeg& g = segs[s];
          if (!ranged_seg[size_t(s)]) continue;
          // a segment contributes at most its own k (its allowed rows), as the
          // per-segment path does: a selector of its own bounds it
          HamSel* own_sel = nullptr;
          HamSel seg_sel;
          if (g.k < k) {
            seg_sel.reset(g.k, max_bound);
            own_sel = &seg_sel;
          }
          HamSel& into = own_sel ? *own_sel : sel;
          for (int64_t p = 0; p < nr[size_t(s)]; ++p, ++at) {
            const int64_t b = spans[at].b, e = spans[at].e;
            prefetch_span(at + kRangesAhead);
            if (!scan_range(tile, segs, g, s, qv, query_stride, nbytes, b, e, tile_rows, hit_rows.data(),
                            hit_dist.data(), into,
                            [&] { return std::min(into.bound(), std::min(sel.bound(), max_bound)); }))
              bad[size_t(t)] = 1;
          }
          if (own_sel)
            for (const auto& h : own_sel->finish()) sel.push(h);
        }
        auto& best = sel.finish();
        fold.add(q, int64_t(best.size()), [&](int64_t i, Fold<int32_t>::Entry& e) {
          const auto& h = best[size_t(i)];
          e = {int32_t(h.dist), h.gpos, h.seg, h.local};
          return true;
        });
      }
    });
    for (char b : bad)
      if (b) throw std::invalid_argument("ids: a row id in a probed range is negative or beyond the segment's rows");
  }

  write_fold(fold, k, std::numeric_limits<int32_t>::max(), [](int32_t d) { return d; }, out_dist, out_seg,
             out_local);
  return scanned;
}

namespace {
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
  auto fold_segment = [&](int64_t s, int64_t kk) {
    fold_lists(fold, segs[s].pos, s, nq, kk, sc.data(), ix.data(),
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
  std::vector<int64_t> cand;
  for (int64_t s = 0; s < nseg; ++s) {
    const DenseSeg& g = segs[s];
    const int64_t w = width[size_t(s)];
    if (g.k <= 0 || w == 0) continue;
    cand.assign(size_t(nq * w), -1);
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t* st = start.data() + q * ns1;
      std::copy(grouped.begin() + q * ncand + st[s], grouped.begin() + q * ncand + st[s + 1],
                cand.begin() + q * w);
    }
    const int64_t kk = std::min(g.k, w);
    sc.resize(size_t(nq * kk));
    ix.resize(size_t(nq * kk));
    dense::topk(g.db, g.dtype, g.n, g.stride, dim, queries, nq, query_stride, kk, metric, nullptr,
                cand.data(), w, sc.data(), ix.data());
    fold_segment(s, kk);
  }
  write();
}

}  // namespace multiseg
}  // namespace nestvec
