// The dense two-pass route's approximate first passes (ApproxPass in dense.h), part of
// dense_impl.h's per-ISA build: bfloat16 on ISAs with a bf16 dot (NV_SIMD_BF16_DOT,
// AVX512-BF16), int16 with a scale per row on ISAs with an int16 pair dot
// (NV_SIMD_I16_DOT, AVX2). Included by dense_impl.h after its float32 kernels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace nestvec {
namespace dense {
namespace {

using namespace simd;

// ------------------------------------------------------------------ bf16 first pass
#if defined(NV_SIMD_BF16_DOT)
// First pass of the two-pass dense top-k (dense_bf16.cpp). A tile of rows is rounded
// once to bfloat16 (packed, zero-padded to kBH values) while its exact float32 prefix
// norms are taken; a bf16 dot instruction multiplies twice the value pairs of a
// float32 FMA, so a compute-bound batch scores about twice as fast. The scores are
// approximate; the driver bounds their error and rescores the shortlist exactly.

// Rows are streamed from memory once per batch; like the float32 kernels, the rows
// ~12 KiB ahead are prefetched (a prefix is a short stream the hardware barely follows).
template <DType DT>
void to_bf16_impl(const void* base, int64_t stride, int64_t nrows, int64_t dim, int64_t dimp,
                  uint16_t* out, float* sq) {
  constexpr int64_t kEs = dtype_size(DT);
  const int64_t sb = stride * kEs, row_bytes = dim * kEs;
  const int64_t ahead = 12288 / row_bytes + 1;
  const int64_t body = dim / kBH * kBH;
  for (int64_t r = 0; r < nrows; ++r) {
    const char* row = static_cast<const char*>(base) + r * sb;
    // the row `ahead` rows on, a line or two per step as in stream_rows (an integer:
    // it may lie past the table)
    const uintptr_t pfrow = reinterpret_cast<uintptr_t>(row) + uintptr_t(ahead * sb);
    prefetch_l1(pfrow + uintptr_t(row_bytes - 1));  // the extra line of a mid-line start
    vf acc0 = vzero(), acc1 = vzero();
    uint16_t* o = out + r * dimp;
    int64_t c = 0;
    for (; c < body; c += kBH) {
      prefetch_bytes(pfrow, c * kEs, (c + kBH) * kEs);
      const vf lo = vloadx<DT>(row, c), hi = vloadx<DT>(row, c + kF);
      acc0 = vfma(lo, lo, acc0);
      acc1 = vfma(hi, hi, acc1);
      bh_store2(o + c, lo, hi);
    }
    prefetch_bytes(pfrow, c * kEs, row_bytes);
    if (c < dimp) {  // lanes past `dim` load as zero: the padding the kernel relies on
      const vf lo = vloadx_n<DT>(row, c, std::min<int64_t>(dim - c, kF));
      const vf hi = c + kF < dim ? vloadx_n<DT>(row, c + kF, std::min<int64_t>(dim - c - kF, kF)) : vzero();
      acc0 = vfma(lo, lo, acc0);
      acc1 = vfma(hi, hi, acc1);
      bh_store2(o + c, lo, hi);
    }
    if (sq) sq[r] = vhsum(vadd(acc0, acc1));
  }
}

void to_bf16(const void* base, DType dtype, int64_t stride, int64_t nrows, int64_t dim,
             int64_t dimp, uint16_t* out, float* sq) {
  with_dtype(dtype, [&](auto dt) { to_bf16_impl<decltype(dt)::value>(base, stride, nrows, dim, dimp, out, sq); });
}

// R rows x QB queries: 24 accumulators for 2 x 12, each row load feeding 12 bf16 dots
// (the same shape as the float32 micro above).
template <int R, int QB>
inline void micro_bf16(const uint16_t* x, int64_t dimp, const uint16_t* q, float* dots, int64_t ld) {
  vf acc[QB * R];
  for (auto& a : acc) a = vzero();
  for (int64_t c = 0; c < dimp; c += kBH) {
    vbh xv[R];
    for (int r = 0; r < R; ++r) xv[r] = bh_load(x + r * dimp + c);
    for (int j = 0; j < QB; ++j) {
      vbh qv = bh_load(q + j * dimp + c);
      if (R > 1) bh_keep(qv);  // one query load per R rows, as in micro
      for (int r = 0; r < R; ++r) acc[j * R + r] = bh_dot(acc[j * R + r], xv[r], qv);
    }
  }
  constexpr int kN = QB * R;
  alignas(64) float out[(kN + 7) / 8 * 8];
  reduce_all<kN>(acc, out);
  for (int j = 0; j < QB; ++j)
    for (int r = 0; r < R; ++r) dots[j * ld + r] = out[j * R + r];
}

template <int R, int QB>
void rows_block_bf16(const uint16_t* x, int64_t nrows, int64_t dimp, const uint16_t* q, float* dots,
                     int64_t ld) {
  int64_t r0 = 0;
  for (; r0 + R <= nrows; r0 += R) micro_bf16<R, QB>(x + r0 * dimp, dimp, q, dots + r0, ld);
  for (; r0 < nrows; ++r0) micro_bf16<1, QB>(x + r0 * dimp, dimp, q, dots + r0, ld);
}

void dots_bf16(const uint16_t* x, int64_t nrows, int64_t dimp, const uint16_t* q, int64_t nq,
               float* dots, int64_t ld) {
  int64_t j = 0;
  for (; j + 12 <= nq; j += 12) rows_block_bf16<2, 12>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
  for (; j + 4 <= nq; j += 4) rows_block_bf16<4, 4>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
  for (; j < nq; ++j) rows_block_bf16<4, 1>(x, nrows, dimp, q + j * dimp, dots + j * ld, ld);
}

// The ApproxPass entry points (rows and queries packed alike: dimp values, zero-padded).
inline int64_t bf16_dimp(int64_t dim) { return (dim + kBH - 1) / kBH * kBH; }
int64_t bf16_bytes(int64_t n, int64_t dim) { return n * bf16_dimp(dim) * 2; }
void bf16_pack_rows(const void* base, DType dtype, int64_t stride, int64_t n, int64_t dim, void* out,
                    float*, float* sq, float*, float*) {
  to_bf16(base, dtype, stride, n, dim, bf16_dimp(dim), static_cast<uint16_t*>(out), sq);
}
void bf16_pack_queries(const float* q, int64_t nq, int64_t qs, int64_t dim, void* out, float*, float*,
                       float*) {
  to_bf16(q, DType::F32, qs, nq, dim, bf16_dimp(dim), static_cast<uint16_t*>(out), nullptr);
}
void bf16_dots(const void* x, const float*, int64_t nrows, int64_t dim, const void* q, const float*,
               int64_t nq, float* dots, int64_t ld) {
  dots_bf16(static_cast<const uint16_t*>(x), nrows, bf16_dimp(dim), static_cast<const uint16_t*>(q), nq,
            dots, ld);
}
#endif  // NV_SIMD_BF16_DOT

// ------------------------------------------------------------------ int16 first pass
#if defined(NV_SIMD_I16_DOT)
// First pass of the two-pass route on ISAs with an int16 pair dot (AVX2's vpmaddwd):
// each row and query is rounded to int16 with its own scale s = max|x_i| / kI16Max, so
// the rounding error is <= s / 2 per value (ApproxPass says how the driver bounds a
// dot). Pairs of values multiply into int32 lanes; the int32 sums are flushed into
// float32 every kI16Chunk values, before they could overflow:
// kI16Chunk * (kI16Max + 1)^2 = 128 * 4001^2 < 2^31.
constexpr float kI16Max = 4000.f;
constexpr int64_t kI16Chunk = 128;
static_assert(double(kI16Chunk) * (kI16Max + 1) * (kI16Max + 1) < 2147483647.0, "int32 sums overflow");

inline int64_t i16_pairs(int64_t dim) { return (dim + 1) / 2; }
constexpr int kI16RV = kI16RowVecs, kI16RW = kI16RV * kF;  // row vectors / rows per packed panel

int64_t i16_rows_bytes(int64_t n, int64_t dim) {
  return (n + kI16RW - 1) / kI16RW * kI16RW * i16_pairs(dim) * 4;
}
int64_t i16_queries_bytes(int64_t n, int64_t dim) { return n * i16_pairs(dim) * 4; }

// sq, max |x_i| and sum |x_i| of a row's prefix; the scale and its inverse (0 for a
// zero row; scale NaN for a row with a non-finite value, whose dots then come out NaN
// and are never kept).
template <DType DT>
inline vf row_scale(const void* row, int64_t dim, float* sq, float* amax, float* l1, float* scale) {
  vf s = vzero(), m = vzero(), a = vzero();
  for (int64_t c = 0; c < dim; c += kF) {
    const vf x = c + kF <= dim ? vloadx<DT>(row, c) : vloadx_n<DT>(row, c, dim - c);
    s = vfma(x, x, s);
    const vf ax = vabs(x);
    m = vmax(m, ax);
    a = vadd(a, ax);
  }
  const float ss = vhsum(s), mx = vhmax(m), sum = vhsum(a);
  if (sq) *sq = ss;
  *amax = mx;
  *l1 = sum;
  const bool finite = std::isfinite(ss) && std::isfinite(sum);
  *scale = !finite ? std::numeric_limits<float>::quiet_NaN() : mx > 0 ? mx / kI16Max : 0.f;
  return vset1(finite && mx > 0 ? kI16Max / mx : 0.f);
}

// 2 kF values of a row from value c on (zero past dim), scaled and rounded: kF pairs.
template <DType DT>
inline vi round_pairs(const void* row, int64_t c, int64_t dim, vf inv) {
  auto part = [&](int64_t c0) {
    return c0 + kF <= dim ? vloadx<DT>(row, c0) : c0 < dim ? vloadx_n<DT>(row, c0, dim - c0) : vzero();
  };
  return vi_round16(vmul(part(c), inv), vmul(part(c + kF), inv));
}

// Rows into panels of kI16RW rows, k-major by pairs: out[panel][pair][row] (int32 =
// two int16), kF rows at a time through kF x kF transposes.
template <DType DT>
void i16_pack_rows_impl(const void* base, int64_t stride, int64_t n, int64_t dim, int32_t* out,
                        float* scale, float* sq, float* amax, float* l1) {
  const int64_t np = i16_pairs(dim), sb = stride * dtype_size(DT);
  const int64_t groups = (n + kI16RW - 1) / kI16RW * kI16RV;
  for (int64_t g = 0; g < groups; ++g) {
    int32_t* P = out + (g / kI16RV) * kI16RW * np + (g % kI16RV) * kF;
    const int64_t r0 = g * kF;
    const int live = int(std::max<int64_t>(0, std::min<int64_t>(kF, n - r0)));
    const char* rp[kF];
    vf inv[kF];
    for (int t = 0; t < kF; ++t) {
      rp[t] = static_cast<const char*>(base) + (t < live ? r0 + t : 0) * sb;
      if (t < live)
        inv[t] = row_scale<DT>(rp[t], dim, sq ? sq + r0 + t : nullptr, amax + r0 + t, l1 + r0 + t, scale + r0 + t);
      else
        scale[r0 + t] = 0.f;  // panel padding (the arrays hold n rounded up to 64)
    }
    for (int64_t c = 0; c < 2 * np; c += 2 * kF) {
      vf x[kF];
      for (int t = 0; t < kF; ++t) x[t] = t < live ? vi_bits_f(round_pairs<DT>(rp[t], c, dim, inv[t])) : vzero();
      vtranspose(x);  // 32-bit lanes: pair i of each of the kF rows
      const int64_t m = std::min<int64_t>(kF, np - c / 2);
      for (int64_t i = 0; i < m; ++i) vi_store(P + (c / 2 + i) * kI16RW, vf_bits_i(x[i]));
    }
  }
}

void i16_pack_rows(const void* base, DType dtype, int64_t stride, int64_t n, int64_t dim, void* out,
                   float* scale, float* sq, float* amax, float* l1) {
  with_dtype(dtype, [&](auto dt) {
    i16_pack_rows_impl<decltype(dt)::value>(base, stride, n, dim, static_cast<int32_t*>(out), scale, sq, amax, l1);
  });
}

// Queries one after another, np pairs each (broadcast a pair at a time by the kernel).
void i16_pack_queries(const float* q, int64_t nq, int64_t qs, int64_t dim, void* out, float* scale,
                      float* amax, float* l1) {
  const int64_t np = i16_pairs(dim);
  int32_t* o = static_cast<int32_t*>(out);
  alignas(64) int32_t buf[kF];
  for (int64_t j = 0; j < nq; ++j) {
    const float* row = q + j * qs;
    const vf inv = row_scale<DType::F32>(row, dim, nullptr, amax + j, l1 + j, scale + j);
    for (int64_t c = 0; c < 2 * np; c += 2 * kF) {
      const int64_t m = std::min<int64_t>(kF, np - c / 2);
      vi_store(buf, round_pairs<DType::F32>(row, c, dim, inv));
      std::memcpy(o + j * np + c / 2, buf, size_t(m) * 4);
    }
  }
}

// kI16RowVecs vectors of rows (a panel) x QJ queries, int32 accumulators flushed to
// float32 partial sums every kI16Chunk values; then the scales.
template <int QJ>
inline void i16_micro(const int32_t* __restrict xp, int64_t np, const int32_t* q, const float* xscale,
                      const float* qscale, float* dots, int64_t ld, int64_t valid) {
  constexpr int RV = kI16RV;
  alignas(64) float part[QJ][kI16RW];
  for (int j = 0; j < QJ; ++j)
    for (int v = 0; v < RV; ++v) vstoreu(part[j] + v * kF, vzero());
  for (int64_t p0 = 0; p0 < np; p0 += kI16Chunk / 2) {
    const int64_t p1 = std::min<int64_t>(np, p0 + kI16Chunk / 2);
    vi acc[QJ][RV];
    for (int j = 0; j < QJ; ++j)
      for (int v = 0; v < RV; ++v) acc[j][v] = vi_zero();
    for (int64_t p = p0; p < p1; ++p) {
      vi x[RV];
      for (int v = 0; v < RV; ++v) x[v] = vi_load(xp + p * kI16RW + v * kF);
      for (int j = 0; j < QJ; ++j) {
        const vi b = vi_bcast(q + j * np + p);
        for (int v = 0; v < RV; ++v) acc[j][v] = vi_dot2(acc[j][v], x[v], b);
      }
    }
    for (int j = 0; j < QJ; ++j)
      for (int v = 0; v < RV; ++v) vstoreu(part[j] + v * kF, vadd(vloadu(part[j] + v * kF), vi_to_f(acc[j][v])));
  }
  for (int j = 0; j < QJ; ++j) {
    const vf sj = vset1(qscale[j]);
    for (int v = 0; v < RV; ++v) {
      const vf d = vmul(vmul(vloadu(part[j] + v * kF), vloadu(xscale + v * kF)), sj);
      const int64_t left = valid - v * kF;
      if (left >= kF)
        vstoreu(dots + j * ld + v * kF, d);
      else if (left > 0)
        vstoreu_n(dots + j * ld + v * kF, d, left);
    }
  }
}

void i16_dots(const void* x, const float* xscale, int64_t nrows, int64_t dim, const void* q,
              const float* qscale, int64_t nq, float* dots, int64_t ld) {
  const int64_t np = i16_pairs(dim), panels = (nrows + kI16RW - 1) / kI16RW;
  const int32_t* xp = static_cast<const int32_t*>(x);
  const int32_t* qp = static_cast<const int32_t*>(q);
  auto run = [&](auto qj, int64_t j0) {
    for (int64_t p = 0; p < panels; ++p)
      i16_micro<decltype(qj)::value>(xp + p * kI16RW * np, np, qp + j0 * np, xscale + p * kI16RW, qscale + j0,
                                     dots + j0 * ld + p * kI16RW, ld, nrows - p * kI16RW);
  };
  int64_t j0 = 0;
  for (; j0 + kI16Queries <= nq; j0 += kI16Queries) run(std::integral_constant<int, kI16Queries>{}, j0);
  if (j0 < nq) with_count<kI16Queries>(nq - j0, [&](auto qj) { run(qj, j0); });
}
#endif  // NV_SIMD_I16_DOT

}  // namespace
}  // namespace dense
}  // namespace nestvec
