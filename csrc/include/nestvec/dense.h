// Exact elastic-dimension (Matryoshka prefix) top-k over float32 / float16 /
// bfloat16 rows: cosine, inner product, squared L2.
#pragma once
#include <cstdint>

#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"

namespace nestvec {
namespace dense {

enum Metric : int { kCosine = 0, kIP = 1, kL2 = 2 };

// Dot products of a block of rows with a block of queries over the first `dim` values.
// Row r is at `base + (rows ? rows[r] : r) * stride` (elements of `dtype`); it is read
// only up to `dim`. Queries are float32, `qs` floats apart, zero-padded to a multiple of
// 16 values, 64-byte aligned. Writes dots[j * ld + r] = q_j . x_r, and, when `sq` is not
// null, sq[r] = |x_r[:dim]|^2 computed in the same pass over the row.
using DotsFn = void (*)(const void* base, DType dtype, int64_t stride, const int64_t* rows,
                        int64_t nrows, int64_t dim, const float* q, int64_t qs, int64_t nq,
                        float* dots, int64_t ld, float* sq);

// A table kept for the ivf probe in blocks of kBlockRows rows, column-major within a
// block: value c of row kBlockRows * b + l at table[(b * dim + c) * kBlockRows + l]
// (float16 bits; rows past the table's end are zero). A query's dots with a block are
// then kBlockRows-wide FMAs of one broadcast query value, where the row-major kernels
// pay a horizontal sum per row, which for a 128-value row costs about what its
// multiplies do (README, the ivf probe).
constexpr int64_t kBlockRows = 16;
// dots[j * ld + r] = q_j . row r over the first `dim` values, for the 16 * nblocks rows
// of the blocked table and nq queries (float32, `qs` floats apart); sq[r] = |row r|^2
// when sq is not null.
using BlockedDotsFn = void (*)(const uint16_t* table, int64_t nblocks, int64_t dim, const float* q,
                               int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq);
// The same over a bfloat16 pair table (ISAs with a bf16 dot; null elsewhere): value
// pairs (2p, 2p + 1) of row kBlockRows * b + l at table[((b * dim / 2 + p) * kBlockRows
// + l) * 2 + {0, 1}] (dim even), which a bf16 dot instruction multiplies by the
// broadcast pair of the query rounded to bfloat16: twice the values of a float32 FMA
// and no conversion per value (README, the ivf probe). blocked_dots_i8 (ISAs with a
// u8 x s8 dot; ip only, sq unused): int8 values in quads, block b of (dim / 4 + 2) x 64
// bytes: quad c of row kBlockRows * b + l at bytes ((b * (dim / 4 + 2) + c) *
// kBlockRows + l) * 4, then the rows' int32 corrections (-128 x their value sum) and
// float32 inverse scales, kBlockRows each; a row's dot is (sum of (q8 + 128) x c8 +
// correction) x its inverse scale x the query's (q8: the query scaled to 127 at its
// largest value).

// Keys of one query over a tile (larger = better):
//   cosine: dot * a * rowf[r]   (a = 1/|q|, rowf = 1/|x| or 0 for a zero row)
//   ip:     dot
//   l2:     2 dot - rowf[r] - b (b = |q|^2, rowf = |x|^2)  == -|q - x|^2
// Appends each r with key > thr and (allow == null or allow[r]) to hit_rows/hit_keys
// in increasing r; returns the number of hits.
using SelectFn = int64_t (*)(const float* dots, const float* rowf, int64_t nrows, int metric,
                             float a, float b, float thr, const uint8_t* allow,
                             uint32_t* hit_rows, float* hit_keys);

// First pass of the two-pass route (dense_bf16.cpp): rows and queries rounded to a
// narrower format the ISA multiplies faster than float32, scored approximately, with a
// bound on the error that certifies the exact rescoring of a shortlist:
//   kApproxBf16: bfloat16 (AVX512-BF16's vdpbf16ps), error <= c |q| |x|;
//   kApproxI16:  int16 with a scale per row / query, s = max|x_i| / i16_max (AVX2's
//                vpmaddwd), error <= (s_x/2)|q|_1 + (s_q/2)|x|_1 + dim s_x s_q / 4, plus
//                the rounding of int32 sums flushed to float32 every i16_chunk values.
enum ApproxKind : int { kApproxNone = 0, kApproxBf16 = 1, kApproxI16 = 2 };
struct ApproxPass {
  int kind;
  float i16_max;      // kApproxI16: largest |rounded value|
  int64_t i16_chunk;  // kApproxI16: values per int32 sum
  // Bytes of `n` packed rows / queries of `dim` values (64-byte aligned buffers).
  int64_t (*rows_bytes)(int64_t n, int64_t dim);
  int64_t (*queries_bytes)(int64_t n, int64_t dim);
  // Rows of `dtype` (stride in elements) -> packed; per row: the scale (int16; NaN for
  // a row with a non-finite value), sq = float32 |x_r[:dim]|^2 (when not null), amax =
  // max |x_i| and l1 = sum |x_i| (int16). Arrays hold n rows rounded up to 64.
  void (*pack_rows)(const void* base, DType dtype, int64_t stride, int64_t n, int64_t dim,
                    void* out, float* scale, float* sq, float* amax, float* l1);
  // float32 queries -> packed, with the same per-query statistics (no sq).
  void (*pack_queries)(const float* q, int64_t nq, int64_t qs, int64_t dim, void* out,
                       float* scale, float* amax, float* l1);
  // dots[j * ld + r] ~= q_j . x_r over packed rows and queries (q: query 0 of a block).
  void (*dots)(const void* x, const float* xscale, int64_t nrows, int64_t dim, const void* q,
               const float* qscale, int64_t nq, float* dots, int64_t ld);
};

// One ISA's build of csrc/cpu/dense_impl.h (dense_<isa>.cpp); approx.kind is
// kApproxNone on ISAs without a faster narrow format.
struct Kernels {
  DotsFn dots;
  SelectFn select;
  ApproxPass approx;
  // dots without the one-row stream for whole contiguous rows: register tiles only, for
  // a table that sits in cache, where the stream's per-row work is what costs
  DotsFn dots_tiles;
  BlockedDotsFn blocked_dots;
  BlockedDotsFn blocked_dots_bf16 = nullptr;
  BlockedDotsFn blocked_dots_i8 = nullptr;
};
template <Isa I>
Kernels kernels();
// The active ISA's kernels.
Kernels active_kernels();

// Two-pass top-k (dense_bf16.cpp): an approximate scan (bf16 or int16, ApproxPass),
// exact rescoring of a shortlist, and a certificate per query. Same contract as topk (no candidates); returns how many
// queries it could not certify and writes their indices to `failed` (their outputs
// are then unspecified). bf16_pass_wanted: whether topk takes this route.
// bf16_pass_enabled / set_bf16_pass: the switch (default on; NESTVEC_DENSE_BF16=0 = off).
bool bf16_pass_wanted(int64_t nq, int64_t n, int64_t dim);
// Fewest queries (of a large enough table) that take the route with the active ISA's
// first pass; 0 when it has none.
int64_t two_pass_min_queries();
bool bf16_pass_enabled();
void set_bf16_pass(bool on);
int64_t topk_bf16(const void* db, DType dtype, int64_t n, int64_t stride, int64_t dim,
                  const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
                  const uint8_t* allow, float* out_score, int64_t* out_idx, int64_t* failed);
// Queries certified by / handed back from the two-pass route since the module loaded.
void bf16_stats(int64_t* certified, int64_t* fallback);

// db [n, >= dim] of `dtype` (row stride `stride` elements); queries float32 [nq, dim]
// (row stride `query_stride`); allow: optional bool [n]; candidates: optional int64
// [nq, ncand] row ids (-1 or out of range = padding, duplicates counted once).
// Output [nq, k]: best first (cosine/ip: highest score; l2: smallest squared
// distance), ties by index; missing entries are (-inf | +inf for l2, -1).
// Large batches go through topk_bf16 (the two-pass route) where the ISA has an
// approximate pass, with a float32 scan for uncertified queries.
void topk(const void* db, DType dtype, int64_t n, int64_t stride, int64_t dim,
          const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
          const uint8_t* allow, const int64_t* candidates, int64_t ncand, float* out_score,
          int64_t* out_idx);

// topk (ip or l2, no filter) over the first n rows of a blocked float16 table
// (kBlockRows layout, ceil(n / kBlockRows) blocks): the ivf probe of one block of
// queries, on the calling thread, except that fewer queries than threads over a long
// table split its blocks over the pool (parallel_for_pooled; same answer). The keys
// are topk's up to float32 summation order.
// kind: the table's format (BlockedKind); bf16 and i8 tables need their ISA kernels
// (blocked_available), and their keys are the narrow products' (the query rounded or
// scaled alike). i8 tables serve ip probes only.
enum BlockedKind { kBlockedF16 = 0, kBlockedBf16 = 1, kBlockedI8 = 2 };
void topk_blocked(const uint16_t* table, int64_t n, int64_t dim, const float* queries, int64_t nq,
                  int64_t query_stride, int64_t k, int metric, float* out_score, int64_t* out_idx,
                  int kind = kBlockedF16);
// Whether the active ISA scores tables of `kind` (bf16: AVX512-BF16, i8: AVX512-VNNI).
bool blocked_available(int kind);

}  // namespace dense
}  // namespace nestvec
