// AVX-512 primitives (F, BW, VL, DQ, VPOPCNTDQ, BF16, VNNI): 16 float32 lanes,
// 64-byte code chunks, 32 vector registers. Included by the *_avx512.cpp translation
// units only, which CMakeLists.txt builds with those -m flags, before an op's
// implementation header (see isa/README.md for the contract every ISA header meets).
#pragma once
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || \
    !defined(__AVX512VPOPCNTDQ__) || !defined(__AVX512BF16__)
#error "isa/avx512.h needs -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vpopcntdq -mavx512bf16"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "x86_common.h"
#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"
#include "nestvec/half.h"

// GCC 12 reports its own intrinsics' _mm512_undefined_*() placeholders as "may be used
// uninitialized" wherever they are inlined (GCC bug 105593); these TUs are checked for
// real uses of uninitialized values by the same code built for the other ISAs.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nestvec {
namespace simd {
namespace {

constexpr Isa kIsa = Isa::Avx512;

// ------------------------------------------------------------------ float32 vectors
using vf = __m512;
constexpr int kF = 16;

inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset1(float x) { return _mm512_set1_ps(x); }
inline vf vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline vf vload(const float* p) { return _mm512_load_ps(p); }  // 64-byte aligned
inline vf vloadu(const float* p) { return _mm512_loadu_ps(p); }
inline void vstoreu(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }
// The first n lanes (0 <= n <= kF); the others read as zero / are left alone.
inline vf vloadu_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(lanes(n), p); }
inline void vstoreu_n(float* p, vf v, int64_t n) { _mm512_mask_storeu_ps(p, lanes(n), v); }
// Non-temporal store of a 64-byte aligned vector (stream_fence() before other threads read).
inline void vstream(float* p, vf v) { _mm512_stream_ps(p, v); }
inline void stream_fence() { _mm_sfence(); }
constexpr bool kStreamStores = true;

inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
inline vf vfms(vf a, vf b, vf c) { return _mm512_fmsub_ps(a, b, c); }  // a * b - c
// Bit l set where a[l] > b[l] (ordered: false for NaN).
inline uint32_t vgt_mask(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }

inline float vhsum(vf v) { return _mm512_reduce_add_ps(v); }
// out[i] = horizontal sum of v[i], i < 8: a hadd tree on the 256-bit halves.
inline void vhsum8(const vf* v, float* out) {
  __m256 h[8];
  for (int i = 0; i < 8; ++i)
    h[i] = _mm256_add_ps(_mm512_castps512_ps256(v[i]),
                         _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[i]), 1)));
  _mm256_storeu_ps(out, x86::hadd_tree8(h));
}
// Keeps v in a register: folded into each FMA it would be loaded once per use.
inline void vkeep(vf& v) { __asm__("" : "+v"(v)); }
// Transposes the kF x kF block v[0..kF) in registers (the dense GEMM route's panels):
// pairs, then quads within each 128-bit lane, then the lanes in two rounds of
// shuffle_f32x4.
inline void vtranspose(vf* v) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  // u[4i + j], lane L: rows 4i..4i+3 of column 4L + j
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  for (int j = 0; j < 4; ++j) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[j], u[4 + j], even), x1 = _mm512_shuffle_f32x4(u[j], u[4 + j], odd);
    const __m512 y0 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], even);
    const __m512 y1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], odd);
    v[j] = _mm512_shuffle_f32x4(x0, y0, even);
    v[8 + j] = _mm512_shuffle_f32x4(x0, y0, odd);
    v[4 + j] = _mm512_shuffle_f32x4(x1, y1, even);
    v[12 + j] = _mm512_shuffle_f32x4(x1, y1, odd);
  }
}

// kF values of a row of dtype DT from element c, widened to float32 (F16C vcvtph2ps
// for float16, a 16-bit shift for bfloat16).
template <DType DT>
inline vf vloadx(const void* row, int64_t c) {
  if constexpr (DT == DType::F32) return _mm512_loadu_ps(static_cast<const float*>(row) + c);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + c));
  if constexpr (DT == DType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// The first n of those values (0 <= n <= kF), zero in the other lanes; never reads past n.
template <DType DT>
inline vf vloadx_n(const void* row, int64_t c, int64_t n) {
  const __mmask16 m = lanes(n);
  if constexpr (DT == DType::F32) return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + c);
  const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + c);
  if constexpr (DT == DType::F16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// kF floats stored as DT at element c of row (round to nearest even; NaN stays NaN).
template <DType DT>
inline void vstorex(void* row, int64_t c, vf v) {
  if constexpr (DT == DType::F32) {
    _mm512_storeu_ps(static_cast<float*>(row) + c, v);
  } else {
    __m256i h;
    if constexpr (DT == DType::F16)
      h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else
      h = (__m256i)_mm512_cvtneps_pbh(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(row) + c), h);
  }
}

