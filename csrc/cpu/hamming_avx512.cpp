// AVX-512 VPOPCNTDQ Hamming tile. A register tile of 8 rows x QB queries keeps one
// accumulator per pair; the 8 per-row accumulators of a query are reduced with a
// transpose tree (21 ops for 8 rows instead of 8 horizontal sums), then compared
// with the query's threshold in one mask.
#include <immintrin.h>

#include "nestvec/hamming.h"

namespace nestvec {
namespace hamming {
namespace {

// [a0..a7] -> one vector whose lane j holds the sum of aj's lanes.
inline __m512i reduce8(const __m512i* a) {
  __m512i b0 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[0], a[1]), _mm512_unpackhi_epi64(a[0], a[1]));
  __m512i b1 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[2], a[3]), _mm512_unpackhi_epi64(a[2], a[3]));
  __m512i b2 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[4], a[5]), _mm512_unpackhi_epi64(a[4], a[5]));
  __m512i b3 = _mm512_add_epi64(_mm512_unpacklo_epi64(a[6], a[7]), _mm512_unpackhi_epi64(a[6], a[7]));
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  __m512i c0 = _mm512_add_epi64(_mm512_shuffle_i64x2(b0, b1, even), _mm512_shuffle_i64x2(b0, b1, odd));
  __m512i c1 = _mm512_add_epi64(_mm512_shuffle_i64x2(b2, b3, even), _mm512_shuffle_i64x2(b2, b3, odd));
  return _mm512_add_epi64(_mm512_shuffle_i64x2(c0, c1, even), _mm512_shuffle_i64x2(c0, c1, odd));
}

template <int QB>
inline void block8(const uint8_t* const* rows, const uint8_t* const* qv, int64_t nbytes,
                   __m512i* sums) {
  __m512i acc[QB][8];
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < 8; ++r) acc[j][r] = _mm512_setzero_si512();
  int64_t c = 0;
  for (; c + 64 <= nbytes; c += 64) {
    __m512i q[QB];
    for (int j = 0; j < QB; ++j) q[j] = _mm512_loadu_si512(qv[j] + c);
    for (int r = 0; r < 8; ++r) {
      const __m512i x = _mm512_loadu_si512(rows[r] + c);
      for (int j = 0; j < QB; ++j)
        acc[j][r] = _mm512_add_epi64(acc[j][r], _mm512_popcnt_epi64(_mm512_xor_si512(x, q[j])));
    }
  }
  if (c < nbytes) {
    const __mmask64 m = ~0ULL >> (64 - (nbytes - c));
    __m512i q[QB];
    for (int j = 0; j < QB; ++j) q[j] = _mm512_maskz_loadu_epi8(m, qv[j] + c);
    for (int r = 0; r < 8; ++r) {
      const __m512i x = _mm512_maskz_loadu_epi8(m, rows[r] + c);
      for (int j = 0; j < QB; ++j)
        acc[j][r] = _mm512_add_epi64(acc[j][r], _mm512_popcnt_epi64(_mm512_xor_si512(x, q[j])));
    }
  }
  for (int j = 0; j < QB; ++j) sums[j] = reduce8(acc[j]);
}

template <int QB>
inline void run_queries(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* const* qv,
                        int64_t nbytes, const uint32_t* thr, uint32_t* const* hr,
                        uint32_t* const* hd, uint32_t* cnt) {
  __m512i tv[QB];
  for (int j = 0; j < QB; ++j) tv[j] = _mm512_set1_epi64(int64_t(thr[j]));
  alignas(64) uint64_t buf[8];
  for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
    const int valid = int(nrows - r0 < 8 ? nrows - r0 : 8);
    const uint8_t* rows[8];
    // Past the end of the tile, repeat the first row and mask its lanes out.
    for (int r = 0; r < 8; ++r) rows[r] = codes + (r0 + (r < valid ? r : 0)) * cs;
    __m512i sums[QB];
    block8<QB>(rows, qv, nbytes, sums);
    const __mmask8 vmask = __mmask8((1u << valid) - 1);
    for (int j = 0; j < QB; ++j) {
      __mmask8 m = _mm512_mask_cmplt_epu64_mask(vmask, sums[j], tv[j]);
      if (!m) continue;
      _mm512_store_si512(buf, sums[j]);
      while (m) {
        const int r = __builtin_ctz(m);
        m &= m - 1;
        hr[j][cnt[j]] = uint32_t(r0 + r);
        hd[j][cnt[j]] = uint32_t(buf[r]);
        ++cnt[j];
      }
    }
  }
}

}  // namespace

void tile_avx512(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* queries,
                 int64_t nq, int64_t qs, int64_t nbytes, const uint32_t* thr, uint32_t* hit_rows,
                 uint32_t* hit_dist, int64_t cap, uint32_t* hit_count) {
  int64_t q = 0;
  for (; q + 2 <= nq; q += 2) {
    const uint8_t* qv[2] = {queries + q * qs, queries + (q + 1) * qs};
    uint32_t* hr[2] = {hit_rows + q * cap, hit_rows + (q + 1) * cap};
    uint32_t* hd[2] = {hit_dist + q * cap, hit_dist + (q + 1) * cap};
    hit_count[q] = hit_count[q + 1] = 0;
    run_queries<2>(codes, nrows, cs, qv, nbytes, thr + q, hr, hd, hit_count + q);
  }
  for (; q < nq; ++q) {
    const uint8_t* qv[1] = {queries + q * qs};
    uint32_t* hr[1] = {hit_rows + q * cap};
    uint32_t* hd[1] = {hit_dist + q * cap};
    hit_count[q] = 0;
    run_queries<1>(codes, nrows, cs, qv, nbytes, thr + q, hr, hd, hit_count + q);
  }
}

}  // namespace hamming
}  // namespace nestvec
