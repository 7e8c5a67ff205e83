// Dense top-k driver. Full scan: threads over row ranges; each thread walks tiles of
// rows small enough to stay in L2 while every query block passes over them (the
// row tile is read from memory once per batch), computes the prefix dot products
// and prefix norms of the tile (dense_impl.h, built per ISA), turns them into keys and keeps,
// per query, only keys above that query's running k-th key (select.h FloatTopK).
// Only a [queries x tile] block of scores ever exists. Candidates: threads over
// queries; each query's sorted, de-duplicated row ids are scored in tiles the same way.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <stdexcept>
#include <vector>

#include "dense_driver.h"
#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/select.h"

namespace nestvec {
namespace dense {
namespace {

// Tables up to this size are scored in register tiles (full scans): half the 32 MiB L3
// of the machine measured, where tiles took 5-15% less than the stream at 0.75-12 MiB
// and 30-50% more at 48 MiB.
constexpr int64_t kTilesMaxBytes = int64_t(16) << 20;

void write_out(std::vector<FloatTopK::Entry>& best, int64_t k, int metric, float* score,
               int64_t* idx) {
  const int64_t m = std::min<int64_t>(k, int64_t(best.size()));
  const float sign = metric == kL2 ? -1.f : 1.f;
  for (int64_t i = 0; i < m; ++i) {
    score[i] = sign * best[size_t(i)].key;
    idx[i] = best[size_t(i)].idx;
  }
  const float pad = metric == kL2 ? std::numeric_limits<float>::infinity()
                                  : -std::numeric_limits<float>::infinity();
  for (int64_t i = m; i < k; ++i) {
    score[i] = pad;
    idx[i] = -1;
  }
}


void topk_f32(const void* db, DType dtype, int64_t n, int64_t stride, int64_t dim,
          const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
          const uint8_t* allow, const int64_t* candidates, int64_t ncand, float* out_score,
          int64_t* out_idx) {
  const Kernels kern = active_kernels();
  const int64_t es = dtype_size(dtype);
  const bool need_sq = metric != kIP;

  // Queries: float32, zero-padded to a multiple of 16, 64-byte aligned rows.
  const int64_t qs = (dim + 15) / 16 * 16;
  AlignedArray<float> q = aligned_array<float>(std::max<int64_t>(1, nq) * qs);
  for (int64_t j = 0; j < nq; ++j)
    for (int64_t c = 0; c < qs; ++c) q[size_t(j * qs + c)] = c < dim ? queries[j * query_stride + c] : 0.f;
  std::vector<float> qa(static_cast<size_t>(nq)), qb(static_cast<size_t>(nq));
  query_factors(queries, nq, query_stride, dim, qa.data(), qb.data());

  // Rows per tile: ~96 KiB of stored values, so a tile stays in L2 across the batch.
  const int64_t tile = std::max<int64_t>(16, std::min<int64_t>(1024, (98304 / (dim * es)) / 16 * 16));
  const int64_t qchunk = 256;  // bounds the [queries x tile] score block

  if (candidates) {
    // One query's valid, allowed row ids, ascending and unique (index order is the tie
    // rule of FloatTopK). Lists that already are (a filter's rows) skip the sort.
    auto gather_ids = [&](int64_t j, std::vector<int64_t>& ids) {
      ids.clear();
      const int64_t* c = candidates + j * ncand;
      bool sorted = true;
      for (int64_t i = 0; i < ncand; ++i)
        if (c[i] >= 0 && c[i] < n && (!allow || allow[c[i]])) {
          sorted = sorted && (ids.empty() || ids.back() < c[i]);
          ids.push_back(c[i]);
        }
      if (!sorted) {
        std::sort(ids.begin(), ids.end());
        ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      }
    };
    struct Scratch {
      std::vector<float> dots, sq, rowf, hit_keys;
      std::vector<uint32_t> hit_rows;
      explicit Scratch(int64_t t)
          : dots(size_t(t)), sq(size_t(t)), rowf(size_t(t)), hit_keys(size_t(t)), hit_rows(size_t(t)) {}
    };
    // rows ids[r0 .. r1) of query j into sel, in tiles
    auto score = [&](int64_t j, const std::vector<int64_t>& ids, int64_t r0, int64_t r1, Scratch& w,
                     FloatTopK& sel) {
      for (int64_t t0 = r0; t0 < r1; t0 += tile) {
        const int64_t nr = std::min(tile, r1 - t0);
        kern.dots(db, dtype, stride, ids.data() + t0, nr, dim, q.get() + j * qs, qs, 1,
                  w.dots.data(), tile, need_sq ? w.sq.data() : nullptr);
        if (need_sq) row_factors(w.sq.data(), nr, metric, w.rowf.data());
        select_push(kern.select, w.dots.data(), w.rowf.data(), nr, metric, qa[size_t(j)],
                    qb[size_t(j)], nullptr, w.hit_rows.data(), w.hit_keys.data(), sel,
                    [&](uint32_t r) { return ids[size_t(t0 + r)]; });
      }
    };
    const int nthreads = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), nq)));
    // Fewer queries than threads and long lists (a selective filter's rows): each
    // query's rows are split over the threads instead, where one thread read them all
    // (one query, 2 cores: 100k candidates of 1M x 768 f16, 13.2 -> 10.9 ms; a 4%
    // filter on a 1M x 384 collection, 4.3 -> 3.8 ms).
    constexpr int64_t kSplitRows = 4096;
    if (nq < num_threads() && ncand >= kSplitRows) {
      const int nt = num_threads();
      std::vector<int64_t> ids;
      std::vector<std::vector<FloatTopK>> sel(static_cast<size_t>(nt), std::vector<FloatTopK>(1));
      std::vector<FloatTopK::Entry> merged;
      for (int64_t j = 0; j < nq; ++j) {
        gather_ids(j, ids);
        const int64_t m = int64_t(ids.size());
        const int used = int(std::max<int64_t>(1, std::min<int64_t>(nt, m / (kSplitRows / 2))));
        for (auto& per_thread : sel) per_thread[0].reset(k);
        parallel_for(m, used, tile, [&](int t, int64_t r0, int64_t r1) {
          Scratch w(tile);
          score(j, ids, r0, r1, w, sel[size_t(t)][0]);
        });
        merge_threads(sel, 0, k, merged);
        write_out(merged, k, metric, out_score + j * k, out_idx + j * k);
      }
      return;
    }
    parallel_for(nq, nthreads, 1, [&](int, int64_t q0, int64_t q1) {
      std::vector<int64_t> ids;
      Scratch w(tile);
      FloatTopK sel;
      for (int64_t j = q0; j < q1; ++j) {
        gather_ids(j, ids);
        sel.reset(k);
        score(j, ids, 0, int64_t(ids.size()), w, sel);
        write_out(sel.finish(), k, metric, out_score + j * k, out_idx + j * k);
      }
    });
    return;
  }

  // Below ~256 KiB of rows per thread the thread start-up costs more than it saves.
  const int64_t min_rows = std::max<int64_t>(tile, 262144 / (dim * es));
  const int nthreads = int(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n / min_rows)));
  std::vector<std::vector<FloatTopK>> sel(static_cast<size_t>(nthreads), std::vector<FloatTopK>(static_cast<size_t>(nq)));
  for (auto& s : sel)
    for (auto& x : s) x.reset(k);
  struct Work {
    std::vector<float> dots, sq, rowf, hit_keys;
    std::vector<uint32_t> hit_rows;
  };
  std::vector<Work> work(static_cast<size_t>(nthreads));
  const int64_t qc = std::min(qchunk, nq);
  // A table that stays in the last-level cache between queries is scored in register
  // tiles: there the one-row stream's per-row work, not the reads, is the cost. Larger
  // ones stream (README, dense batch 1: the route by table size).
  const DotsFn dots_fn = n * stride * es <= kTilesMaxBytes ? kern.dots_tiles : kern.dots;
  parallel_blocks(n, nthreads, scan_block(n, nthreads, tile), [&](int t, int64_t begin, int64_t end) {
    auto& s = sel[size_t(t)];
    Work& w = work[size_t(t)];
    if (w.dots.empty()) {
      w.dots.resize(size_t(qc * tile));
      w.sq.resize(size_t(tile));
      w.rowf.resize(size_t(tile));
      w.hit_keys.resize(size_t(tile));
      w.hit_rows.resize(size_t(tile));
    }
    float* dots = w.dots.data();
    float* sq = w.sq.data();
    float* rowf = w.rowf.data();
    uint32_t* hit_rows = w.hit_rows.data();
    float* hit_keys = w.hit_keys.data();
    for (int64_t r0 = begin; r0 < end; r0 += tile) {
      const int64_t nr = std::min(tile, end - r0);
      const uint8_t* al = allow ? allow + r0 : nullptr;
      if (al && !any_allowed(al, nr)) continue;
      const char* base = static_cast<const char*>(db) + r0 * stride * es;
      for (int64_t q0 = 0; q0 < nq; q0 += qchunk) {
        const int64_t nqc = std::min(qchunk, nq - q0);
        const bool first = q0 == 0;
        dots_fn(base, dtype, stride, nullptr, nr, dim, q.get() + q0 * qs, qs, nqc, dots,
                tile, first && need_sq ? sq : nullptr);
        if (first && need_sq) row_factors(sq, nr, metric, rowf);
        for (int64_t j = 0; j < nqc; ++j) {
          select_push(kern.select, dots + j * tile, rowf, nr, metric,
                      qa[size_t(q0 + j)], qb[size_t(q0 + j)], al, hit_rows,
                      hit_keys, s[size_t(q0 + j)], [r0](uint32_t r) { return r0 + r; });
        }
      }
    }
  });

  // Merge the per-thread candidates of each query.
  parallel_for(nq, int(std::min<int64_t>(std::max(1, nthreads), nq)), 1,
               [&](int, int64_t qb0, int64_t qb1) {
                 std::vector<FloatTopK::Entry> merged;
                 for (int64_t j = qb0; j < qb1; ++j) {
                   merge_threads(sel, j, k, merged);
                   write_out(merged, k, metric, out_score + j * k, out_idx + j * k);
                 }
               });
}

}  // namespace

