// Pieces shared by the two dense drivers: dense.cpp (the float32 scan and the
// candidate path) and dense_bf16.cpp (the two-pass route). Both are baseline
// translation units; everything here is static or a template, so no copy is ever
// shared with an ISA-specific object.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "nestvec/dense.h"
#include "nestvec/select.h"

namespace nestvec {
namespace dense {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
using AlignedArray = std::unique_ptr<T[], FreeDeleter>;

// `count` values, 64-byte aligned (kernels use aligned vector loads on them).
template <class T>
AlignedArray<T> aligned_array(int64_t count) {
  const size_t bytes = size_t((count * int64_t(sizeof(T)) + 63) / 64 * 64);
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64));
  if (!p) throw std::bad_alloc();
  return AlignedArray<T>(p);
}

// qa[j] = 1/|q_j| (0 for a zero query), qb[j] = |q_j|^2 over the first `dim` values.
static inline void query_factors(const float* queries, int64_t nq, int64_t stride, int64_t dim,
                                 float* qa, float* qb) {
  for (int64_t j = 0; j < nq; ++j) {
    double s = 0;
    for (int64_t c = 0; c < dim; ++c) s += double(queries[j * stride + c]) * queries[j * stride + c];
    qa[j] = s > 0 ? float(1.0 / std::sqrt(s)) : 0.f;
    qb[j] = float(s);
  }
}

// Per-row factor of the key formula (see SelectFn): 1/|x| (cosine) or |x|^2 (l2).
static inline void row_factors(const float* sq, int64_t nrows, int metric, float* rowf) {
  if (metric == kCosine) {
    for (int64_t r = 0; r < nrows; ++r) rowf[r] = sq[r] > 0.f ? 1.f / std::sqrt(sq[r]) : 0.f;
  } else if (metric == kL2) {
    for (int64_t r = 0; r < nrows; ++r) rowf[r] = sq[r];
  }
}

static inline bool any_allowed(const uint8_t* allow, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (allow[i]) return true;
  return false;
}

// Keys of one query over a tile of dot products, and those above the query's running
// threshold into its selector (in tile-row order); row_id maps a tile row to a table row.
template <class RowId>
void select_push(SelectFn select, const float* dots, const float* rowf, int64_t nrows, int metric,
                 float a, float b, const uint8_t* allow, uint32_t* hit_rows, float* hit_keys,
                 FloatTopK& st, RowId row_id) {
  const int64_t h = select(dots, rowf, nrows, metric, a, b, st.threshold(), allow, hit_rows, hit_keys);
  for (int64_t i = 0; i < h; ++i)
    if (hit_keys[i] > st.threshold()) st.push(hit_keys[i], row_id(hit_rows[i]));
}

// The (at most) m best entries of query j over every thread's selector, best first.
static inline void merge_threads(std::vector<std::vector<FloatTopK>>& sel, int64_t j, int64_t m,
                                 std::vector<FloatTopK::Entry>& merged) {
  merged.clear();
  for (auto& per_thread : sel) {
    auto& e = per_thread[size_t(j)].finish();
    merged.insert(merged.end(), e.begin(), e.end());
  }
  m = std::min<int64_t>(m, int64_t(merged.size()));
  std::partial_sort(merged.begin(), merged.begin() + m, merged.end(), FloatTopK::better);
  merged.resize(size_t(m));
}

}  // namespace dense
}  // namespace nestvec
