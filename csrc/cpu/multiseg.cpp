// Multi-segment top-k (include/nestvec/multiseg.h): each segment's list comes from the
// per-segment kernel a single-segment search calls (so keys are bit-identical to it),
// and is folded into a running top-k per query by (key, global position) after every
// segment: memory stays at ~2k entries per query whatever the number of segments.
// This file: the Hamming side (hamming_topk); the dense rescoring is in
// multiseg_rescore.cpp, the fold they share in multiseg_fold.h.
#include "nestvec/multiseg.h"

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

#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/hamming.h"
#include "nestvec/hamming_ranges.h"
#include "multiseg_fold.h"
#include "nestvec/prefetch.h"

namespace nestvec {
namespace multiseg {

using detail::Fold;
using detail::fold_lists;
using detail::write_fold;

namespace {

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
// Rows of a probe's ranges per part when one query's ranges are split over the threads
// (the pool's workers are awake between back-to-back calls: a split costs a few us).
constexpr int64_t kSplitRows = 2048;

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
    // One query over enough rows: its ranges split over the threads, each part into a
    // selector of its own, merged after (the k best of the union by (distance,
    // position) are the k best of the parts' k best). Not where a segment keeps fewer
    // than k (its own selector would then be split too).
    const bool capped = std::any_of(segs, segs + nseg, [&](const HammingSeg& g) {
      return ranged_seg[size_t(&g - segs)] && g.k < k;
    });
    const int parts = nq == 1 && !capped ? int(std::min<int64_t>(threads, std::max<int64_t>(1, ranged / kSplitRows))) : 1;
    const int nthreads = parts > 1 ? parts
                                   : int(std::min<int64_t>({int64_t(threads), nq, std::max<int64_t>(1, ranged / kThreadRows)}));
    std::vector<char> bad(size_t(std::max(1, nthreads)), 0);
    std::vector<HamSel> part_sel(static_cast<size_t>(parts));
    std::atomic<uint32_t> shared_bound{max_bound};
    auto scan = [&](int t, int64_t i0, int64_t i1) {
      std::vector<uint32_t> hit_rows(static_cast<size_t>(tile_rows)), hit_dist(static_cast<size_t>(tile_rows));
      HamSel own;
      // A probe's ranges are a few KiB each at scattered places, too short for the
      // hardware prefetcher to ramp up: each scan prefetches the codes of the range
      // kRangesAhead further on into L2 (docs/ann-benchmark-log.md: the 10M run), at
      // most its first kSpanBytes (a long range's rest the kernel prefetches itself).
      constexpr size_t kRangesAhead = 2;
      constexpr int64_t kSpanBytes = 16384;
      struct Span {
        const HammingSeg* g;
        int64_t b, e;  // rows, clamped to the segment
      };
      std::vector<Span> spans;  // this query's ranges in scan order
      size_t lo = 0, hi = 0;    // the part of them this task scans
      auto prefetch_span = [&](size_t i) {
        if (i >= hi) return;
        const Span& sp = spans[i];
        const uintptr_t c = reinterpret_cast<uintptr_t>(sp.g->codes) + uintptr_t(sp.b * sp.g->code_stride);
        const int64_t n = std::min<int64_t>(std::max<int64_t>(0, sp.e - sp.b) * sp.g->code_stride, kSpanBytes);
        for (int64_t o = 0; o < n; o += 64) prefetch_l2(c + uintptr_t(o));
      };
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t q = parts > 1 ? 0 : i;
        HamSel& sel = parts > 1 ? part_sel[size_t(i)] : own;
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
        lo = 0;
        hi = spans.size();
        if (parts > 1) {  // part i: the ranges that start in its share of the rows
          int64_t before = 0;
          lo = hi = spans.size();
          for (size_t j = 0; j < spans.size(); ++j) {
            const int64_t share = before * parts / std::max<int64_t>(1, ranged);
            if (share >= i && lo == spans.size()) lo = j;
            if (share > i) {
              hi = j;
              break;
            }
            before += std::max<int64_t>(0, spans[j].e - spans[j].b);
          }
          hi = std::max(hi, lo);
        }
        // the first line of every range's codes, row ids and mask at once (touch_first)
        touch_first(int64_t(3 * (hi - lo)), [&](int64_t j) -> const uint8_t* {
          const Span& sp = spans[lo + size_t(j / 3)];
          if (sp.e <= sp.b) return nullptr;
          if (j % 3 == 0) return sp.g->codes + sp.b * sp.g->code_stride;
          if (j % 3 == 1) return sp.g->ids ? static_cast<const uint8_t*>(sp.g->ids) + sp.b * sp.g->ids_bytes : nullptr;
          return sp.g->allow_at ? sp.g->allow_at + sp.b : nullptr;
        });
        for (size_t j = 0; j < kRangesAhead; ++j) prefetch_span(lo + j);
        size_t at = 0;
        for (int64_t s = 0; s < nseg; ++s) {
          const HammingSeg& g = segs[s];
          if (!ranged_seg[size_t(s)]) continue;
          if (at + size_t(nr[size_t(s)]) <= lo || at >= hi) {
            at += size_t(nr[size_t(s)]);
            continue;
          }
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
            if (at < lo || at >= hi) continue;
            const int64_t b = spans[at].b, e = spans[at].e;
            prefetch_span(at + kRangesAhead);
            if (!scan_range(tile, segs, g, s, qv, query_stride, nbytes, b, e, tile_rows, hit_rows.data(),
                            hit_dist.data(), into,
                            [&] {
                              return std::min(std::min(into.bound(), sel.bound()),
                                              std::min(max_bound, shared_bound.load(std::memory_order_relaxed)));
                            }))
              bad[size_t(t)] = 1;
            // a part's k-th distance bounds the others' too (their hits above it lose to k of its own)
            if (parts > 1)
              for (uint32_t cur = shared_bound.load(std::memory_order_relaxed); sel.bound() < cur;)
                if (shared_bound.compare_exchange_weak(cur, sel.bound(), std::memory_order_relaxed)) break;
          }
          if (own_sel)
            for (const auto& h : own_sel->finish()) sel.push(h);
        }
        if (parts > 1) continue;  // (merged below)
        auto& best = sel.finish();
        fold.add(q, int64_t(best.size()), [&](int64_t j, Fold<int32_t>::Entry& e) {
          const auto& h = best[size_t(j)];
          e = {int32_t(h.dist), h.gpos, h.seg, h.local};
          return true;
        });
      }
    };
    if (parts > 1)
      parallel_for_pooled(parts, parts, 1, scan);
    else
      parallel_for(nq, nthreads, 1, scan);
    if (parts > 1) {
      HamSel& sel = part_sel[0];
      for (size_t i = 1; i < part_sel.size(); ++i)
        for (const auto& h : part_sel[i].finish()) sel.push(h);
      auto& best = sel.finish();
      fold.add(0, int64_t(best.size()), [&](int64_t j, Fold<int32_t>::Entry& e) {
        const auto& h = best[size_t(j)];
        e = {int32_t(h.dist), h.gpos, h.seg, h.local};
        return true;
      });
    }
    for (char b : bad)
      if (b) throw std::invalid_argument("ids: a row id in a probed range is negative or beyond the segment's rows");
  }

  write_fold(fold, k, std::numeric_limits<int32_t>::max(), [](int32_t d) { return d; }, out_dist, out_seg,
             out_local);
  return scanned;
}

}  // namespace multiseg
}  // namespace nestvec
