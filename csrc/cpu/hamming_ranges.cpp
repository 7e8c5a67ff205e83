// Hamming top-k over per-query row ranges (IVF probes). Work is the concatenation of
// every (query, range) piece, split evenly by rows across threads (a piece may be cut
// between two threads), so one query's probe of many lists and a batch of queries
// both use every core. Each thread keeps one selector per query it touches; the
// selectors of a query are merged at the end.
//
// Rows of different ranges arrive in no particular id order, so the selector orders
// full (distance, id) keys instead of relying on increasing ids as IntTopK does.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <vector>

#include "nestvec/dispatch.h"
#include "nestvec/hamming.h"
#include "nestvec/hamming_ranges.h"

namespace nestvec {
namespace hamming {
namespace {

constexpr int kIdBits = 40;
constexpr uint64_t kIdMask = (uint64_t(1) << kIdBits) - 1;

// k smallest (distance << 40 | id) keys; rows may come in any id order.
class KeyTopK {
 public:
  bool used() const { return k_ > 0; }
  void reset(int64_t k) {
    k_ = k;
    cap_ = std::max<int64_t>(2 * k, k + 256);
    keys_.clear();
    thr_ = ~uint64_t(0);
  }
  // Rows whose distance is above this cannot enter (the tile's prefilter).
  uint32_t dist_bound() const { return thr_ == ~uint64_t(0) ? UINT32_MAX : uint32_t(thr_ >> kIdBits) + 1; }
  void push(uint64_t key) {
    if (key >= thr_) return;
    keys_.push_back(key);
    if (int64_t(keys_.size()) >= cap_) compact();
  }
  void compact() {
    if (int64_t(keys_.size()) <= k_) return;
    std::nth_element(keys_.begin(), keys_.begin() + (k_ - 1), keys_.end());
    thr_ = keys_[size_t(k_ - 1)];
    keys_.resize(size_t(k_));
  }
  std::vector<uint64_t>& finish() {
    compact();
    std::sort(keys_.begin(), keys_.end());
    return keys_;
  }

 private:
  int64_t k_ = 0, cap_ = 0;
  uint64_t thr_ = ~uint64_t(0);
  std::vector<uint64_t> keys_;
};

struct Piece {
  int64_t q, begin, end;
};

}  // namespace

void topk_ranges(const uint8_t* codes, int64_t n, int64_t code_stride, const uint8_t* queries,
                 int64_t nq, int64_t query_stride, int64_t nbytes, const int64_t* ranges,
                 int64_t nranges, const void* ids, int ids_bytes, const uint8_t* allow,
                 int64_t n_allow, int64_t k, int32_t* out_dist, int64_t* out_idx) {
  std::vector<Piece> pieces;
  std::vector<int64_t> starts;  // rows before each piece
  int64_t total = 0;
  for (int64_t q = 0; q < nq; ++q)
    for (int64_t r = 0; r < nranges; ++r) {
      const int64_t b = std::max<int64_t>(0, ranges[2 * (q * nranges + r)]);
      const int64_t e = std::min<int64_t>(n, ranges[2 * (q * nranges + r) + 1]);
      if (e <= b) continue;
      pieces.push_back({q, b, e});
      starts.push_back(total);
      total += e - b;
    }
  const TileFn tile = active_tile();
  const uint32_t max_bound = uint32_t(8 * nbytes + 1);
  const int64_t tile_rows = hamming::tile_rows(nbytes);
  // Below ~64 KiB of codes per thread a second thread costs more than it saves.
  const int64_t min_rows = std::max<int64_t>(tile_rows, 65536 / nbytes);
  const int nthreads = int(std::min<int64_t>(num_threads(), std::max<int64_t>(1, total / min_rows)));
  const int32_t* ids32 = ids_bytes == 4 ? static_cast<const int32_t*>(ids) : nullptr;
  const int64_t* ids64 = ids_bytes == 8 ? static_cast<const int64_t*>(ids) : nullptr;
  std::vector<std::vector<KeyTopK>> sel(static_cast<size_t>(nthreads), std::vector<KeyTopK>(static_cast<size_t>(nq)));
  std::vector<char> bad_id(static_cast<size_t>(nthreads), 0);

  auto scan = [&](int t, int64_t lo, int64_t hi) {  // rows [lo, hi) of the concatenation
    std::vector<uint32_t> hit_rows(static_cast<size_t>(tile_rows)), hit_dist(static_cast<size_t>(tile_rows));
    uint32_t hit_count = 0;
    size_t p = size_t(std::upper_bound(starts.begin(), starts.end(), lo) - starts.begin()) - 1;
    for (; p < pieces.size() && starts[p] < hi; ++p) {
      const Piece& pc = pieces[p];
      const int64_t b = pc.begin + std::max<int64_t>(0, lo - starts[p]);
      const int64_t e = pc.begin + std::min<int64_t>(pc.end - pc.begin, hi - starts[p]);
      KeyTopK& st = sel[size_t(t)][size_t(pc.q)];
      if (!st.used()) st.reset(k);
      const uint8_t* qv = queries + pc.q * query_stride;
      for (int64_t r0 = b; r0 < e; r0 += tile_rows) {
        const int64_t nr = std::min(tile_rows, e - r0);
        // The tiles compare in narrow lanes: a bound past the widest distance would wrap.
        const uint32_t bound = std::min<uint32_t>(st.dist_bound(), max_bound);
        tile(codes + r0 * code_stride, nr, code_stride, qv, 1, query_stride, nbytes, &bound,
             hit_rows.data(), hit_dist.data(), tile_rows, &hit_count);
        for (uint32_t i = 0; i < hit_count; ++i) {
          const int64_t pos = r0 + hit_rows[i];
          const int64_t id = ids32 ? int64_t(ids32[pos]) : ids64 ? ids64[pos] : pos;
          if (uint64_t(id) > kIdMask) {
            bad_id[size_t(t)] = 1;
            continue;
          }
          if (allow) {
            if (id >= n_allow) {
              bad_id[size_t(t)] = 1;
              continue;
            }
            if (!allow[id]) continue;
          }
          st.push((uint64_t(hit_dist[i]) << kIdBits) | uint64_t(id));
        }
      }
    }
  };
  if (nthreads <= 1) {
    scan(0, 0, total);
  } else {
    parallel_for(total, nthreads, 8, [&](int t, int64_t lo, int64_t hi) { scan(t, lo, hi); });
  }
  for (char b : bad_id)
    if (b) throw std::invalid_argument("ids: a row id in a probed range is negative or beyond the allow mask");

  for (int64_t q = 0; q < nq; ++q) {
    std::vector<uint64_t> merged;
    for (int t = 0; t < nthreads; ++t) {
      KeyTopK& st = sel[size_t(t)][size_t(q)];
      if (!st.used()) continue;
      auto& keys = st.finish();
      merged.insert(merged.end(), keys.begin(), keys.end());
    }
    const int64_t m = std::min<int64_t>(k, int64_t(merged.size()));
    std::partial_sort(merged.begin(), merged.begin() + m, merged.end());
    int32_t* od = out_dist + q * k;
    int64_t* oi = out_idx + q * k;
    for (int64_t i = 0; i < m; ++i) {
      od[i] = int32_t(merged[size_t(i)] >> kIdBits);
      oi[i] = int64_t(merged[size_t(i)] & kIdMask);
    }
    for (int64_t i = m; i < k; ++i) {
      od[i] = INT32_MAX;
      oi[i] = -1;
    }
  }
}

}  // namespace hamming
}  // namespace nestvec
