// Blocked SGEMM-style driver of lowrank_sparse_matmul, written once and compiled per
// ISA: each lowrank_sparse_<isa>.cpp includes its ISA's primitives (isa/<isa>.h), then
// this file, and exports the result as lowrank_sparse::kernels<Isa>(). Everything here
// has internal linkage, so the per-ISA copies never merge at link time.
//
// Per thread, per block of MC rows of x (BLIS-style packing, float32 accumulation):
//   GEMM 1  t[rows, r + c] = x[rows, :] · [A; S]ᵀ      (K in KC-deep slices, t in L2)
//   GEMM 2  y[rows, :]     = t[:, :r] · Bᵀ, and in the tile epilogue the sparse columns
//           t[:, r + j] are added into y[:, channels[j]], then bias, then the store
//           (with the conversion to f16 / bf16).
// Weights are packed once per call into NR-wide k-major panels shared by all threads;
// x slices and t are packed per thread into MR-tall k-major panels. Few rows of x skip
// the weight packing: up to kSmallM rows go through dot products (run_small), up to
// kSkinnyM (2 NR) rows through the transposed product (run_skinny).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "nestvec/dispatch.h"
#include "nestvec/half.h"
#include "nestvec/lowrank_sparse.h"

namespace nestvec {
namespace lowrank_sparse {
namespace {

using namespace simd;

#include "lowrank_sparse_kernels.h"  // conversions, micro-kernels, packers

// A few rows of x (decode-style calls): two passes of dot products straight from the
// row-major weights, each weight row read once for all rows of x. Packing the weights,
// as the blocked path does, would cost more than the whole product here. From 7 rows
// the transposed micro-kernel path (run_skinny) is faster (384 -> 1536, r=192, 5%
// channels: M=4: 53 against 67 us, M=8: 67 against 89, M=16: 75 against 152).
constexpr int64_t kSmallM = 6;

// slot[n] = j when output column n is channels[j] (a row of S), else -1.
std::vector<int32_t> column_slots(const Args& g) {
  std::vector<int32_t> slot(size_t(g.N), -1);
  for (int64_t j = 0; j < g.c; ++j) slot[size_t(g.channels[j])] = int32_t(j);
  return slot;
}

// MR float32 rows for the ROWS micro-kernel: row i at p + i * ld.
struct WRows {
  const float* p;
  int64_t ld;
};

void run_small(const Args& g) {
  const DType dt = g.dtype;
  const int64_t M = g.M, K = g.K, r = g.r, c = g.c, N = g.N, rc = r + c;
  std::vector<float> xf(size_t(M * K)), t(size_t(M * rc));
  for (int64_t m = 0; m < M; ++m) load_f32(xf.data() + m * K, at(g.x, m * g.ldx, dt), K, dt);
  const std::vector<int32_t> col2s = column_slots(g);
  std::vector<float> biasf;
  if (g.bias) {
    biasf.resize(size_t(N));
    load_f32(biasf.data(), g.bias, N, dt);
  }
  const double bytes = double(K * rc + r * N) * double(dtype_size(dt));
  const int nt = int(std::min<double>(num_threads(), std::max(1.0, bytes / double(1 << 18))));
  // t = x · [A; S]ᵀ
  parallel_for(rc, std::min<int64_t>(nt, std::max<int64_t>(rc, 1)), 16, [&](int, int64_t b, int64_t e) {
    std::vector<float> w(size_t(dt == DType::F32 ? 0 : K));
    for (int64_t j = b; j < e; ++j) {
      const void* row = j < r ? at(g.A, j * g.lda, dt) : at(g.S, (j - r) * g.lds, dt);
      const float* wf = static_cast<const float*>(row);
      if (dt != DType::F32) {
        load_f32(w.data(), row, K, dt);
        wf = w.data();
      }
      for (int64_t m = 0; m < M; ++m) t[size_t(m * rc + j)] = dot(xf.data() + m * K, wf, K);
    }
  });
  // y = t[:, :r] · Bᵀ + sparse columns + bias
  parallel_for(N, std::min<int64_t>(nt, N), 16, [&](int, int64_t b, int64_t e) {
    std::vector<float> w(size_t(dt == DType::F32 ? 0 : r)), out(size_t(M * (e - b)));
    for (int64_t n = b; n < e; ++n) {
      const void* row = at(g.B, n * g.ldb, dt);
      const float* wf = static_cast<const float*>(row);
      if (dt != DType::F32 && r) {
        load_f32(w.data(), row, r, dt);
        wf = w.data();
      }
      for (int64_t m = 0; m < M; ++m) {
        float v = r ? dot(t.data() + m * rc, wf, r) : 0.0f;
        if (col2s[size_t(n)] >= 0) v += t[size_t(m * rc + r + col2s[size_t(n)])];
        if (g.bias) v += biasf[size_t(n)];
        out[size_t(m * (e - b) + (n - b))] = v;
      }
    }
    for (int64_t m = 0; m < M; ++m)
      store_from_f32(static_cast<char*>(g.y) + (m * g.ldy + b) * int64_t(dtype_size(dt)),
                     out.data() + m * (e - b), e - b, dt);
  });
}

// Up to kSkinnyM rows of x: the product is taken transposed, tᵀ = [A; S]·xᵀ then
// yᵀ = B·tᵀ, so that the weights are the micro-kernel's row operand (ROWS), read
// row-major once, and only x is packed (k-major panels of NR columns). The blocked
// path below packs every weight each call (20 MB for a 4096² layer, ~2 ms), which for
// a few rows costs more than the product itself (384 -> 1536, r=192, 5% channels,
// M=20: 237 us there, 96 us here; 4096², r=512, M=20: 2.0 -> 1.1 ms). Beyond two
// panels of x the blocked path wins again: every weight panel meets every x panel,
// and without blocking over K those stream from L3 (4096², M=48 / 64: 1.6 / 1.9 ms
// here against 2.7 / 3.0 blocked; M=96: 4.3 against 3.7).
constexpr int64_t kSkinnyM = 2 * NR;

void run_skinny(const Args& g) {
  const DType dt = g.dtype;
  const int64_t M = g.M, K = g.K, r = g.r, c = g.c, N = g.N, rc = r + c;
  const int64_t P1 = cdiv(rc, MR), P2 = cdiv(N, MR), Q = cdiv(M, NR);
  const int64_t xsz = std::max<int64_t>(K, 1) * NR, tsz = std::max<int64_t>(P1 * MR, 1) * NR;
  // xᵀ in Q panels of NR columns: xp[q][k * NR + m] = x[q * NR + m][k], zero past M;
  // tᵀ in the same panels: tT[q][j * NR + m].
  // Buffers of the calling thread (and, by worker index, of its workers) are kept
  // between calls: allocated per call, glibc gave their pages back and faulted them in
  // again, and a 100 us call sometimes took 1 ms.
  thread_local PackCache tl_skinny;
  PackCache& cache = tl_skinny;  // a reference: worker lambdas must see the caller's cache
  float* const xp = cache.weights.get(Q * xsz + Q * tsz + 4 * std::max<int64_t>(K, 1));
  float* const tT = xp + Q * xsz;
  // the rows of x are packed exactly as the blocked path packs weight rows
  pack_panels([&](int64_t m) { return at(g.x, m * g.ldx, dt); }, M, K, dt, xp, 0, Q, tT + Q * tsz);
  const std::vector<int32_t> col2s = column_slots(g);
  std::vector<float> biasf(size_t(N), 0.0f);
  if (g.bias) load_f32(biasf.data(), g.bias, N, dt);
  // the last panel with at most NR / 2 valid columns takes the half-width kernel
  const bool half_last = 2 * (M - (Q - 1) * NR) <= NR;
  auto tile_kernel = [&](int64_t q, int64_t kc, const WRows& a, const float* b, float* out) {
    if (half_last && q == Q - 1)
      kernel<true, true>(kc, a.p, b, out, NR, false, a.ld);
    else
      kernel<false, true>(kc, a.p, b, out, NR, false, a.ld);
  };
  // MR weight rows of length len as float32 rows for the kernel: read in place when
  // they are float32 and evenly spaced (a panel inside A, S or B), else converted into
  // buf (zero rows past `count`).
  auto weight_rows = [&](float* buf, int64_t len, int64_t count, auto row) -> WRows {
    if (dt == DType::F32 && count == MR) {
      const float* r0 = static_cast<const float*>(row(0));
      const int64_t ld = static_cast<const float*>(row(1)) - r0;
      bool even = true;
      for (int64_t i = 2; i < MR && even; ++i) even = static_cast<const float*>(row(i)) == r0 + i * ld;
      if (even) return {r0, ld};
    }
    for (int64_t i = 0; i < MR; ++i) {
      if (i < count)
        load_f32(buf + i * len, row(i), len, dt);
      else
        std::fill(buf + i * len, buf + (i + 1) * len, 0.0f);
    }
    return {buf, len};
  };
  const double bytes = double(K * rc + r * N) * double(dtype_size(dt)) * double(Q);
  const int nt = int(std::min<double>(num_threads(), std::max(1.0, bytes / double(1 << 18))));
  if (int64_t(cache.per_thread.size()) < nt) cache.per_thread.resize(nt);
  const int64_t n_w = MR * std::max<int64_t>({K, r, 1});
  // GEMM 1: tᵀ rows j (of [A; S]) x NR columns per panel
  parallel_for(P1, std::min<int64_t>(nt, std::max<int64_t>(P1, 1)), 1, [&](int tid, int64_t p0, int64_t p1) {
    float* const w = cache.per_thread[tid].get(n_w + NR * MR);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t j0 = p * MR;
      const WRows a = weight_rows(w, K, std::min<int64_t>(MR, rc - j0), [&](int64_t i) {
        const int64_t j = j0 + i;
        return j < r ? at(g.A, j * g.lda, dt) : at(g.S, (j - r) * g.lds, dt);
      });
      for (int64_t q = 0; q < Q; ++q) tile_kernel(q, K, a, xp + q * xsz, tT + q * tsz + j0 * NR);
    }
  });
  // GEMM 2: yᵀ rows n (of B) x NR columns per panel, + sparse channels + bias, stored
  // transposed into y
  parallel_for(P2, std::min<int64_t>(nt, P2), 1, [&](int tid, int64_t p0, int64_t p1) {
    float* const w = cache.per_thread[tid].get(n_w + NR * MR);
    float* const ym = w + n_w;
    alignas(64) float tile[MR * NR];
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * MR, cnt = std::min<int64_t>(MR, N - n0);
      WRows a{w, r};
      if (r > 0) a = weight_rows(w, r, cnt, [&](int64_t i) { return at(g.B, (n0 + i) * g.ldb, dt); });
      for (int64_t q = 0; q < Q; ++q) {
        const float* tq = tT + q * tsz;
        const int64_t mq = std::min<int64_t>(NR, M - q * NR);
        if (r > 0)
          tile_kernel(q, r, a, tq, tile);
        else
          std::fill(tile, tile + MR * NR, 0.0f);
        for (int64_t i = 0; i < cnt; ++i) {
          const int32_t js = col2s[size_t(n0 + i)];
          const float* sp = js >= 0 ? tq + (r + js) * NR : nullptr;
          const float b = biasf[size_t(n0 + i)];
          for (int64_t m = 0; m < mq; ++m)
            ym[m * MR + i] = tile[i * NR + m] + (sp ? sp[m] : 0.0f) + b;
        }
        for (int64_t m = 0; m < mq; ++m)
          store_from_f32(static_cast<char*>(g.y) + ((q * NR + m) * g.ldy + n0) * int64_t(dtype_size(dt)),
                         ym + m * MR, cnt, dt);
      }
    }
  });
}

void run(const Args& g) {
  const DType dt = g.dtype;
  const int64_t M = g.M, K = g.K, r = g.r, c = g.c, N = g.N;
  if (M <= 0 || N <= 0) return;
  if (M <= kSmallM) return run_small(g);
  if (M <= kSkinnyM) return run_skinny(g);
  const int64_t rc = r + c;
  const int64_t P1 = cdiv(rc, NR), P2 = cdiv(N, NR);
  int64_t ldt = std::max<int64_t>(P1, 1) * NR;
  if (ldt % 256 == 0) ldt += 16;  // avoid 4 KiB set aliasing between rows of t

  // Work-proportional thread count: tiny problems stay on the calling thread.
  const double work = double(M) * double(K * rc + r * N) + double(K * rc + r * N) * 4.0;
  int nt = int(std::min<double>(num_threads(), std::max(1.0, work / double(1 << 21))));

  // ---- pack weights: [A; S] -> W1 panels [P1][K][NR]; B -> W2 panels [P2][r][NR]
  thread_local PackCache tl_cache;
  PackCache& cache = tl_cache;  // a reference: worker lambdas must see the caller's cache
  float* w1 = cache.weights.get(P1 * K * NR + P2 * r * NR);
  float* w2 = w1 + P1 * K * NR;
  const size_t ws = dtype_size(dt);
  auto row1 = [&](int64_t j) -> const void* {
    return j < r ? at(g.A, j * g.lda, dt) : at(g.S, (j - r) * g.lds, dt);
  };
  auto row2 = [&](int64_t j) -> const void* { return at(g.B, j * g.ldb, dt); };
  (void)ws;
  {
    std::atomic<int64_t> next_panel{0};  // dynamic: a descheduled thread holds nobody up
    const int npt = int(std::min<int64_t>(nt, P1 + P2));
    parallel_for(npt, npt, 1, [&](int, int64_t, int64_t) {
      Buf tmp = dt == DType::F32 ? Buf() : alloc_f(4 * std::max(K, r));
      for (int64_t q = next_panel++; q < P1 + P2; q = next_panel++) {
        if (q < P1)
          pack_panels(row1, rc, K, dt, w1, q, q + 1, tmp.get());
        else
          pack_panels(row2, N, r, dt, w2, q - P1, q - P1 + 1, tmp.get());
      }
    });
  }

  // ---- sparse columns per output panel (CSR over panels), bias as float32
  std::vector<int64_t> sp_start(P2 + 1, 0);
  std::vector<std::pair<int32_t, int32_t>> sp;  // (column within panel, j)
  if (c) {
    std::vector<std::pair<int64_t, int64_t>> byc(c);
    for (int64_t j = 0; j < c; ++j) byc[j] = {g.channels[j], j};
    std::sort(byc.begin(), byc.end());
    sp.resize(c);
    for (int64_t j = 0; j < c; ++j) {
      sp[j] = {int32_t(byc[j].first % NR), int32_t(byc[j].second)};
      ++sp_start[byc[j].first / NR + 1];
    }
    for (int64_t p = 0; p < P2; ++p) sp_start[p + 1] += sp_start[p];
  }
  Buf biasf = alloc_f(P2 * NR);
  std::fill(biasf.get(), biasf.get() + P2 * NR, 0.0f);
  if (g.bias) load_f32(biasf.get(), g.bias, N, dt);

  // ---- compute: threads over contiguous ranges of rows
  nt = int(std::min<int64_t>(nt, cdiv(M, MR)));
  // Blocks of at most MC rows are handed out dynamically: on a shared machine a thread
  // that gets descheduled does not hold the others up. The block count is a multiple of
  // the thread count and the MR-row panels are spread evenly over the blocks: M = 4096
  // on 2 threads was 21 blocks of 192 rows + one of 64, so one thread did 11 full
  // blocks against 10.3 (3% of the call idle).
  const int64_t panels = cdiv(M, MR);
  const int64_t nblocks = cdiv(cdiv(panels, MC / MR), nt) * nt;
  auto block_rows = [&](int64_t b) {  // [first row, end row) of block b
    return std::make_pair(std::min(M, b * panels / nblocks * MR),
                          std::min(M, (b + 1) * panels / nblocks * MR));
  };
  const int64_t mc = cdiv(panels, nblocks) * MR;  // the largest block
  std::atomic<int64_t> next{0};
  const int64_t kc_max = std::min(KC, std::max<int64_t>(K, 1));
  const int64_t n_ap = mc * kc_max, n_t = mc * ldt, n_ap2 = mc * std::max<int64_t>(r, 1),
                n_tmp = (dt == DType::F32 ? 0 : MR * kc_max), n_tiles = mc * NR;
  if (int64_t(cache.per_thread.size()) < nt) cache.per_thread.resize(nt);
  parallel_for(nt, nt, 1, [&](int tid, int64_t, int64_t) {
    float* base = cache.per_thread[tid].get(n_ap + n_t + n_ap2 + n_tmp + n_tiles + 64);
    float* const ap = base;
    float* const t = ap + n_ap;
    float* const ap2 = t + n_t;
    float* const xtmp = ap2 + n_ap2;
    float* const tiles = xtmp + n_tmp;  // one MR x NR accumulator tile per row panel
    const float* rows[MR];
    for (int64_t blk = next++; blk < nblocks; blk = next++) {
      const auto [i0, i1] = block_rows(blk);
      const int64_t mb = i1 - i0, nir = cdiv(mb, MR);
      if (mb <= 0) continue;
      // GEMM 1: t = x[i0 : i0 + mb] · [A; S]ᵀ
      if (K == 0) std::fill(t, t + nir * MR * ldt, 0.0f);
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min(KC, K - pc);
        for (int64_t ir = 0; ir < nir; ++ir) {
          const int64_t nvalid = std::min<int64_t>(MR, mb - ir * MR);
          for (int64_t ii = 0; ii < nvalid; ++ii) {
            const void* src = at(g.x, (i0 + ir * MR + ii) * g.ldx + pc, dt);
            if (dt == DType::F32) {
              rows[ii] = static_cast<const float*>(src);
            } else {
              load_f32(xtmp + ii * kc, src, kc, dt);
              rows[ii] = xtmp + ii * kc;
            }
          }
          pack_panel(rows, nvalid, kc, ap + ir * kc * MR);
        }
        for (int64_t p = 0; p < P1; ++p) {
          const float* bp = w1 + p * K * NR + pc * NR;
          // The last panel of [A; S] is often mostly padding (r + c = 717 -> 23 x 32).
          const bool half = rc - p * NR <= NR / 2;
          for (int64_t ir = 0; ir < nir; ++ir) {
            float* const tp = t + ir * MR * ldt + p * NR;
            if (half)
              kernel<true>(kc, ap + ir * kc * MR, bp, tp, ldt, pc > 0);
            else
              kernel(kc, ap + ir * kc * MR, bp, tp, ldt, pc > 0);
          }
        }
      }
      // GEMM 2: y = t[:, :r] · Bᵀ (+ sparse columns, + bias) in the tile epilogue
      for (int64_t ir = 0; ir < nir; ++ir) {
        for (int64_t ii = 0; ii < MR; ++ii) rows[ii] = t + (ir * MR + ii) * ldt;
        pack_panel(rows, MR, r, ap2 + ir * r * MR);  // padded rows of t are zero
      }
      for (int64_t p = 0; p < P2; ++p) {
        const float* bp = w2 + p * r * NR;
        const int64_t cols = std::min<int64_t>(NR, N - p * NR);
        if (r == 0) std::fill(tiles, tiles + nir * MR * NR, 0.0f);
        for (int64_t pc = 0; pc < r; pc += KC2) {
          const int64_t kc2 = std::min(KC2, r - pc);
          for (int64_t ir = 0; ir < nir; ++ir)
            kernel(kc2, ap2 + ir * r * MR + pc * MR, bp + pc * NR, tiles + ir * MR * NR, NR,
                   pc > 0);
        }
        for (int64_t ir = 0; ir < nir; ++ir) {
          float* const tile = tiles + ir * MR * NR;
          const int64_t rows = std::min<int64_t>(MR, mb - ir * MR);
          const float* trow = t + ir * MR * ldt + r;
          for (int64_t s = sp_start[p]; s < sp_start[p + 1]; ++s) {
            const int32_t col = sp[s].first, j = sp[s].second;
            for (int64_t ii = 0; ii < rows; ++ii) tile[ii * NR + col] += trow[ii * ldt + j];
          }
          const float* bb = biasf.get() + p * NR;  // zeros without a bias
          for (int64_t ii = 0; ii < rows; ++ii) {
            float* tr = tile + ii * NR;
            void* yrow = static_cast<char*>(g.y) +
                         ((i0 + ir * MR + ii) * g.ldy + p * NR) * int64_t(dtype_size(dt));
            if (dt == DType::F32 && cols == NR) {
              // add + store in one vectorised loop (a plain copy would become a memcpy call);
              // aligned rows take non-temporal stores where the ISA wants them: y is
              // written once, never re-read here
              float* yr = static_cast<float*>(yrow);
              if (kStreamStores && (reinterpret_cast<uintptr_t>(yr) & 63) == 0) {
                for (int v = 0; v < kLrsNV; ++v)
                  vstream(yr + v * kF, vadd(vloadu(tr + v * kF), vloadu(bb + v * kF)));
                continue;
              }
              for (int64_t jj = 0; jj < NR; ++jj) yr[jj] = tr[jj] + bb[jj];
            } else {
              for (int64_t jj = 0; jj < NR; ++jj) tr[jj] += bb[jj];
              store_from_f32(yrow, tr, cols, dt);
            }
          }
        }
      }
    }
    if (kStreamStores) stream_fence();  // make the non-temporal stores visible before the join
  });
}

}  // namespace

template <>
Kernels kernels<simd::kIsa>() {
  return {run};
}

}  // namespace lowrank_sparse
}  // namespace nestvec
