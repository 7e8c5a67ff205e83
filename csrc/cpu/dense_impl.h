// Dense (elastic prefix) dot-product kernels, written once and compiled per ISA: each
// dense_<isa>.cpp includes its ISA's primitives (isa/<isa>.h), then this file, and
// exports the result as dense::kernels<Isa>().
//
// A register tile of R rows x QB queries keeps one accumulator per pair (plus one per
// row for the prefix norm), streaming the rows once per query block: loads are widened
// to float32 in registers (F16C vcvtph2ps / FCVTL for float16, a 16-bit shift for
// bfloat16) and never written back. Row-major rows need one horizontal sum per pair at
// the end (simd::vhsum8 does 8 at a time). Large batches on ISAs that set kGemmRowVecs
// instead widen a tile of rows once into a k-major float32 panel and run a GEMM-style
// micro-kernel (dots_gemm), which needs no horizontal sums at all.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <limits>
#include <iterator>
#include <memory>
#include <new>
#include <type_traits>

#include "nestvec/dense.h"
#include "nestvec/prefetch.h"

namespace nestvec {
namespace dense {
namespace {

using namespace simd;

// ------------------------------------------------------------------ prefetching
// The rows `ahead` rows after rows r0 .. r0+R-1 of a row block (the addressing of
// DotsFn), for prefetches spread through a micro-kernel's loop: issued as one burst
// per block (R rows x all their lines) they overflow the core's miss queue. Strided
// rows: addresses formed as integers (they may lie past the table, and are prefetched,
// never dereferenced). Indexed rows past the list stand in for the current row.
template <int R>
inline void prefetch_targets(const char* base, int64_t stride_b, const int64_t* rows,
                             int64_t nrows, int64_t r0, int64_t ahead, const char* const* rp,
                             const char** pp) {
  for (int r = 0; r < R; ++r) {
    const int64_t i = r0 + ahead + r;
    pp[r] = rows ? (i < nrows ? base + rows[i] * stride_b : rp[r])
                 : reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(rp[r]) +
                                                 uintptr_t(ahead * stride_b));
  }
}

// One step of a spread prefetch: byte `off` of each of R rows (see prefetch_targets).
// The first step also takes each row's last line: a row that does not start on a line
// boundary (NumPy's large arrays start 16 bytes into one) ends in one more line, and
// without it every row waited for that line from memory (prefix 256, 12 queries: 23 ->
// 60 ms).
template <int R>
inline void prefetch_step(const char* const* pp, int64_t off, int64_t row_bytes) {
  for (int r = 0; r < R; ++r) {
    const uintptr_t t = reinterpret_cast<uintptr_t>(pp[r]);
    prefetch_l1(t + uintptr_t(off));
    if (off == 0) prefetch_l1(t + uintptr_t(row_bytes - 1));
  }
}

// Prefetches each 64-byte offset in bytes [from, to) of the row at integer address p:
// one loop step's share of the row a streaming loop reads `ahead` rows later.
inline void prefetch_bytes(uintptr_t p, int64_t from, int64_t to) {
  for (int64_t b = (from + 63) / 64 * 64; b < to; b += 64) prefetch_l1(p + uintptr_t(b));
}

// out[i] = horizontal sum of acc[i], i < N (vhsum8 per 8 accumulators).
template <int N>
inline void reduce_all(const vf* acc, float* out) {
  for (int i = 0; i < N; i += 8) {
    vf v[8];
    for (int t = 0; t < 8; ++t) v[t] = i + t < N ? acc[i + t] : vzero();
    vhsum8(v, out + i);
  }
}

// ------------------------------------------------------------------ register tiles
// pp (optional): R rows read a few blocks later, whose lines are prefetched one per row
// per 64 bytes consumed here, spread through the loop (see rows_block).
template <DType DT, int R, int QB, bool NORM>
inline void micro(const char* const* rp, int64_t dim, const float* q, int64_t qs, float* dots,
                  int64_t ld, float* sq, const char* const* pp = nullptr) {
  constexpr int kN = QB * R + (NORM ? R : 0);
  vf acc[kN];
  for (auto& a : acc) a = vzero();
  constexpr int64_t kEs = dtype_size(DT), kLine = 64 / kEs;  // values per line
  int64_t c = 0;
  for (; c + kF <= dim; c += kF) {
    if (pp && c % kLine == 0) prefetch_step<R>(pp, c * kEs, dim * kEs);
    vf x[R];
    for (int r = 0; r < R; ++r) x[r] = vloadx<DT>(rp[r], c);
    if (NORM)
      for (int r = 0; r < R; ++r) acc[QB * R + r] = vfma(x[r], x[r], acc[QB * R + r]);
    for (int j = 0; j < QB; ++j) {
      vf qv = vload(q + j * qs + c);
      // Keep the query in a register: folded into each FMA it would be loaded R times,
      // and the load ports, not the FMA units, would bound the 2 x 12 tile.
      if (R > 1) vkeep(qv);
      for (int r = 0; r < R; ++r) acc[j * R + r] = vfma(x[r], qv, acc[j * R + r]);
    }
  }
  if (c < dim) {  // queries are zero-padded; rows are not: a partial load of their tail
    vf x[R];
    for (int r = 0; r < R; ++r) x[r] = vloadx_n<DT>(rp[r], c, dim - c);
    if (NORM)
      for (int r = 0; r < R; ++r) acc[QB * R + r] = vfma(x[r], x[r], acc[QB * R + r]);
    for (int j = 0; j < QB; ++j) {
      const vf qv = vload(q + j * qs + c);
      for (int r = 0; r < R; ++r) acc[j * R + r] = vfma(x[r], qv, acc[j * R + r]);
    }
  }
  alignas(64) float out[(kN + 7) / 8 * 8];
  reduce_all<kN>(acc, out);
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < R; ++r) dots[j * ld + r] = out[j * R + r];
  if (NORM)
    for (int r = 0; r < R; ++r) sq[r] = out[QB * R + r];
}

// The first query block reads the rows from memory (pf is set exactly then): each
// row is a short stream the hardware prefetcher barely trains on, so the prefix of
// the rows ~12 KiB ahead is prefetched explicitly (prefetch_targets), spread through
// the micro-kernel's loop, one line per row at a time. Issued as one burst per block
// (R rows x all their lines), the prefetches overflowed the core's miss queue and the
// scan took the time of a bare read plus the arithmetic (AVX-512, 1M x 768 f16, prefix
// 256, one query, 8 rows, 2 cores: 13.5 -> 12.6 ms, 19.2 -> 17.4 in a slower bandwidth
// phase; prefix 128: 9.2 -> 6.9; a bare read of the same bytes 12-14 / 16-17 / 6.4 ms).
template <DType DT, int R, int QB, bool NORM>
void rows_block(const char* base, int64_t stride_b, const int64_t* rows, int64_t nrows,
                int64_t dim, const float* q, int64_t qs, float* dots, int64_t ld, float* sq,
                bool pf) {
  int64_t r0 = 0;
  const char* rp[R];
  const char* pp[R];
  const int64_t row_bytes = dim * dtype_size(DT);
  const int64_t ahead = (12288 / row_bytes + R) / R * R;
  for (; r0 + R <= nrows; r0 += R) {
    for (int r = 0; r < R; ++r) rp[r] = base + (rows ? rows[r0 + r] : r0 + r) * stride_b;
    if (pf) prefetch_targets<R>(base, stride_b, rows, nrows, r0, ahead, rp, pp);
    micro<DT, R, QB, NORM>(rp, dim, q, qs, dots + r0, ld, NORM ? sq + r0 : nullptr,
                           pf ? pp : nullptr);
  }
  for (; r0 < nrows; ++r0) {
    rp[0] = base + (rows ? rows[r0] : r0) * stride_b;
    micro<DT, 1, QB, NORM>(rp, dim, q, qs, dots + r0, ld, NORM ? sq + r0 : nullptr);
  }
}

// One contiguous stream of whole rows (stride == dim): one row at a time keeps the
// hardware prefetcher on a single sequential stream (AVX-512, 1M x 768 f16, one query:
// 44 ms per core against 60 ms with four rows interleaved); P partial sums per
// accumulator hide the FMA latency of the single row (AVX2, one query, 2 cores: 35 ->
// 22 ms with 4 against one). The row ~12 KiB on is prefetched a line per step, not all
// at once (AVX-512, 2 cores: 33.5 -> 31.2 ms, a bare read of the same 1.5 GB 30.7).
template <DType DT, int QB, bool NORM>
void stream_rows(const char* base, int64_t nrows, int64_t dim, const float* q, int64_t qs,
                 float* dots, int64_t ld, float* sq, bool pf) {
  constexpr int P = QB == 1 ? kDenseStreamSums1 : kDenseStreamSums;
  constexpr int64_t kEs = dtype_size(DT);
  const int64_t row_bytes = dim * kEs;
  const int64_t ahead = 12288 / row_bytes + 1;
  for (int64_t r = 0; r < nrows; ++r) {
    const char* row = base + r * row_bytes;
    // the row `ahead` rows on, a line or two per step (as an integer: it may lie past
    // the table; prefetches do not fault)
    const uintptr_t pfrow = reinterpret_cast<uintptr_t>(row) + uintptr_t(ahead * row_bytes);
    vf a[QB][P], n[P];
    for (int p = 0; p < P; ++p) {
      n[p] = vzero();
      for (int j = 0; j < QB; ++j) a[j][p] = vzero();
    }
    int64_t c = 0;
    for (; c + kF * P <= dim; c += kF * P) {
      if (pf) prefetch_bytes(pfrow, c * kEs, (c + kF * P) * kEs);
      vf x[P];
      for (int p = 0; p < P; ++p) x[p] = vloadx<DT>(row, c + kF * p);
      if (NORM)
        for (int p = 0; p < P; ++p) n[p] = vfma(x[p], x[p], n[p]);
      // query j's values at c + kF * p as one pointer plus constant offsets (one index
      // per p made GCC keep QB x P pointers live, and spill them at 12 queries)
      for (int j = 0; j < QB; ++j) {
        const float* qj = q + j * qs + c;
        for (int p = 0; p < P; ++p) a[j][p] = vfma(x[p], vload(qj + kF * p), a[j][p]);
      }
    }
    if (pf) prefetch_bytes(pfrow, c * kEs, row_bytes);
    for (; c < dim; c += kF) {  // queries are zero-padded to 16; rows take partial loads
      const vf x = c + kF <= dim ? vloadx<DT>(row, c) : vloadx_n<DT>(row, c, dim - c);
      if (NORM) n[0] = vfma(x, x, n[0]);
      for (int j = 0; j < QB; ++j) a[j][0] = vfma(x, vload(q + j * qs + c), a[j][0]);
    }
    for (int p = 1; p < P; ++p) {
      n[0] = vadd(n[0], n[p]);
      for (int j = 0; j < QB; ++j) a[j][0] = vadd(a[j][0], a[j][p]);
    }
    for (int j = 0; j < QB; ++j) dots[j * ld + r] = vhsum(a[j][0]);
    if (NORM) sq[r] = vhsum(n[0]);
  }
}

// Queries in the block shape kDenseTiles[I] = (QB, R): whole contiguous rows stream one
// row at a time up to kDenseStreamMaxQB queries (one sequential stream for the
// hardware prefetcher: AVX-512, 1M x 768 f16, 2 cores, batch 4 / 8 / 12 in 36 / 44 / 55
// ms against 58 / 57 / 69 with interleaved row tiles); strided prefixes and indexed
// rows (many short streams) take R rows at a time, an R x QB register tile.
template <DType DT, bool NORM, int I, bool STREAM = true>
void query_block(const char* base, int64_t sb, const int64_t* rows, int64_t nrows, int64_t dim,
                 const float* q, int64_t qs, float* dots, int64_t ld, float* sq, bool pf) {
  constexpr int QB = kDenseTiles[I][0], R = kDenseTiles[I][1];
  if constexpr (STREAM && QB <= kDenseStreamMaxQB)
    if (!rows && sb == dim * dtype_size(DT)) return stream_rows<DT, QB, NORM>(base, nrows, dim, q, qs, dots, ld, sq, pf);
  rows_block<DT, R, QB, NORM>(base, sb, rows, nrows, dim, q, qs, dots, ld, sq, pf);
}

constexpr int kNumTiles = int(std::size(kDenseTiles));

// f(std::integral_constant<int, I>) for the first tile I whose query block fits `left`.
template <int I = 0, class F>
inline int64_t with_tile(int64_t left, F&& f) {
  if constexpr (I + 1 < kNumTiles) {
    if (kDenseTiles[I][0] > left) return with_tile<I + 1>(left, f);
  }
  f(std::integral_constant<int, I>{});
  return kDenseTiles[I][0];
}

// ------------------------------------------------------------------ packed GEMM route
constexpr int kGemmRV = kGemmRowVecs > 0 ? kGemmRowVecs : 1;

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

// Float32 scratch of the calling thread, 64-byte aligned, kept between calls.
inline float* scratch(int64_t count) {
  thread_local std::unique_ptr<float, FreeDeleter> buf;
  thread_local int64_t cap = 0;
  if (count > cap) {
    const int64_t c = (count + 4095) / 4096 * 4096;
    float* p = static_cast<float*>(std::aligned_alloc(64, size_t(c) * sizeof(float)));
    if (!p) throw std::bad_alloc();
    buf.reset(p);
    cap = c;
  }
  return buf.get();
}

// kGemmRowVecs vectors of rows (RW = kGemmRowVecs * kF rows) x QJ queries: accumulator
// (j, v) holds rows v*kF .. v*kF+kF-1 of query j, so it is stored straight into dots.
// xp: the panel, k-major [dim][RW] float32; each step loads kGemmRowVecs row vectors and
// broadcasts one value of each of the QJ queries against them.
template <int QJ>
inline void gemm_micro(const float* __restrict xp, int64_t dim, const float* q, int64_t qs,
                       float* dots, int64_t ld, int64_t valid) {
  constexpr int RV = kGemmRV;
  constexpr int RW = RV * kF;
  vf acc[QJ][RV];
  for (int j = 0; j < QJ; ++j)
    for (int v = 0; v < RV; ++v) acc[j][v] = vzero();
  const float* qp[QJ];
  for (int j = 0; j < QJ; ++j) qp[j] = q + j * qs;
  for (int64_t k = 0; k < dim; ++k) {
    vf x[RV];
    for (int v = 0; v < RV; ++v) x[v] = vload(xp + k * RW + v * kF);
    for (int j = 0; j < QJ; ++j) {
      const vf b = vbroadcast(qp[j] + k);
      for (int v = 0; v < RV; ++v) acc[j][v] = vfma(x[v], b, acc[j][v]);
    }
  }
  for (int j = 0; j < QJ; ++j)
    for (int v = 0; v < RV; ++v) {
      const int64_t left = valid - v * kF;
      if (left >= kF)
        vstoreu(dots + j * ld + v * kF, acc[j][v]);
      else if (left > 0)
        vstoreu_n(dots + j * ld + v * kF, acc[j][v], left);
    }
}

// f(std::integral_constant<int, N>) for 1 <= n <= M (the last short block of queries).
template <int M, class F>
inline void with_count(int64_t n, F&& f) {
  if constexpr (M > 1) {
    if (n < M) return with_count<M - 1>(n, f);
  }
  f(std::integral_constant<int, M>{});
}

// Large batches: the rows of the tile are widened once into k-major float32 panels of
// RW rows (kF x kF blocks transposed in registers, prefix norms taken on the way), then
// every block of QJ queries runs over the panels, which stay in L2 (the query block in
// L1).
template <DType DT>
void dots_gemm(const char* base, int64_t sb, const int64_t* rows, int64_t nrows, int64_t dim,
               const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq) {
  constexpr int RV = kGemmRV, RW = RV * kF, QJ = kGemmQueries;
  const int64_t panels = (nrows + RW - 1) / RW;
  float* const xp = scratch(panels * RW * dim);
  for (int64_t g = 0; g < panels * RV; ++g) {  // kF rows at a time
    float* P = xp + (g / RV) * RW * dim + (g % RV) * kF;
    const char* rp[kF];
    const int64_t r0 = g * kF;
    for (int t = 0; t < kF; ++t) {
      const int64_t r = r0 + t < nrows ? r0 + t : r0;  // rows past the tile: zero below
      rp[t] = base + (rows ? rows[r] : r) * sb;
    }
    const int live = int(std::min<int64_t>(kF, nrows - r0));  // may be <= 0
    vf s[kF], x[kF];
    for (int t = 0; t < kF; ++t) s[t] = vzero();
    for (int64_t c = 0; c < dim; c += kF) {
      const int64_t m = std::min<int64_t>(kF, dim - c);
      for (int t = 0; t < kF; ++t) {
        x[t] = t >= live ? vzero() : m == kF ? vloadx<DT>(rp[t], c) : vloadx_n<DT>(rp[t], c, m);
        s[t] = vfma(x[t], x[t], s[t]);
      }
      vtranspose(x);
      for (int64_t i = 0; i < m; ++i) vstoreu(P + (c + i) * RW, x[i]);
    }
    if (sq)
      for (int t = 0; t < live; ++t) sq[r0 + t] = vhsum(s[t]);
  }
  auto run = [&](auto qj, int64_t j0) {
    for (int64_t p = 0; p < panels; ++p)
      gemm_micro<decltype(qj)::value>(xp + p * RW * dim, dim, q + j0 * qs, qs, dots + j0 * ld + p * RW, ld,
                                      nrows - p * RW);
  };
  int64_t j0 = 0;
  for (; j0 + QJ <= nq; j0 += QJ) run(std::integral_constant<int, QJ>{}, j0);
  if (j0 < nq) with_count<QJ>(nq - j0, [&](auto qj) { run(qj, j0); });
}

template <DType DT, bool STREAM>
void dots_impl(const void* base, int64_t stride, const int64_t* rows, int64_t nrows, int64_t dim,
               const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq) {
  const char* b = static_cast<const char*>(base);
  const int64_t sb = stride * dtype_size(DT);
  if constexpr (kGemmRowVecs > 0) {
    if (nq >= kGemmMinQ) return dots_gemm<DT>(b, sb, rows, nrows, dim, q, qs, nq, dots, ld, sq);
  }
  int64_t j = 0;
  while (j < nq) {
    // The row norm comes with the first query block (the rows are read anyway).
    const bool norm = j == 0 && sq;
    j += with_tile(nq - j, [&](auto tile) {
      constexpr int I = decltype(tile)::value;
      if (norm)
        query_block<DT, true, I, STREAM>(b, sb, rows, nrows, dim, q, qs, dots, ld, sq, true);
      else
        query_block<DT, false, I, STREAM>(b, sb, rows, nrows, dim, q + j * qs, qs, dots + j * ld, ld, nullptr,
                                          j == 0);
    });
  }
}

void dots(const void* base, DType dtype, int64_t stride, const int64_t* rows, int64_t nrows,
          int64_t dim, const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq) {
  with_dtype(dtype, [&](auto dt) {
    dots_impl<decltype(dt)::value, true>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
  });
}

void dots_tiles(const void* base, DType dtype, int64_t stride, const int64_t* rows, int64_t nrows,
                int64_t dim, const float* q, int64_t qs, int64_t nq, float* dots, int64_t ld, float* sq) {
  with_dtype(dtype, [&](auto dt) {
    dots_impl<decltype(dt)::value, false>(base, stride, rows, nrows, dim, q, qs, nq, dots, ld, sq);
  });
}

// ------------------------------------------------------------------ blocked table
// Q queries x A chains per kF lanes of a block (the value index split c % A): at least
// eight independent FMA chains, so that one query's block is not bound by the FMA
// latency (a single chain per lane took 1.5x as long on Zen 4).
template <int Q, int A, bool SQ>
void blocked_q(const uint16_t* table, int64_t nblocks, int64_t dim, const float* q, int64_t qs, float* dots,
               int64_t ld, float* sq) {
  constexpr int G = int(kBlockRows / kF);
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint16_t* p = table + b * dim * kBlockRows;
    vf acc[Q][A][G], s2[A][G];
    for (int a = 0; a < A; ++a)
      for (int g = 0; g < G; ++g) {
        s2[a][g] = vzero();
        for (int j = 0; j < Q; ++j) acc[j][a][g] = vzero();
      }
    auto step = [&](int64_t c, int a) {
      for (int g = 0; g < G; ++g) {
        const vf x = vloadx<DType::F16>(p + c * kBlockRows, g * kF);
        for (int j = 0; j < Q; ++j) acc[j][a][g] = vfma(vset1(q[j * qs + c]), x, acc[j][a][g]);
        if constexpr (SQ) s2[a][g] = vfma(x, x, s2[a][g]);
      }
    };
    int64_t c = 0;
    for (; c + A <= dim; c += A)
      for (int a = 0; a < A; ++a) step(c + a, a);
    for (; c < dim; ++c) step(c, 0);
    for (int g = 0; g < G; ++g) {
      for (int j = 0; j < Q; ++j) {
        vf t = acc[j][0][g];
        for (int a = 1; a < A; ++a) t = vadd(t, acc[j][a][g]);
        vstoreu(dots + j * ld + b * kBlockRows + g * kF, t);
      }
      if constexpr (SQ) {
        vf t = s2[0][g];
        for (int a = 1; a < A; ++a) t = vadd(t, s2[a][g]);
        vstoreu(sq + b * kBlockRows + g * kF, t);
      }
    }
  }
}

