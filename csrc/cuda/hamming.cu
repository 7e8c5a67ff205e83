// Exact Hamming top-k on the GPU, exploiting the small integer range of distances:
//   1. dist_hist: one pass over the codes; per row and query the distance is written
//      as uint16 and counted in a per-query histogram (shared memory, then global).
//   2. threshold: per query, the k-th smallest distance T and how many rows at
//      exactly T are still needed.
//   3. count + scan + scatter: rows with d < T, and the first `need` rows (by index)
//      with d == T, are written in index order to a per-query candidate list of
//      exactly min(k, eligible) keys, so ties are broken by index deterministically.
//   4. sort: one block per query sorts its <= k (distance, index) keys.
// Queries are processed in groups so the uint16 distance buffer stays bounded.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>

#include <climits>

#include "common.cuh"
#include "nestvec/cuda_api.h"

namespace nestvec {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kScanRowsPerThread = 16;   // count / scatter
constexpr int kScanRows = kThreads * kScanRowsPerThread;
constexpr uint16_t kSkip = 0xFFFF;        // not eligible
constexpr int kIdxBits = 40;
constexpr int kSmemBudget = 96 * 1024;

__device__ __forceinline__ uint32_t popc_xor(uint4 a, uint4 b) {
  return __popc(a.x ^ b.x) + __popc(a.y ^ b.y) + __popc(a.z ^ b.z) + __popc(a.w ^ b.w);
}
__device__ __forceinline__ uint32_t popc_xor(uint32_t a, uint32_t b) { return __popc(a ^ b); }
__device__ __forceinline__ uint32_t popc_xor(uint8_t a, uint8_t b) { return __popc(uint32_t(a ^ b)); }

template <typename Word, int QS>
__global__ void dist_hist_kernel(const uint8_t* __restrict__ codes, int64_t n, int64_t stride,
                                 const uint8_t* __restrict__ queries, int64_t q_stride, int nq,
                                 int nbytes, const uint8_t* __restrict__ allow,
                                 uint16_t* __restrict__ dist, uint32_t* __restrict__ hist,
                                 int bins, bool smem_hist, int rows_per_block) {
  NV_DYNAMIC_SMEM(uint8_t, smem, 16);
  const int nwords = nbytes / int(sizeof(Word));
  const int qbase = blockIdx.y * QS;
  const int nqv = min(QS, nq - qbase);
  uint8_t* qbytes = smem;
  const int qbytes_len = int(align_up(int64_t(QS) * nbytes, 16));
  uint32_t* sh = reinterpret_cast<uint32_t*>(smem + qbytes_len);
  for (int i = threadIdx.x; i < QS * nbytes; i += blockDim.x) {
    const int qi = i / nbytes, b = i % nbytes;
    qbytes[i] = qi < nqv ? queries[int64_t(qbase + qi) * q_stride + b] : 0;
  }
  if (smem_hist)
    for (int i = threadIdx.x; i < QS * bins; i += blockDim.x) sh[i] = 0;
  __syncthreads();
  const Word* qw = reinterpret_cast<const Word*>(qbytes);

  const int64_t r0 = int64_t(blockIdx.x) * rows_per_block;
  const int64_t r1 = min(n, r0 + rows_per_block);
  for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
    if (allow && !allow[r]) {
      for (int qi = 0; qi < nqv; ++qi) dist[int64_t(qbase + qi) * n + r] = kSkip;
      continue;
    }
    uint32_t d[QS];
#pragma unroll
    for (int qi = 0; qi < QS; ++qi) d[qi] = 0;
    const Word* row = reinterpret_cast<const Word*>(codes + r * stride);
#pragma unroll 8
    for (int w = 0; w < nwords; ++w) {
      const Word x = row[w];
#pragma unroll
      for (int qi = 0; qi < QS; ++qi) d[qi] += popc_xor(x, qw[qi * nwords + w]);
    }
#pragma unroll
    for (int qi = 0; qi < QS; ++qi) {
      if (qi < nqv) {
        dist[int64_t(qbase + qi) * n + r] = uint16_t(d[qi]);
        if (smem_hist)
          atomicAdd(&sh[qi * bins + d[qi]], 1u);
        else
          atomicAdd(&hist[int64_t(qbase + qi) * bins + d[qi]], 1u);
      }
    }
  }
  if (smem_hist) {
    __syncthreads();
    for (int i = threadIdx.x; i < nqv * bins; i += blockDim.x)
      if (sh[i]) atomicAdd(&hist[int64_t(qbase) * bins + i], sh[i]);
  }
}