Kernels active_kernels() {
  return with_isa(active_isa(), [](auto isa) { return kernels<decltype(isa)::value>(); });
}

void topk(const void* db, DType dtype, int64_t n, int64_t stride, int64_t dim,
          const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
          const uint8_t* allow, const int64_t* candidates, int64_t ncand, float* out_score,
          int64_t* out_idx) {
  // Very large batches go in slices: per-thread selectors hold ~k + 256 keys per query
  // (100k queries at once would reserve ~1 GB); at 4096 queries a slice is compute-bound,
  // so reading the table once per slice costs nothing measurable.
  constexpr int64_t kQuerySlice = 4096;
  if (nq > kQuerySlice && !candidates) {
    for (int64_t j0 = 0; j0 < nq; j0 += kQuerySlice)
      topk(db, dtype, n, stride, dim, queries + j0 * query_stride, std::min(kQuerySlice, nq - j0),
           query_stride, k, metric, allow, nullptr, 0, out_score + j0 * k, out_idx + j0 * k);
    return;
  }
  if (candidates || !bf16_pass_wanted(nq, n, dim))
    return topk_f32(db, dtype, n, stride, dim, queries, nq, query_stride, k, metric, allow,
                    candidates, ncand, out_score, out_idx);
  std::vector<int64_t> failed(static_cast<size_t>(nq));
  const int64_t nf = topk_bf16(db, dtype, n, stride, dim, queries, nq, query_stride, k, metric,
                               allow, out_score, out_idx, failed.data());
  if (nf == 0) return;
  std::vector<float> qf(static_cast<size_t>(nf * dim)), sf(static_cast<size_t>(nf * k));
  std::vector<int64_t> xf(static_cast<size_t>(nf * k));
  for (int64_t i = 0; i < nf; ++i)
    std::copy(queries + failed[size_t(i)] * query_stride, queries + failed[size_t(i)] * query_stride + dim,
              qf.begin() + i * dim);
  topk_f32(db, dtype, n, stride, dim, qf.data(), nf, dim, k, metric, allow, nullptr, 0, sf.data(),
           xf.data());
  for (int64_t i = 0; i < nf; ++i) {
    std::copy(sf.begin() + i * k, sf.begin() + (i + 1) * k, out_score + failed[size_t(i)] * k);
    std::copy(xf.begin() + i * k, xf.begin() + (i + 1) * k, out_idx + failed[size_t(i)] * k);
  }
}

