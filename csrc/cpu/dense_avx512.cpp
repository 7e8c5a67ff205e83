// AVX-512 dense kernels. A register tile of R rows x QB queries keeps one 16-lane
// accumulator per pair (plus one per row for the prefix norm), streaming the rows
// once per query block: loads are widened to float32 in registers (F16C
// vcvtph2ps for f16, a 16-bit shift for bf16) and never written back. Row-major
// rows need one horizontal sum per pair at the end; a hadd tree does 8 at a time.
#include <immintrin.h>

#include "nestvec/dense.h"

namespace nestvec {
namespace dense {
namespace {

template <int DT>
inline __m512 load16(const char* row, int64_t c) {
  if (DT == kF32) return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + c);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * c));
  if (DT == kF16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

template <int DT>
inline __m512 load16m(const char* row, int64_t c, __mmask16 m) {
  if (DT == kF32) return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + c);
  const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * c);
  if (DT == kF16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
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

inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
}

// out[i] = horizontal sum of acc[i], i < N (a reduce8 tree per 8 accumulators).
template <int N>
inline void reduce_all(const __m512* acc, float* out) {
  for (int i = 0; i < N; i += 8) {
    __m512 v[8];
    for (int t = 0; t < 8; ++t) v[t] = i + t < N ? acc[i + t] : _mm512_setzero_ps();
    _mm256_store_ps(out + i, reduce8(v));
  }
}

// pp (optional): R rows read a few blocks later, whose lines are prefetched one per row
// per 64 bytes consumed here, spread through the loop (see rows_block).
template <int DT, int R, int QB, bool NORM>
inline void micro(const char* const* rp, int64_t dim, const float* q, int64_t qs, float* dots,
                  int64_t ld, float* sq, const char* const* pp = nullptr) {
  __m512 acc[QB * R + (NORM ? R : 0)];
  for (auto& a : acc) a = _mm512_setzero_ps();
  constexpr int64_t kEs = DT == kF32 ? 4 : 2, kLine = 64 / kEs;  // values per line
  int64_t c = 0;
  for (; c + 16 <= dim; c += 16) {
    if (pp && c % kLine == 0) prefetch_step<R>(pp, c * kEs, dim * kEs);
    __m512 x[R];
    for (int r = 0; r < R; ++r) x[r] = load16<DT>(rp[r], c);
    if (NORM)
      for (int r = 0; r < R; ++r) acc[QB * R + r] = _mm512_fmadd_ps(x[r], x[r], acc[QB * R + r]);
    for (int j = 0; j < QB; ++j) {
      __m512 qv = _mm512_load_ps(q + j * qs + c);
      // Keep the query in a register: folded into each FMA it would be loaded R times,
      // and the load ports, not the FMA units, would bound the 2 x 12 tile.
      if (R > 1) __asm__("" : "+v"(qv));
      for (int r = 0; r < R; ++r) acc[j * R + r] = _mm512_fmadd_ps(x[r], qv, acc[j * R + r]);
    }
  }
  if (c < dim) {  // queries are zero-padded; rows are not: mask their tail
    const __mmask16 m = __mmask16((1u << (dim - c)) - 1);
    __m512 x[R];
    for (int r = 0; r < R; ++r) x[r] = load16m<DT>(rp[r], c, m);
    if (NORM)
      for (int r = 0; r < R; ++r) acc[QB * R + r] = _mm512_fmadd_ps(x[r], x[r], acc[QB * R + r]);
    for (int j = 0; j < QB; ++j) {
      const __m512 qv = _mm512_load_ps(q + j * qs + c);
      for (int r = 0; r < R; ++r) acc[j * R + r] = _mm512_fmadd_ps(x[r], qv, acc[j * R + r]);
    }
  }
  constexpr int kN = QB * R + (NORM ? R : 0);
  alignas(32) float out[(kN + 7) / 8 * 8];
  reduce_all<kN>(acc, out);
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < R; ++r) dots[j * ld + r] = out[j * R + r];
  if (NORM)
    for (int r = 0; r < R; ++r) sq[r] = out[QB * R + r];
}