// One warp per query: T = smallest distance whose cumulative count reaches k.
__global__ void threshold_kernel(const uint32_t* __restrict__ hist, int bins, int64_t k,
                                 int* __restrict__ thr, int* __restrict__ need_eq,
                                 int* __restrict__ n_lt) {
  const int q = blockIdx.x, lane = threadIdx.x;
  const uint32_t* h = hist + int64_t(q) * bins;
  int64_t running = 0;
  for (int base = 0; base < bins; base += 32) {
    const int b = base + lane;
    int64_t c = b < bins ? h[b] : 0, incl = c;
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, running + incl >= k);
    if (hit) {
      const int src = __ffs(hit) - 1;
      const int64_t incl_s = __shfl_sync(0xffffffffu, incl, src);
      const int64_t c_s = __shfl_sync(0xffffffffu, c, src);
      if (lane == 0) {
        const int64_t below = running + incl_s - c_s;
        thr[q] = base + src;
        n_lt[q] = int(below);
        need_eq[q] = int(k - below);
      }
      return;
    }
    running += __shfl_sync(0xffffffffu, incl, 31);
  }
  if (lane == 0) {  // fewer than k eligible rows: take them all
    thr[q] = kSkip;
    n_lt[q] = int(running);
    need_eq[q] = 0;
  }
}

__global__ void count_kernel(const uint16_t* __restrict__ dist, int64_t n,
                             const int* __restrict__ thr, int nblk, int* __restrict__ lt_cnt,
                             int* __restrict__ eq_cnt) {
  using Scan = cub::BlockReduce<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int q = blockIdx.y;
  const int T = thr[q];
  const uint16_t* d = dist + int64_t(q) * n;
  const int64_t base = int64_t(blockIdx.x) * kScanRows + int64_t(threadIdx.x) * kScanRowsPerThread;
  int lt = 0, eq = 0;
#pragma unroll
  for (int i = 0; i < kScanRowsPerThread; ++i) {
    const int64_t r = base + i;
    if (r < n) {
      const int v = d[r];
      lt += v < T;
      eq += v == T;
    }
  }
  const int lt_sum = Scan(tmp).Sum(lt);
  __syncthreads();
  const int eq_sum = Scan(tmp).Sum(eq);
  if (threadIdx.x == 0) {
    lt_cnt[int64_t(q) * nblk + blockIdx.x] = lt_sum;
    eq_cnt[int64_t(q) * nblk + blockIdx.x] = eq_sum;
  }
}

// Exclusive scan of the per-block counts, one block per query. (__launch_bounds__:
// a 1024-thread launch fails on hardware beyond 64 registers a thread.)
__global__ void __launch_bounds__(1024) scan_blocks_kernel(int* __restrict__ lt_cnt, int* __restrict__ eq_cnt, int nblk) {
  using Scan = cub::BlockScan<int, 1024>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int carry[2];
  const int q = blockIdx.x;
  int* lt = lt_cnt + int64_t(q) * nblk;
  int* eq = eq_cnt + int64_t(q) * nblk;
  if (threadIdx.x == 0) carry[0] = carry[1] = 0;
  __syncthreads();
  for (int base = 0; base < nblk; base += 1024) {
    const int i = base + threadIdx.x;
    int a = i < nblk ? lt[i] : 0, b = i < nblk ? eq[i] : 0, ax, bx, at, bt;
    Scan(tmp).ExclusiveSum(a, ax, at);
    __syncthreads();
    Scan(tmp).ExclusiveSum(b, bx, bt);
    if (i < nblk) {
      lt[i] = ax + carry[0];
      eq[i] = bx + carry[1];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      carry[0] += at;
      carry[1] += bt;
    }
    __syncthreads();
  }
}

