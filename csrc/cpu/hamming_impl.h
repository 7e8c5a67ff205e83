// Hamming tile kernel, written once and compiled per ISA: each hamming_<isa>.cpp
// includes its ISA's primitives (isa/<isa>.h: loads, popcounts, the 8-row reduction),
// then this file, and exports the result as hamming::kernels<Isa>().
//
// A register block of 8 rows x QB queries keeps one popcount accumulator per pair; the
// 8 accumulators of a query are reduced at once (simd::reduce8, a transpose tree: 21
// ops for 8 rows on AVX-512 instead of 8 horizontal sums), compared with the query's
// threshold in one mask, and the hits appended in row order.
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

#include "nestvec/hamming.h"
#include "nestvec/prefetch.h"

namespace nestvec {
namespace hamming {
namespace {

using namespace simd;

// Appends the hits of one register of distances (set bits of `m`; lane p holds row
// lane_row[p] of the 8-row block at r0) in increasing row order, so the selector sees
// increasing indices.
template <class T>
inline void emit_hits(uint32_t m, const int* lane_row, const T* buf, int64_t r0, uint32_t* hr,
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

// Any width: all QB x 8 accumulators live, chunk by chunk.
template <int QB>
inline void block8(const uint8_t* const* rows, const uint8_t* const* qv, int64_t nbytes,
                   vsum* sums) {
  vacc acc[QB][8];
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < 8; ++r) acc[j][r] = acc_zero();
  int64_t c = 0;
  for (; c + kB <= nbytes; c += kB) {
    vb q[QB];
    for (int j = 0; j < QB; ++j) q[j] = bload(qv[j] + c);
    for (int r = 0; r < 8; ++r) {
      const vb x = bload(rows[r] + c);
      for (int j = 0; j < QB; ++j) acc[j][r] = acc_popxor(acc[j][r], x, q[j]);
    }
  }
  if (c < nbytes) {
    const btail t = btail_make(nbytes - c);
    vb q[QB];
    for (int j = 0; j < QB; ++j) q[j] = bload_tail(qv[j] + c, t);
    for (int r = 0; r < 8; ++r) {
      const vb x = bload_tail(rows[r] + c, t);
      for (int j = 0; j < QB; ++j) acc[j][r] = acc_popxor(acc[j][r], x, q[j]);
    }
  }
  for (int j = 0; j < QB; ++j) sums[j] = reduce8(acc[j]);
}

// Fixed widths: NC whole chunks (1-4), plus, with TAIL, one partial chunk with a fixed
// mask (widths below two chunks that are not a multiple of one: 384 bits = 48 bytes
// from a 384-dim model; the generic loop reloaded the queries per row block, and 384
// bits ran slower than 512 on AVX-512). The chunk count is a template constant, the
// query chunks stay in registers, and each pair's counts are summed in the narrow
// count lanes before one widening.
template <int QB, int NC, bool TAIL>
inline void block8_nc(const uint8_t* const* rows, const vb (*q)[NC + TAIL], const btail& t,
                      vsum* sums) {
  constexpr int kChunks = NC + TAIL;
  static_assert(kChunks <= kCntMax, "chunk counts must fit the count lanes");
  if constexpr (NC == 0) {  // one partial chunk: all QB x 8 sums fit in registers
    vacc acc[QB][8];
    for (int r = 0; r < 8; ++r) {
      const vb x = bload_tail(rows[r], t);
      for (int j = 0; j < QB; ++j) acc[j][r] = acc_of(cnt_popxor(x, q[j][0]));
    }
    for (int j = 0; j < QB; ++j) sums[j] = reduce8_small(acc[j]);
    return;
  }
  // One query at a time, its 8 sums reduced at once: keeping all QB x 8 sums live
  // needed more than 32 registers on AVX-512, and GCC spilled ~20 of them per block to
  // the stack and back (1M x 1024 bit, batch 256: 112 -> 93 ms). Reloading the rows
  // instead costs L1 loads, which have ports to spare.
  for (int j = 0; j < QB; ++j) {
    vacc acc[8];
    for (int r = 0; r < 8; ++r) {
      auto chunk = [&](int c) {
        return TAIL && c == kChunks - 1 ? bload_tail(rows[r] + kB * NC, t) : bload(rows[r] + kB * c);
      };
      vcnt s = cnt_popxor(chunk(0), q[j][0]);
      for (int c = 1; c < kChunks; ++c) s = cnt_add(s, cnt_popxor(chunk(c), q[j][c]));
      acc[r] = acc_of(s);
    }
    sums[j] = reduce8_small(acc);
  }
}

template <int QB, int NC, bool TAIL = false>
struct FixedBlock {
  vb q[QB][NC + TAIL];
  btail t;
  FixedBlock(const uint8_t* const* qv, int64_t nbytes) : t(btail_make(TAIL ? nbytes - kB * NC : 1)) {
    for (int j = 0; j < QB; ++j) {
      for (int c = 0; c < NC; ++c) q[j][c] = bload(qv[j] + kB * c);
      if (TAIL) q[j][NC + TAIL - 1] = bload_tail(qv[j] + kB * NC, t);
    }
  }
  void operator()(const uint8_t* const* rows, vsum* sums) const { block8_nc<QB, NC, TAIL>(rows, q, t, sums); }
};

template <int QB>
struct GenericBlock {
  const uint8_t* const* qv;
  int64_t nbytes;
  void operator()(const uint8_t* const* rows, vsum* sums) const { block8<QB>(rows, qv, nbytes, sums); }
};

// The codes and hit lists of QB consecutive queries from q.
template <int QB>
struct QueryBlock {
  const uint8_t* qv[QB];
  uint32_t *hr[QB], *hd[QB];
  QueryBlock(const uint8_t* queries, int64_t qs, uint32_t* hit_rows, uint32_t* hit_dist, int64_t cap, int64_t q) {
    for (int j = 0; j < QB; ++j) {
      qv[j] = queries + (q + j) * qs;
      hr[j] = hit_rows + (q + j) * cap;
      hd[j] = hit_dist + (q + j) * cap;
    }
  }
};

// f(std::integral_constant<int, QB>{}, q) for the queries [q, nq) in blocks of the
// sizes Sizes[I...] (largest first; the last size is 1).
template <const auto& Sizes = kHammingQB, int I = 0, class F>
inline void for_query_blocks(int64_t q, int64_t nq, F&& f) {
  static_assert(Sizes[std::size(Sizes) - 1] == 1, "the last query block must be 1");
  constexpr int QB = Sizes[I];
  for (; q + QB <= nq; q += QB) f(std::integral_constant<int, QB>{}, q);
  if constexpr (I + 1 < int(std::size(Sizes))) for_query_blocks<Sizes, I + 1>(q, nq, f);
}

template <int QB, class Block>
inline void run_queries(const uint8_t* codes, int64_t nrows, int64_t cs, int64_t nbytes,
                        const uint32_t* thr, uint32_t* const* hr, uint32_t* const* hd,
                        uint32_t* cnt, bool prefetch, const Block& block, int64_t row_base = 0) {
  // The first pass over a tile streams it from memory: prefetch ~8 KiB ahead into L1, or
  // for packed rows where the ISA's kHammingPrefetchL2 says so ~16 KiB ahead into L2
  // (prefetches never fault, so running past the end of the array is harmless).
  const int64_t pf_rows = std::max<int64_t>(8, (8192 / std::max<int64_t>(cs, 1)) & ~int64_t(7));
  vsum tv[QB];
  for (int j = 0; j < QB; ++j) tv[j] = sum_set1(thr[j]);
  alignas(64) uint32_t buf[kSumLanes];
  const uint32_t full_mask = sum_valid(8);
  for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
    const int valid = int(nrows - r0 < 8 ? nrows - r0 : 8);
    const uint8_t* rows[8];
    // Past the end of the tile, repeat the first row and mask its lanes out.
    for (int r = 0; r < 8; ++r) rows[r] = codes + (r0 + (r < valid ? r : 0)) * cs;
    if (prefetch) {
      const uintptr_t p = reinterpret_cast<uintptr_t>(codes) + uintptr_t((r0 + pf_rows) * cs);
      if (cs == nbytes && kHammingPrefetchL2) {  // packed rows: one per line of the 8 rows
        const uintptr_t p2 = p + uintptr_t(pf_rows * cs);
        for (int64_t o = 0; o < 8 * cs; o += 64) prefetch_l2(p2 + uintptr_t(o));
      } else if (cs == nbytes) {
        for (int64_t o = 0; o < 8 * cs; o += 64) prefetch_l1(p + uintptr_t(o));
      } else {
        for (int r = 0; r < 8; ++r)
          for (int64_t c = 0; c < nbytes; c += 64) prefetch_l1(p + uintptr_t(r * cs + c));
      }
    }
    vsum sums[QB];
    block(rows, sums);
    const uint32_t vmask = valid == 8 ? full_mask : sum_valid(valid);
    for (int j = 0; j < QB; ++j) {
      const uint32_t m = sum_lt(sums[j], tv[j], vmask);
      if (!m) continue;
      sum_store(buf, sums[j]);
      emit_hits(m, kSumLaneRow, buf, row_base + r0, hr[j], hd[j], cnt[j]);
    }
  }
}

#if defined(NV_SIMD_LUT_SCAN)
// Fast scan (isa/<isa>.h, scan_*): the queries of a block become tables, each tile is
// transposed kSubRows rows at a time (the transpose is amortised over the queries), and
// each query passes over G groups of 16 rows at once, so that one load of a table
// serves G groups.
template <int NC>
struct Scan {
  static constexpr int G = NC == 1 ? 8 : 4;  // groups per pass: G byte sums (+ G word sums) live
  static constexpr int64_t kGroupBytes = NC * kScanChunkBytes;
  static constexpr int64_t kSubRows = std::max<int64_t>(kScanRows * G, (16384 / kGroupBytes) * kScanRows);