// The first query block reads the rows from memory (pf is set exactly then): each
// row is a short stream the hardware prefetcher barely trains on, so the prefix of
// the rows ~12 KiB ahead is prefetched explicitly (prefetch_targets in dense.h),
// spread through the micro-kernel's loop, one line per row at a time. Issued as one
// burst per block (R rows x all their lines), the prefetches overflowed the core's
// miss queue and the scan took the time of a bare read plus the arithmetic (1M x 768
// f16, prefix 256, one query, 8 rows, 2 cores: 13.5 -> 12.6 ms, 19.2 -> 17.4 in a
// slower bandwidth phase; prefix 128: 9.2 -> 6.9; a bare read of the same bytes
// 12-14 / 16-17 / 6.4 ms).
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

// One contiguous stream of whole rows (stride == dim): one row at a time keeps the
// hardware prefetcher on a single sequential stream (1M x 768 f16, one query: 44 ms per
// core against 60 ms with four rows interleaved); two partial sums per accumulator
// hide the FMA latency of the single row. Up to 12 queries: 26 accumulators. The row
// ~12 KiB on is prefetched a line per step, not all at once (2 cores: 33.5 -> 31.2 ms,
// a bare read of the same 1.5 GB 30.7).
template <int DT, int QB, bool NORM>
void stream_rows(const char* base, int64_t nrows, int64_t dim, const float* q, int64_t qs,
                 float* dots, int64_t ld, float* sq, bool pf) {
  const int64_t row_bytes = dim * (DT == kF32 ? 4 : 2);
  const int64_t ahead = 12288 / row_bytes + 1;
  constexpr int64_t kEs = DT == kF32 ? 4 : 2;
  for (int64_t r = 0; r < nrows; ++r) {
    const char* row = base + r * row_bytes;
    // the row `ahead` rows on, a line or two per step (as an integer: it may lie past
    // the table; prefetches do not fault)
    const uintptr_t pfrow = reinterpret_cast<uintptr_t>(row) + uintptr_t(ahead * row_bytes);
    __m512 a0[QB], a1[QB], n0 = _mm512_setzero_ps(), n1 = _mm512_setzero_ps();
    for (int j = 0; j < QB; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= dim; c += 32) {
      if (pf) prefetch_bytes(pfrow, c * kEs, (c + 32) * kEs);
      const __m512 x0 = load16<DT>(row, c), x1 = load16<DT>(row, c + 16);
      if (NORM) {
        n0 = _mm512_fmadd_ps(x0, x0, n0);
        n1 = _mm512_fmadd_ps(x1, x1, n1);
      }
      for (int j = 0; j < QB; ++j) {
        a0[j] = _mm512_fmadd_ps(x0, _mm512_load_ps(q + j * qs + c), a0[j]);
        a1[j] = _mm512_fmadd_ps(x1, _mm512_load_ps(q + j * qs + c + 16), a1[j]);
      }
    }
    if (pf) prefetch_bytes(pfrow, c * kEs, row_bytes);
    for (; c < dim; c += 16) {  // queries are zero-padded to 16; rows are masked
      const __mmask16 m = dim - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (dim - c)) - 1);
      const __m512 x0 = load16m<DT>(row, c, m);
      if (NORM) n0 = _mm512_fmadd_ps(x0, x0, n0);
      for (int j = 0; j < QB; ++j) a0[j] = _mm512_fmadd_ps(x0, _mm512_load_ps(q + j * qs + c), a0[j]);
    }
    for (int j = 0; j < QB; ++j) dots[j * ld + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[j], a1[j]));
    if (NORM) sq[r] = _mm512_reduce_add_ps(_mm512_add_ps(n0, n1));
  }
}

