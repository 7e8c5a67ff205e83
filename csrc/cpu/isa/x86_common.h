// Pieces the AVX2 and AVX-512 primitive headers share (256-bit / SSE code valid under
// both sets of flags). Internal linkage, like everything in isa/: each translation unit
// keeps its own copy, compiled with its own -m flags.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace nestvec {
namespace simd {
namespace x86 {
namespace {

// Lane i of the result = horizontal sum of h[i] (8 vectors): a hadd tree.
inline __m256 hadd_tree8(const __m256* h) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

}  // namespace
}  // namespace x86

namespace {

// Four rows of n values into a k-major layout of row width ld: dst[k * ld + i] = r[i][k],
// through 4x4 transposes (one 16-byte store per 4 values instead of four strided
// scalar stores).
#define NV_SIMD_TRANSPOSE4 1
inline void transpose4_rows(const float* r0, const float* r1, const float* r2, const float* r3,
                            int64_t n, float* dst, int64_t ld) {
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    __m128 a = _mm_loadu_ps(r0 + k), b = _mm_loadu_ps(r1 + k), c = _mm_loadu_ps(r2 + k),
           d = _mm_loadu_ps(r3 + k);
    _MM_TRANSPOSE4_PS(a, b, c, d);
    _mm_storeu_ps(dst + k * ld, a);
    _mm_storeu_ps(dst + (k + 1) * ld, b);
    _mm_storeu_ps(dst + (k + 2) * ld, c);
    _mm_storeu_ps(dst + (k + 3) * ld, d);
  }
  for (; k < n; ++k) {
    dst[k * ld] = r0[k];
    dst[k * ld + 1] = r1[k];
    dst[k * ld + 2] = r2[k];
    dst[k * ld + 3] = r3[k];
  }
}

}  // namespace
}  // namespace simd
}  // namespace nestvec