template <int Q>
void blocked_run(const uint16_t* table, int64_t nblocks, int64_t dim, const float* q, int64_t qs, float* dots,
                 int64_t ld, float* sq) {
  constexpr int G = int(kBlockRows / kF);
  constexpr int A = Q * G >= 8 ? 1 : 8 / (Q * G);
  if (sq)
    blocked_q<Q, A, true>(table, nblocks, dim, q, qs, dots, ld, sq);
  else
    blocked_q<Q, A, false>(table, nblocks, dim, q, qs, dots, ld, nullptr);
}

// Each pass over a blocked table serves up to four queries: run(Q, j) for the queries
// j .. j + Q - 1 (Q a compile-time constant).
template <class Run>
void by_four_queries(int64_t nq, Run&& run) {
  for (int64_t j = 0; j < nq; j += 4) {
    switch (std::min<int64_t>(4, nq - j)) {
      case 1: run(std::integral_constant<int, 1>{}, j); break;
      case 2: run(std::integral_constant<int, 2>{}, j); break;
      case 3: run(std::integral_constant<int, 3>{}, j); break;
      default: run(std::integral_constant<int, 4>{}, j); break;
    }
  }
}

void blocked_dots(const uint16_t* table, int64_t nblocks, int64_t dim, const float* q, int64_t qs, int64_t nq,
                  float* dots, int64_t ld, float* sq) {
  static_assert(kBlockRows % kF == 0, "a block holds whole float vectors");
  by_four_queries(nq, [&](auto Q, int64_t j) {
    blocked_run<decltype(Q)::value>(table, nblocks, dim, q + j * qs, qs, dots + j * ld, ld, j == 0 ? sq : nullptr);
  });
}

