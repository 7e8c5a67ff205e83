// Scalar float16 / bfloat16 -> float32 conversions shared by the pooling kernels
// (tails and the scalar path). Internal to csrc/cpu.
#pragma once
#include <cstdint>
#include <cstring>

namespace nestvec {
namespace pooling {

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

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
