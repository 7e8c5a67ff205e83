// Portable pooling reduction (no SIMD flags; the compiler may still vectorise f32).
#include <limits>

#include "nestvec/pooling.h"
#include "pooling_convert.h"

namespace nestvec {
namespace pooling {

void reduce_scalar(const void* base, int64_t tstride, int dtype, const int32_t* tok,
                   const float* w, int64_t n, int64_t d, bool max, float* out) {
  const float init = max ? -std::numeric_limits<float>::infinity() : 0.0f;
  for (int64_t j = 0; j < d; ++j) out[j] = init;
  if (dtype == kF32 && !max && !w) {  // the common case, written so it auto-vectorises
    for (int64_t i = 0; i < n; ++i) {
      const float* r = static_cast<const float*>(base) + int64_t(tok[i]) * tstride;
      for (int64_t j = 0; j < d; ++j) out[j] += r[j];
    }
    return;
  }
  reduce_tail(base, tstride, dtype, tok, w, n, 0, d, max, out);
}

}  // namespace pooling
}  // namespace nestvec
