// Exact elastic-dimension dense top-k on the GPU.
//
// scan kernel: one block of 256 threads scores BN = 128 rows x BQ queries (16 or 64)
// over the first `dim` values. Rows are staged into shared memory BK = 64 values at
// a time (16-byte loads where the layout allows, bounds-checked element loads
// otherwise), their prefix norms summed on the way in. f16 / bf16 rows go through
// tensor cores (WMMA 16x16x16, fp32 accumulation); the unit-norm float32 query is rounded to
// the storage type (f16) or split into hi + lo bf16 halves (bf16, two MMAs, ~16
// mantissa bits kept). f32 rows use CUDA cores (fp32 FMA).
// Epilogue: per (query, row) an int64 key  ord(score) << 32 | (2^32 - 1 - row)  (so
// key order is the contract order: best first, ties by index; excluded rows get
// INT64_MIN); each query's 128 keys are bitonic-sorted in shared memory and the best
// KP = min(k, 128) are written to keys[q, block * KP + i]. The caller (ops.py,
// _dense_gpu.py) merges with torch.topk over [Q, blocks * KP], in query chunks and row
// slices of at most 1 GiB of keys. For k < 128 that is a fraction k / 128 of a [Q, N]
// matrix; from k = 128 on it is one key per (query, row), bounded by the chunking.
// gather kernel (candidates): one warp per (query, candidate id), same key.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <type_traits>

#include "common.cuh"
#include "nestvec/cuda_api.h"

namespace nestvec {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int BN = 128;     // rows per block (8 warps x 16)
constexpr int BK = 64;      // values per staged chunk
constexpr int kXPad = 8;    // smem row padding (16-bit types): ldm multiple of 8, fewer conflicts
constexpr int kScPad = 4;   // score rows: ldm multiple of 4 floats
constexpr int kSortQ = 16;  // queries sorted at a time in the epilogue

// The contract order as one int64. A non-finite score (NaN or inf in the row's prefix,
// or an overflow) makes the row ineligible, on every backend; -0 counts as +0, so that
// equal scores always tie by index.
__device__ __forceinline__ long long make_key(float key, int64_t row) {
  if (!(fabsf(key) <= FLT_MAX)) return LLONG_MIN;
  const int bits = __float_as_int(key + 0.0f);
  const int ordk = bits ^ ((bits >> 31) & 0x7FFFFFFF);
  // Shift as unsigned (a negative left shift is undefined in C++17), then reinterpret.
  const unsigned long long hi = static_cast<unsigned long long>(static_cast<long long>(ordk)) << 32;
  return static_cast<long long>(hi | static_cast<unsigned long long>(0xFFFFFFFFLL - row));
}

__device__ __forceinline__ float score_key(float dot, float sq, float qa, float qb, int metric) {
  // dot is taken with the unit-norm query; qa restores its scale (see cuda_api.h).
  if (metric == 0) return sq > 0.f ? dot * qa * (1.f / sqrtf(sq)) : sq + 0.f;  // NaN row: NaN
  if (metric == 1) return dot * qa;
  return 2.f * dot * qa - sq - qb;
}

constexpr int cx_align(int x, int a) { return (x + a - 1) / a * a; }

// Shared-memory layout of the scan kernel (offsets in bytes, 128-byte aligned).
template <typename S, int BQ, bool SPLIT>
struct Smem {
  static constexpr int xld = BK + (sizeof(S) == 2 ? kXPad : 1);
  static constexpr int qld = BK + (sizeof(S) == 2 ? kXPad : 1);
  static constexpr int scld = BN + kScPad;
  static constexpr int x_off = 0;
  static constexpr int q_off = cx_align(x_off + BN * xld * int(sizeof(S)), 128);
  static constexpr int ql_off = cx_align(q_off + BQ * qld * int(sizeof(S)), 128);
  static constexpr int sc_off = cx_align(ql_off + (SPLIT ? BQ * qld * int(sizeof(S)) : 0), 128);
  static constexpr int sq_off = cx_align(sc_off + BQ * scld * 4, 128);
  static constexpr int key_off = cx_align(sq_off + BN * 4, 128);
  static constexpr int bytes = cx_align(key_off + kSortQ * BN * 8, 128);
};

// Stage rows [row0, row0 + BN) x values [d0, d0 + BK) of T into smem (type S, ld xld),
// zero outside [0, n) x [0, dim); adds each value's square to the thread's partial
// row norms sqp[]. Unit = 16 bytes of T; VEC values.
template <typename T, typename S, int XLD>
__device__ __forceinline__ void stage_rows(const T* __restrict__ db, int64_t n, int64_t stride,
                                           int64_t dim, int64_t row0, int64_t d0, bool vec_ok,
                                           S* xs, float* sqp) {
  constexpr int VEC = 16 / int(sizeof(T));
  constexpr int UPR = BK / VEC;            // units per row
  constexpr int RPP = kThreads / UPR;      // rows per pass
  constexpr int PASSES = BN / RPP;
  const int u = threadIdx.x % UPR;
  const int rbase = threadIdx.x / UPR;
#pragma unroll
  for (int p = 0; p < PASSES; ++p) {
    const int r = rbase + p * RPP;
    const int64_t row = row0 + r;
    const int64_t c0 = d0 + int64_t(u) * VEC;
    alignas(16) T v[VEC];
    if (row < n && vec_ok && c0 + VEC <= dim) {
      const uint4 raw = *reinterpret_cast<const uint4*>(db + row * stride + c0);
      *reinterpret_cast<uint4*>(v) = raw;
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        v[e] = (row < n && c0 + e < dim) ? db[row * stride + c0 + e] : from_f<T>(0.f);
    }
    float s = 0.f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float f = to_f(v[e]);
      s += f * f;
    }
    if constexpr (std::is_same<S, T>::value && sizeof(T) == 2) {
      // 16 bytes at (r * XLD + u * 8) * 2 = 144 r + 16 u: aligned, one store.
      static_assert((XLD * sizeof(S)) % 16 == 0, "smem rows must keep 16-byte alignment");
      *reinterpret_cast<uint4*>(xs + r * XLD + u * VEC) = *reinterpret_cast<const uint4*>(v);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) xs[r * XLD + u * VEC + e] = from_f<S>(to_f(v[e]));
    }
    sqp[p] += s;
  }
}