#if defined(NV_SIMD_BF16_DOT)
// The bfloat16 pair table (BlockedDotsFn's bf16 layout): per block, each step is one
// bf16 dot of a 16-list x 2-value vector with the query's broadcast pair, A chains.
inline uint32_t bf16_bits(float f) {  // round to nearest even (finite queries)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

template <int Q, int A, bool SQ>
void blocked_bf16_q(const uint16_t* table, int64_t nblocks, int64_t npairs, const uint32_t* qp, float* dots,
                    int64_t ld, float* sq) {
  static_assert(kBlockRows == kF, "a block's 16 lists are one float vector");
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint16_t* p = table + b * npairs * 2 * kBlockRows;
    vf acc[Q][A], s2[A];
    for (int a = 0; a < A; ++a) {
      s2[a] = vzero();
      for (int j = 0; j < Q; ++j) acc[j][a] = vzero();
    }
    auto step = [&](int64_t c, int a) {
      const vbh x = bh_loadu(p + c * 2 * kBlockRows);
      for (int j = 0; j < Q; ++j) acc[j][a] = bh_dot(acc[j][a], x, bh_pair(qp[j * npairs + c]));
      if constexpr (SQ) s2[a] = bh_dot(s2[a], x, x);
    };
    int64_t c = 0;
    for (; c + A <= npairs; c += A)
      for (int a = 0; a < A; ++a) step(c + a, a);
    for (; c < npairs; ++c) step(c, 0);
    for (int j = 0; j < Q; ++j) {
      vf t = acc[j][0];
      for (int a = 1; a < A; ++a) t = vadd(t, acc[j][a]);
      vstoreu(dots + j * ld + b * kBlockRows, t);
    }
    if constexpr (SQ) {
      vf t = s2[0];
      for (int a = 1; a < A; ++a) t = vadd(t, s2[a]);
      vstoreu(sq + b * kBlockRows, t);
    }
  }
}

