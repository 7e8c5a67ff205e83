// Exact Hamming top-k over packed binary codes.
#pragma once
#include <algorithm>
#include <cstdint>

#include "nestvec/dispatch.h"

namespace nestvec {
namespace hamming {

// One tile of rows against a block of queries. For each query q, every row r with
// popcount(code[r] ^ query[q]) < thr[q] is appended (row offset within the tile,
// distance) to hit_rows/hit_dist[q * hit_cap + i]; hit_count[q] = hits of query q.
using TileFn = void (*)(const uint8_t* codes, int64_t nrows, int64_t code_stride,
                        const uint8_t* queries, int64_t nq, int64_t query_stride,
                        int64_t nbytes, const uint32_t* thr, uint32_t* hit_rows,
                        uint32_t* hit_dist, int64_t hit_cap, uint32_t* hit_count);

// One ISA's build of csrc/cpu/hamming_impl.h (hamming_<isa>.cpp).
struct Kernels {
  TileFn tile;
};
template <Isa I>
Kernels kernels();

// The active ISA's tile kernel (hamming.cpp).
TileFn active_tile();

// Rows of a tile: ~32 KiB of codes, which stay in L1 while every query of a block
// passes over them (a multiple of 8, 8 to 4096).
inline int64_t tile_rows(int64_t nbytes) {
  return std::max<int64_t>(8, std::min<int64_t>(4096, (32768 / nbytes) & ~int64_t(7)));
}

// codes [n, nbytes] (row stride code_stride), queries [nq, nbytes] (row stride
// query_stride); allow: optional bool [n]. Output [nq, k]: distance ascending, then
// index ascending; missing entries are (INT32_MAX, -1).
void topk(const uint8_t* codes, int64_t n, int64_t code_stride, const uint8_t* queries,
          int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k, const uint8_t* allow,
          int32_t* out_dist, int64_t* out_idx);

}  // namespace hamming
}  // namespace nestvec
