// LOST low-rank + channel-sparse matmul on the GPU: y = x·Aᵀ·Bᵀ + scatter(x·Sᵀ) + bias.
//
// Two launches of one "TN" GEMM template (C[m, n] = Σ_k X[m, k] · W[n, k], both operands
// K-contiguous), float32 accumulation:
//   1. X = x, W = the stacked [A; S] read through two pointers (a column tile lies in A
//      or in S, never both): A-tiles store t_lr = x·Aᵀ in x's dtype, S-tiles store
//      t_s = x·Sᵀ in float32.
//   2. X = t_lr, W = B: the epilogue adds t_s[:, col2s[n]] into the sparse columns
//      (col2s[n] = j where channels[j] = n, else -1), then bias, and stores y.
// bf16 / f16 use tensor cores through WMMA (16x16x16, sm_80+) with a 2-stage cp.async
// pipeline when rows are 16-byte aligned, plain loads otherwise; float32 uses a SIMT
// tile kernel (IEEE products, no TF32). Workspace: t_lr, t_s and col2s (see
// lowrank_sparse_workspace_bytes).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>

#include "common.cuh"
#include "nestvec/cuda_api.h"

namespace nestvec {
namespace cuda {
namespace {

template <typename T>
struct Params {
  const T* X;
  int64_t ldx, M, K;
  // Weight rows [0, n1) come from W1, rows [0, n2) of the second group from W2; the
  // first `tiles1` column tiles belong to W1.
  const T* W1;
  int64_t ldw1, n1;
  const T* W2;
  int64_t ldw2, n2;
  int tiles1;
  int mode;  // 0: GEMM 1 (t_lr / t_s), 1: GEMM 2 (y, sparse gather, bias)
  T* out1;   // t_lr (mode 0) or y (mode 1)
  int64_t ldo1;
  float* out2;  // t_s (mode 0)
  int64_t ldo2;
  const float* ts;  // mode 1 epilogue
  int64_t ldts;
  const int* col2s;
  const T* bias;
};

// One output value of column n (local to its weight group) of row m.
template <typename T>
__device__ __forceinline__ void epilogue(const Params<T>& p, bool first, int64_t m, int64_t n,
                                         float v) {
  if (p.mode == 0) {
    if (first)
      p.out1[m * p.ldo1 + n] = from_f<T>(v);
    else
      p.out2[m * p.ldo2 + n] = v;
    return;
  }
  if (p.col2s) {
    const int j = p.col2s[n];
    if (j >= 0) v += p.ts[m * p.ldts + j];
  }
  if (p.bias) v += to_f(p.bias[n]);
  p.out1[m * p.ldo1 + n] = from_f<T>(v);
}

// Which weight group a column tile reads: (pointer, ld, rows, first tile column).
template <typename T>
__device__ __forceinline__ void weight_of(const Params<T>& p, int tile, int bn, const T*& W,
                                          int64_t& ldw, int64_t& nlim, int64_t& n0,
                                          bool& first) {
  first = tile < p.tiles1;
  W = first ? p.W1 : p.W2;
  ldw = first ? p.ldw1 : p.ldw2;
  nlim = first ? p.n1 : p.n2;
  n0 = int64_t(first ? tile : tile - p.tiles1) * bn;
}

// ---------------------------------------------------------------- tensor cores (16-bit)
constexpr int TBM = 128, TBN = 128, TBK = 32, TLDS = TBK + 8;  // +8: fewer bank conflicts
constexpr int TTHREADS = 256;                                   // 8 warps: 2 (M) x 4 (N)

#if defined(NESTVEC_CUDA_EMU)  // nvemu queues the copies until the matching wait
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  nvemu::async_copy16(smem, gmem, valid);
}
__device__ __forceinline__ void cp_async_commit() { nvemu::async_commit(); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  nvemu::async_wait(N);
}
#else
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int sz = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(sz)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif

// rows x TBK tile of a K-contiguous operand into shared memory (row stride TLDS).
template <typename T, bool VEC>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t ld, int64_t row0,
                                          int64_t nrows, int64_t k0, int64_t K, int rows) {
  if (VEC) {  // 16-byte chunks; K, ld and the base are multiples of 8 elements
    const int chunks = rows * (TBK / 8);
    for (int c = threadIdx.x; c < chunks; c += TTHREADS) {
      const int r = c / (TBK / 8), kc = (c % (TBK / 8)) * 8;
      const int64_t gr = row0 + r, gk = k0 + kc;
      const bool ok = gr < nrows && gk < K;
      cp_async16(dst + r * TLDS + kc, src + (ok ? gr * ld + gk : 0), ok);
    }
  } else {
    const int elems = rows * TBK;
    for (int e = threadIdx.x; e < elems; e += TTHREADS) {
      const int r = e / TBK, kk = e % TBK;
      const int64_t gr = row0 + r, gk = k0 + kk;
      dst[r * TLDS + kk] = (gr < nrows && gk < K) ? src[gr * ld + gk] : from_f<T>(0.0f);
    }
  }
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(TTHREADS, 2) gemm_tc_kernel(Params<T> p) {
  using namespace nvcuda;
  __shared__ __align__(128) unsigned char smem_raw[2 * (TBM + TBN) * TLDS * sizeof(T)];
  T* sX = reinterpret_cast<T*>(smem_raw);
  T* sW = sX + 2 * TBM * TLDS;

  const T* W;
  int64_t ldw, nlim, n0;
  bool first;
  weight_of(p, int(blockIdx.x), TBN, W, ldw, nlim, n0, first);
  const int64_t m0 = int64_t(blockIdx.y) * TBM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 4, wn = warp % 4;  // warp tile: 64 rows x 32 columns

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const int64_t nk = (p.K + TBK - 1) / TBK;
  if (nk > 0) {
    load_tile<T, VEC>(sX, p.X, p.ldx, m0, p.M, 0, p.K, TBM);
    load_tile<T, VEC>(sW, W, ldw, n0, nlim, 0, p.K, TBN);
    cp_async_commit();
  }
  for (int64_t kt = 0; kt < nk; ++kt) {
    const int st = int(kt & 1);
    if (kt + 1 < nk) {
      const int nx = st ^ 1;
      load_tile<T, VEC>(sX + nx * TBM * TLDS, p.X, p.ldx, m0, p.M, (kt + 1) * TBK, p.K, TBM);
      load_tile<T, VEC>(sW + nx * TBN * TLDS, W, ldw, n0, nlim, (kt + 1) * TBK, p.K, TBN);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* xs = sX + st * TBM * TLDS;
    const T* ws = sW + st * TBN * TLDS;
#pragma unroll
    for (int kk = 0; kk < TBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
#pragma unroll
      for (int i = 0; i < 4; ++i)
        wmma::load_matrix_sync(a[i], xs + (wm * 64 + i * 16) * TLDS + kk, TLDS);
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::load_matrix_sync(b[j], ws + (wn * 32 + j * 16) * TLDS + kk, TLDS);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();  // this stage is overwritten by the load two iterations on
  }

  // Epilogue through a per-warp 16x16 float staging tile (reuses the operand buffers).
  __syncthreads();
  float* stage = reinterpret_cast<float*>(smem_raw) + warp * 256;
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int e = lane; e < 256; e += 32) {
        const int64_t m = m0 + wm * 64 + i * 16 + e / 16;
        const int64_t n = n0 + wn * 32 + j * 16 + e % 16;
        if (m < p.M && n < nlim) epilogue(p, first, m, n, stage[e]);
      }
      __syncwarp();
    }
}

// ---------------------------------------------------------------- SIMT float32
constexpr int FBM = 64, FBN = 64, FBK = 16, FTHREADS = 256;  // 16 x 16 threads, 4 x 4 each

__global__ void __launch_bounds__(FTHREADS) gemm_f32_kernel(Params<float> p) {
  __shared__ float sX[FBK][FBM + 4];
  __shared__ float sW[FBK][FBN + 4];
  const float* W;
  int64_t ldw, nlim, n0;
  bool first;
  weight_of(p, int(blockIdx.x), FBN, W, ldw, nlim, n0, first);
  const int64_t m0 = int64_t(blockIdx.y) * FBM;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < p.K; k0 += FBK) {
    for (int e = threadIdx.x; e < FBM * FBK; e += FTHREADS) {
      const int r = e / FBK, kk = e % FBK;
      const int64_t gm = m0 + r, gn = n0 + r, gk = k0 + kk;
      sX[kk][r] = (gm < p.M && gk < p.K) ? p.X[gm * p.ldx + gk] : 0.0f;
      sW[kk][r] = (gn < nlim && gk < p.K) ? W[gn * ldw + gk] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < FBK; ++kk) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = sX[kk][ty * 4 + i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = sW[kk][tx * 4 + j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t m = m0 + ty * 4 + i, n = n0 + tx * 4 + j;
      if (m < p.M && n < nlim) epilogue(p, first, m, n, acc[i][j]);
    }
}

// ---------------------------------------------------------------- col2s map
__global__ void fill_kernel(int* __restrict__ a, int64_t n, int v) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) a[i] = v;
}
// Ids outside [0, N) are skipped: the Python layer rejects them, but a C caller that
// does not must not get an out-of-bounds device write.
__global__ void col2s_kernel(const int64_t* __restrict__ channels, int64_t c, int64_t N,
                             int* __restrict__ col2s) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < c) {
    const int64_t ch = channels[j];
    if (ch >= 0 && ch < N) col2s[ch] = int(j);
  }
}

