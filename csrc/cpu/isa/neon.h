// aarch64 Advanced SIMD (NEON) primitives: 4 float32 lanes, 16-byte code chunks, 32
// vector registers. Baseline armv8-a only (every aarch64 CPU has it): float16 widens
// with FCVTL, bfloat16 with a 16-bit shift, popcounts with CNT. Included by the
// *_neon.cpp translation units only, before an op's implementation header (see
// isa/README.md).
#pragma once
#if !defined(__aarch64__) || !defined(__ARM_NEON)
#error "isa/neon.h is for aarch64 with Advanced SIMD"
#endif
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"
#include "nestvec/half.h"

namespace nestvec {
namespace simd {
namespace {

constexpr Isa kIsa = Isa::Neon;

// ------------------------------------------------------------------ float32 vectors
using vf = float32x4_t;
constexpr int kF = 4;

inline vf vzero() { return vdupq_n_f32(0.f); }
inline vf vset1(float x) { return vdupq_n_f32(x); }
inline vf vbroadcast(const float* p) { return vld1q_dup_f32(p); }
inline vf vload(const float* p) { return vld1q_f32(p); }
inline vf vloadu(const float* p) { return vld1q_f32(p); }
inline void vstoreu(float* p, vf v) { vst1q_f32(p, v); }
inline vf vloadu_n(const float* p, int64_t n) {
  if (n >= 4) return vld1q_f32(p);
  float buf[4] = {0.f, 0.f, 0.f, 0.f};
  std::memcpy(buf, p, size_t(n) * 4);
  return vld1q_f32(buf);
}
inline void vstoreu_n(float* p, vf v, int64_t n) {
  if (n >= 4) return vst1q_f32(p, v);
  float buf[4];
  vst1q_f32(buf, v);
  std::memcpy(p, buf, size_t(n) * 4);
}
inline void vstream(float* p, vf v) { vst1q_f32(p, v); }
inline void stream_fence() {}
constexpr bool kStreamStores = false;

inline vf vadd(vf a, vf b) { return vaddq_f32(a, b); }
inline vf vsub(vf a, vf b) { return vsubq_f32(a, b); }
inline vf vmul(vf a, vf b) { return vmulq_f32(a, b); }
inline vf vmax(vf a, vf b) { return vmaxq_f32(a, b); }
inline vf vfma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }               // a * b + c
inline vf vfms(vf a, vf b, vf c) { return vnegq_f32(vfmsq_f32(c, a, b)); }   // a * b - c
inline uint32_t lane_bits(uint32x4_t m) {
  const uint32_t bits[4] = {1, 2, 4, 8};
  return vaddvq_u32(vandq_u32(m, vld1q_u32(bits)));
}
inline uint32_t vgt_mask(vf a, vf b) { return lane_bits(vcgtq_f32(a, b)); }
inline float vhsum(vf v) { return vaddvq_f32(v); }
// out[i] = horizontal sum of v[i], i < 8: pairwise-add tree.
inline void vhsum8(const vf* v, float* out) {
  vst1q_f32(out, vpaddq_f32(vpaddq_f32(v[0], v[1]), vpaddq_f32(v[2], v[3])));
  vst1q_f32(out + 4, vpaddq_f32(vpaddq_f32(v[4], v[5]), vpaddq_f32(v[6], v[7])));
}
inline void vkeep(vf& v) { __asm__("" : "+w"(v)); }
// Transposes the kF x kF block v[0..kF) in registers (v[i][l] <-> v[l][i]).
inline void vtranspose(vf* v) {
  const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(v[0], v[1])), t1 = vreinterpretq_f64_f32(vtrn2q_f32(v[0], v[1]));
  const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(v[2], v[3])), t3 = vreinterpretq_f64_f32(vtrn2q_f32(v[2], v[3]));
  v[0] = vreinterpretq_f32_f64(vtrn1q_f64(t0, t2));
  v[1] = vreinterpretq_f32_f64(vtrn1q_f64(t1, t3));
  v[2] = vreinterpretq_f32_f64(vtrn2q_f64(t0, t2));
  v[3] = vreinterpretq_f32_f64(vtrn2q_f64(t1, t3));
}

template <DType DT>
inline vf vloadx(const void* row, int64_t c) {
  if constexpr (DT == DType::F32) return vld1q_f32(static_cast<const float*>(row) + c);
  const uint16x4_t h = vld1_u16(static_cast<const uint16_t*>(row) + c);
  if constexpr (DT == DType::F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
  return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}
template <DType DT>
inline vf vloadx_n(const void* row, int64_t c, int64_t n) {
  if (n >= 4) return vloadx<DT>(row, c);
  if constexpr (DT == DType::F32) return vloadu_n(static_cast<const float*>(row) + c, n);
  uint16_t buf[4] = {0, 0, 0, 0};
  std::memcpy(buf, static_cast<const uint16_t*>(row) + c, size_t(n) * 2);
  return vloadx<DT>(buf, 0);
}
template <DType DT>
inline void vstorex(void* row, int64_t c, vf v) {
  if constexpr (DT == DType::F32) {
    vst1q_f32(static_cast<float*>(row) + c, v);
  } else if constexpr (DT == DType::F16) {
    // FCVTN rounds by FPCR: nearest even unless a caller changed the mode.
    vst1_u16(static_cast<uint16_t*>(row) + c, vreinterpret_u16_f16(vcvt_f16_f32(v)));
  } else {
    const uint32x4_t u = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(1));
    const uint32x4_t rnd = vshrq_n_u32(vaddq_u32(vaddq_u32(u, vdupq_n_u32(0x7FFF)), lsb), 16);
    const uint32x4_t qnan = vorrq_u32(vshrq_n_u32(u, 16), vdupq_n_u32(0x40));
    const uint32x4_t is_num = vceqq_f32(v, v);  // NaN stays a (quiet) NaN
    vst1_u16(static_cast<uint16_t*>(row) + c, vmovn_u32(vbslq_u32(is_num, rnd, qnan)));
  }
}

