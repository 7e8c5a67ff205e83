// Fused pooling on the GPU.
//   pool_kernel: one block per (column chunk, batch row). The block walks the mask in
//     tiles of 256 tokens; a block scan compacts the present tokens (and their
//     weighted_mean ranks) into shared memory, then 8 warps split those tokens, each
//     lane loading 16 bytes of a token row per step (4 rows in flight), accumulating
//     in float32 registers. Warps combine in shared memory; the chunk of the pooled
//     row is scaled (mean) and written once. hidden is read exactly once.
//   When the whole output row fits one block the L2 norm and sign bits are fused in
//   the same kernel; otherwise finish_kernel (one block per row) does them on the
//   [B, d] float32 result (B*d*4 bytes, tiny next to hidden).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cuda_fp16.h>

#include <cfloat>
#include <climits>

#include "common.cuh"
#include "nestvec/cuda_api.h"

namespace nestvec {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
#ifndef NV_POOL_UNROLL
#define NV_POOL_UNROLL 4
#endif
constexpr int kUnroll = NV_POOL_UNROLL;  // token rows each lane has in flight
constexpr int kMean = 0, kCls = 1, kLast = 2, kMax = 3, kWeighted = 4;

struct MinOp {
  __device__ long long operator()(long long a, long long b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ long long operator()(long long a, long long b) const { return a > b ? a : b; }
};

__device__ __forceinline__ float cvt(uint16_t u, int dt) {
  if (dt == 1) return __half2float(__ushort_as_half(u));
  return __uint_as_float(uint32_t(u) << 16);
}

// cnt (<= VEC) elements of a row from column c as float32.
template <int DT, int VEC>
__device__ __forceinline__ void load_row(const char* row, int64_t c, int cnt, float (&x)[VEC]) {
  if (DT == 0) {
    const float* p = reinterpret_cast<const float*>(row) + c;
    if constexpr (VEC == 4) {
      if (cnt == 4) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p));
        x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
        return;
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) x[v] = v < cnt ? __ldg(p + v) : 0.0f;
  } else {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + c;
    if constexpr (VEC == 8) {
      if (cnt == 8) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
        const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          x[2 * i] = cvt(uint16_t(w[i] & 0xFFFF), DT);
          x[2 * i + 1] = cvt(uint16_t(w[i] >> 16), DT);
        }
        return;
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) x[v] = v < cnt ? cvt(__ldg(p + v), DT) : 0.0f;
  }
}

__device__ __forceinline__ bool present(const uint8_t* m, int itemsize, int64_t t) {
  switch (itemsize) {
    case 1: return m[t] != 0;
    case 2: return reinterpret_cast<const uint16_t*>(m)[t] != 0;
    case 4: return reinterpret_cast<const uint32_t*>(m)[t] != 0;
    default: return reinterpret_cast<const uint64_t*>(m)[t] != 0;
  }
}

template <int VEC>
__device__ __forceinline__ void combine(float (&acc)[VEC], const float (&x)[VEC], float w, bool mx) {
#pragma unroll
  for (int v = 0; v < VEC; ++v) acc[v] = mx ? fmaxf(acc[v], x[v]) : fmaf(w, x[v], acc[v]);
}

// Packs sign bits of row[0:d] (in shared or global memory) into code[0:ceil(d/8)].
__device__ void pack_bits(const float* row, int64_t d, uint8_t* code) {
  for (int64_t byte = threadIdx.x; byte < (d + 7) / 8; byte += blockDim.x) {
    uint32_t v = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t c = 8 * byte + j;
      if (c < d && row[c] > 0.0f) v |= 0x80u >> j;
    }
    code[byte] = uint8_t(v);
  }
}

