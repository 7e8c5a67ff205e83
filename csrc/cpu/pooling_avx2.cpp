// AVX2 pooling reduction: same scheme as pooling_avx512.cpp with 8 lanes (F16C for
// float16, a 16-bit shift for bfloat16); the last d % 8 columns go through the
// scalar tail.
#include <immintrin.h>

#include <limits>

#include "nestvec/pooling.h"
#include "pooling_convert.h"

namespace nestvec {
namespace pooling {
namespace {

template <int DT>
inline __m256 load8(const void* row, int64_t j) {
  if constexpr (DT == kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + j);
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + j));
    if constexpr (DT == kF16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

template <int DT, int OP>
void run(const void* base, int64_t tstride, const int32_t* tok, const float* w, int64_t n,
         int64_t d, float* out) {
  constexpr int64_t es = DT == kF32 ? 4 : 2;
  auto row = [&](int64_t i) {
    return static_cast<const void*>(static_cast<const char*>(base) + int64_t(tok[i]) * tstride * es);
  };
  const float init = OP == 2 ? -std::numeric_limits<float>::infinity() : 0.0f;
  for (int64_t j = 0; j < d; ++j) out[j] = init;
  const int64_t dv = d & ~int64_t(7);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const void *r0 = row(i), *r1 = row(i + 1), *r2 = row(i + 2), *r3 = row(i + 3);
    __m256 w0, w1, w2, w3;
    if constexpr (OP == 1) {
      w0 = _mm256_set1_ps(w[i]), w1 = _mm256_set1_ps(w[i + 1]);
      w2 = _mm256_set1_ps(w[i + 2]), w3 = _mm256_set1_ps(w[i + 3]);
    }
    for (int64_t j = 0; j < dv; j += 8) {
      const __m256 x0 = load8<DT>(r0, j), x1 = load8<DT>(r1, j);
      const __m256 x2 = load8<DT>(r2, j), x3 = load8<DT>(r3, j);
      __m256 a = _mm256_loadu_ps(out + j);
      if constexpr (OP == 0) {
        a = _mm256_add_ps(a, _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)));
      } else if constexpr (OP == 1) {
        a = _mm256_fmadd_ps(x0, w0, a);
        a = _mm256_fmadd_ps(x1, w1, a);
        a = _mm256_fmadd_ps(x2, w2, a);
        a = _mm256_fmadd_ps(x3, w3, a);
      } else {
        a = _mm256_max_ps(a, _mm256_max_ps(_mm256_max_ps(x0, x1), _mm256_max_ps(x2, x3)));
      }
      _mm256_storeu_ps(out + j, a);
    }
  }
  for (; i < n; ++i) {
    const void* r0 = row(i);
    const __m256 w0 = _mm256_set1_ps(OP == 1 ? w[i] : 1.0f);
    for (int64_t j = 0; j < dv; j += 8) {
      const __m256 x0 = load8<DT>(r0, j);
      __m256 a = _mm256_loadu_ps(out + j);
      a = OP == 2 ? _mm256_max_ps(a, x0) : _mm256_fmadd_ps(x0, w0, a);
      _mm256_storeu_ps(out + j, a);
    }
  }
  if (dv < d) reduce_tail(base, tstride, DT, tok, OP == 1 ? w : nullptr, n, dv, d, OP == 2, out);
}

template <int DT>
void run_dt(const void* base, int64_t tstride, const int32_t* tok, const float* w, int64_t n,
            int64_t d, bool max, float* out) {
  if (max)
    run<DT, 2>(base, tstride, tok, w, n, d, out);
  else if (w)
    run<DT, 1>(base, tstride, tok, w, n, d, out);
  else
    run<DT, 0>(base, tstride, tok, w, n, d, out);
}

}  // namespace

void reduce_avx2(const void* base, int64_t tstride, int dtype, const int32_t* tok,
                 const float* w, int64_t n, int64_t d, bool max, float* out) {
  switch (dtype) {
    case kF16: return run_dt<kF16>(base, tstride, tok, w, n, d, max, out);
    case kBF16: return run_dt<kBF16>(base, tstride, tok, w, n, d, max, out);
    default: return run_dt<kF32>(base, tstride, tok, w, n, d, max, out);
  }
}

}  // namespace pooling
}  // namespace nestvec