// Rows selected by a key threshold, appended in lane order: rows[i] = base + lane,
// keys[i] = key[lane] for each set bit of m; returns the count.
inline int64_t compress_hits(uint32_t m, vf key, uint32_t base, uint32_t* rows, float* keys) {
  const __m512i ids = _mm512_add_epi32(_mm512_set1_epi32(int32_t(base)),
                                       _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  _mm512_mask_compressstoreu_epi32(rows, __mmask16(m), ids);
  _mm512_mask_compressstoreu_ps(keys, __mmask16(m), key);
  return __builtin_popcount(m);
}
// Bit l set where allow[l] != 0, l < n (n <= kF).
inline uint32_t allow_mask(const uint8_t* allow, int64_t n) {
  const __m128i al = _mm_maskz_loadu_epi8(lanes(n), allow);
  return _mm_test_epi8_mask(al, al);
}

// ------------------------------------------------------------------ bfloat16 dot products
// AVX512-BF16: vdpbf16ps multiplies 32 bf16 pairs per instruction where vfmadd231ps
// does 16 (the dense two-pass route's first pass).
#define NV_SIMD_BF16_DOT 1
using vbh = __m512bh;
constexpr int kBH = 32;  // bf16 values per vector
inline vbh bh_load(const uint16_t* p) { return (__m512bh)_mm512_load_si512(p); }  // aligned
// lo, hi (16 floats each) rounded to bf16 (nearest even) into one vector, lo first.
inline void bh_store2(uint16_t* p, vf lo, vf hi) {
  _mm512_store_si512(p, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}
inline vf bh_dot(vf acc, vbh x, vbh q) { return _mm512_dpbf16_ps(acc, x, q); }
inline void bh_keep(vbh& v) { __asm__("" : "+v"(v)); }
inline vbh bh_loadu(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
// One bf16 pair (low half first in memory) in every 32-bit lane.
inline vbh bh_pair(uint32_t pair) { return (__m512bh)_mm512_set1_epi32(int32_t(pair)); }

// ------------------------------------------------------------------ int8 dot products
// AVX512-VNNI: vpdpbusd sums 4 unsigned x signed byte products into each of 16 int32
// lanes (64 multiplies per instruction; the ivf probe's int8 table).
#define NV_SIMD_U8S8_DOT 1
using vi32 = __m512i;
inline vi32 i32_zero() { return _mm512_setzero_si512(); }
inline vi32 i32_loadu(const void* p) { return _mm512_loadu_si512(p); }
inline vi32 i32_add(vi32 a, vi32 b) { return _mm512_add_epi32(a, b); }
// acc + sum over 4 bytes of (u8 of `quad`, broadcast) x (s8 of x) per lane
inline vi32 u8s8_dot(vi32 acc, uint32_t quad, vi32 x) {
  return _mm512_dpbusd_epi32(acc, _mm512_set1_epi32(int32_t(quad)), x);
}
inline vf i32_to_f(vi32 a) { return _mm512_cvtepi32_ps(a); }

// ------------------------------------------------------------------ binary codes
// vb: one chunk of kB code bytes. cnt_popxor: per-qword popcounts of a ^ b (VPOPCNTQ);
// counts and accumulators are the same qword lanes here.
using vb = __m512i;
constexpr int kB = 64;
inline vb bload(const uint8_t* p) { return _mm512_loadu_si512(p); }
using btail = __mmask64;  // the first n bytes of a chunk (0 < n < kB)
inline btail btail_make(int64_t n) { return ~0ULL >> (64 - n); }
inline vb bload_tail(const uint8_t* p, btail m) { return _mm512_maskz_loadu_epi8(m, p); }

using vcnt = __m512i;
constexpr int kCntMax = 1 << 24;  // chunk counts a vcnt can sum before acc_of
inline vcnt cnt_popxor(vb a, vb b) { return _mm512_popcnt_epi64(_mm512_xor_si512(a, b)); }
inline vcnt cnt_add(vcnt a, vcnt b) { return _mm512_add_epi64(a, b); }
using vacc = __m512i;
inline vacc acc_zero() { return _mm512_setzero_si512(); }
inline vacc acc_of(vcnt c) { return c; }
inline vacc acc_popxor(vacc acc, vb a, vb b) { return _mm512_add_epi64(acc, cnt_popxor(a, b)); }

// The totals of 8 rows' accumulators in one vector. Sums fit in 32 bits, so rows r
// and r+4 share a qword (low / high dword) before the transpose tree (half the
// shuffles of a plain 8-way tree). Dword p holds row kSumLaneRow[p] (-1: unused).
using vsum = __m512i;
constexpr int kSumLanes = 16;
constexpr int kSumLaneRow[16] = {0, 4, 1, 5, -1, -1, -1, -1, 2, 6, 3, 7, -1, -1, -1, -1};
inline vsum reduce8(const vacc* a) {
  __m512i p[4];
  for (int i = 0; i < 4; ++i) p[i] = _mm512_add_epi64(a[i], _mm512_slli_epi64(a[i + 4], 32));
  __m512i b0 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[0], p[1]), _mm512_unpackhi_epi64(p[0], p[1]));
  __m512i b1 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[2], p[3]), _mm512_unpackhi_epi64(p[2], p[3]));
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  __m512i c = _mm512_add_epi64(_mm512_shuffle_i64x2(b0, b1, even), _mm512_shuffle_i64x2(b0, b1, odd));
  return _mm512_add_epi64(c, _mm512_shuffle_i64x2(c, c, _MM_SHUFFLE(2, 3, 0, 1)));
}
inline vsum reduce8_small(const vacc* a) { return reduce8(a); }  // sums of fixed widths
inline vsum sum_set1(uint32_t t) { return _mm512_set1_epi32(int32_t(t)); }
// Lanes whose row is < valid_rows.
inline uint32_t sum_valid(int valid_rows) {
  uint32_t m = 0;
  for (int p = 0; p < kSumLanes; ++p)
    if (kSumLaneRow[p] >= 0 && kSumLaneRow[p] < valid_rows) m |= 1u << p;
  return m;
}
// Lanes (within `valid`) where s < t.
inline uint32_t sum_lt(vsum s, vsum t, uint32_t valid) {
  return _mm512_mask_cmplt_epu32_mask(__mmask16(valid), s, t);
}
inline void sum_store(uint32_t* buf, vsum s) { _mm512_store_si512(buf, s); }  // 64-byte aligned

