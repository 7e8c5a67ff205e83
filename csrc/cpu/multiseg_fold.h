// Folding per-segment top-k lists into one per query (multiseg.cpp and
// multiseg_rescore.cpp): the running top-k by (key, global position) and its output.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "nestvec/dispatch.h"
#include "nestvec/multiseg.h"

namespace nestvec {
namespace multiseg {
namespace detail {

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

}  // namespace detail
}  // namespace multiseg
}  // namespace nestvec
