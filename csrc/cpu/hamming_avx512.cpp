// AVX-512 VPOPCNTDQ Hamming tile. A register tile of 8 rows x QB queries keeps one
// accumulator per pair; the 8 per-row accumulators of a query are reduced with a
// transpose tree (21 ops for 8 rows instead of 8 horizontal sums), then compared
// with the query's threshold in one mask.
#include <immintrin.h>

#include <algorithm>

#include "nestvec/hamming.h"
#include "nestvec/prefetch.h"

namespace nestvec {
namespace hamming {
namespace {

// Same, at half the shuffles: sums fit in 32 bits, so rows r and r+4 share a qword
// (low / high dword) before the tree. Result as 16 dwords: positions {0,2,8,10} hold
// rows {0,1,2,3} and positions {1,3,9,11} rows {4,5,6,7} (see kPosRow).
inline __m512i reduce8_packed(const __m512i* a) {
  __m512i p[4];
  for (int i = 0; i < 4; ++i) p[i] = _mm512_add_epi64(a[i], _mm512_slli_epi64(a[i + 4], 32));
  __m512i b0 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[0], p[1]), _mm512_unpackhi_epi64(p[0], p[1]));
  __m512i b1 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[2], p[3]), _mm512_unpackhi_epi64(p[2], p[3]));
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  __m512i c = _mm512_add_epi64(_mm512_shuffle_i64x2(b0, b1, even), _mm512_shuffle_i64x2(b0, b1, odd));
  return _mm512_add_epi64(c, _mm512_shuffle_i64x2(c, c, _MM_SHUFFLE(2, 3, 0, 1)));
}
constexpr int kPosRow[16] = {0, 4, 1, 5, -1, -1, -1, -1, 2, 6, 3, 7, -1, -1, -1, -1};
inline __mmask16 pos_mask(int valid_rows) {
  __mmask16 m = 0;
  for (int p = 0; p < 16; ++p)
    if (kPosRow[p] >= 0 && kPosRow[p] < valid_rows) m |= __mmask16(1u << p);
  return m;
}

// Appends the hits of one register of distances (set bits of `m`; lane p holds row
// lane_row[p] of the 8-row block at r0) in increasing row order, so the selector sees
// increasing indices.
template <class Mask, class T>
inline void emit_hits(Mask m, const int* lane_row, const T* buf, int64_t r0, uint32_t* hr,
                      uint32_t* hd, uint32_t& cnt) {
  uint32_t rows_hit[8], dists[8];
  int nh = 0;
  while (m) {
    const int p = __builtin_ctz(m);
    m &= m - 1;
    rows_hit[nh] = uint32_t(lane_row[p]);
    dists[nh++] = uint32_t(buf[p]);
  }
  for (int a = 1; a < nh; ++a)  // <= 8 items: insertion sort
    for (int b = a; b > 0 && rows_hit[b] < rows_hit[b - 1]; --b) {
      std::swap(rows_hit[b], rows_hit[b - 1]);
      std::swap(dists[b], dists[b - 1]);
    }
  for (int a = 0; a < nh; ++a) {
    hr[cnt] = uint32_t(r0) + rows_hit[a];
    hd[cnt] = dists[a];
    ++cnt;
  }
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
  for (int j = 0; j < QB; ++j) sums[j] = reduce8_packed(acc[j]);
}

// Fixed widths: NC whole 64-byte chunks (512, 1024, 1536, 2048 bits), plus, with TAIL,
// one masked chunk with a fixed mask (widths below 128 bytes that are not a multiple of
// 64: 384 bits = 48 bytes from a 384-dim model, 768 bits; the generic loop reloaded the
// queries per row block, and 384 bits ran slower than 512). The chunk count is a
// template constant, the query chunks stay in registers, and each pair's accumulator
// is written once.
template <int QB, int NC, bool TAIL>
inline void block8_nc(const uint8_t* const* rows, const __m512i (*q)[NC + TAIL], __mmask64 m,
                      __m512i* sums) {
  constexpr int kChunks = NC + TAIL;
  if constexpr (NC == 0) {  // one masked chunk (< 64 bytes): all QB x 8 sums fit in registers
    __m512i acc[QB][8];
    for (int r = 0; r < 8; ++r) {
      const __m512i x = _mm512_maskz_loadu_epi8(m, rows[r]);
      for (int j = 0; j < QB; ++j) acc[j][r] = _mm512_popcnt_epi64(_mm512_xor_si512(x, q[j][0]));
    }
    for (int j = 0; j < QB; ++j) sums[j] = reduce8_packed(acc[j]);
    return;
  }
  // One query at a time, its 8 sums reduced at once: keeping all QB x 8 sums live
  // needed more than 32 registers, and GCC spilled ~20 of them per block to the stack
  // and back (1M x 1024 bit, batch 256: 112 -> 93 ms). Reloading the rows instead costs
  // L1 loads, which have ports to spare; for one masked chunk the reloads cost more.
  for (int j = 0; j < QB; ++j) {
    __m512i acc[8];
    for (int r = 0; r < 8; ++r) {
      __m512i s = _mm512_setzero_si512();
      for (int c = 0; c < kChunks; ++c) {
        const __m512i x = TAIL && c == kChunks - 1 ? _mm512_maskz_loadu_epi8(m, rows[r] + 64 * NC)
                                                    : _mm512_loadu_si512(rows[r] + 64 * c);
        const __m512i p = _mm512_popcnt_epi64(_mm512_xor_si512(x, q[j][c]));
        s = c == 0 ? p : _mm512_add_epi64(s, p);
      }
      acc[r] = s;
    }
    sums[j] = reduce8_packed(acc);
  }
}