template <int DT, bool NORM>
void query_block(const char* base, int64_t stride_b, const int64_t* rows, int64_t nrows,
                 int64_t dim, const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld,
                 float* sq, bool pf) {
  // Whole contiguous rows: one sequential stream, any block of queries (1M x 768 f16,
  // 2 cores: batch 4 / 8 / 12 in 36 / 44 / 55 ms against 58 / 57 / 69 with interleaved
  // row tiles, which break the stream the hardware prefetcher follows).
  if (!rows && stride_b == dim * (DT == kF32 ? 4 : 2)) {
    if (nq >= 12) return stream_rows<DT, 12, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
    if (nq >= 8) return stream_rows<DT, 8, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
    if (nq >= 4) return stream_rows<DT, 4, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
    if (nq >= 2) return stream_rows<DT, 2, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
    return stream_rows<DT, 1, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
  }
  // Strided prefixes and indexed rows: many short streams, so several rows in flight;
  // larger blocks are FMA-bound: 2 rows x 12 queries = 24 accumulators, each row load
  // feeding 12 FMAs.
  if (nq >= 12) return rows_block<DT, 2, 12, NORM>(base, stride_b, rows, nrows, dim, q, qs, dots, ld, sq, pf);
  if (nq >= 8) return rows_block<DT, 2, 8, NORM>(base, stride_b, rows, nrows, dim, q, qs, dots, ld, sq, pf);
  if (nq >= 4) return rows_block<DT, 4, 4, NORM>(base, stride_b, rows, nrows, dim, q, qs, dots, ld, sq, pf);
  if (nq >= 2) return rows_block<DT, 4, 2, NORM>(base, stride_b, rows, nrows, dim, q, qs, dots, ld, sq, pf);
  // One query: 4 rows in flight. With the prefetches spread through the loop, 4 rows
  // beat 8 (prefix 256 of 1M x 768 f16, 2 cores: 11.2 against 12.6 ms, 16.8 against
  // 18.1 in a slower phase; prefix 128: 6.0 against 7.1); 2 rows are slower (23 ms).
  return rows_block<DT, 4, 1, NORM>(base, stride_b, rows, nrows, dim, q, qs, dots, ld, sq, pf);
}

template <int DT>
void dots_impl(const void* base, int64_t stride, const int64_t* rows, int64_t nrows, int64_t dim,
               const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq) {
  const char* b = static_cast<const char*>(base);
  const int64_t sb = stride * (DT == kF32 ? 4 : 2);
  int64_t j = 0;
  while (j < nq) {
    const int64_t left = nq - j;
    const int64_t nb = left >= 12 ? 12 : left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    // The row norm comes with the first query block (the rows are read anyway).
    if (j == 0 && sq)
      query_block<DT, true>(b, sb, rows, nrows, dim, q, qs, nb, dots, ld, sq, true);
    else
      query_block<DT, false>(b, sb, rows, nrows, dim, q + j * qs, qs, nb, dots + j * ld, ld,
                             nullptr, j == 0);
    j += nb;
  }
}

// ------------------------------------------------------------------ bf16 first pass
// AVX512-BF16 first pass of the two-pass dense top-k (dense_bf16.cpp). A tile of rows
// is rounded once to bfloat16 (packed, zero-padded to 32 values) while its exact
// float32 prefix norms are taken; vdpbf16ps then multiplies 32 value pairs per
// instruction where vfmadd231ps does 16, so a compute-bound batch scores about
// twice as fast. The scores are approximate; the driver bounds their error and
// rescores the shortlist exactly.

