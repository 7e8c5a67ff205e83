// Host launchers of the CUDA kernels. Pointers are device pointers; `stream` is a
// cudaStream_t passed as an integer so that _C never compiles against torch.
// Each returns 0 on success or a CUDA error code (see cuda_error_string).
#pragma once
#include <cstdint>

namespace nestvec {
namespace cuda {

int device_count();
const char* error_string(int code);

// Hamming top-k; queries run in groups whose uint16 distances and candidate keys take
// at most group_bytes (at least one query a group); workspace of
// hamming_workspace_bytes(n, nq, nbytes, k, group_bytes) bytes.
int64_t hamming_workspace_bytes(int64_t n, int64_t nq, int64_t nbytes, int64_t k,
                                int64_t group_bytes);
int hamming_topk(const uint8_t* codes, int64_t n, int64_t code_stride, const uint8_t* queries,
                 int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k,
                 const uint8_t* allow, int32_t* out_dist, int64_t* out_idx, int64_t group_bytes,
                 void* workspace, int64_t workspace_bytes, uintptr_t stream);

// Fused pooling (see pooling.h for the arguments; mode/dtype enums alike). out float32
// [B, d] contiguous; codes uint8 [B, ceil(d/8)] or nullptr.
int pool(const void* hidden, int dtype, int64_t B, int64_t T, int64_t d, int64_t sb, int64_t st,
         const void* mask, int mask_itemsize, int64_t mask_sb, int mode, bool normalize,
         float* out, uint8_t* codes, uintptr_t stream);
// lowrank_sparse_matmul (dtype 0 = f32, 1 = f16, 2 = bf16); row-major operands, A, B, S
// contiguous, x rows with stride ldx, y contiguous [M, N]; channels int64 [c] on the
// device; bias [N] or null. Workspace of lowrank_sparse_workspace_bytes(...) bytes.
int64_t lowrank_sparse_workspace_bytes(int dtype, int64_t M, int64_t N, int64_t r, int64_t c);
int lowrank_sparse_matmul(int dtype, const void* x, int64_t M, int64_t K, int64_t ldx,
                          const void* A, int64_t r, const void* B, int64_t N, const void* S,
                          int64_t c, const int64_t* channels, const void* bias, void* y,
                          void* workspace, int64_t workspace_bytes, uintptr_t stream);
// Dense (elastic) top-k, stage 1 (see csrc/cuda/dense.cu). db: [n, >= dim] float32 /
// float16 / bfloat16 (dtype 0 / 1 / 2), row stride `stride` elements; queries float32
// [nq, >= dim], prefix scaled to unit norm; qaux float32 [nq, 2] = (a, b): the score
// is  cosine: a dot / |x|  (a = 1, or 0 for a zero query), ip: a dot (a = |q|),
// l2: 2 a dot - |x|^2 - b (a = |q|, b = |q|^2), dot taken with the unit query;
// metric 0 cosine / 1 ip / 2 l2; allow: optional uint8 [n]. Writes, for each query and
// each block of dense_block_rows() rows, that block's best kp (<= block rows) keys
// ord(score) << 32 | (2^32 - 1 - row), best first, INT64_MIN for excluded rows, at
// keys[q * keys_stride + block * kp + i]. Needs n < 2^32.
int dense_block_rows();
int dense_scan(const void* db, int dtype, int64_t n, int64_t stride, int64_t dim,
               const float* queries, int64_t nq, int64_t query_stride, const float* qaux,
               int metric, const uint8_t* allow, int64_t kp, int64_t* keys, int64_t keys_stride,
               uintptr_t stream);
// Candidates: cand int64 [nq, ncand] (row stride cand_stride), -1 = skip (the caller
// removes duplicates and disallowed rows); one key per candidate into keys[q, c].
int dense_gather(const void* db, int dtype, int64_t n, int64_t stride, int64_t dim,
                 const float* queries, int64_t nq, int64_t query_stride, const float* qaux,
                 int metric, const int64_t* cand, int64_t ncand, int64_t cand_stride,
                 int64_t* keys, int64_t keys_stride, uintptr_t stream);

}  // namespace cuda
}  // namespace nestvec
