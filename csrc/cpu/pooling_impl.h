// Pooling reduction, written once and compiled per ISA: each pooling_<isa>.cpp includes
// its ISA's primitives (isa/<isa>.h), then this file, and exports the result as
// pooling::kernels<Isa>(). Four token rows per step are combined in registers and
// added into the float32 accumulator row (which stays in L1), so `hidden` streams
// through once in address order; a row's last d % kF columns use partial loads.
#include <cstdint>
#include <limits>
#include <type_traits>

#include "nestvec/pooling.h"

namespace nestvec {
namespace pooling {
namespace {

using namespace simd;

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
  for (; i + 4 <= n; i += 4) {
    const void *r0 = row(i), *r1 = row(i + 1), *r2 = row(i + 2), *r3 = row(i + 3);
    vf w0 = vzero(), w1 = vzero(), w2 = vzero(), w3 = vzero();
    if constexpr (OP == 1) w0 = vset1(w[i]), w1 = vset1(w[i + 1]), w2 = vset1(w[i + 2]), w3 = vset1(w[i + 3]);
    auto step = [&](auto full, int64_t j) {
      const vf x0 = load(full, r0, j), x1 = load(full, r1, j), x2 = load(full, r2, j), x3 = load(full, r3, j);
      vf a = load_out(full, j);
      if constexpr (OP == 0) {
        a = vadd(a, vadd(vadd(x0, x1), vadd(x2, x3)));
      } else if constexpr (OP == 1) {
        a = vfma(x0, w0, a);
        a = vfma(x1, w1, a);
        a = vfma(x2, w2, a);
        a = vfma(x3, w3, a);
      } else {
        a = vmax(a, vmax(vmax(x0, x1), vmax(x2, x3)));
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
