// Exact top-k selection helpers.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace nestvec {

// Top-k smallest (distance, index) for small non-negative integer distances
// (Hamming: 0..8*bytes). Rows must be pushed in increasing index order, so among
// equal distances the earlier row wins and a new row only qualifies when its
// distance is strictly below the current k-th distance (`threshold()`).
// Candidates accumulate unfiltered until a buffer of ~2k is full, then one
// counting pass over the histogram of distances cuts them back to exactly k:
// amortised O(1) per accepted row and no heap.
class IntTopK {
 public:
  static constexpr int kIdxBits = 40;

  void reset(int64_t k, uint32_t max_dist) {
    k_ = k;
    max_dist_ = max_dist;
    cap_ = std::max<int64_t>(2 * k, k + 256);
    keys_.clear();
    thr_ = max_dist + 1;
  }
  // Accept iff dist < threshold().
  uint32_t threshold() const { return thr_; }

  void push(uint32_t dist, int64_t idx) {
    keys_.push_back((uint64_t(dist) << kIdxBits) | uint64_t(idx));
    if (int64_t(keys_.size()) >= cap_) compact();
  }

  // Keep exactly the k best; threshold becomes the k-th distance.
  void compact() {
    if (int64_t(keys_.size()) <= k_) return;
    hist_.assign(size_t(max_dist_) + 2, 0);
    for (uint64_t key : keys_) ++hist_[key >> kIdxBits];
    int64_t below = 0;
    uint32_t t = 0;
    for (;; ++t) {
      if (below + hist_[t] >= k_) break;
      below += hist_[t];
    }
    int64_t take_eq = k_ - below;
    size_t w = 0;
    for (uint64_t key : keys_) {  // stable: keeps index order among ties
      uint32_t d = uint32_t(key >> kIdxBits);
      if (d < t || (d == t && take_eq-- > 0)) keys_[w++] = key;
    }
    keys_.resize(w);
    thr_ = t;
  }

  // Sorted (distance, index) keys of at most k best.
  std::vector<uint64_t>& finish() {
    compact();
    std::sort(keys_.begin(), keys_.end());
    return keys_;
  }

 private:
  int64_t k_ = 0, cap_ = 0;
  uint32_t max_dist_ = 0, thr_ = 0;
  std::vector<uint64_t> keys_;
  std::vector<int64_t> hist_;
};

}  // namespace nestvec

namespace nestvec {

// Top-k largest float keys, ties by smaller index. Same discipline as IntTopK: rows
// are pushed in increasing index order, so an equal key never displaces an earlier
// row and a new row qualifies only when key > threshold(). Candidates accumulate
// until a buffer of ~2k is full; one nth_element then cuts them back to exactly k
// and the k-th key becomes the threshold (amortised O(1) per accepted row).
class FloatTopK {
 public:
  struct Entry {
    float key;
    int64_t idx;
  };
  // Better = larger key, then smaller index.
  static bool better(const Entry& a, const Entry& b) {
    return a.key > b.key || (a.key == b.key && a.idx < b.idx);
  }

  void reset(int64_t k) {
    k_ = k;
    cap_ = std::max<int64_t>(2 * k, k + 256);
    buf_.clear();
    buf_.reserve(size_t(std::min<int64_t>(cap_, 1 << 16)));
    thr_ = -std::numeric_limits<float>::infinity();
  }
  // Accept iff key > threshold().
  float threshold() const { return thr_; }

  // A non-finite key (NaN or inf in the row, or an overflow) is never kept: the dense
  // contract on every backend. Callers push only keys above threshold(), so this test
  // is off the hot path.
  void push(float key, int64_t idx) {
    if (!(std::fabs(key) <= std::numeric_limits<float>::max())) return;
    buf_.push_back({key, idx});
    if (int64_t(buf_.size()) >= cap_) compact();
  }

  // Keep exactly the k best; threshold becomes the k-th key.
  void compact() {
    if (int64_t(buf_.size()) <= k_) return;
    std::nth_element(buf_.begin(), buf_.begin() + (k_ - 1), buf_.end(), better);
    thr_ = buf_[size_t(k_ - 1)].key;
    // nth_element leaves the k best in [0, k) (any order).
    buf_.resize(size_t(k_));
  }

  // At most k entries, best first.
  std::vector<Entry>& finish() {
    compact();
    std::sort(buf_.begin(), buf_.end(), better);
    return buf_;
  }

 private:
  int64_t k_ = 0, cap_ = 0;
  float thr_ = 0;
  std::vector<Entry> buf_;
};

}  // namespace nestvec