template <int Q>
void blocked_bf16_run(const uint16_t* table, int64_t nblocks, int64_t npairs, const uint32_t* qp, float* dots,
                      int64_t ld, float* sq) {
  constexpr int A = Q >= 8 ? 1 : 8 / Q;
  if (sq)
    blocked_bf16_q<Q, A, true>(table, nblocks, npairs, qp, dots, ld, sq);
  else
    blocked_bf16_q<Q, A, false>(table, nblocks, npairs, qp, dots, ld, nullptr);
}

void blocked_dots_bf16(const uint16_t* table, int64_t nblocks, int64_t dim, const float* q, int64_t qs,
                       int64_t nq, float* dots, int64_t ld, float* sq) {
  const int64_t npairs = dim / 2;  // (the table's dim is even)
  std::vector<uint32_t> qp(size_t(4 * npairs));
  by_four_queries(nq, [&](auto Q, int64_t j) {
    for (int64_t i = 0; i < Q; ++i)
      for (int64_t c = 0; c < npairs; ++c) {
        const float* x = q + (j + i) * qs + 2 * c;
        qp[size_t(i * npairs + c)] = bf16_bits(x[0]) | (bf16_bits(x[1]) << 16);
      }
    blocked_bf16_run<decltype(Q)::value>(table, nblocks, npairs, qp.data(), dots + j * ld, ld, j == 0 ? sq : nullptr);
  });
}
#endif  // NV_SIMD_BF16_DOT