template <typename T>
int launch_gemm(const Params<T>& p, int64_t ncols_tiles, cudaStream_t s) {
  if (p.M <= 0 || ncols_tiles <= 0) return 0;
  constexpr bool kF32 = sizeof(T) == 4;
  const int bm = kF32 ? FBM : TBM;
  const int64_t mt = (p.M + bm - 1) / bm;
  if (ncols_tiles > 0x7FFFFFFF) return int(cudaErrorInvalidValue);
  auto al = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; };
  const bool vec = !kF32 && p.K % 8 == 0 && p.ldx % 8 == 0 && p.ldw1 % 8 == 0 &&
                   (p.n2 == 0 || p.ldw2 % 8 == 0) && al(p.X) && al(p.W1) &&
                   (p.n2 == 0 || al(p.W2));
  // Row tiles sit on grid.y (at most 65535): more rows than 65535 tiles (M > 8.4M
  // for 16-bit, 4.2M for float32, e.g. a flattened batch of tokens) go in several
  // launches over row slices. A slice starts a multiple of bm rows on, so rows stay
  // 16-byte aligned when `vec` holds (ldx % 8 == 0).
  for (int64_t mt0 = 0; mt0 < mt; mt0 += 65535) {
    const int64_t row0 = mt0 * bm;
    Params<T> c = p;
    c.X += row0 * p.ldx;
    c.M = p.M - row0;
    c.out1 += row0 * p.ldo1;
    if (c.out2) c.out2 += row0 * p.ldo2;
    if (c.ts) c.ts += row0 * p.ldts;
    const int64_t tiles = mt - mt0 < 65535 ? mt - mt0 : 65535;
    const dim3 grid{unsigned(ncols_tiles), unsigned(tiles), 1u};
    if constexpr (kF32) {
      NV_LAUNCH(grid, FTHREADS, 0, s, gemm_f32_kernel)(c);
    } else {
      if (vec)
        NV_LAUNCH(grid, TTHREADS, 0, s, gemm_tc_kernel<T, true>)(c);
      else
        NV_LAUNCH(grid, TTHREADS, 0, s, gemm_tc_kernel<T, false>)(c);
    }
    if (const int rc = last_error()) return rc;
  }
  return 0;
}

