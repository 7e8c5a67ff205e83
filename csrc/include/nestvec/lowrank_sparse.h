// LOST low-rank + channel-sparse matmul: y = x·Aᵀ·Bᵀ + scatter_cols(x·Sᵀ) + bias.
#pragma once
#include <cstdint>

#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"

namespace nestvec {
namespace lowrank_sparse {

// Row-major operands; every row contiguous, `ld*` are row strides in elements.
// x [M, K], A [r, K], B [N, r], S [c, K], channels int64 [c] (unique, in [0, N)),
// bias [N] or null, y [M, N]. All of `dtype`; products accumulate in float32.
struct Args {
  DType dtype;
  const void* x;
  int64_t M, K, ldx;
  const void* A;
  int64_t r, lda;
  const void* B;
  int64_t N, ldb;
  const void* S;
  int64_t c, lds;
  const int64_t* channels;
  const void* bias;
  void* y;
  int64_t ldy;
};

// Dispatches on the active ISA (dispatch.h).
void matmul(const Args& a);

// One ISA's build of csrc/cpu/lowrank_sparse_impl.h (lowrank_sparse_<isa>.cpp).
struct Kernels {
  void (*matmul)(const Args& a);
};
template <Isa I>
Kernels kernels();

}  // namespace lowrank_sparse
}  // namespace nestvec