namespace {
// Blocks (of kBlockRows rows) a part of a single query's probe takes at least: below
// ~1,000 centroids a part the pool's hand-off costs about what the second thread saves.
constexpr int64_t kSplitBlocks = 64;

BlockedDotsFn blocked_fn(const Kernels& kern, int kind) {
  return kind == kBlockedBf16 ? kern.blocked_dots_bf16 : kind == kBlockedI8 ? kern.blocked_dots_i8 : kern.blocked_dots;
}
}  // namespace

bool blocked_available(int kind) { return blocked_fn(active_kernels(), kind) != nullptr; }

void topk_blocked(const uint16_t* table, int64_t n, int64_t dim, const float* queries, int64_t nq,
                  int64_t query_stride, int64_t k, int metric, float* out_score, int64_t* out_idx, int kind) {
  if (metric != kIP && metric != kL2) throw std::invalid_argument("topk_blocked: metric must be ip or l2");
  if (n <= 0 || nq <= 0 || k <= 0) return;
  const Kernels kern = active_kernels();
  const BlockedDotsFn blocked_dots = blocked_fn(kern, kind);
  if (!blocked_dots) throw std::invalid_argument("topk_blocked: this CPU has no kernel for the table's format");
  if (kind == kBlockedBf16 && dim % 2) throw std::invalid_argument("topk_blocked: a bf16 pair table has an even width");
  if (kind == kBlockedI8 && (dim % 4 || metric != kIP))
    throw std::invalid_argument("topk_blocked: an int8 table has a width divisible by 4 and serves ip probes");
  const bool l2 = metric == kL2;
  const int64_t nblocks = (n + kBlockRows - 1) / kBlockRows, ld = nblocks * kBlockRows;
  constexpr int64_t kQueries = 4;  // per pass over the table (blocked_dots' widest)
  // keys are selected a chunk at a time, so the threshold rises before most rows
  constexpr int64_t kChunk = 256;
  std::vector<float> qa(static_cast<size_t>(nq)), qb(static_cast<size_t>(nq));
  query_factors(queries, nq, query_stride, dim, qa.data(), qb.data());
  const int parts = nq < num_threads() ? int(std::min<int64_t>(num_threads(), nblocks / kSplitBlocks)) : 1;
  if (parts > 1) {
    // Fewer queries than threads (a single query's probe): the table's blocks split over
    // the pool, each part selecting its own k, merged by (key, index). A part's keys are
    // the ones one thread computes, so the answer is too.
    const int64_t block_bytes = kind == kBlockedI8 ? (dim / 4 + 2) * 4 * kBlockRows : dim * 2 * kBlockRows;
    AlignedArray<float> dots = aligned_array<float>(nq * ld);
    AlignedArray<float> sq = aligned_array<float>(l2 ? ld : 1);
    std::vector<std::vector<FloatTopK>> sel(static_cast<size_t>(parts), std::vector<FloatTopK>(size_t(nq)));
    parallel_for_pooled(nblocks, parts, kChunk / kBlockRows, [&](int t, int64_t b0, int64_t b1) {
      const auto* part = reinterpret_cast<const uint16_t*>(reinterpret_cast<const char*>(table) + b0 * block_bytes);
      const int64_t first = b0 * kBlockRows, rows = std::min(n, b1 * kBlockRows) - first;
      blocked_dots(part, b1 - b0, dim, queries, query_stride, nq, dots.get() + first, ld, l2 ? sq.get() + first : nullptr);
      std::vector<float> hit_keys(static_cast<size_t>(kChunk));
      std::vector<uint32_t> hit_rows(static_cast<size_t>(kChunk));
      for (int64_t j = 0; j < nq; ++j) {
        FloatTopK& into = sel[size_t(t)][size_t(j)];
        into.reset(k);
        for (int64_t r0 = first; r0 < first + rows; r0 += kChunk)
          select_push(kern.select, dots.get() + j * ld + r0, l2 ? sq.get() + r0 : nullptr,
                      std::min(kChunk, first + rows - r0), metric, qa[size_t(j)], qb[size_t(j)], nullptr,
                      hit_rows.data(), hit_keys.data(), into, [r0](uint32_t r) { return r0 + int64_t(r); });
      }
    });
    std::vector<FloatTopK::Entry> merged;
    for (int64_t j = 0; j < nq; ++j) {
      merge_threads(sel, j, k, merged);
      write_out(merged, k, metric, out_score + j * k, out_idx + j * k);
    }
    return;
  }
  AlignedArray<float> dots = aligned_array<float>(std::min(kQueries, nq) * ld);  // (written before read)
  AlignedArray<float> sq = aligned_array<float>(l2 ? ld : 1);
  std::vector<float> hit_keys(static_cast<size_t>(kChunk));
  std::vector<uint32_t> hit_rows(static_cast<size_t>(kChunk));
  FloatTopK sel;
  for (int64_t j0 = 0; j0 < nq; j0 += kQueries) {
    const int64_t m = std::min(kQueries, nq - j0);
    const bool norms = l2 && j0 == 0;  // |x|^2 with the first pass (row_factors: l2 keeps it as is)
    blocked_dots(table, nblocks, dim, queries + j0 * query_stride, query_stride, m, dots.get(), ld,
                 norms ? sq.get() : nullptr);
    for (int64_t j = 0; j < m; ++j) {
      sel.reset(k);
      for (int64_t r0 = 0; r0 < n; r0 += kChunk)
        select_push(kern.select, dots.get() + j * ld + r0, l2 ? sq.get() + r0 : nullptr, std::min(kChunk, n - r0),
                    metric, qa[size_t(j0 + j)], qb[size_t(j0 + j)], nullptr, hit_rows.data(), hit_keys.data(), sel,
                    [r0](uint32_t r) { return r0 + int64_t(r); });
      write_out(sel.finish(), k, metric, out_score + (j0 + j) * k, out_idx + (j0 + j) * k);
    }
  }
}

}  // namespace dense
}  // namespace nestvec
