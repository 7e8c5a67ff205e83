// Scalar helpers shared by the pooling kernels (tails and the scalar path); the
// conversions themselves are in nestvec/half.h. Internal to csrc/cpu.
#pragma once
#include <cstdint>
#include <cstring>

#include "nestvec/half.h"

namespace nestvec {
namespace pooling {

// Element j of a row of `dtype` (see pooling.h) as float32.
inline float load1(const void* row, int dtype, int64_t j) {
  if (dtype == 0) return static_cast<const float*>(row)[j];
  const uint16_t v = static_cast<const uint16_t*>(row)[j];
  return dtype == 1 ? f16_to_f32(v) : bf16_to_f32(v);
}

inline const void* row_ptr(const void* base, int dtype, int64_t elems) {
  const int64_t bytes = elems * (dtype == 0 ? 4 : 2);
  return static_cast<const char*>(base) + bytes;
}

// out[j0:d] updated one element at a time (tails of the vector kernels).
inline void reduce_tail(const void* base, int64_t tstride, int dtype, const int32_t* tok,
                        const float* w, int64_t n, int64_t j0, int64_t d, bool max, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const void* r = row_ptr(base, dtype, int64_t(tok[i]) * tstride);
    const float wi = w ? w[i] : 1.0f;
    for (int64_t j = j0; j < d; ++j) {
      const float v = load1(r, dtype, j);
      if (max)
        out[j] = v > out[j] ? v : out[j];
      else
        out[j] += wi * v;
    }
  }
}

}  // namespace pooling
}  // namespace nestvec
