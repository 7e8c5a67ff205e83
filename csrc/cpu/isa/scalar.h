// Portable primitives: one float32 "lane", 8-byte code chunks (64-bit popcount), no
// intrinsics. The reference path of the C++ backend, built without SIMD flags for any
// CPU (the compiler may still vectorise it). Included by the *_scalar.cpp translation
// units only, before an op's implementation header (see isa/README.md).
#pragma once
#include <cstdint>
#include <cstring>

#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"
#include "nestvec/half.h"

namespace nestvec {
namespace simd {
namespace {

constexpr Isa kIsa = Isa::Scalar;

// ------------------------------------------------------------------ float32 "vectors"
using vf = float;
constexpr int kF = 1;

inline vf vzero() { return 0.f; }
inline vf vset1(float x) { return x; }
inline vf vbroadcast(const float* p) { return *p; }
inline vf vload(const float* p) { return *p; }
inline vf vloadu(const float* p) { return *p; }
inline void vstoreu(float* p, vf v) { *p = v; }
inline vf vloadu_n(const float* p, int64_t n) { return n > 0 ? *p : 0.f; }
inline void vstoreu_n(float* p, vf v, int64_t n) {
  if (n > 0) *p = v;
}
inline void vstream(float* p, vf v) { *p = v; }
inline void stream_fence() {}
constexpr bool kStreamStores = false;

inline vf vadd(vf a, vf b) { return a + b; }
inline vf vsub(vf a, vf b) { return a - b; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vfms(vf a, vf b, vf c) { return a * b - c; }
inline uint32_t vgt_mask(vf a, vf b) { return a > b ? 1u : 0u; }
inline float vhsum(vf v) { return v; }
inline void vhsum8(const vf* v, float* out) {
  for (int i = 0; i < 8; ++i) out[i] = v[i];
}
inline void vkeep(vf&) {}
inline void vtranspose(vf*) {}  // a 1 x 1 block

template <DType DT>
inline vf vloadx(const void* row, int64_t c) {
  if constexpr (DT == DType::F32) return static_cast<const float*>(row)[c];
  const uint16_t h = static_cast<const uint16_t*>(row)[c];
  if constexpr (DT == DType::F16) return f16_to_f32(h);
  return bf16_to_f32(h);
}
template <DType DT>
inline vf vloadx_n(const void* row, int64_t c, int64_t n) {
  return n > 0 ? vloadx<DT>(row, c) : 0.f;
}
template <DType DT>
inline void vstorex(void* row, int64_t c, vf v) {
  if constexpr (DT == DType::F32)
    static_cast<float*>(row)[c] = v;
  else if constexpr (DT == DType::F16)
    static_cast<uint16_t*>(row)[c] = f32_to_f16(v);
  else
    static_cast<uint16_t*>(row)[c] = f32_to_bf16(v);
}

inline int64_t compress_hits(uint32_t m, vf key, uint32_t base, uint32_t* rows, float* keys) {
  if (!m) return 0;
  rows[0] = base;
  keys[0] = key;
  return 1;
}
inline uint32_t allow_mask(const uint8_t* allow, int64_t n) { return n > 0 && allow[0] ? 1u : 0u; }

// ------------------------------------------------------------------ binary codes
using vb = uint64_t;
constexpr int kB = 8;
inline vb bload(const uint8_t* p) {
  uint64_t x;
  std::memcpy(&x, p, 8);
  return x;
}
using btail = int64_t;
inline btail btail_make(int64_t n) { return n; }
inline vb bload_tail(const uint8_t* p, btail n) {
  uint64_t x = 0;
  std::memcpy(&x, p, size_t(n));
  return x;
}
using vcnt = uint64_t;
constexpr int kCntMax = 1 << 24;
inline vcnt cnt_popxor(vb a, vb b) { return uint64_t(__builtin_popcountll(a ^ b)); }
inline vcnt cnt_add(vcnt a, vcnt b) { return a + b; }
using vacc = uint64_t;
inline vacc acc_zero() { return 0; }
inline vacc acc_of(vcnt c) { return c; }
inline vacc acc_popxor(vacc acc, vb a, vb b) { return acc + cnt_popxor(a, b); }

struct vsum {
  uint32_t v[8];
};
constexpr int kSumLanes = 8;
constexpr int kSumLaneRow[8] = {0, 1, 2, 3, 4, 5, 6, 7};
inline vsum reduce8(const vacc* a) {
  vsum s;
  for (int i = 0; i < 8; ++i) s.v[i] = uint32_t(a[i]);
  return s;
}
inline vsum reduce8_small(const vacc* a) { return reduce8(a); }  // sums of fixed widths
inline vsum sum_set1(uint32_t t) {
  vsum s;
  for (auto& x : s.v) x = t;
  return s;
}
inline uint32_t sum_valid(int valid_rows) { return (1u << valid_rows) - 1; }
inline uint32_t sum_lt(const vsum& s, const vsum& t, uint32_t valid) {
  uint32_t m = 0;
  for (int i = 0; i < 8; ++i) m |= uint32_t(s.v[i] < t.v[i]) << i;
  return m & valid;
}
inline void sum_store(uint32_t* buf, const vsum& s) { std::memcpy(buf, s.v, sizeof(s.v)); }

// ------------------------------------------------------------------ tuning
constexpr int kHammingQB[] = {1};
constexpr bool kHammingPrefetchL2 = false;
constexpr int kDenseTiles[][2] = {{4, 2}, {2, 2}, {1, 4}};
constexpr int kDenseStreamMaxQB = 2;
constexpr int kDenseStreamSums = 4, kDenseStreamSums1 = 4;
constexpr int kGemmRowVecs = 0, kGemmQueries = 0, kGemmMinQ = 0;
constexpr int kLrsMR = 4, kLrsNV = 16;
constexpr bool kLrsPrefetchB = false;

}  // namespace
}  // namespace simd
}  // namespace nestvec