  // Distances of groups [0, NG) of the split rows S against the tables T of one query.
  template <int NG>
  static inline void groups(const uint8_t* S, const uint8_t* T, vscan* d) {
    for (int c = 0; c < NC; ++c) {
      vb a[NG];
      for (int g = 0; g < NG; ++g) a[g] = scan_count0();
      const uint8_t* tc = T + c * kScanChunkBytes;
      const uint8_t* sc = S + c * kScanChunkBytes;
      for (int j = 0; j < 16; ++j) {
        const vb tl = bload_a(tc + 64 * j), th = bload_a(tc + 64 * j + 32);
        for (int g = 0; g < NG; ++g) a[g] = scan_add(a[g], tl, th, sc + g * kGroupBytes + 64 * j);
      }
      for (int g = 0; g < NG; ++g) d[g] = c == 0 ? scan_widen(a[g]) : scan_sum(d[g], scan_widen(a[g]));
    }
  }

  // Groups [g0, g0 + NG) of the sub-tile at row s0 against one query.
  template <int NG>
  static inline void pass(const uint8_t* S, const uint8_t* T, int64_t g0, int64_t s0, int64_t ns, vscan t,
                          uint32_t* hr, uint32_t* hd, uint32_t& cnt) {
    vscan d[NG];
    groups<NG>(S + g0 * kGroupBytes, T, d);
    for (int g = 0; g < NG; ++g) {
      const int64_t r0 = (g0 + g) * kScanRows;
      uint32_t m = scan_lt(d[g], t);
      if (ns - r0 < kScanRows) m &= (1u << (ns - r0)) - 1;
      if (!m) continue;
      alignas(32) uint16_t buf[kScanRows];
      scan_store(buf, d[g]);
      while (m) {  // bits in increasing row order
        const int p = __builtin_ctz(m);
        m &= m - 1;
        hr[cnt] = uint32_t(s0 + r0 + p);
        hd[cnt] = buf[p];
        ++cnt;
      }
    }
  }

