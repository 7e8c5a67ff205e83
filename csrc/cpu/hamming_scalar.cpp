// Portable Hamming tile: 64-bit words, then the byte tail.
#include <cstring>

#include "nestvec/hamming.h"

namespace nestvec {
namespace hamming {

static inline uint32_t distance(const uint8_t* a, const uint8_t* b, int64_t nbytes) {
  uint32_t d = 0;
  int64_t i = 0;
  for (; i + 8 <= nbytes; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    d += uint32_t(__builtin_popcountll(x ^ y));
  }
  for (; i < nbytes; ++i) d += uint32_t(__builtin_popcount(unsigned(a[i] ^ b[i])));
  return d;
}

void tile_scalar(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* queries,
                 int64_t nq, int64_t qs, int64_t nbytes, const uint32_t* thr,
                 uint32_t* hit_rows, uint32_t* hit_dist, int64_t cap, uint32_t* hit_count) {
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