template <int QB, int NC, bool TAIL = false>
struct FixedBlock {
  __m512i q[QB][NC + TAIL];
  __mmask64 m;
  FixedBlock(const uint8_t* const* qv, int64_t nbytes)
      : m(TAIL ? ~0ULL >> (64 - (nbytes - 64 * NC)) : ~0ULL) {
    for (int j = 0; j < QB; ++j) {
      for (int c = 0; c < NC; ++c) q[j][c] = _mm512_loadu_si512(qv[j] + 64 * c);
      if (TAIL) q[j][NC + TAIL - 1] = _mm512_maskz_loadu_epi8(m, qv[j] + 64 * NC);
    }
  }
  void operator()(const uint8_t* const* rows, __m512i* sums) const {
    block8_nc<QB, NC, TAIL>(rows, q, m, sums);
  }
};

template <int QB>
struct GenericBlock {
  const uint8_t* const* qv;
  int64_t nbytes;
  void operator()(const uint8_t* const* rows, __m512i* sums) const { block8<QB>(rows, qv, nbytes, sums); }
};

template <int QB, class Block>
inline void run_queries(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* const* qv,
                        int64_t nbytes, const uint32_t* thr, uint32_t* const* hr,
                        uint32_t* const* hd, uint32_t* cnt, bool prefetch, const Block& block) {
  // The first pass over a tile streams it from memory: prefetch ~8 KiB ahead (prefetches
  // never fault, so running past the end of the array is harmless).
  const int64_t pf_rows = std::max<int64_t>(8, (8192 / std::max<int64_t>(cs, 1)) & ~int64_t(7));
  __m512i tv[QB];
  for (int j = 0; j < QB; ++j) tv[j] = _mm512_set1_epi32(int32_t(thr[j]));
  alignas(64) uint32_t buf[16];
  const __mmask16 full_mask = pos_mask(8);
  for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
    const int valid = int(nrows - r0 < 8 ? nrows - r0 : 8);
    const uint8_t* rows[8];
    // Past the end of the tile, repeat the first row and mask its lanes out.
    for (int r = 0; r < 8; ++r) rows[r] = codes + (r0 + (r < valid ? r : 0)) * cs;
    if (prefetch) {
      for (int r = 0; r < 8; ++r) {
        const char* p = reinterpret_cast<const char*>(codes + (r0 + pf_rows + r) * cs);
        for (int64_t c = 0; c < nbytes; c += 64) prefetch_l1(p + c);
      }
    }
    __m512i sums[QB];
    block(rows, sums);
    const __mmask16 vmask = valid == 8 ? full_mask : pos_mask(valid);
    for (int j = 0; j < QB; ++j) {
      __mmask16 m = _mm512_mask_cmplt_epu32_mask(vmask, sums[j], tv[j]);
      if (!m) continue;
      _mm512_store_si512(buf, sums[j]);
      // Emit in row order so the selector sees increasing indices.
      emit_hits(m, kPosRow, buf, r0, hr[j], hd[j], cnt[j]);
    }
  }
}

// 256-bit codes: two rows per register (one 64-byte load when rows are contiguous), so
// no lane is wasted on padding. After the tree the 8 qword lanes hold rows
// {0, 2, 1, 3, 4, 6, 5, 7}.
constexpr int kLane32Row[8] = {0, 2, 1, 3, 4, 6, 5, 7};

