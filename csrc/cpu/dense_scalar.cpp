// Portable dense kernels: the reference path of the C++ backend (any CPU) and the
// per-query key/threshold pass used by the scalar and AVX2 paths.
#include <cmath>
#include <cstring>

#include "nestvec/dense.h"
#include "nestvec/half.h"

namespace nestvec {
namespace dense {
namespace {

template <int DT>
inline float load1(const void* row, int64_t c) {
  if (DT == kF32) return static_cast<const float*>(row)[c];
  if (DT == kF16) return f16_to_f32(static_cast<const uint16_t*>(row)[c]);
  return bf16_to_f32(static_cast<const uint16_t*>(row)[c]);
}

template <int DT>
void dots_impl(const void* base, int64_t stride, const int64_t* rows, int64_t nrows, int64_t dim,
               const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq) {
  const size_t es = DT == kF32 ? 4 : 2;
  float x[4096];
  for (int64_t r = 0; r < nrows; ++r) {
    const char* row = static_cast<const char*>(base) + (rows ? rows[r] : r) * stride * es;
    float s = 0.f;
    for (int64_t c0 = 0; c0 < dim; c0 += 4096) {  // widen a chunk once, reuse for every query
      const int64_t m = dim - c0 < 4096 ? dim - c0 : 4096;
      for (int64_t c = 0; c < m; ++c) {
        x[c] = load1<DT>(row, c0 + c);
        s += x[c] * x[c];
      }
      for (int64_t j = 0; j < nq; ++j) {
        const float* qj = q + j * qs + c0;
        float d = 0.f;
        for (int64_t c = 0; c < m; ++c) d += qj[c] * x[c];
        dots[j * ld + r] = c0 ? dots[j * ld + r] + d : d;
      }
    }
    if (sq) sq[r] = s;
  }
}

}  // namespace

void dots_scalar(const void* base, int dtype, int64_t stride, const int64_t* rows, int64_t nrows,
                 int64_t dim, const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld,
                 float* sq) {
  switch (dtype) {
    case kF32: return dots_impl<kF32>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
    case kF16: return dots_impl<kF16>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
    default: return dots_impl<kBF16>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
  }
}

int64_t select_scalar(const float* dots, const float* rowf, int64_t nrows, int metric, float a,
                      float b, float thr, const uint8_t* allow, uint32_t* hit_rows,
                      float* hit_keys) {
  int64_t n = 0;
  for (int64_t r = 0; r < nrows; ++r) {
    float key;
    if (metric == kCosine)
      key = dots[r] * a * rowf[r];
    else if (metric == kIP)
      key = dots[r];
    else
      key = 2.f * dots[r] - rowf[r] - b;
    if (key > thr && (!allow || allow[r])) {
      hit_rows[n] = uint32_t(r);
      hit_keys[n] = key;
      ++n;
    }
  }
  return n;
}

}  // namespace dense
}  // namespace nestvec