#if defined(NV_SIMD_U8S8_DOT)
// The int8 quad table (BlockedDotsFn's i8 layout): per block, each step is one u8 x s8
// dot of a 16-list x 4-value vector with the query's broadcast quad, A chains.
template <int Q, int A>
void blocked_i8_q(const int8_t* table, int64_t nblocks, int64_t nquads, const uint32_t* qq, const float* qinv,
                  float* dots, int64_t ld) {
  static_assert(kBlockRows == kF, "a block's 16 lists are one int32 vector");
  const int64_t block_bytes = (nquads + 2) * 4 * kBlockRows;
  for (int64_t b = 0; b < nblocks; ++b) {
    const int8_t* p = table + b * block_bytes;
    vi32 acc[Q][A];
    for (int j = 0; j < Q; ++j)
      for (int a = 0; a < A; ++a) acc[j][a] = i32_zero();
    auto step = [&](int64_t c, int a) {
      const vi32 x = i32_loadu(p + c * 4 * kBlockRows);
      for (int j = 0; j < Q; ++j) acc[j][a] = u8s8_dot(acc[j][a], qq[j * nquads + c], x);
    };
    int64_t c = 0;
    for (; c + A <= nquads; c += A)
      for (int a = 0; a < A; ++a) step(c + a, a);
    for (; c < nquads; ++c) step(c, 0);
    const vi32 corr = i32_loadu(p + nquads * 4 * kBlockRows);
    const vf inv = vloadu(reinterpret_cast<const float*>(p + (nquads + 1) * 4 * kBlockRows));
    for (int j = 0; j < Q; ++j) {
      vi32 t = acc[j][0];
      for (int a = 1; a < A; ++a) t = i32_add(t, acc[j][a]);
      vstoreu(dots + j * ld + b * kBlockRows, vmul(vmul(i32_to_f(i32_add(t, corr)), inv), vset1(qinv[j])));
    }
  }
}