__global__ void scatter_kernel(const uint16_t* __restrict__ dist, int64_t n,
                               const int* __restrict__ thr, const int* __restrict__ need_eq,
                               const int* __restrict__ n_lt, const int* __restrict__ lt_off,
                               const int* __restrict__ eq_off, int nblk, int64_t k,
                               int64_t row_base, unsigned long long* __restrict__ cand) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int q = blockIdx.y;
  const int T = thr[q], need = need_eq[q], nlt = n_lt[q];
  const uint16_t* d = dist + int64_t(q) * n;
  const int64_t base = int64_t(blockIdx.x) * kScanRows + int64_t(threadIdx.x) * kScanRowsPerThread;
  uint16_t v[kScanRowsPerThread];
  int lt = 0, eq = 0;
#pragma unroll
  for (int i = 0; i < kScanRowsPerThread; ++i) {
    const int64_t r = base + i;
    v[i] = r < n ? d[r] : kSkip;
    lt += v[i] < T;
    eq += v[i] == T && T != kSkip;
  }
  int lt_pos, eq_pos;
  Scan(tmp).ExclusiveSum(lt, lt_pos);
  __syncthreads();
  Scan(tmp).ExclusiveSum(eq, eq_pos);
  lt_pos += lt_off[int64_t(q) * nblk + blockIdx.x];
  eq_pos += eq_off[int64_t(q) * nblk + blockIdx.x];
  unsigned long long* out = cand + int64_t(q) * k;
#pragma unroll
  for (int i = 0; i < kScanRowsPerThread; ++i) {
    const unsigned long long key =
        (static_cast<unsigned long long>(v[i]) << kIdxBits) | static_cast<unsigned long long>(row_base + base + i);
    if (v[i] < T) {
      out[lt_pos++] = key;
    } else if (v[i] == T && T != kSkip) {
      if (eq_pos < need) out[nlt + eq_pos] = key;
      ++eq_pos;
    }
  }
}

// Bitonic sort of the <= k candidate keys of one query in shared memory.
__global__ void __launch_bounds__(1024) sort_kernel(const unsigned long long* __restrict__ cand, const int* __restrict__ n_lt,
                            const int* __restrict__ need_eq, int64_t k, int P,
                            int32_t* __restrict__ out_dist, int64_t* __restrict__ out_idx) {
  NV_DYNAMIC_SMEM(unsigned long long, keys, 16);
  const int q = blockIdx.x;
  const int m = n_lt[q] + need_eq[q];
  for (int i = threadIdx.x; i < P; i += blockDim.x)
    keys[i] = i < m ? cand[int64_t(q) * k + i] : ~0ULL;
  __syncthreads();
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < P; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const bool up = (i & size) == 0;
          const unsigned long long a = keys[i], b = keys[j];
          if ((a > b) == up) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  const unsigned long long mask = (1ULL << kIdxBits) - 1;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    if (i < m) {
      out_dist[int64_t(q) * k + i] = int32_t(keys[i] >> kIdxBits);
      out_idx[int64_t(q) * k + i] = int64_t(keys[i] & mask);
    } else {
      out_dist[int64_t(q) * k + i] = INT32_MAX;
      out_idx[int64_t(q) * k + i] = -1;
    }
  }
}

// Queries per group: bounded by the caller's budget (group_bytes) for the group's
// distances and candidate keys (k of them a query, even where k > n: few codes, many
// queries and a large k would otherwise ask for GBs), and by 65535 because count_kernel
// and scatter_kernel put the group's queries on grid.y (e.g. 100k queries over 1k codes).
int64_t group_size(int64_t n, int64_t nq, int64_t k, int64_t group_bytes) {
  const int64_t g = std::max<int64_t>(1, group_bytes / std::max<int64_t>(1, 2 * n + 8 * k));
  return std::min<int64_t>(std::min<int64_t>(g, nq), 65535);
}

