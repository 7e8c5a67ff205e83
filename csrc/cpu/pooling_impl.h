// Pooling reduction, written once and compiled per ISA: each pooling_<isa>.cpp includes
// its ISA's primitives (isa/<isa>.h), then this file, and exports the result as
// pooling::kernels<Isa>(). kRows token rows per step are combined in registers and
// added into the float32 accumulator row (which stays in L1), so `hidden` streams
// through once in address order; a row's last d % kF columns use partial loads.
#include <cstdint>
#include <limits>
#include <type_traits>

#include "nestvec/pooling.h"
#include "nestvec/prefetch.h"

namespace nestvec {
namespace pooling {
namespace {

using namespace simd;

// Token rows combined per step. Four, unless the ISA's build says otherwise: on AVX2
// (Zen 3) four interleaved streams read from DRAM slower than one in address order, and
// the accumulator row's extra loads and stores stay in L1.
#ifdef NV_POOL_ROWS_PER_STEP
constexpr int kRows = NV_POOL_ROWS_PER_STEP;
#else
constexpr int kRows = 4;
#endif
static_assert(kRows == 1 || kRows == 2 || kRows == 4 || kRows == 8, "rows per step: a power of two <= 8");
// Token rows prefetched ahead of the step (0: none, the hardware prefetcher alone).
#ifdef NV_POOL_PREFETCH_ROWS
constexpr int64_t kPrefetchRows = NV_POOL_PREFETCH_ROWS;
#else
constexpr int64_t kPrefetchRows = 0;
#endif

// OP 0: sum, 2: max.
template <int OP>
inline vf combine(vf a, vf b) {
  return OP == 0 ? vadd(a, b) : vmax(a, b);
}

// x[0] + ... + x[N - 1] (or their max) as a pairwise tree of independent ops, spelled
// out: written as a loop over the levels, GCC kept x[] on the stack and ran the loop
// (AVX-512 float32 pooling took 1.7x as long).
template <int OP, int N>
inline vf tree(const vf* x) {
  if constexpr (N == 1) return x[0];
  else return combine<OP>(tree<OP, N / 2>(x), tree<OP, N / 2>(x + N / 2));
}

// OP 0: sum, 1: weighted sum, 2: max.
template <DType DT, int OP>
void run(const void* base, int64_t tstride, const int32_t* tok, const float* w, int64_t n,
         int64_t d, float* out) {
  constexpr int64_t es = dtype_size(DT);
  auto row = [&](int64_t i) {
    return static_cast<const void*>(static_cast<const char*>(base) + int64_t(tok[i]) * tstride * es);
  };
  const int64_t dv = d / kF * kF, tail = d - dv;
  const vf init = vset1(OP == 2 ? -std::numeric_limits<float>::infinity() : 0.0f);
  for (int64_t j = 0; j < dv; j += kF) vstoreu(out + j, init);
  if (tail) vstoreu_n(out + dv, init, tail);
  // Columns [j, j + kF) of the output (the first `tail` of them when !FULL).
  auto load = [&](auto full, const void* r, int64_t j) {
    if constexpr (decltype(full)::value) return vloadx<DT>(r, j);
    else return vloadx_n<DT>(r, j, tail);
  };
  auto load_out = [&](auto full, int64_t j) {
    if constexpr (decltype(full)::value) return vloadu(out + j);
    else return vloadu_n(out + j, tail);
  };
  auto store_out = [&](auto full, int64_t j, vf a) {
    if constexpr (decltype(full)::value) vstoreu(out + j, a);
    else vstoreu_n(out + j, a, tail);
  };
  using Full = std::true_type;
  using Part = std::false_type;
  int64_t i = 0;
  for (; i + kRows <= n; i += kRows) {
    const void* r[kRows];
    vf wv[kRows];
    if constexpr (kPrefetchRows > 0) {
      for (int u = 0; u < kRows; ++u)
        if (i + kPrefetchRows + u < n) {
          const char* p = static_cast<const char*>(row(i + kPrefetchRows + u));
          for (int64_t c = 0; c < d * es; c += 64) prefetch_l1(p + c);
        }
    }
    for (int u = 0; u < kRows; ++u) {
      r[u] = row(i + u);
      wv[u] = OP == 1 ? vset1(w[i + u]) : vzero();
    }
    auto step = [&](auto full, int64_t j) {
      vf x[kRows];
      for (int u = 0; u < kRows; ++u) x[u] = load(full, r[u], j);
      vf a = load_out(full, j);
      if constexpr (OP == 1) {
        for (int u = 0; u < kRows; ++u) a = vfma(x[u], wv[u], a);
      } else {
        a = combine<OP>(a, tree<OP, kRows>(x));
      }
      store_out(full, j, a);
    };
    for (int64_t j = 0; j < dv; j += kF) step(Full{}, j);
    if (tail) step(Part{}, dv);
  }
  for (; i < n; ++i) {
    const void* r0 = row(i);
    const vf w0 = vset1(OP == 1 ? w[i] : 1.0f);
    auto step = [&](auto full, int64_t j) {
      const vf x0 = load(full, r0, j);
      const vf a = load_out(full, j);
      store_out(full, j, OP == 2 ? vmax(a, x0) : vfma(x0, w0, a));
    };
    for (int64_t j = 0; j < dv; j += kF) step(Full{}, j);
    if (tail) step(Part{}, dv);
  }
}

void reduce(const void* base, int64_t tstride, DType dtype, const int32_t* tok, const float* w,
            int64_t n, int64_t d, bool max, float* out) {
  with_dtype(dtype, [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    if (max)
      run<DT, 2>(base, tstride, tok, w, n, d, out);
    else if (w)
      run<DT, 1>(base, tstride, tok, w, n, d, out);
    else
      run<DT, 0>(base, tstride, tok, w, n, d, out);
  });
}

}  // namespace

template <>
Kernels kernels<simd::kIsa>() {
  return {reduce};
}

}  // namespace pooling
}  // namespace nestvec
