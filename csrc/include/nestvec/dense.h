// Exact elastic-dimension (Matryoshka prefix) top-k over float32 / float16 /
// bfloat16 rows: cosine, inner product, squared L2.
#pragma once
#include <algorithm>
#include <cstdint>

#include "nestvec/prefetch.h"

namespace nestvec {
namespace dense {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
enum Metric : int { kCosine = 0, kIP = 1, kL2 = 2 };

// Dot products of a block of rows with a block of queries over the first `dim` values.
// Row r is at `base + (rows ? rows[r] : r) * stride` (elements of `dtype`); it is read
// only up to `dim`. Queries are float32, `qs` floats apart, zero-padded to a multiple of
// 16 values, 64-byte aligned. Writes dots[j * ld + r] = q_j . x_r, and, when `sq` is not
// null, sq[r] = |x_r[:dim]|^2 computed in the same pass over the row.
using DotsFn = void (*)(const void* base, int dtype, int64_t stride, const int64_t* rows,
                        int64_t nrows, int64_t dim, const float* q, int64_t qs, int64_t nq,
                        float* dots, int64_t ld, float* sq);

// Keys of one query over a tile (larger = better):
//   cosine: dot * a * rowf[r]   (a = 1/|q|, rowf = 1/|x| or 0 for a zero row)
//   ip:     dot
//   l2:     2 dot - rowf[r] - b (b = |q|^2, rowf = |x|^2)  == -|q - x|^2
// Appends each r with key > thr and (allow == null or allow[r]) to hit_rows/hit_keys
// in increasing r; returns the number of hits.
using SelectFn = int64_t (*)(const float* dots, const float* rowf, int64_t nrows, int metric,
                             float a, float b, float thr, const uint8_t* allow,
                             uint32_t* hit_rows, float* hit_keys);

// The rows `ahead` rows after rows r0 .. r0+R-1 of a row block (the addressing of
// DotsFn), for prefetches spread through a micro-kernel's loop: issued as one burst
// per block (R rows x all their lines) they overflow the core's miss queue. Strided
// rows: addresses formed as integers (they may lie past the table, and are prefetched,
// never dereferenced). Indexed rows past the list stand in for the current row.
template <int R>
static inline void prefetch_targets(const char* base, int64_t stride_b, const int64_t* rows,
                                    int64_t nrows, int64_t r0, int64_t ahead,
                                    const char* const* rp, const char** pp) {
  for (int r = 0; r < R; ++r) {
    const int64_t i = r0 + ahead + r;
    pp[r] = rows ? (i < nrows ? base + rows[i] * stride_b : rp[r])
                 : reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(rp[r]) +
                                                 uintptr_t(ahead * stride_b));
  }
}

// One step of a spread prefetch: byte `off` of each of R rows (see prefetch_targets).
// The first step also takes each row's last line: a row that does not start on a line
// boundary (NumPy's large arrays start 16 bytes into one) ends in one more line, and
// without it every row waited for that line from memory (prefix 256, 12 queries: 23 ->
// 60 ms).
template <int R>
static inline void prefetch_step(const char* const* pp, int64_t off, int64_t row_bytes) {
  for (int r = 0; r < R; ++r) {
    const uintptr_t t = reinterpret_cast<uintptr_t>(pp[r]);
    prefetch_l1(t + uintptr_t(off));
    if (off == 0) prefetch_l1(t + uintptr_t(row_bytes - 1));
  }
}

// Prefetches each 64-byte offset in bytes [from, to) of the row at integer address p:
// one loop step's share of the row a streaming loop reads `ahead` rows later.
static inline void prefetch_bytes(uintptr_t p, int64_t from, int64_t to) {
  for (int64_t b = (from + 63) / 64 * 64; b < to; b += 64) prefetch_l1(p + uintptr_t(b));
}

void dots_scalar(const void*, int, int64_t, const int64_t*, int64_t, int64_t, const float*,
                 int64_t, int64_t, float*, int64_t, float*);
void dots_avx2(const void*, int, int64_t, const int64_t*, int64_t, int64_t, const float*,
               int64_t, int64_t, float*, int64_t, float*);
void dots_avx512(const void*, int, int64_t, const int64_t*, int64_t, int64_t, const float*,
                 int64_t, int64_t, float*, int64_t, float*);
int64_t select_scalar(const float*, const float*, int64_t, int, float, float, float,
                      const uint8_t*, uint32_t*, float*);
int64_t select_avx512(const float*, const float*, int64_t, int, float, float, float,
                      const uint8_t*, uint32_t*, float*);

// AVX512-BF16 first pass (dense_avx512.cpp). to_bf16: rows of `dtype` ->
// packed bfloat16 [nrows, dimp] (round to nearest even; dimp a multiple of 32, the
// tail zero; `out` 64-byte aligned), and sq[r] = float32 |x_r[:dim]|^2 when sq is set.
// dots_bf16: dots[j * ld + r] ~= q_j . x_r over such packed rows and queries.
void to_bf16_avx512(const void* base, int dtype, int64_t stride, int64_t nrows, int64_t dim,
                    int64_t dimp, uint16_t* out, float* sq);
void dots_bf16_avx512(const uint16_t* x, int64_t nrows, int64_t dimp, const uint16_t* q,
                      int64_t nq, float* dots, int64_t ld);

// Two-pass top-k (dense_bf16.cpp): bf16 scan, exact rescoring of a shortlist, and a
// certificate per query. Same contract as topk (no candidates); returns how many
// queries it could not certify and writes their indices to `failed` (their outputs
// are then unspecified). bf16_pass_wanted: whether topk takes this route.
// bf16_pass_enabled / set_bf16_pass: the switch (default on; NESTVEC_DENSE_BF16=0 = off).
bool bf16_pass_wanted(int64_t nq, int64_t n, int64_t dim);
bool bf16_pass_enabled();
void set_bf16_pass(bool on);
int64_t topk_bf16(const void* db, int dtype, int64_t n, int64_t stride, int64_t dim,
                  const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
                  const uint8_t* allow, float* out_score, int64_t* out_idx, int64_t* failed);
// Queries certified by / handed back from the two-pass route since the module loaded.
void bf16_stats(int64_t* certified, int64_t* fallback);

// db [n, >= dim] of `dtype` (row stride `stride` elements); queries float32 [nq, dim]
// (row stride `query_stride`); allow: optional bool [n]; candidates: optional int64
// [nq, ncand] row ids (-1 or out of range = padding, duplicates counted once).
// Output [nq, k]: best first (cosine/ip: highest score; l2: smallest squared
// distance), ties by index; missing entries are (-inf | +inf for l2, -1).
// Large batches go through topk_bf16, with a float32 scan for uncertified queries.
void topk(const void* db, int dtype, int64_t n, int64_t stride, int64_t dim,
          const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
          const uint8_t* allow, const int64_t* candidates, int64_t ncand, float* out_score,
          int64_t* out_idx);

}  // namespace dense
}  // namespace nestvec