// Finish the partial norms of stage_rows into sqs[BN] (lanes sharing a row are adjacent).
template <typename T>
__device__ __forceinline__ void reduce_norms(float* sqp, float* sqs) {
  constexpr int VEC = 16 / int(sizeof(T));
  constexpr int UPR = BK / VEC;
  constexpr int RPP = kThreads / UPR;
  constexpr int PASSES = BN / RPP;
#pragma unroll
  for (int p = 0; p < PASSES; ++p) {
    float s = sqp[p];
#pragma unroll
    for (int o = 1; o < UPR; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % UPR == 0) sqs[threadIdx.x / UPR + p * RPP] = s;
  }
}

template <typename S, int QLD>
__device__ __forceinline__ void stage_queries(const float* __restrict__ q, int64_t qstride, int nq,
                                              int q0, int bq, int64_t dim, int64_t d0, S* qs,
                                              S* qls) {
  for (int i = threadIdx.x; i < bq * BK; i += kThreads) {
    const int j = i / BK, c = i % BK;
    const int64_t col = d0 + c;
    const float f = (q0 + j < nq && col < dim) ? q[int64_t(q0 + j) * qstride + col] : 0.f;
    const S hi = from_f<S>(f);
    qs[j * QLD + c] = hi;
    if (qls) qls[j * QLD + c] = from_f<S>(f - to_f(hi));
  }
}

// Keys of queries [g, g + kSortQ) of this block, sorted, best KP written out.
template <int BQ>
__device__ __forceinline__ void select_block(const float* sc, int scld, const float* sqs,
                                             long long* keys, const float* __restrict__ qaux,
                                             int metric, const uint8_t* __restrict__ allow,
                                             int64_t n, int nq, int q0, int64_t row0, int kp,
                                             int64_t blk, long long* __restrict__ out,
                                             int64_t ostride) {
  for (int g = 0; g < BQ; g += kSortQ) {
    const int nvq = min(kSortQ, nq - q0 - g);  // queries of this group that exist
    if (nvq <= 0) break;                        // uniform across the block
    for (int e = threadIdx.x; e < nvq * BN; e += kThreads) {
      const int j = e / BN, r = e % BN;
      const int qi = q0 + g + j;
      const int64_t row = row0 + r;
      long long key = LLONG_MIN;
      if (row < n && (!allow || allow[row])) {
        const float s = score_key(sc[(g + j) * scld + r], sqs[r], qaux[2 * qi], qaux[2 * qi + 1], metric);
        key = make_key(s, row);
      }
      keys[e] = key;
    }
    __syncthreads();
    for (int size = 2; size <= BN; size <<= 1) {
      for (int st = size >> 1; st > 0; st >>= 1) {
        for (int e = threadIdx.x; e < nvq * BN; e += kThreads) {
          const int i = e % BN, p = i ^ st;
          if (p > i) {
            const int base = e - i;
            const long long a = keys[base + i], b = keys[base + p];
            const bool up = (i & size) == 0;  // ascending run
            if ((a > b) == up) {
              keys[base + i] = b;
              keys[base + p] = a;
            }
          }
        }
        __syncthreads();
      }
    }
    for (int e = threadIdx.x; e < nvq * kp; e += kThreads) {
      const int j = e / kp, i = e % kp;
      const int qi = q0 + g + j;
      out[int64_t(qi) * ostride + blk * kp + i] = keys[j * BN + (BN - 1 - i)];
    }
    __syncthreads();
  }
}