template <int DT, int VEC>
__global__ void __launch_bounds__(kThreads)
pool_kernel(const char* __restrict__ hidden, int64_t T, int64_t d, int64_t sb, int64_t st,
            const uint8_t* __restrict__ mask, int msize, int64_t msb, int mode, bool fused,
            bool normalize, float* __restrict__ out, uint8_t* __restrict__ codes) {
  constexpr int es = DT == 0 ? 4 : 2;
  constexpr int CH = 32 * VEC;  // columns per block
  using Scan = cub::BlockScan<int, kThreads>;
  using Reduce = cub::BlockReduce<float, kThreads>;
  using IReduce = cub::BlockReduce<long long, kThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage red;
    typename IReduce::TempStorage ired;
  } tmp;
  __shared__ int32_t s_tok[kThreads];
  __shared__ float s_w[kThreads];
  __shared__ float s_part[kWarps][CH];
  __shared__ float s_row[CH];
  __shared__ long long s_sel;
  __shared__ float s_scale;

  const int64_t b = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t c0 = chunk * CH + lane * VEC;
  const int cnt = c0 < d ? int(d - c0 < VEC ? d - c0 : VEC) : 0;
  const uint8_t* m = mask + b * msb * msize;
  const char* base = hidden + b * sb * es;
  const bool mx = mode == kMax;

  float acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) acc[v] = mx ? -FLT_MAX : 0.0f;
  long long n = 0;

  if (mode == kCls || mode == kLast) {
    long long best = mode == kCls ? LLONG_MAX : -1;
    for (int64_t t = threadIdx.x; t < T; t += kThreads)
      if (present(m, msize, t)) best = mode == kCls ? min(best, (long long)t) : max(best, (long long)t);
    const long long sel = mode == kCls ? IReduce(tmp.ired).Reduce(best, MinOp())
                                       : IReduce(tmp.ired).Reduce(best, MaxOp());
    if (threadIdx.x == 0) s_sel = sel;
    __syncthreads();
    const long long t = s_sel;
    if (t >= 0 && t < T) {
      n = 1;
      if (warp == 0 && cnt) load_row<DT, VEC>(base + t * st * es, c0, cnt, acc);
    }
  } else {
    const bool weighted = mode == kWeighted;
    for (int64_t t0 = 0; t0 < T; t0 += kThreads) {
      const int64_t t = t0 + threadIdx.x;
      const int p = (t < T && present(m, msize, t)) ? 1 : 0;
      int pos, total;
      Scan(tmp.scan).ExclusiveSum(p, pos, total);
      if (p) {
        s_tok[pos] = int32_t(t);
        s_w[pos] = weighted ? float(n + pos + 1) : 1.0f;
      }
      __syncthreads();
      if (cnt) {
        int i = warp;
        for (; i + (kUnroll - 1) * kWarps < total; i += kUnroll * kWarps) {
          float x[kUnroll][VEC];  // kUnroll rows in flight per lane
#pragma unroll
          for (int u = 0; u < kUnroll; ++u)
            load_row<DT, VEC>(base + int64_t(s_tok[i + u * kWarps]) * st * es, c0, cnt, x[u]);
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) combine(acc, x[u], s_w[i + u * kWarps], mx);
        }
        for (; i < total; i += kWarps) {
          float x0[VEC];
          load_row<DT, VEC>(base + int64_t(s_tok[i]) * st * es, c0, cnt, x0);
          combine(acc, x0, s_w[i], mx);
        }
      }
      n += total;
      __syncthreads();  // s_tok / s_w / tmp are reused by the next tile
    }
  }

#pragma unroll
  for (int v = 0; v < VEC; ++v) s_part[warp][lane * VEC + v] = acc[v];
  __syncthreads();
  float scale = 1.0f;
  if (mode == kMean) scale = n ? float(1.0 / double(n)) : 0.0f;
  if (mode == kWeighted) scale = n ? float(2.0 / (double(n) * double(n + 1))) : 0.0f;
  float val = 0.0f;
  const int64_t col = chunk * CH + threadIdx.x;
  if (threadIdx.x < CH) {
    if (n > 0) {
      if (mode == kCls || mode == kLast) {
        val = s_part[0][threadIdx.x];
      } else if (mx) {
        val = s_part[0][threadIdx.x];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) val = fmaxf(val, s_part[w][threadIdx.x]);
      } else {
#pragma unroll
        for (int w = 0; w < kWarps; ++w) val += s_part[w][threadIdx.x];
        val *= scale;
      }
    }
    if (col >= d) val = 0.0f;
  }
  if (!fused) {
    if (threadIdx.x < CH && col < d) out[b * d + col] = val;
    return;
  }
  // The whole row is in this block: normalise and pack here.
  if (normalize) {
    const float ss = Reduce(tmp.red).Sum(threadIdx.x < CH ? val * val : 0.0f);
    if (threadIdx.x == 0) s_scale = ss > 0.0f ? rsqrtf(ss) : 1.0f;
    __syncthreads();
    val *= s_scale;
  }
  if (threadIdx.x < CH) {
    s_row[threadIdx.x] = val;
    if (col < d) out[b * d + col] = val;
  }
  __syncthreads();
  if (codes) pack_bits(s_row, d, codes + b * ((d + 7) / 8));
}

