// AVX2 Hamming tile: nibble-LUT popcount (pshufb) summed with psadbw, 32 bytes a step.
#include <immintrin.h>

#include <cstring>

#include "nestvec/hamming.h"

namespace nestvec {
namespace hamming {
namespace {

inline __m256i popcnt_bytes(__m256i v) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

inline uint32_t distance(const uint8_t* a, const uint8_t* b, int64_t nbytes) {
  __m256i acc = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 32 <= nbytes; i += 32) {
    const __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i*)(a + i)),
                                       _mm256_loadu_si256((const __m256i*)(b + i)));
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(popcnt_bytes(x), _mm256_setzero_si256()));
  }
  uint64_t d = uint64_t(_mm256_extract_epi64(acc, 0)) + uint64_t(_mm256_extract_epi64(acc, 1)) +
               uint64_t(_mm256_extract_epi64(acc, 2)) + uint64_t(_mm256_extract_epi64(acc, 3));
  for (; i + 8 <= nbytes; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    d += uint64_t(_mm_popcnt_u64(x ^ y));
  }
  for (; i < nbytes; ++i) d += uint64_t(_mm_popcnt_u32(unsigned(a[i] ^ b[i])));
  return uint32_t(d);
}

}  // namespace

void tile_avx2(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* queries,
               int64_t nq, int64_t qs, int64_t nbytes, const uint32_t* thr, uint32_t* hit_rows,
               uint32_t* hit_dist, int64_t cap, uint32_t* hit_count) {
  for (int64_t q = 0; q < nq; ++q) {
    const uint8_t* qv = queries + q * qs;
    const uint32_t t = thr[q];
    uint32_t n = 0;
    uint32_t* hr = hit_rows + q * cap;
    uint32_t* hd = hit_dist + q * cap;
    for (int64_t r = 0; r < nrows; ++r) {
      const uint32_t d = distance(codes + r * cs, qv, nbytes);
      if (d < t) {
        hr[n] = uint32_t(r);
        hd[n] = d;
        ++n;
      }
    }
    hit_count[q] = n;
  }
}

}  // namespace hamming
}  // namespace nestvec