// f16 / bf16 rows: tensor cores.
template <typename T, int BQ, bool SPLIT>
__global__ void __launch_bounds__(kThreads)
scan_wmma_kernel(const T* __restrict__ db, int64_t n, int64_t stride, int64_t dim,
                 const float* __restrict__ q, int64_t qstride, int nq,
                 const float* __restrict__ qaux, int metric, const uint8_t* __restrict__ allow,
                 int kp, int nqb, bool vec_ok, long long* __restrict__ out, int64_t ostride) {
  using namespace nvcuda;
  using L = Smem<T, BQ, SPLIT>;
  NV_DYNAMIC_SMEM(unsigned char, smem, 128);
  T* xs = reinterpret_cast<T*>(smem + L::x_off);
  T* qs = reinterpret_cast<T*>(smem + L::q_off);
  T* qls = SPLIT ? reinterpret_cast<T*>(smem + L::ql_off) : nullptr;
  float* sc = reinterpret_cast<float*>(smem + L::sc_off);
  float* sqs = reinterpret_cast<float*>(smem + L::sq_off);
  long long* keys = reinterpret_cast<long long*>(smem + L::key_off);

  const int64_t bid = blockIdx.x;
  const int qb = int(bid % nqb);  // query blocks of one row tile run together: L2 reuse
  const int64_t blk = bid / nqb;
  const int64_t row0 = blk * BN;
  const int q0 = qb * BQ;
  const int warp = threadIdx.x / 32;

  constexpr int NF = BQ / 16;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[f], 0.f);
  float sqp[BN / (kThreads / (BK / (16 / int(sizeof(T)))))];
  for (auto& s : sqp) s = 0.f;

  for (int64_t d0 = 0; d0 < dim; d0 += BK) {
    stage_rows<T, T, L::xld>(db, n, stride, dim, row0, d0, vec_ok, xs, sqp);
    stage_queries<T, L::qld>(q, qstride, nq, q0, BQ, dim, d0, qs, qls);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::load_matrix_sync(a, xs + warp * 16 * L::xld + kk, L::xld);
#pragma unroll
      for (int f = 0; f < NF; ++f) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
        wmma::load_matrix_sync(b, qs + f * 16 * L::qld + kk, L::qld);
        wmma::mma_sync(acc[f], a, b, acc[f]);
        if (SPLIT) {
          wmma::load_matrix_sync(b, qls + f * 16 * L::qld + kk, L::qld);
          wmma::mma_sync(acc[f], a, b, acc[f]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int f = 0; f < NF; ++f)  // C[row, query] -> sc[query * scld + row]
    wmma::store_matrix_sync(sc + f * 16 * L::scld + warp * 16, acc[f], L::scld, wmma::mem_col_major);
  reduce_norms<T>(sqp, sqs);
  __syncthreads();
  select_block<BQ>(sc, L::scld, sqs, keys, qaux, metric, allow, n, nq, q0, row0, kp, blk, out,
                   ostride);
}

// f32 rows: CUDA cores. Thread t owns row t % BN and BQ / 2 queries.
template <int BQ>
__global__ void __launch_bounds__(kThreads)
scan_f32_kernel(const float* __restrict__ db, int64_t n, int64_t stride, int64_t dim,
                const float* __restrict__ q, int64_t qstride, int nq,
                const float* __restrict__ qaux, int metric, const uint8_t* __restrict__ allow,
                int kp, int nqb, bool vec_ok, long long* __restrict__ out, int64_t ostride) {
  using L = Smem<float, BQ, false>;
  NV_DYNAMIC_SMEM(unsigned char, smem, 128);
  float* xs = reinterpret_cast<float*>(smem + L::x_off);
  float* qs = reinterpret_cast<float*>(smem + L::q_off);
  float* sc = reinterpret_cast<float*>(smem + L::sc_off);
  float* sqs = reinterpret_cast<float*>(smem + L::sq_off);
  long long* keys = reinterpret_cast<long long*>(smem + L::key_off);

  const int64_t bid = blockIdx.x;
  const int qb = int(bid % nqb);
  const int64_t blk = bid / nqb;
  const int64_t row0 = blk * BN;
  const int q0 = qb * BQ;
  constexpr int QPT = BQ * BN / kThreads;  // queries per thread
  const int r = threadIdx.x % BN;
  const int jq = (threadIdx.x / BN) * QPT;
  float acc[QPT];
#pragma unroll
  for (int i = 0; i < QPT; ++i) acc[i] = 0.f;
  float sqp[BN / (kThreads / (BK / 4))];
  for (auto& s : sqp) s = 0.f;

  for (int64_t d0 = 0; d0 < dim; d0 += BK) {
    stage_rows<float, float, L::xld>(db, n, stride, dim, row0, d0, vec_ok, xs, sqp);
    stage_queries<float, L::qld>(q, qstride, nq, q0, BQ, dim, d0, qs, nullptr);
    __syncthreads();
    for (int c = 0; c < BK; ++c) {
      const float x = xs[r * L::xld + c];
#pragma unroll
      for (int i = 0; i < QPT; ++i) acc[i] = fmaf(x, qs[(jq + i) * L::qld + c], acc[i]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < QPT; ++i) sc[(jq + i) * L::scld + r] = acc[i];
  reduce_norms<float>(sqp, sqs);
  __syncthreads();
  select_block<BQ>(sc, L::scld, sqs, keys, qaux, metric, allow, n, nq, q0, row0, kp, blk, out,
                   ostride);
}

// Candidates: one warp per (query, candidate). cand: sorted, de-duplicated ids, -1 =
// padding (prepared by the caller).
template <typename T>
__global__ void __launch_bounds__(kThreads)
gather_kernel(const T* __restrict__ db, int64_t n, int64_t stride, int64_t dim,
              const float* __restrict__ q, int64_t qstride, const float* __restrict__ qaux,
              int metric, const int64_t* __restrict__ cand, int64_t ncand, int64_t cstride,
              long long* __restrict__ out, int64_t ostride) {
  const int lane = threadIdx.x % 32;
  const int64_t c = int64_t(blockIdx.x) * (kThreads / 32) + threadIdx.x / 32;
  const int qi = blockIdx.y;
  if (c >= ncand) return;
  const int64_t row = cand[int64_t(qi) * cstride + c];
  long long key = LLONG_MIN;
  if (row >= 0 && row < n) {
    const T* x = db + row * stride;
    const float* qv = q + int64_t(qi) * qstride;
    float dot = 0.f, sq = 0.f;
    for (int64_t i = lane; i < dim; i += 32) {
      const float f = to_f(x[i]);
      dot = fmaf(f, qv[i], dot);
      sq = fmaf(f, f, sq);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      dot += __shfl_xor_sync(0xffffffffu, dot, o);
      sq += __shfl_xor_sync(0xffffffffu, sq, o);
    }
    key = make_key(score_key(dot, sq, qaux[2 * qi], qaux[2 * qi + 1], metric), row);
  }
  if (lane == 0) out[int64_t(qi) * ostride + c] = key;
}

template <typename T, int BQ, bool SPLIT>
int scan_typed(const void* db, int64_t n, int64_t stride, int64_t dim, const float* q,
               int64_t qstride, int nq, const float* qaux, int metric, const uint8_t* allow,
               int kp, bool vec_ok, long long* out, int64_t ostride, cudaStream_t s) {
  const int nqb = int((int64_t(nq) + BQ - 1) / BQ);  // int64: nq near INT_MAX
  const int64_t blocks = (n + BN - 1) / BN * nqb;
  if (blocks >= (int64_t(1) << 31)) return int(cudaErrorInvalidValue);
  const int smem = Smem<T, BQ, SPLIT>::bytes;
  auto kern = scan_wmma_kernel<T, BQ, SPLIT>;
  NV_CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  NV_LAUNCH(unsigned(blocks), kThreads, smem, s, kern)(static_cast<const T*>(db), n, stride, dim, q,
                                                qstride, nq, qaux, metric, allow, kp, nqb, vec_ok,
                                                out, ostride);
  return last_error();
}

template <int BQ>
int scan_f32(const void* db, int64_t n, int64_t stride, int64_t dim, const float* q,
             int64_t qstride, int nq, const float* qaux, int metric, const uint8_t* allow, int kp,
             bool vec_ok, long long* out, int64_t ostride, cudaStream_t s) {
  const int nqb = int((int64_t(nq) + BQ - 1) / BQ);  // int64: nq near INT_MAX
  const int64_t blocks = (n + BN - 1) / BN * nqb;
  if (blocks >= (int64_t(1) << 31)) return int(cudaErrorInvalidValue);
  const int smem = Smem<float, BQ, false>::bytes;
  auto kern = scan_f32_kernel<BQ>;
  NV_CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  NV_LAUNCH(unsigned(blocks), kThreads, smem, s, kern)(static_cast<const float*>(db), n, stride, dim, q,
                                                qstride, nq, qaux, metric, allow, kp, nqb, vec_ok,
                                                out, ostride);
  return last_error();
}

}  // namespace

int dense_block_rows() { return BN; }

int dense_scan(const void* db, int dtype, int64_t n, int64_t stride, int64_t dim,
               const float* queries, int64_t nq, int64_t query_stride, const float* qaux,
               int metric, const uint8_t* allow, int64_t kp, int64_t* keys, int64_t keys_stride,
               uintptr_t stream) {
  if (n <= 0 || nq <= 0 || dim <= 0 || kp <= 0 || kp > BN || n >= (int64_t(1) << 32) ||
      nq > INT_MAX || dtype < 0 || dtype > 2 || metric < 0 || metric > 2 || stride < dim)
    return int(cudaErrorInvalidValue);
  if (keys_stride < (n + BN - 1) / BN * kp) return int(cudaErrorInvalidValue);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t es = dtype == 0 ? 4 : 2;
  // 16-byte loads need 16-byte aligned rows.
  const bool vec_ok = reinterpret_cast<uintptr_t>(db) % 16 == 0 && (stride * es) % 16 == 0;
  long long* out = reinterpret_cast<long long*>(keys);
  const int q = int(nq), k = int(kp);
  const bool big = nq > 16;
  if (dtype == 0)
    return big ? scan_f32<64>(db, n, stride, dim, queries, query_stride, q, qaux, metric, allow, k, vec_ok, out, keys_stride, s)
               : scan_f32<16>(db, n, stride, dim, queries, query_stride, q, qaux, metric, allow, k, vec_ok, out, keys_stride, s);
  if (dtype == 1)
    return big ? scan_typed<__half, 64, false>(db, n, stride, dim, queries, query_stride, q, qaux, metric, allow, k, vec_ok, out, keys_stride, s)
               : scan_typed<__half, 16, false>(db, n, stride, dim, queries, query_stride, q, qaux, metric, allow, k, vec_ok, out, keys_stride, s);
  return big ? scan_typed<__nv_bfloat16, 64, true>(db, n, stride, dim, queries, query_stride, q, qaux, metric, allow, k, vec_ok, out, keys_stride, s)
             : scan_typed<__nv_bfloat16, 16, true>(db, n, stride, dim, queries, query_stride, q, qaux, metric, allow, k, vec_ok, out, keys_stride, s);
}

int dense_gather(const void* db, int dtype, int64_t n, int64_t stride, int64_t dim,
                 const float* queries, int64_t nq, int64_t query_stride, const float* qaux,
                 int metric, const int64_t* cand, int64_t ncand, int64_t cand_stride,
                 int64_t* keys, int64_t keys_stride, uintptr_t stream) {
  if (n <= 0 || nq <= 0 || dim <= 0 || ncand <= 0 || nq > 65535 || dtype < 0 || dtype > 2 ||
      metric < 0 || metric > 2)
    return int(cudaErrorInvalidValue);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t bx = (ncand + (kThreads / 32) - 1) / (kThreads / 32);
  if (bx >= (int64_t(1) << 31)) return int(cudaErrorInvalidValue);
  const dim3 grid{static_cast<unsigned>(bx), static_cast<unsigned>(nq), 1u};
  long long* out = reinterpret_cast<long long*>(keys);
  if (dtype == 0)
    NV_LAUNCH(grid, kThreads, 0, s, gather_kernel<float>)(static_cast<const float*>(db), n, stride, dim, queries, query_stride, qaux, metric, cand, ncand, cand_stride, out, keys_stride);
  else if (dtype == 1)
    NV_LAUNCH(grid, kThreads, 0, s, gather_kernel<__half>)(static_cast<const __half*>(db), n, stride, dim, queries, query_stride, qaux, metric, cand, ncand, cand_stride, out, keys_stride);
  else
    NV_LAUNCH(grid, kThreads, 0, s, gather_kernel<__nv_bfloat16>)(static_cast<const __nv_bfloat16*>(db), n, stride, dim, queries, query_stride, qaux, metric, cand, ncand, cand_stride, out, keys_stride);
  return last_error();
}

}  // namespace cuda
}  // namespace nestvec
