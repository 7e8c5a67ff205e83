// Fused pooling of token states: one pass over hidden [B, T, H] per row, float32
// accumulation, then truncation to d, L2 norm and sign bits on the [B, d] result.
#pragma once
#include <cstdint>

#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"

namespace nestvec {
namespace pooling {

enum Mode : int { kMean = 0, kCls = 1, kLast = 2, kMax = 3, kWeightedMean = 4 };

// out[0:d] = sum_i w[i] * row(tok[i])[0:d] (w == nullptr: all ones), or the
// element-wise max over the rows when `max` is set. `base` points at token 0 of one
// batch item, token rows are `tstride` elements apart; n >= 1.
using ReduceFn = void (*)(const void* base, int64_t tstride, DType dtype, const int32_t* tok,
                          const float* w, int64_t n, int64_t d, bool max, float* out);

// One ISA's build of csrc/cpu/pooling_impl.h (pooling_<isa>.cpp).
struct Kernels {
  ReduceFn reduce;
};
template <Isa I>
Kernels kernels();

// hidden [B, T, >= d] of `dtype` (element strides sb, st; last dimension contiguous);
// mask [B, T] of `mask_itemsize`-byte elements (1, 2, 4 or 8; nonzero = present), row
// stride mask_sb elements; out float32 [B, d] contiguous; codes uint8 [B, ceil(d/8)]
// or nullptr. Threads over the batch.
void pool(const void* hidden, DType dtype, int64_t B, int64_t T, int64_t d, int64_t sb, int64_t st,
          const void* mask, int mask_itemsize, int64_t mask_sb, int mode, bool normalize,
          float* out, uint8_t* codes);

}  // namespace pooling
}  // namespace nestvec
