// AVX512-BF16 first pass of the two-pass dense top-k (dense_bf16.cpp). A tile of rows
// is rounded once to bfloat16 (packed, zero-padded to 32 values) while its exact
// float32 prefix norms are taken; vdpbf16ps then multiplies 32 value pairs per
// instruction where vfmadd231ps does 16, so a compute-bound batch scores about
// twice as fast. The scores are approximate; the driver bounds their error and
// rescores the shortlist exactly.
#include <immintrin.h>

#include "nestvec/dense.h"

namespace nestvec {
namespace dense {
namespace {

template <int DT>
inline __m512 load16m(const char* row, int64_t c, __mmask16 m) {
  if (DT == kF32) return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + c);
  const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * c);
  if (DT == kF16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

template <int DT>
inline __m512 load16(const char* row, int64_t c) {
  if (DT == kF32) return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c));
  if (DT == kF16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// Rows are streamed from memory once per batch; like the float32 kernels, the rows
// ~12 KiB ahead are prefetched (a prefix is a short stream the hardware barely follows).
template <int DT>
void to_bf16_impl(const void* base, int64_t stride, int64_t nrows, int64_t dim, int64_t dimp,
                  uint16_t* out, float* sq) {
  const int64_t sb = stride * (DT == kF32 ? 4 : 2), row_bytes = dim * (DT == kF32 ? 4 : 2);
  const int64_t ahead = 12288 / row_bytes + 1;
  const int64_t body = dim / 32 * 32;
  for (int64_t r = 0; r < nrows; ++r) {
    const char* row = static_cast<const char*>(base) + r * sb;
    prefetch_rows(static_cast<const char*>(base), sb, nullptr, 0, r + ahead, 1, row_bytes);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    uint16_t* o = out + r * dimp;
    int64_t c = 0;
    for (; c < body; c += 32) {
      const __m512 lo = load16<DT>(row, c), hi = load16<DT>(row, c + 16);
      acc0 = _mm512_fmadd_ps(lo, lo, acc0);
      acc1 = _mm512_fmadd_ps(hi, hi, acc1);
      _mm512_store_si512(o + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    if (c < dimp) {  // lanes past `dim` load as zero: the padding the kernel relies on
      const __m512 lo = load16m<DT>(row, c, lanes(dim - c));
      const __m512 hi = c + 16 < dim ? load16m<DT>(row, c + 16, lanes(dim - c - 16)) : _mm512_setzero_ps();
      acc0 = _mm512_fmadd_ps(lo, lo, acc0);
      acc1 = _mm512_fmadd_ps(hi, hi, acc1);
      _mm512_store_si512(o + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    if (sq) sq[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  }
}

// Lane i of the result = horizontal sum of v[i] (8 vectors).
inline __m256 reduce8(const __m512* v) {
  __m256 h[8];
  for (int i = 0; i < 8; ++i)
    h[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[i]), 1)));
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// R rows x QB queries: 24 accumulators for 2 x 12, each 64-byte row load feeding 12
// vdpbf16ps (the same shape as the float32 kernel in dense_avx512.cpp).
template <int R, int QB>
inline void micro(const uint16_t* x, int64_t dimp, const uint16_t* q, float* dots, int64_t ld) {
  __m512 acc[QB * R];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t c = 0; c < dimp; c += 32) {
    __m512bh xv[R];
    for (int r = 0; r < R; ++r) xv[r] = (__m512bh)_mm512_load_si512(x + r * dimp + c);
    for (int j = 0; j < QB; ++j) {
      __m512bh qv = (__m512bh)_mm512_load_si512(q + j * dimp + c);
      if (R > 1) __asm__("" : "+v"(qv));  // one query load per R rows, see dense_avx512.cpp
      for (int r = 0; r < R; ++r) acc[j * R + r] = _mm512_dpbf16_ps(acc[j * R + r], xv[r], qv);
    }
  }
  constexpr int kN = QB * R;
  alignas(32) float out[(kN + 7) / 8 * 8];
  for (int i = 0; i < kN; i += 8) {
    __m512 v[8];
    for (int t = 0; t < 8; ++t) v[t] = i + t < kN ? acc[i + t] : _mm512_setzero_ps();
    _mm256_store_ps(out + i, reduce8(v));
  }
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < R; ++r) dots[j * ld + r] = out[j * R + r];
}

template <int R, int QB>
void rows_block(const uint16_t* x, int64_t nrows, int64_t dimp, const uint16_t* q, float* dots,
                int64_t ld) {
  int64_t r0 = 0;
  for (; r0 + R <= nrows; r0 += R) micro<R, QB>(x + r0 * dimp, dimp, q, dots + r0, ld);
  for (; r0 < nrows; ++r0) micro<1, QB>(x + r0 * dimp, dimp, q, dots + r0, ld);
}

}  // namespace

void to_bf16_avx512(const void* base, int dtype, int64_t stride, int64_t nrows, int64_t dim,
                    int64_t dimp, uint16_t* out, float* sq) {
  switch (dtype) {
    case kF32: return to_bf16_impl<kF32>(base, stride, nrows, dim, dimp, out, sq);
    case kF16: return to_bf16_impl<kF16>(base, stride, nrows, dim, dimp, out, sq);
    default: return to_bf16_impl<kBF16>(base, stride, nrows, dim, dimp, out, sq);
  }
}

void dots_bf16_avx512(const uint16_t* x, int64_t nrows, int64_t dimp, const uint16_t* q,
                      int64_t nq, float* dots, int64_t ld) {
  int64_t j = 0;
  for (; j + 12 <= nq; j += 12) rows_block<2, 12>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
  for (; j + 4 <= nq; j += 4) rows_block<4, 4>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
  for (; j < nq; ++j) rows_block<4, 1>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
}

}  // namespace dense
}  // namespace nestvec