template <int QB>
inline void run_queries32(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* const* qv,
                          const uint32_t* thr, uint32_t* const* hr, uint32_t* const* hd,
                          uint32_t* cnt, bool prefetch) {
  __m512i q[QB], tv[QB];
  for (int j = 0; j < QB; ++j) {
    q[j] = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qv[j])));
    tv[j] = _mm512_set1_epi64(int64_t(thr[j]));
  }
  const int64_t pf_rows = std::max<int64_t>(8, (16384 / std::max<int64_t>(cs, 1)) & ~int64_t(7));
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  alignas(64) uint64_t buf[8];
  for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
    const int valid = int(nrows - r0 < 8 ? nrows - r0 : 8);
    __m512i x[4];
    if (valid == 8 && cs == 32) {
      for (int m = 0; m < 4; ++m) x[m] = _mm512_loadu_si512(codes + (r0 + 2 * m) * 32);
    } else {
      for (int m = 0; m < 4; ++m) {
        const int64_t a = r0 + (2 * m < valid ? 2 * m : 0), b = r0 + (2 * m + 1 < valid ? 2 * m + 1 : 0);
        x[m] = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + a * cs))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * cs)), 1);
      }
    }
    if (prefetch) {
      const char* p = reinterpret_cast<const char*>(codes + (r0 + pf_rows) * cs);
      if (cs == 32) {
        prefetch_l1(p);
        prefetch_l1(p + 64);
        prefetch_l1(p + 128);
        prefetch_l1(p + 192);
      } else {
        for (int r = 0; r < 8; ++r) prefetch_l1(p + r * cs);
      }
    }
    __mmask8 vmask = 0;
    for (int l = 0; l < 8; ++l)
      if (kLane32Row[l] < valid) vmask |= __mmask8(1u << l);
    for (int j = 0; j < QB; ++j) {
      __m512i p[4];
      for (int m = 0; m < 4; ++m) p[m] = _mm512_popcnt_epi64(_mm512_xor_si512(x[m], q[j]));
      const __m512i b0 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[0], p[1]), _mm512_unpackhi_epi64(p[0], p[1]));
      const __m512i b1 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[2], p[3]), _mm512_unpackhi_epi64(p[2], p[3]));
      const __m512i c = _mm512_add_epi64(_mm512_shuffle_i64x2(b0, b1, even), _mm512_shuffle_i64x2(b0, b1, odd));
      __mmask8 m = _mm512_mask_cmplt_epu64_mask(vmask, c, tv[j]);
      if (!m) continue;
      _mm512_store_si512(buf, c);
      emit_hits(m, kLane32Row, buf, r0, hr[j], hd[j], cnt[j]);
    }
  }
}

template <int QB>
inline void run_any(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* const* qv,
                    int64_t nbytes, const uint32_t* thr, uint32_t* const* hr, uint32_t* const* hd,
                    uint32_t* cnt, bool pf) {
  switch (nbytes) {
    case 32: run_queries32<QB>(codes, nrows, cs, qv, thr, hr, hd, cnt, pf); return;
    case 64: run_queries<QB>(codes, nrows, cs, qv, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 1>(qv, nbytes)); return;
    case 128: run_queries<QB>(codes, nrows, cs, qv, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 2>(qv, nbytes)); return;
    case 192: run_queries<QB>(codes, nrows, cs, qv, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 3>(qv, nbytes)); return;
    case 256: run_queries<QB>(codes, nrows, cs, qv, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 4>(qv, nbytes)); return;
    default:
      if (nbytes < 64) return run_queries<QB>(codes, nrows, cs, qv, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 0, true>(qv, nbytes));
      if (nbytes < 128) return run_queries<QB>(codes, nrows, cs, qv, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 1, true>(qv, nbytes));
      run_queries<QB>(codes, nrows, cs, qv, nbytes, thr, hr, hd, cnt, pf, GenericBlock<QB>{qv, nbytes});
  }
}

}  // namespace

void tile_avx512(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* queries,
                 int64_t nq, int64_t qs, int64_t nbytes, const uint32_t* thr, uint32_t* hit_rows,
                 uint32_t* hit_dist, int64_t cap, uint32_t* hit_count) {
  int64_t q = 0;
  for (; q + 3 <= nq; q += 3) {
    const uint8_t* qv[3] = {queries + q * qs, queries + (q + 1) * qs, queries + (q + 2) * qs};
    uint32_t* hr[3] = {hit_rows + q * cap, hit_rows + (q + 1) * cap, hit_rows + (q + 2) * cap};
    uint32_t* hd[3] = {hit_dist + q * cap, hit_dist + (q + 1) * cap, hit_dist + (q + 2) * cap};
    hit_count[q] = hit_count[q + 1] = hit_count[q + 2] = 0;
    run_any<3>(codes, nrows, cs, qv, nbytes, thr + q, hr, hd, hit_count + q, q == 0);
  }
  for (; q + 2 <= nq; q += 2) {
    const uint8_t* qv[2] = {queries + q * qs, queries + (q + 1) * qs};
    uint32_t* hr[2] = {hit_rows + q * cap, hit_rows + (q + 1) * cap};
    uint32_t* hd[2] = {hit_dist + q * cap, hit_dist + (q + 1) * cap};
    hit_count[q] = hit_count[q + 1] = 0;
    run_any<2>(codes, nrows, cs, qv, nbytes, thr + q, hr, hd, hit_count + q, q == 0);
  }
  for (; q < nq; ++q) {
    const uint8_t* qv[1] = {queries + q * qs};
    uint32_t* hr[1] = {hit_rows + q * cap};
    uint32_t* hd[1] = {hit_dist + q * cap};
    hit_count[q] = 0;
    run_any<1>(codes, nrows, cs, qv, nbytes, thr + q, hr, hd, hit_count + q, q == 0);
  }
}

}  // namespace hamming
}  // namespace nestvec
