// AVX-512 pooling reduction: four token rows per step are combined in registers and
// added into the float32 accumulator row (which stays in L1), so `hidden` streams
// through once in address order. float16 rows widen with vcvtph2ps, bfloat16 rows
// with a 16-bit shift; the tail of a row uses masked loads.
#include <immintrin.h>

#include <limits>

#include "nestvec/pooling.h"

namespace nestvec {
namespace pooling {
namespace {

template <int DT>
inline __m512 load16(const void* row, int64_t j, __mmask16 m) {
  if constexpr (DT == kF32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + j);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + j);
    if constexpr (DT == kF16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// OP 0: sum, 1: weighted sum, 2: max.
template <int DT, int OP>
void run(const void* base, int64_t tstride, const int32_t* tok, const float* w, int64_t n,
         int64_t d, float* out) {
  constexpr int64_t es = DT == kF32 ? 4 : 2;
  auto row = [&](int64_t i) {
    return static_cast<const void*>(static_cast<const char*>(base) + int64_t(tok[i]) * tstride * es);
  };
  const __m512 init = OP == 2 ? _mm512_set1_ps(-std::numeric_limits<float>::infinity())
                              : _mm512_setzero_ps();
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 m = d - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (d - j)) - 1);
    _mm512_mask_storeu_ps(out + j, m, init);
  }
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const void *r0 = row(i), *r1 = row(i + 1), *r2 = row(i + 2), *r3 = row(i + 3);
    __m512 w0, w1, w2, w3;
    if constexpr (OP == 1) {
      w0 = _mm512_set1_ps(w[i]), w1 = _mm512_set1_ps(w[i + 1]);
      w2 = _mm512_set1_ps(w[i + 2]), w3 = _mm512_set1_ps(w[i + 3]);
    }
    auto step = [&](int64_t j, __mmask16 m) {
      const __m512 x0 = load16<DT>(r0, j, m), x1 = load16<DT>(r1, j, m);
      const __m512 x2 = load16<DT>(r2, j, m), x3 = load16<DT>(r3, j, m);
      __m512 a = _mm512_maskz_loadu_ps(m, out + j);
      if constexpr (OP == 0) {
        a = _mm512_add_ps(a, _mm512_add_ps(_mm512_add_ps(x0, x1), _mm512_add_ps(x2, x3)));
      } else if constexpr (OP == 1) {
        a = _mm512_fmadd_ps(x0, w0, a);
        a = _mm512_fmadd_ps(x1, w1, a);
        a = _mm512_fmadd_ps(x2, w2, a);
        a = _mm512_fmadd_ps(x3, w3, a);
      } else {
        a = _mm512_max_ps(a, _mm512_max_ps(_mm512_max_ps(x0, x1), _mm512_max_ps(x2, x3)));
      }
      _mm512_mask_storeu_ps(out + j, m, a);
    };
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) step(j, __mmask16(0xFFFF));
    if (j < d) step(j, __mmask16((1u << (d - j)) - 1));
  }
  for (; i < n; ++i) {
    const void* r0 = row(i);
    const __m512 w0 = _mm512_set1_ps(OP == 1 ? w[i] : 1.0f);
    for (int64_t j = 0; j < d; j += 16) {
      const __mmask16 m = d - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (d - j)) - 1);
      const __m512 x0 = load16<DT>(r0, j, m);
      __m512 a = _mm512_maskz_loadu_ps(m, out + j);
      if constexpr (OP == 2)
        a = _mm512_max_ps(a, x0);
      else
        a = _mm512_fmadd_ps(x0, w0, a);
      _mm512_mask_storeu_ps(out + j, m, a);
    }
  }
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

void reduce_avx512(const void* base, int64_t tstride, int dtype, const int32_t* tok,
                   const float* w, int64_t n, int64_t d, bool max, float* out) {
  switch (dtype) {
    case kF16: return run_dt<kF16>(base, tstride, tok, w, n, d, max, out);
    case kBF16: return run_dt<kBF16>(base, tstride, tok, w, n, d, max, out);
    default: return run_dt<kF32>(base, tstride, tok, w, n, d, max, out);
  }
}

}  // namespace pooling
}  // namespace nestvec