size_t esize(int dtype) { return dtype == 0 ? 4 : 2; }

template <typename T>
int run(const void* x, int64_t M, int64_t K, int64_t ldx, const void* A, int64_t r,
        const void* B, int64_t N, const void* S, int64_t c, const int64_t* channels,
        const void* bias, void* y, void* workspace, int64_t ws_bytes, cudaStream_t s) {
  constexpr bool kF32 = sizeof(T) == 4;
  const int bn = kF32 ? FBN : TBN;
  Carver cv{static_cast<char*>(workspace)};
  T* tlr = cv.take<T>(M * r);
  float* ts = cv.take<float>(M * c);
  int* col2s = cv.take<int>(N);
  if (cv.used > ws_bytes) return int(cudaErrorInvalidValue);
  if (M == 0 || N == 0) return 0;

  if (c > 0) {
    NV_LAUNCH(unsigned((N + 255) / 256), 256, 0, s, fill_kernel)(col2s, N, -1);
    NV_LAUNCH(unsigned((c + 255) / 256), 256, 0, s, col2s_kernel)(channels, c, N, col2s);
    NV_CUDA_TRY(cudaGetLastError());
  }
  // GEMM 1: [t_lr | t_s] = x · [A; S]ᵀ
  if (K == 0) {
    if (r) NV_CUDA_TRY(cudaMemsetAsync(tlr, 0, size_t(M * r) * sizeof(T), s));
    if (c) NV_CUDA_TRY(cudaMemsetAsync(ts, 0, size_t(M * c) * sizeof(float), s));
  } else {
    Params<T> p{};
    p.X = static_cast<const T*>(x), p.ldx = ldx, p.M = M, p.K = K;
    p.W1 = static_cast<const T*>(A), p.ldw1 = K, p.n1 = r;
    p.W2 = static_cast<const T*>(S), p.ldw2 = K, p.n2 = c;
    p.tiles1 = int((r + bn - 1) / bn);
    p.mode = 0;
    p.out1 = tlr, p.ldo1 = r, p.out2 = ts, p.ldo2 = c;
    if (c == 0) p.W2 = p.W1;  // never read; keeps the alignment test simple
    const int rc = launch_gemm(p, p.tiles1 + (c + bn - 1) / bn, s);
    if (rc) return rc;
  }
  // GEMM 2: y = t_lr · Bᵀ + sparse columns + bias
  Params<T> q{};
  q.X = tlr, q.ldx = r > 0 ? r : 8, q.M = M, q.K = r;
  q.W1 = static_cast<const T*>(B), q.ldw1 = r > 0 ? r : 8, q.n1 = N;
  q.W2 = q.W1, q.ldw2 = q.ldw1, q.n2 = 0;
  q.tiles1 = int((N + bn - 1) / bn);
  q.mode = 1;
  q.out1 = static_cast<T*>(y), q.ldo1 = N;
  q.ts = ts, q.ldts = c, q.col2s = c > 0 ? col2s : nullptr;
  q.bias = static_cast<const T*>(bias);
  return launch_gemm(q, q.tiles1, s);
}

}  // namespace

int64_t lowrank_sparse_workspace_bytes(int dtype, int64_t M, int64_t N, int64_t r, int64_t c) {
  return align_up(M * r * int64_t(esize(dtype)), 256) + align_up(M * c * 4, 256) +
         align_up(N * 4, 256);
}

int lowrank_sparse_matmul(int dtype, const void* x, int64_t M, int64_t K, int64_t ldx,
                          const void* A, int64_t r, const void* B, int64_t N, const void* S,
                          int64_t c, const int64_t* channels, const void* bias, void* y,
                          void* workspace, int64_t workspace_bytes, uintptr_t stream) {
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0:
      return run<float>(x, M, K, ldx, A, r, B, N, S, c, channels, bias, y, workspace,
                        workspace_bytes, s);
    case 1:
      return run<__half>(x, M, K, ldx, A, r, B, N, S, c, channels, bias, y, workspace,
                         workspace_bytes, s);
    case 2:
      return run<__nv_bfloat16>(x, M, K, ldx, A, r, B, N, S, c, channels, bias, y, workspace,
                                workspace_bytes, s);
    default:
      return int(cudaErrorInvalidValue);
  }
}

}  // namespace cuda
}  // namespace nestvec
