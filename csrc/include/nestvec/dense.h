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

// Keys of one query over a tile (larger = better):
//   cosine: dot * a * rowf[r]   (a = 1/|q|, rowf = 1/|x| or 0 for a zero row)
//   ip:     dot
//   l2:     2 dot - rowf[r] - b (b = |q|^2, rowf = |x|^2)  == -|q - x|^2
// Appends each r with key > thr and (allow == null or allow[r]) to hit_rows/hit_keys
// in increasing r; returns the number of hits.
using SelectFn = int64_t (*)(const float* dots, const float* rowf, int64_t nrows, int metric,
                             float a, float b, float thr, const uint8_t* allow,
                             uint32_t* hit_rows, float* hit_keys);

// bf16 first pass of the two-pass route (ISAs with a bf16 dot instruction: AVX512-BF16).
// ToBf16Fn: rows of `dtype` -> packed bfloat16 [nrows, dimp] (round to nearest even;
// dimp a multiple of Kernels::bf16_block, the tail zero; `out` 64-byte aligned), and
// sq[r] = float32 |x_r[:dim]|^2 when sq is set. DotsBf16Fn: dots[j * ld + r] ~= q_j .
// x_r over such packed rows and queries.
using ToBf16Fn = void (*)(const void* base, DType dtype, int64_t stride, int64_t nrows,
                          int64_t dim, int64_t dimp, uint16_t* out, float* sq);
using DotsBf16Fn = void (*)(const uint16_t* x, int64_t nrows, int64_t dimp, const uint16_t* q,
                            int64_t nq, float* dots, int64_t ld);

// One ISA's build of csrc/cpu/dense_impl.h (dense_<isa>.cpp); the bf16 entries are null
// on ISAs without a bf16 dot instruction.
struct Kernels {
  DotsFn dots;
  SelectFn select;
  ToBf16Fn to_bf16;
  DotsBf16Fn dots_bf16;
  int bf16_block;
};
template <Isa I>
Kernels kernels();
// The active ISA's kernels.
Kernels active_kernels();

// Two-pass top-k (dense_bf16.cpp): bf16 scan, exact rescoring of a shortlist, and a
// certificate per query. Same contract as topk (no candidates); returns how many
// queries it could not certify and writes their indices to `failed` (their outputs
// are then unspecified). bf16_pass_wanted: whether topk takes this route.
// bf16_pass_enabled / set_bf16_pass: the switch (default on; NESTVEC_DENSE_BF16=0 = off).
bool bf16_pass_wanted(int64_t nq, int64_t n, int64_t dim);
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
// Large batches go through topk_bf16, with a float32 scan for uncertified queries.
void topk(const void* db, DType dtype, int64_t n, int64_t stride, int64_t dim,
          const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
          const uint8_t* allow, const int64_t* candidates, int64_t ncand, float* out_score,
          int64_t* out_idx);

}  // namespace dense
}  // namespace nestvec