// Half-chunk codes (nbytes == kB / 2, i.e. 256 bits): two rows per register, so no
// lane is wasted on padding (one 64-byte load when rows are contiguous). After the
// tree (reduce_pairs) the 8 qword lanes hold rows kPairLaneRow.
#define NV_SIMD_PAIR_ROWS 1
constexpr int kPairLaneRow[8] = {0, 2, 1, 3, 4, 6, 5, 7};
inline vb bload_pair(const uint8_t* a, const uint8_t* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}
inline vb bdup_half(const uint8_t* q) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
}
using vpsum = __m512i;
inline vpsum pair_set1(uint32_t t) { return _mm512_set1_epi64(int64_t(t)); }
// x[m] holds rows 2m, 2m+1 (one per half): their 8 totals, one per qword.
inline vpsum reduce_pairs(const vb* x, vb q) {
  constexpr int even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1);
  __m512i p[4];
  for (int m = 0; m < 4; ++m) p[m] = _mm512_popcnt_epi64(_mm512_xor_si512(x[m], q));
  const __m512i b0 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[0], p[1]), _mm512_unpackhi_epi64(p[0], p[1]));
  const __m512i b1 = _mm512_add_epi64(_mm512_unpacklo_epi64(p[2], p[3]), _mm512_unpackhi_epi64(p[2], p[3]));
  return _mm512_add_epi64(_mm512_shuffle_i64x2(b0, b1, even), _mm512_shuffle_i64x2(b0, b1, odd));
}
inline uint32_t pair_lt(vpsum s, vpsum t, uint32_t valid) {
  return _mm512_mask_cmplt_epu64_mask(__mmask8(valid), s, t);
}
inline void pair_store(uint64_t* buf, vpsum s) { _mm512_store_si512(buf, s); }

// ------------------------------------------------------------------ tuning
// Hamming: queries per register block, largest first (3 x 8 rows: 24 accumulators).
constexpr int kHammingQB[] = {3, 2, 1};
// Hamming row kernel: packed rows prefetched into L1 (into L2 measured no faster here).
constexpr bool kHammingPrefetchL2 = false;
// Dense float32 scan: (query block, rows per register tile), largest block first;
// contiguous rows stream one row at a time for blocks up to kDenseStreamMaxQB, with
// kDenseStreamSums partial sums per accumulator (kDenseStreamSums1 for one query).
constexpr int kDenseTiles[][2] = {{12, 2}, {8, 2}, {4, 4}, {2, 4}, {1, 4}};
constexpr int kDenseStreamMaxQB = 12;
constexpr int kDenseStreamSums = 2, kDenseStreamSums1 = 2;
// Dense large batches: the packed GEMM route from kGemmMinQ queries (float32 scans: the
// bf16 two-pass route's fallback, NESTVEC_DENSE_BF16=0), a micro-tile of kGemmRowVecs
// vectors of rows x kGemmQueries queries (2 x 12: 24 accumulators of 32 registers).
constexpr int kGemmRowVecs = 2, kGemmQueries = 12, kGemmMinQ = 32;
// LOST micro-kernel: MR rows x NR = kLrsNV vectors of columns; prefetch the b panel.
constexpr int kLrsMR = 12, kLrsNV = 2;
constexpr bool kLrsPrefetchB = true;

}  // namespace
}  // namespace simd
}  // namespace nestvec