template <int Q>
void blocked_i8_run(const int8_t* table, int64_t nblocks, int64_t nquads, const uint32_t* qq, const float* qinv,
                    float* dots, int64_t ld) {
  constexpr int A = Q >= 8 ? 1 : 8 / Q;
  blocked_i8_q<Q, A>(table, nblocks, nquads, qq, qinv, dots, ld);
}

void blocked_dots_i8(const uint16_t* table16, int64_t nblocks, int64_t dim, const float* q, int64_t qs,
                     int64_t nq, float* dots, int64_t ld, float*) {
  const int8_t* table = reinterpret_cast<const int8_t*>(table16);
  const int64_t nquads = dim / 4;  // (the table's dim is a multiple of 4)
  std::vector<uint32_t> qq(size_t(4 * nquads));
  float qinv[4];
  by_four_queries(nq, [&](auto Q, int64_t j) {
    for (int64_t i = 0; i < Q; ++i) {  // q8 = q scaled to 127 at its largest |value|, + 128
      const float* x = q + (j + i) * qs;
      float mx = 0.f;
      for (int64_t c = 0; c < dim; ++c) mx = std::max(mx, std::fabs(x[c]));
      const float sc = mx > 0.f ? 127.f / mx : 0.f;
      qinv[i] = mx > 0.f ? mx / 127.f : 0.f;
      for (int64_t c = 0; c < nquads; ++c) {
        uint32_t v = 0;
        for (int t = 0; t < 4; ++t) {
          const long r = std::lrint(x[4 * c + t] * sc);
          v |= uint32_t(std::min(127L, std::max(-127L, r)) + 128) << (8 * t);
        }
        qq[size_t(i * nquads + c)] = v;
      }
    }
    blocked_i8_run<decltype(Q)::value>(table, nblocks, nquads, qq.data(), qinv, dots + j * ld, ld);
  });
}
#endif  // NV_SIMD_U8S8_DOT