// Rows are streamed from memory once per batch; like the float32 kernels, the rows
// ~12 KiB ahead are prefetched (a prefix is a short stream the hardware barely follows).
template <int DT>
void to_bf16_impl(const void* base, int64_t stride, int64_t nrows, int64_t dim, int64_t dimp,
                  uint16_t* out, float* sq) {
  const int64_t sb = stride * (DT == kF32 ? 4 : 2), row_bytes = dim * (DT == kF32 ? 4 : 2);
  const int64_t ahead = 12288 / row_bytes + 1;
  const int64_t body = dim / 32 * 32;
  constexpr int64_t kEs = DT == kF32 ? 4 : 2;
  for (int64_t r = 0; r < nrows; ++r) {
    const char* row = static_cast<const char*>(base) + r * sb;
    // the row `ahead` rows on, a line or two per step as in stream_rows (an integer:
    // it may lie past the table)
    const uintptr_t pfrow = reinterpret_cast<uintptr_t>(row) + uintptr_t(ahead * sb);
    prefetch_l1(pfrow + uintptr_t(row_bytes - 1));  // the extra line of a mid-line start
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    uint16_t* o = out + r * dimp;
    int64_t c = 0;
    for (; c < body; c += 32) {
      prefetch_bytes(pfrow, c * kEs, (c + 32) * kEs);
      const __m512 lo = load16<DT>(row, c), hi = load16<DT>(row, c + 16);
      acc0 = _mm512_fmadd_ps(lo, lo, acc0);
      acc1 = _mm512_fmadd_ps(hi, hi, acc1);
      _mm512_store_si512(o + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    prefetch_bytes(pfrow, c * kEs, row_bytes);
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

// R rows x QB queries: 24 accumulators for 2 x 12, each 64-byte row load feeding 12
// vdpbf16ps (the same shape as the float32 micro above).
template <int R, int QB>
inline void micro_bf16(const uint16_t* x, int64_t dimp, const uint16_t* q, float* dots, int64_t ld) {
  __m512 acc[QB * R];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t c = 0; c < dimp; c += 32) {
    __m512bh xv[R];
    for (int r = 0; r < R; ++r) xv[r] = (__m512bh)_mm512_load_si512(x + r * dimp + c);
    for (int j = 0; j < QB; ++j) {
      __m512bh qv = (__m512bh)_mm512_load_si512(q + j * dimp + c);
      if (R > 1) __asm__("" : "+v"(qv));  // one query load per R rows, as in micro
      for (int r = 0; r < R; ++r) acc[j * R + r] = _mm512_dpbf16_ps(acc[j * R + r], xv[r], qv);
    }
  }
  constexpr int kN = QB * R;
  alignas(32) float out[(kN + 7) / 8 * 8];
  reduce_all<kN>(acc, out);
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < R; ++r) dots[j * ld + r] = out[j * R + r];
}

template <int R, int QB>
void rows_block_bf16(const uint16_t* x, int64_t nrows, int64_t dimp, const uint16_t* q, float* dots,
                int64_t ld) {
  int64_t r0 = 0;
  for (; r0 + R <= nrows; r0 += R) micro_bf16<R, QB>(x + r0 * dimp, dimp, q, dots + r0, ld);
  for (; r0 < nrows; ++r0) micro_bf16<1, QB>(x + r0 * dimp, dimp, q, dots + r0, ld);
}

}  // namespace

void dots_avx512(const void* base, int dtype, int64_t stride, const int64_t* rows, int64_t nrows,
                 int64_t dim, const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld,
                 float* sq) {
  switch (dtype) {
    case kF32: return dots_impl<kF32>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
    case kF16: return dots_impl<kF16>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
    default: return dots_impl<kBF16>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
  }
}

int64_t select_avx512(const float* dots, const float* rowf, int64_t nrows, int metric, float a,
                      float b, float thr, const uint8_t* allow, uint32_t* hit_rows,
                      float* hit_keys) {
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), vt = _mm512_set1_ps(thr);
  const __m512 two = _mm512_set1_ps(2.f);
  const __m512i step = _mm512_set1_epi32(16);
  __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t n = 0;
  for (int64_t r = 0; r < nrows; r += 16, ids = _mm512_add_epi32(ids, step)) {
    const __mmask16 valid = nrows - r >= 16 ? __mmask16(0xffff) : __mmask16((1u << (nrows - r)) - 1);
    const __m512 d = _mm512_maskz_loadu_ps(valid, dots + r);
    __m512 key;
    if (metric == kCosine)
      key = _mm512_mul_ps(_mm512_mul_ps(d, va), _mm512_maskz_loadu_ps(valid, rowf + r));
    else if (metric == kIP)
      key = d;
    else
      key = _mm512_sub_ps(_mm512_fmsub_ps(two, d, _mm512_maskz_loadu_ps(valid, rowf + r)), vb);
    __mmask16 m = _mm512_mask_cmp_ps_mask(valid, key, vt, _CMP_GT_OQ);
    if (!m) continue;
    if (allow) {
      const __m128i al = _mm_maskz_loadu_epi8(valid, allow + r);
      m &= _mm_test_epi8_mask(al, al);
      if (!m) continue;
    }
    _mm512_mask_compressstoreu_epi32(hit_rows + n, m, ids);
    _mm512_mask_compressstoreu_ps(hit_keys + n, m, key);
    n += __builtin_popcount(m);
  }
  return n;
}

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
  for (; j + 12 <= nq; j += 12) rows_block_bf16<2, 12>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
  for (; j + 4 <= nq; j += 4) rows_block_bf16<4, 4>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
  for (; j < nq; ++j) rows_block_bf16<4, 1>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
}

}  // namespace dense
}  // namespace nestvec