__global__ void __launch_bounds__(kThreads)
finish_kernel(float* __restrict__ out, int64_t d, bool normalize, uint8_t* __restrict__ codes) {
  using Reduce = cub::BlockReduce<float, kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ float s_scale;
  float* row = out + int64_t(blockIdx.x) * d;
  if (normalize) {
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) ss += row[j] * row[j];
    ss = Reduce(tmp).Sum(ss);
    if (threadIdx.x == 0) s_scale = ss > 0.0f ? rsqrtf(ss) : 1.0f;
    __syncthreads();
    const float s = s_scale;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) row[j] *= s;
    __syncthreads();
  }
  if (codes) pack_bits(row, d, codes + int64_t(blockIdx.x) * ((d + 7) / 8));
}

template <int DT, int VEC>
int launch(const void* hidden, int64_t B, int64_t T, int64_t d, int64_t sb, int64_t st,
           const void* mask, int msize, int64_t msb, int mode, bool normalize, float* out,
           uint8_t* codes, cudaStream_t s) {
  constexpr int CH = 32 * VEC;
  const int64_t chunks = (d + CH - 1) / CH;
  if (chunks > 65535) return int(cudaErrorInvalidConfiguration);
  const bool fused = chunks == 1;
  const dim3 grid{unsigned(B), unsigned(chunks), 1u};
  NV_LAUNCH(grid, kThreads, 0, s, pool_kernel<DT, VEC>)(
      static_cast<const char*>(hidden), T, d, sb, st, static_cast<const uint8_t*>(mask), msize,
      msb, mode, fused, normalize, out, codes);
  NV_CUDA_TRY(cudaGetLastError());
  if (!fused && (normalize || codes)) {
    NV_LAUNCH(unsigned(B), kThreads, 0, s, finish_kernel)(out, d, normalize, codes);
    NV_CUDA_TRY(cudaGetLastError());
  }
  return 0;
}

}  // namespace

int pool(const void* hidden, int dtype, int64_t B, int64_t T, int64_t d, int64_t sb, int64_t st,
         const void* mask, int mask_itemsize, int64_t mask_sb, int mode, bool normalize,
         float* out, uint8_t* codes, uintptr_t stream) {
  if (B <= 0 || d <= 0) return 0;
  if (B >= (int64_t(1) << 31)) return int(cudaErrorInvalidConfiguration);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const int es = dtype == 0 ? 4 : 2;
  // 16-byte vector loads need every row start 16-byte aligned.
  const bool vec = reinterpret_cast<uintptr_t>(hidden) % 16 == 0 && (sb * es) % 16 == 0 &&
                   (st * es) % 16 == 0;
  if (dtype == 0)
    return vec ? launch<0, 4>(hidden, B, T, d, sb, st, mask, mask_itemsize, mask_sb, mode, normalize, out, codes, s)
               : launch<0, 1>(hidden, B, T, d, sb, st, mask, mask_itemsize, mask_sb, mode, normalize, out, codes, s);
  if (dtype == 1)
    return vec ? launch<1, 8>(hidden, B, T, d, sb, st, mask, mask_itemsize, mask_sb, mode, normalize, out, codes, s)
               : launch<1, 1>(hidden, B, T, d, sb, st, mask, mask_itemsize, mask_sb, mode, normalize, out, codes, s);
  return vec ? launch<2, 8>(hidden, B, T, d, sb, st, mask, mask_itemsize, mask_sb, mode, normalize, out, codes, s)
             : launch<2, 1>(hidden, B, T, d, sb, st, mask, mask_itemsize, mask_sb, mode, normalize, out, codes, s);
}

}  // namespace cuda
}  // namespace nestvec
