// Host launchers of the CUDA kernels. Pointers are device pointers; `stream` is a
// cudaStream_t passed as an integer so that _C never compiles against torch.
// Each returns 0 on success or a CUDA error code (see cuda_error_string).
#pragma once
#include <cstdint>

namespace nestvec {
namespace cuda {

int device_count();
const char* error_string(int code);

// Hamming top-k; workspace of hamming_workspace_bytes(n, nq, nbytes, k) bytes.
int64_t hamming_workspace_bytes(int64_t n, int64_t nq, int64_t nbytes, int64_t k);
int hamming_topk(const uint8_t* codes, int64_t n, int64_t code_stride, const uint8_t* queries,
                 int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k,
                 const uint8_t* allow, int32_t* out_dist, int64_t* out_idx, void* workspace,
                 int64_t workspace_bytes, uintptr_t stream);

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