inline int64_t compress_hits(uint32_t m, vf key, uint32_t base, uint32_t* rows, float* keys) {
  float kb[4];
  vst1q_f32(kb, key);
  int64_t n = 0;
  for (; m; m &= m - 1, ++n) {
    const int l = __builtin_ctz(m);
    rows[n] = base + uint32_t(l);
    keys[n] = kb[l];
  }
  return n;
}
inline uint32_t allow_mask(const uint8_t* allow, int64_t n) {
  uint32_t m = 0;
  for (int64_t l = 0; l < n; ++l) m |= uint32_t(allow[l] != 0) << l;
  return m;
}

// ------------------------------------------------------------------ binary codes
// CNT gives byte popcounts; up to kCntMax chunks add up in bytes, then pairwise
// widening adds (UADDLP / UADALP) fold them into 32-bit lanes.
using vb = uint8x16_t;
constexpr int kB = 16;
inline vb bload(const uint8_t* p) { return vld1q_u8(p); }
using btail = int64_t;
inline btail btail_make(int64_t n) { return n; }
inline vb bload_tail(const uint8_t* p, btail n) {
  uint8_t buf[16] = {};
  std::memcpy(buf, p, size_t(n));
  return vld1q_u8(buf);
}
using vcnt = uint8x16_t;
constexpr int kCntMax = 31;
inline vcnt cnt_popxor(vb a, vb b) { return vcntq_u8(veorq_u8(a, b)); }
inline vcnt cnt_add(vcnt a, vcnt b) { return vaddq_u8(a, b); }
using vacc = uint32x4_t;
inline vacc acc_zero() { return vdupq_n_u32(0); }
inline vacc acc_of(vcnt c) { return vpaddlq_u16(vpaddlq_u8(c)); }
inline vacc acc_popxor(vacc acc, vb a, vb b) { return vpadalq_u16(acc, vpaddlq_u8(cnt_popxor(a, b))); }

using vsum = uint32x4x2_t;
constexpr int kSumLanes = 8;
constexpr int kSumLaneRow[8] = {0, 1, 2, 3, 4, 5, 6, 7};
inline vsum reduce8(const vacc* a) {
  vsum s;
  s.val[0] = vpaddq_u32(vpaddq_u32(a[0], a[1]), vpaddq_u32(a[2], a[3]));
  s.val[1] = vpaddq_u32(vpaddq_u32(a[4], a[5]), vpaddq_u32(a[6], a[7]));
  return s;
}
inline vsum reduce8_small(const vacc* a) { return reduce8(a); }  // sums of fixed widths
inline vsum sum_set1(uint32_t t) { return {{vdupq_n_u32(t), vdupq_n_u32(t)}}; }
inline uint32_t sum_valid(int valid_rows) { return (1u << valid_rows) - 1; }
inline uint32_t sum_lt(const vsum& s, const vsum& t, uint32_t valid) {
  return (lane_bits(vcltq_u32(s.val[0], t.val[0])) | lane_bits(vcltq_u32(s.val[1], t.val[1])) << 4) & valid;
}
inline void sum_store(uint32_t* buf, const vsum& s) {
  vst1q_u32(buf, s.val[0]);
  vst1q_u32(buf + 4, s.val[1]);
}

// Four rows of n values into a k-major layout of row width ld (dst[k * ld + i] =
// r[i][k]) through 4x4 transposes.
#define NV_SIMD_TRANSPOSE4 1
inline void transpose4_rows(const float* r0, const float* r1, const float* r2, const float* r3,
                            int64_t n, float* dst, int64_t ld) {
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    const float32x4_t a = vld1q_f32(r0 + k), b = vld1q_f32(r1 + k), c = vld1q_f32(r2 + k),
                      d = vld1q_f32(r3 + k);
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(a, b)), t1 = vreinterpretq_f64_f32(vtrn2q_f32(a, b));
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(c, d)), t3 = vreinterpretq_f64_f32(vtrn2q_f32(c, d));
    vst1q_f32(dst + k * ld, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    vst1q_f32(dst + (k + 1) * ld, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    vst1q_f32(dst + (k + 2) * ld, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    vst1q_f32(dst + (k + 3) * ld, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
  }
  for (; k < n; ++k) {
    dst[k * ld] = r0[k];
    dst[k * ld + 1] = r1[k];
    dst[k * ld + 2] = r2[k];
    dst[k * ld + 3] = r3[k];
  }
}

// ------------------------------------------------------------------ tuning
// Not measured (no aarch64 machine here): shapes chosen for 32 registers and 4 lanes.
constexpr int kHammingQB[] = {3, 2, 1};
constexpr bool kHammingPrefetchL2 = false;
constexpr int kDenseTiles[][2] = {{8, 2}, {4, 4}, {2, 4}, {1, 4}};
constexpr int kDenseStreamMaxQB = 4;
constexpr int kDenseStreamSums = 2, kDenseStreamSums1 = 4;
constexpr int kGemmRowVecs = 4, kGemmQueries = 6, kGemmMinQ = 32;
constexpr int kLrsMR = 8, kLrsNV = 3;
constexpr bool kLrsPrefetchB = false;

}  // namespace
}  // namespace simd
}  // namespace nestvec
