// AVX2 + F16C dense kernel: the AVX-512 design (dense_avx512.cpp) with 8 lanes and
// 16 registers, so smaller register tiles; the last dim % 8 values are done in scalar.
#include <immintrin.h>

#include <cstring>

#include "nestvec/dense.h"

namespace nestvec {
namespace dense {
namespace {

template <int DT>
inline __m256 load8(const char* row, int64_t c) {
  if (DT == kF32) return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + c);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * c));
  if (DT == kF16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <int DT>
inline float load1(const char* row, int64_t c) {
  if (DT == kF32) return reinterpret_cast<const float*>(row)[c];
  uint16_t h;
  std::memcpy(&h, row + 2 * c, 2);
  if (DT == kF16) return _cvtsh_ss(h);
  const uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __m256 reduce8(const __m256* h) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// pp (optional): R rows read a few blocks later, whose lines are prefetched one per row
// per 64 bytes consumed here (see rows_block).
template <int DT, int R, int QB, bool NORM>
inline void micro(const char* const* rp, int64_t dim, const float* q, int64_t qs, float* dots,
                  int64_t ld, float* sq, const char* const* pp = nullptr) {
  constexpr int kN = QB * R + (NORM ? R : 0);
  __m256 acc[kN];
  for (auto& a : acc) a = _mm256_setzero_ps();
  constexpr int64_t kEs = DT == kF32 ? 4 : 2, kLine = 64 / kEs;  // values per line
  int64_t c = 0;
  for (; c + 8 <= dim; c += 8) {
    if (pp && c % kLine == 0) prefetch_step<R>(pp, c * kEs, dim * kEs);
    __m256 x[R];
    for (int r = 0; r < R; ++r) x[r] = load8<DT>(rp[r], c);
    if (NORM)
      for (int r = 0; r < R; ++r) acc[QB * R + r] = _mm256_fmadd_ps(x[r], x[r], acc[QB * R + r]);
    for (int j = 0; j < QB; ++j) {
      __m256 qv = _mm256_load_ps(q + j * qs + c);
      if (R > 1) __asm__("" : "+x"(qv));  // one load per query, not one per FMA
      for (int r = 0; r < R; ++r) acc[j * R + r] = _mm256_fmadd_ps(x[r], qv, acc[j * R + r]);
    }
  }
  alignas(32) float out[(kN + 7) / 8 * 8];
  for (int i = 0; i < kN; i += 8) {
    __m256 v[8];
    for (int t = 0; t < 8; ++t) v[t] = i + t < kN ? acc[i + t] : _mm256_setzero_ps();
    _mm256_store_ps(out + i, reduce8(v));
  }
  for (; c < dim; ++c) {
    for (int r = 0; r < R; ++r) {
      const float x = load1<DT>(rp[r], c);
      for (int j = 0; j < QB; ++j) out[j * R + r] += x * q[j * qs + c];
      if (NORM) out[QB * R + r] += x * x;
    }
  }
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < R; ++r) dots[j * ld + r] = out[j * R + r];
  if (NORM)
    for (int r = 0; r < R; ++r) sq[r] = out[QB * R + r];
}

// The first query block reads the rows from memory (pf is set exactly then): each
// row is a short stream the hardware prefetcher barely trains on, so the prefix of
// the rows ~12 KiB ahead is prefetched explicitly, spread through the micro-kernel's
// loop (prefetch_targets in dense.h; dense_avx512.cpp has the measurements).
template <int DT, int R, int QB, bool NORM>
void rows_block(const char* base, int64_t stride_b, const int64_t* rows, int64_t nrows,
                int64_t dim, const float* q, int64_t qs, float* dots, int64_t ld, float* sq,
                bool pf) {
  int64_t r0 = 0;
  const char* rp[R];
  const char* pp[R];
  const int64_t row_bytes = dim * (DT == kF32 ? 4 : 2);
  const int64_t ahead = (12288 / row_bytes + R) / R * R;
  for (; r0 + R <= nrows; r0 += R) {
    for (int r = 0; r < R; ++r) rp[r] = base + (rows ? rows[r0 + r] : r0 + r) * stride_b;
    if (pf) prefetch_targets<R>(base, stride_b, rows, nrows, r0, ahead, rp, pp);
    micro<DT, R, QB, NORM>(rp, dim, q, qs, dots + r0, ld, NORM ? sq + r0 : nullptr,
                           pf ? pp : nullptr);
  }
  for (; r0 < nrows; ++r0) {
    rp[0] = base + (rows ? rows[r0] : r0) * stride_b;
    micro<DT, 1, QB, NORM>(rp, dim, q, qs, dots + r0, ld, NORM ? sq + r0 : nullptr);
  }
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// One contiguous stream of whole rows (stride == dim), one row at a time, as in
// dense_avx512.cpp: P partial sums per accumulator hide the FMA latency of the single
// row (one accumulator per query, as the register tile had, left it latency-bound: 1M x
// 768 f16, one query, 2 cores: 35 -> 22 ms, against a bare read of 20-21 ms). The row
// `ahead` rows on is prefetched a line at a time as the loop consumes this one.
template <int DT, int QB, bool NORM>
void stream_rows(const char* base, int64_t nrows, int64_t dim, const float* q, int64_t qs,
                 float* dots, int64_t ld, float* sq, bool pf) {
  constexpr int P = QB == 1 ? 4 : 2;
  constexpr int64_t kEs = DT == kF32 ? 4 : 2;
  const int64_t row_bytes = dim * kEs;
  const int64_t ahead = 12288 / row_bytes + 1;
  for (int64_t r = 0; r < nrows; ++r) {
    const char* row = base + r * row_bytes;
    // as an integer: it may lie past the table (prefetches do not fault)
    const uintptr_t pfrow = reinterpret_cast<uintptr_t>(row) + uintptr_t(ahead * row_bytes);
    __m256 a[QB][P], n[P];
    for (int p = 0; p < P; ++p) {
      n[p] = _mm256_setzero_ps();
      for (int j = 0; j < QB; ++j) a[j][p] = _mm256_setzero_ps();
    }
    int64_t c = 0;
    for (; c + 8 * P <= dim; c += 8 * P) {
      if (pf) prefetch_bytes(pfrow, c * kEs, (c + 8 * P) * kEs);
      for (int p = 0; p < P; ++p) {
        const __m256 x = load8<DT>(row, c + 8 * p);
        if (NORM) n[p] = _mm256_fmadd_ps(x, x, n[p]);
        for (int j = 0; j < QB; ++j)
          a[j][p] = _mm256_fmadd_ps(x, _mm256_load_ps(q + j * qs + c + 8 * p), a[j][p]);
      }
    }
    if (pf) prefetch_bytes(pfrow, c * kEs, row_bytes);
    for (; c + 8 <= dim; c += 8) {
      const __m256 x = load8<DT>(row, c);
      if (NORM) n[0] = _mm256_fmadd_ps(x, x, n[0]);
      for (int j = 0; j < QB; ++j) a[j][0] = _mm256_fmadd_ps(x, _mm256_load_ps(q + j * qs + c), a[j][0]);
    }
    float tail[QB + 1] = {};
    for (; c < dim; ++c) {
      const float x = load1<DT>(row, c);
      for (int j = 0; j < QB; ++j) tail[j] += x * q[j * qs + c];
      if (NORM) tail[QB] += x * x;
    }
    for (int p = 1; p < P; ++p) {
      n[0] = _mm256_add_ps(n[0], n[p]);
      for (int j = 0; j < QB; ++j) a[j][0] = _mm256_add_ps(a[j][0], a[j][p]);
    }
    for (int j = 0; j < QB; ++j) dots[j * ld + r] = hsum(a[j][0]) + tail[j];
    if (NORM) sq[r] = hsum(n[0]) + tail[QB];
  }
}

template <int DT, bool NORM>
void query_block(const char* base, int64_t sb, const int64_t* rows, int64_t nrows, int64_t dim,
                 const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq,
                 bool pf) {
  if (nq >= 4) return rows_block<DT, 2, 4, NORM>(base, sb, rows, nrows, dim, q, qs, dots, ld, sq, pf);
  // Whole contiguous rows at batch 1-3: one row at a time keeps the hardware prefetcher
  // on one sequential stream (1M x 768 f16 under this ISA: batch 1 / 2 in 39 / 45 ms
  // against 54 / 50 with interleaved rows; at batch 4+ the per-row reductions cost more).
  if (!rows && sb == dim * (DT == kF32 ? 4 : 2)) {
    if (nq >= 2) return stream_rows<DT, 2, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
    return stream_rows<DT, 1, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
  }
  if (nq >= 2) return rows_block<DT, 2, 2, NORM>(base, sb, rows, nrows, dim, q, qs, dots, ld, sq, pf);
  return rows_block<DT, 4, 1, NORM>(base, sb, rows, nrows, dim, q, qs, dots, ld, sq, pf);
}

template <int DT>
void dots_impl(const void* base, int64_t stride, const int64_t* rows, int64_t nrows, int64_t dim,
               const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq) {
  const char* b = static_cast<const char*>(base);
  const int64_t sb = stride * (DT == kF32 ? 4 : 2);
  int64_t j = 0;
  while (j < nq) {
    const int64_t left = nq - j;
    const int64_t nb = left >= 4 ? 4 : left >= 2 ? 2 : 1;
    if (j == 0 && sq)
      query_block<DT, true>(b, sb, rows, nrows, dim, q, qs, nb, dots, ld, sq, true);
    else
      query_block<DT, false>(b, sb, rows, nrows, dim, q + j * qs, qs, nb, dots + j * ld, ld,
                             nullptr, j == 0);
    j += nb;
  }
}

}  // namespace

void dots_avx2(const void* base, int dtype, int64_t stride, const int64_t* rows, int64_t nrows,
               int64_t dim, const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld,
               float* sq) {
  switch (dtype) {
    case kF32: return dots_impl<kF32>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
    case kF16: return dots_impl<kF16>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
    default: return dots_impl<kBF16>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
  }
}

}  // namespace dense
}  // namespace nestvec