  static void tile(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* queries, int64_t nq,
                   int64_t qs, const uint32_t* thr, uint32_t* hit_rows, uint32_t* hit_dist, int64_t cap,
                   uint32_t* hit_count) {
    constexpr int64_t kTableBytes = NC * kScanChunkBytes;  // one query's tables
    alignas(64) static thread_local uint8_t split[kSubRows / kScanRows * kGroupBytes];
    // (Kept across the tiles of a call instead, checked against a copy of the query codes,
    // they measured no faster: a batch's query blocks take turns over each tile, so the
    // largest batches rebuilt them anyway and paid for the check and the copy.)
    static thread_local std::vector<uint8_t> table_buf;
    if (table_buf.size() < size_t(nq * kTableBytes + 64)) table_buf.resize(size_t(nq * kTableBytes + 64));
    uint8_t* tables = table_buf.data() + (64 - reinterpret_cast<uintptr_t>(table_buf.data()) % 64) % 64;
    for (int64_t q = 0; q < nq; ++q) {
      for (int c = 0; c < NC; ++c) scan_tables(queries + q * qs + kB * c, tables + q * kTableBytes + c * kScanChunkBytes);
      hit_count[q] = 0;
    }
    for (int64_t s0 = 0; s0 < nrows; s0 += kSubRows) {
      const int64_t ns = std::min(kSubRows, nrows - s0);
      const int64_t ng = (ns + kScanRows - 1) / kScanRows;
      // The split is the sub-tile's first read: prefetch the next one as it goes, into
      // L2 (a burst of a sub-tile's lines into L1 stalled the split's own loads).
      for (int64_t g = 0; g < ng; ++g) {
        const uint8_t* rows[kScanRows];
        for (int p = 0; p < kScanRows; ++p) {
          const int64_t r = g * kScanRows + p;
          rows[p] = codes + (s0 + (r < ns ? r : 0)) * cs;  // past the end: row 0, masked out
        }
        const uintptr_t pf = reinterpret_cast<uintptr_t>(codes) + uintptr_t((s0 + kSubRows + g * kScanRows) * cs);
        for (int64_t o = 0; o < kScanRows * cs; o += 64) prefetch_l2(pf + uintptr_t(o));
        for (int c = 0; c < NC; ++c) scan_split16(rows, kB * c, split + g * kGroupBytes + c * kScanChunkBytes);
      }
      for (int64_t q = 0; q < nq; ++q) {
        const uint8_t* T = tables + q * kTableBytes;
        const vscan t = scan_set1(thr[q]);
        uint32_t* hr = hit_rows + q * cap;
        uint32_t* hd = hit_dist + q * cap;
        int64_t g0 = 0;
        for (; g0 + G <= ng; g0 += G) pass<G>(split, T, g0, s0, ns, t, hr, hd, hit_count[q]);
        for (; g0 < ng; ++g0) pass<1>(split, T, g0, s0, ns, t, hr, hd, hit_count[q]);
      }
    }
  }
};
#endif

#if defined(NV_SIMD_PAIR_ROWS)
// Codes of half a chunk (256 bits on AVX-512): two rows per register.
template <int QB>
inline void run_pairs(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* const* qv,
                      const uint32_t* thr, uint32_t* const* hr, uint32_t* const* hd,
                      uint32_t* cnt, bool prefetch) {
  constexpr int64_t kHalf = kB / 2;
  vb q[QB];
  vpsum tv[QB];
  for (int j = 0; j < QB; ++j) {
    q[j] = bdup_half(qv[j]);
    tv[j] = pair_set1(thr[j]);
  }
  const int64_t pf_rows = std::max<int64_t>(8, (16384 / std::max<int64_t>(cs, 1)) & ~int64_t(7));
  alignas(64) uint64_t buf[8];
  for (int64_t r0 = 0; r0 < nrows; r0 += 8) {
    const int valid = int(nrows - r0 < 8 ? nrows - r0 : 8);
    vb x[4];
    if (valid == 8 && cs == kHalf) {
      for (int m = 0; m < 4; ++m) x[m] = bload(codes + (r0 + 2 * m) * kHalf);
    } else {
      for (int m = 0; m < 4; ++m) {
        const int64_t a = r0 + (2 * m < valid ? 2 * m : 0), b = r0 + (2 * m + 1 < valid ? 2 * m + 1 : 0);
        x[m] = bload_pair(codes + a * cs, codes + b * cs);
      }
    }
    if (prefetch) {
      const uintptr_t p = reinterpret_cast<uintptr_t>(codes) + uintptr_t((r0 + pf_rows) * cs);
      if (cs == kHalf) {
        for (int64_t o = 0; o < 8 * kHalf; o += 64) prefetch_l1(p + uintptr_t(o));
      } else {
        for (int r = 0; r < 8; ++r) prefetch_l1(p + uintptr_t(r * cs));
      }
    }
    uint32_t vmask = 0;
    for (int l = 0; l < 8; ++l)
      if (kPairLaneRow[l] < valid) vmask |= 1u << l;
    for (int j = 0; j < QB; ++j) {
      const vpsum c = reduce_pairs(x, q[j]);
      const uint32_t m = pair_lt(c, tv[j], vmask);
      if (!m) continue;
      pair_store(buf, c);
      emit_hits(m, kPairLaneRow, buf, r0, hr[j], hd[j], cnt[j]);
    }
  }
}
#endif

template <int QB>
inline void run_any(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* const* qv,
                    int64_t nbytes, const uint32_t* thr, uint32_t* const* hr, uint32_t* const* hd,
                    uint32_t* cnt, bool pf) {
#if defined(NV_SIMD_PAIR_ROWS)
  if (nbytes == kB / 2) return run_pairs<QB>(codes, nrows, cs, qv, thr, hr, hd, cnt, pf);
#endif
  if (nbytes % kB == 0) {
    switch (nbytes / kB) {
      case 1: return run_queries<QB>(codes, nrows, cs, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 1>(qv, nbytes));
      case 2: return run_queries<QB>(codes, nrows, cs, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 2>(qv, nbytes));
      case 3: return run_queries<QB>(codes, nrows, cs, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 3>(qv, nbytes));
      case 4: return run_queries<QB>(codes, nrows, cs, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 4>(qv, nbytes));
      default: break;
    }
  }
  if (nbytes < kB)
    return run_queries<QB>(codes, nrows, cs, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 0, true>(qv, nbytes));
  if (nbytes < 2 * kB)
    return run_queries<QB>(codes, nrows, cs, nbytes, thr, hr, hd, cnt, pf, FixedBlock<QB, 1, true>(qv, nbytes));
  run_queries<QB>(codes, nrows, cs, nbytes, thr, hr, hd, cnt, pf, GenericBlock<QB>{qv, nbytes});
}

void tile(const uint8_t* codes, int64_t nrows, int64_t cs, const uint8_t* queries, int64_t nq,
          int64_t qs, int64_t nbytes, const uint32_t* thr, uint32_t* hit_rows, uint32_t* hit_dist,
          int64_t cap, uint32_t* hit_count) {
#if defined(NV_SIMD_LUT_SCAN)
  // (the transpose pays for itself from a few queries on; one query streams the rows)
  if (nbytes % kB == 0 && nq >= kScanMinQ) {
    switch (nbytes / kB) {
      case 1: return Scan<1>::tile(codes, nrows, cs, queries, nq, qs, thr, hit_rows, hit_dist, cap, hit_count);
      case 2: return Scan<2>::tile(codes, nrows, cs, queries, nq, qs, thr, hit_rows, hit_dist, cap, hit_count);
      case 3: return Scan<3>::tile(codes, nrows, cs, queries, nq, qs, thr, hit_rows, hit_dist, cap, hit_count);
      case 4: return Scan<4>::tile(codes, nrows, cs, queries, nq, qs, thr, hit_rows, hit_dist, cap, hit_count);
      default: break;
    }
  }
#endif
  for_query_blocks(0, nq, [&](auto qb, int64_t q) {
    constexpr int QB = decltype(qb)::value;
    const QueryBlock<QB> b(queries, qs, hit_rows, hit_dist, cap, q);
    for (int j = 0; j < QB; ++j) hit_count[q + j] = 0;
    run_any<QB>(codes, nrows, cs, b.qv, nbytes, thr + q, b.hr, b.hd, hit_count + q, q == 0);
  });
}

}  // namespace

template <>
Kernels kernels<simd::kIsa>() {
  return {tile};
}

}  // namespace hamming
}  // namespace nestvec