struct Plan {
  int qs;           // queries per dist_hist block (template)
  bool smem_hist;
  int smem_bytes;
  // Few queries: small blocks, many waves. Many queries: each block flushes a histogram
  // per query, so larger blocks amortise it (both sizes from runs on an H200; the
  // suite's hamming rows, benchmarks/results/gpu_suite_hamming_h200.json).
  int rows_per_block() const { return qs <= 2 ? 2048 : 8192; }
};

Plan plan_for(int nbytes, int64_t g) {
  const int bins = 8 * nbytes + 1;
  for (int qs : {16, 8, 4, 2, 1}) {
    if (qs > 1 && qs / 2 >= g) continue;
    const int sm = int(align_up(int64_t(qs) * nbytes, 16)) + qs * bins * 4;
    if (sm <= kSmemBudget) return {qs, true, sm};
  }
  for (int qs : {16, 8, 4, 2, 1}) {
    if (qs > 1 && qs / 2 >= g) continue;
    const int sm = int(align_up(int64_t(qs) * nbytes, 16));
    if (sm <= kSmemBudget) return {qs, false, sm};
  }
  return {1, false, int(align_up(nbytes, 16))};
}

template <typename Word, int QS>
int launch_dist(const Plan& p, dim3 grid, cudaStream_t s, const uint8_t* codes, int64_t n,
                int64_t stride, const uint8_t* queries, int64_t q_stride, int nq, int nbytes,
                const uint8_t* allow, uint16_t* dist, uint32_t* hist, int bins) {
  auto kern = dist_hist_kernel<Word, QS>;
  NV_CUDA_TRY(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, p.smem_bytes));
  NV_LAUNCH(grid, kThreads, p.smem_bytes, s, kern)(codes, n, stride, queries, q_stride, nq, nbytes, allow,
                                             dist, hist, bins, p.smem_hist, p.rows_per_block());
  return last_error();
}

template <typename Word>
int launch_dist_qs(const Plan& p, dim3 grid, cudaStream_t s, const uint8_t* codes, int64_t n,
                   int64_t stride, const uint8_t* queries, int64_t q_stride, int nq, int nbytes,
                   const uint8_t* allow, uint16_t* dist, uint32_t* hist, int bins) {
#define NV_DIST_CASE(Q) \
  case Q: return launch_dist<Word, Q>(p, grid, s, codes, n, stride, queries, q_stride, nq, nbytes, allow, dist, hist, bins);
  switch (p.qs) {
    NV_DIST_CASE(16) NV_DIST_CASE(8) NV_DIST_CASE(4) NV_DIST_CASE(2) default: NV_DIST_CASE(1)
  }
#undef NV_DIST_CASE
}

}  // namespace

int64_t hamming_workspace_bytes(int64_t n, int64_t nq, int64_t nbytes, int64_t k,
                                int64_t group_bytes) {
  const int64_t g = group_size(n, nq, k, group_bytes);
  const int64_t bins = 8 * nbytes + 1;
  const int64_t nblk = (n + kScanRows - 1) / kScanRows;
  int64_t b = 0;
  b += align_up(g * n * 2, 256);
  b += align_up(g * bins * 4, 256);
  b += 3 * align_up(g * 4, 256);
  b += 2 * align_up(g * nblk * 4, 256);
  b += align_up(g * k * 8, 256);
  return b;
}