// ------------------------------------------------------------------ key threshold
int64_t select(const float* dots, const float* rowf, int64_t nrows, int metric, float a, float b,
               float thr, const uint8_t* allow, uint32_t* hit_rows, float* hit_keys) {
  const vf va = vset1(a), vb = vset1(b), vt = vset1(thr), two = vset1(2.f);
  int64_t n = 0;
  for (int64_t r = 0; r < nrows; r += kF) {
    const int64_t left = nrows - r;
    const bool full = left >= kF;
    const vf d = full ? vloadu(dots + r) : vloadu_n(dots + r, left);
    vf key;
    if (metric == kCosine)
      key = vmul(vmul(d, va), full ? vloadu(rowf + r) : vloadu_n(rowf + r, left));
    else if (metric == kIP)
      key = d;
    else
      key = vsub(vfms(two, d, full ? vloadu(rowf + r) : vloadu_n(rowf + r, left)), vb);
    uint32_t m = vgt_mask(key, vt);
    if (!full) m &= (1u << left) - 1;
    if (!m) continue;
    if (allow) {
      m &= allow_mask(allow + r, full ? kF : left);
      if (!m) continue;
    }
    n += compress_hits(m, key, uint32_t(r), hit_rows + n, hit_keys + n);
  }
  return n;
}

}  // namespace
}  // namespace dense
}  // namespace nestvec

#include "dense_approx_impl.h"  // the two-pass route's first passes (bf16, int16)

namespace nestvec {
namespace dense {

template <>
Kernels kernels<simd::kIsa>() {
#if defined(NV_SIMD_BF16_DOT)
  return {dots, select, {kApproxBf16, 0.f, 0, bf16_bytes, bf16_bytes, bf16_pack_rows, bf16_pack_queries, bf16_dots}, dots_tiles, blocked_dots,
          blocked_dots_bf16,
#if defined(NV_SIMD_U8S8_DOT)
          blocked_dots_i8
#else
          nullptr
#endif
  };
#elif defined(NV_SIMD_I16_DOT)
  return {dots, select,
          {kApproxI16, kI16Max, kI16Chunk, i16_rows_bytes, i16_queries_bytes, i16_pack_rows, i16_pack_queries, i16_dots}, dots_tiles, blocked_dots};
#else
  return {dots, select, {kApproxNone, 0.f, 0, nullptr, nullptr, nullptr, nullptr, nullptr}, dots_tiles, blocked_dots};
#endif
}

}  // namespace dense
}  // namespace nestvec
