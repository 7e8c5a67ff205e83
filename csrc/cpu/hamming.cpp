// Hamming top-k driver: threads over row ranges, tiles of rows reused by every
// query while they sit in L1, per-query threshold selection (select.h).
#include <climits>
#include <vector>

#include "nestvec/dispatch.h"
#include "nestvec/hamming.h"
#include "nestvec/select.h"

namespace nestvec {
namespace hamming {

TileFn active_tile() {
  return with_isa(active_isa(), [](auto isa) { return kernels<decltype(isa)::value>().tile; });
}

namespace {

bool any_allowed(const uint8_t* allow, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (allow[i]) return true;
  return false;
}

}  // namespace

void topk(const uint8_t* codes, int64_t n, int64_t code_stride, const uint8_t* queries,
          int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k, const uint8_t* allow,
          int32_t* out_dist, int64_t* out_idx) {
  // Very large batches go in slices: one selector per (thread, query) holds ~2k + 256
  // keys (100k queries at once grew the process by 1.2 GB); at 4096 queries a slice is
  // compute-bound, so reading the codes once per slice costs nothing measurable.
  constexpr int64_t kQuerySlice = 4096;
  if (nq > kQuerySlice) {
    for (int64_t j0 = 0; j0 < nq; j0 += kQuerySlice)
      topk(codes, n, code_stride, queries + j0 * query_stride, std::min(kQuerySlice, nq - j0),
           query_stride, nbytes, k, allow, out_dist + j0 * k, out_idx + j0 * k);
    return;
  }
  const TileFn tile = active_tile();
  const uint32_t max_dist = uint32_t(8 * nbytes);
  const int64_t tile_rows = hamming::tile_rows(nbytes);
  const int64_t qblock = 64;
  // Below ~64 KiB of codes per thread the thread start-up costs more than it saves.
  const int64_t min_rows = std::max<int64_t>(tile_rows, 65536 / nbytes);
  // Threads split the rows (each reads its own share of the codes once); when there
  // are too few rows to go round but many queries, they split the queries instead.
  const int max_threads = num_threads();
  int nthreads = int(std::min<int64_t>(max_threads, std::max<int64_t>(1, n / min_rows)));
  const bool split_queries = nthreads < max_threads && nq >= 4 * max_threads &&
                             n * nbytes * nq >= (int64_t(1) << 22);
  if (split_queries) nthreads = max_threads;

  // One selector per (thread, query); a thread that never sees a query leaves its
  // selector empty, and the merge below simply finds nothing there.
  std::vector<std::vector<IntTopK>> sel(nthreads, std::vector<IntTopK>(nq));
  for (auto& per_thread : sel)
    for (auto& x : per_thread) x.reset(k, max_dist);
  // Each thread's scratch, sized on its first block and kept for the others: allocated
  // per block, batch 256's hit lists (512 KiB) went back to the OS and were faulted in
  // again 64 times a call.
  struct Work {
    std::vector<uint32_t> thr, hit_rows, hit_dist, hit_count;
  };
  std::vector<Work> work(static_cast<size_t>(nthreads));
  auto scan = [&](int t, int64_t qb, int64_t qe, int64_t begin, int64_t end) {
    std::vector<IntTopK>& s = sel[size_t(t)];
    Work& w = work[size_t(t)];
    const int64_t qcap = std::min(qblock, qe - qb);
    if (w.thr.empty()) {
      w.thr.assign(size_t(nq), max_dist + 1);
      w.hit_rows.resize(size_t(qcap * tile_rows));
      w.hit_dist.resize(size_t(qcap * tile_rows));
      w.hit_count.resize(size_t(qcap));
    }
    std::vector<uint32_t>& thr = w.thr;
    std::vector<uint32_t>& hit_rows = w.hit_rows;
    std::vector<uint32_t>& hit_dist = w.hit_dist;
    std::vector<uint32_t>& hit_count = w.hit_count;
    for (int64_t q = qb; q < qe; ++q) thr[q] = s[q].threshold();  // a later block of the same thread
    for (int64_t r0 = begin; r0 < end; r0 += tile_rows) {
      const int64_t nr = std::min(tile_rows, end - r0);
      if (allow && !any_allowed(allow + r0, nr)) continue;
      for (int64_t q0 = qb; q0 < qe; q0 += qblock) {
        const int64_t nqb = std::min(qblock, qe - q0);
        tile(codes + r0 * code_stride, nr, code_stride, queries + q0 * query_stride, nqb,
             query_stride, nbytes, thr.data() + q0, hit_rows.data(), hit_dist.data(), tile_rows,
             hit_count.data());
        for (int64_t j = 0; j < nqb; ++j) {
          const uint32_t cnt = hit_count[j];
          if (!cnt) continue;
          IntTopK& st = s[q0 + j];
          const uint32_t* hr = hit_rows.data() + j * tile_rows;
          const uint32_t* hd = hit_dist.data() + j * tile_rows;
          for (uint32_t i = 0; i < cnt; ++i) {
            const int64_t row = r0 + hr[i];
            if (allow && !allow[row]) continue;
            if (hd[i] < st.threshold()) st.push(hd[i], row);
          }
          thr[q0 + j] = st.threshold();
        }
      }
    }
  };
  if (split_queries) {
    parallel_for(nq, nthreads, 1, [&](int t, int64_t qb, int64_t qe) { scan(t, qb, qe, 0, n); });
  } else {
    parallel_blocks(n, nthreads, scan_block(n, nthreads, tile_rows),
                    [&](int t, int64_t begin, int64_t end) { scan(t, 0, nq, begin, end); });
  }

  // Merge the per-thread candidates of each query (each already <= k and sorted).
  parallel_for(nq, std::min<int64_t>(nthreads, nq), 1, [&](int, int64_t qb, int64_t qe) {
    std::vector<uint64_t> merged;
    for (int64_t q = qb; q < qe; ++q) {
      merged.clear();
      for (int t = 0; t < nthreads; ++t) {
        auto& keys = sel[t][q].finish();
        merged.insert(merged.end(), keys.begin(), keys.end());
      }
      const int64_t m = std::min<int64_t>(k, merged.size());
      std::partial_sort(merged.begin(), merged.begin() + m, merged.end());
      int32_t* od = out_dist + q * k;
      int64_t* oi = out_idx + q * k;
      const uint64_t mask = (uint64_t(1) << IntTopK::kIdxBits) - 1;
      for (int64_t i = 0; i < m; ++i) {
        od[i] = int32_t(merged[i] >> IntTopK::kIdxBits);
        oi[i] = int64_t(merged[i] & mask);
      }
      for (int64_t i = m; i < k; ++i) {
        od[i] = INT32_MAX;
        oi[i] = -1;
      }
    }
  });
}

}  // namespace hamming
}  // namespace nestvec
