// LOST low-rank + channel-sparse matmul: y = x·Aᵀ·Bᵀ + scatter_cols(x·Sᵀ) + bias.
#pragma once
#include <cstdint>

namespace nestvec {
namespace lowrank_sparse {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

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

void matmul_scalar(const Args& a);
void matmul_avx2(const Args& a);
void matmul_avx512(const Args& a);

}  // namespace lowrank_sparse
}  // namespace nestvec