int hamming_topk(const uint8_t* codes, int64_t n, int64_t code_stride, const uint8_t* queries,
                 int64_t nq, int64_t query_stride, int64_t nbytes, int64_t k,
                 const uint8_t* allow, int32_t* out_dist, int64_t* out_idx, int64_t group_bytes,
                 void* workspace, int64_t workspace_bytes, uintptr_t stream) {
  if (n <= 0 || nq <= 0 || k <= 0 || nbytes <= 0 || 8 * nbytes >= kSkip || k > (1 << 20) ||
      group_bytes <= 0)
    return int(cudaErrorInvalidValue);
  if (workspace_bytes < hamming_workspace_bytes(n, nq, nbytes, k, group_bytes))
    return int(cudaErrorInvalidValue);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int64_t g = group_size(n, nq, k, group_bytes);
  const int bins = int(8 * nbytes + 1);
  const int nblk = int((n + kScanRows - 1) / kScanRows);
  Carver c{static_cast<char*>(workspace)};
  uint16_t* dist = c.take<uint16_t>(g * n);
  uint32_t* hist = c.take<uint32_t>(g * bins);
  int* thr = c.take<int>(g);
  int* need = c.take<int>(g);
  int* nlt = c.take<int>(g);
  int* lt_cnt = c.take<int>(g * nblk);
  int* eq_cnt = c.take<int>(g * nblk);
  unsigned long long* cand = c.take<unsigned long long>(g * k);

  const bool vec16 = nbytes % 16 == 0 && code_stride % 16 == 0 &&
                     reinterpret_cast<uintptr_t>(codes) % 16 == 0;
  const bool vec4 = nbytes % 4 == 0 && code_stride % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(codes) % 4 == 0;
  int P = 1;
  while (P < k) P <<= 1;
  if (int64_t(P) * 8 > 48 * 1024) return int(cudaErrorInvalidValue);  // k <= 6144

  for (int64_t q0 = 0; q0 < nq; q0 += g) {
    const int gq = int(std::min<int64_t>(g, nq - q0));
    const uint8_t* qp = queries + q0 * query_stride;
    const Plan p = plan_for(int(nbytes), gq);
    NV_CUDA_TRY(cudaMemsetAsync(hist, 0, size_t(gq) * bins * 4, s));
    const int rpb = p.rows_per_block();
    dim3 grid(unsigned((n + rpb - 1) / rpb), unsigned((gq + p.qs - 1) / p.qs));
    int rc;
    if (vec16)
      rc = launch_dist_qs<uint4>(p, grid, s, codes, n, code_stride, qp, query_stride, gq, int(nbytes), allow, dist, hist, bins);
    else if (vec4)
      rc = launch_dist_qs<uint32_t>(p, grid, s, codes, n, code_stride, qp, query_stride, gq, int(nbytes), allow, dist, hist, bins);
    else
      rc = launch_dist_qs<uint8_t>(p, grid, s, codes, n, code_stride, qp, query_stride, gq, int(nbytes), allow, dist, hist, bins);
    if (rc) return rc;
    NV_LAUNCH(gq, 32, 0, s, threshold_kernel)(hist, bins, k, thr, need, nlt);
    NV_CUDA_TRY(cudaGetLastError());
    NV_LAUNCH(dim3(nblk, gq), kThreads, 0, s, count_kernel)(dist, n, thr, nblk, lt_cnt, eq_cnt);
    NV_CUDA_TRY(cudaGetLastError());
    NV_LAUNCH(gq, 1024, 0, s, scan_blocks_kernel)(lt_cnt, eq_cnt, nblk);
    NV_CUDA_TRY(cudaGetLastError());
    NV_LAUNCH(dim3(nblk, gq), kThreads, 0, s, scatter_kernel)(dist, n, thr, need, nlt, lt_cnt, eq_cnt,
                                                       nblk, k, 0, cand);
    NV_CUDA_TRY(cudaGetLastError());
    NV_LAUNCH(gq, 1024, size_t(P) * 8, s, sort_kernel)(cand, nlt, need, k, P, out_dist + q0 * k,
                                               out_idx + q0 * k);
    NV_CUDA_TRY(cudaGetLastError());
  }
  return 0;
}

}  // namespace cuda
}  // namespace nestvec
