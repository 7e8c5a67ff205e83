// AVX2 + FMA + F16C primitives: 8 float32 lanes, 32-byte code chunks, 16 vector
// registers. Included by the *_avx2.cpp translation units only, which CMakeLists.txt
// builds with -mavx2 -mfma -mf16c -mpopcnt -mbmi -mbmi2, before an op's
// implementation header (see isa/README.md for the contract every ISA header meets).
#pragma once
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "isa/avx2.h needs -mavx2 -mfma -mf16c"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "x86_common.h"
#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"
#include "nestvec/half.h"

namespace nestvec {
namespace simd {
namespace {

constexpr Isa kIsa = Isa::Avx2;

// ------------------------------------------------------------------ float32 vectors
using vf = __m256;
constexpr int kF = 8;

inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset1(float x) { return _mm256_set1_ps(x); }
inline vf vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline vf vload(const float* p) { return _mm256_load_ps(p); }  // 32-byte aligned
inline vf vloadu(const float* p) { return _mm256_loadu_ps(p); }
inline void vstoreu(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline __m256i lane_mask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// The first n lanes (0 <= n <= kF); the others read as zero / are left alone.
inline vf vloadu_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, lane_mask(n)); }
inline void vstoreu_n(float* p, vf v, int64_t n) { _mm256_maskstore_ps(p, lane_mask(n), v); }
inline void vstream(float* p, vf v) { _mm256_stream_ps(p, v); }
inline void stream_fence() { _mm_sfence(); }
constexpr bool kStreamStores = false;

inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
inline vf vfms(vf a, vf b, vf c) { return _mm256_fmsub_ps(a, b, c); }  // a * b - c
// Bit l set where a[l] > b[l] (ordered: false for NaN).
inline uint32_t vgt_mask(vf a, vf b) { return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ))); }

inline float vhsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
// out[i] = horizontal sum of v[i], i < 8.
inline void vhsum8(const vf* v, float* out) { _mm256_storeu_ps(out, x86::hadd_tree8(v)); }
// Keeps v in a register: folded into each FMA it would be loaded once per use.
inline void vkeep(vf& v) { __asm__("" : "+x"(v)); }
// Transposes the kF x kF block v[0..kF) in registers (v[i][l] <-> v[l][i]).
inline void vtranspose(vf* v) {
  const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
  const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  v[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  v[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  v[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  v[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  v[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  v[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  v[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  v[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// kF values of a row of dtype DT from element c, widened to float32.
template <DType DT>
inline vf vloadx(const void* row, int64_t c) {
  if constexpr (DT == DType::F32) return _mm256_loadu_ps(static_cast<const float*>(row) + c);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + c));
  if constexpr (DT == DType::F16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// The first n of those values (0 <= n <= kF), zero in the other lanes; never reads past n.
template <DType DT>
inline vf vloadx_n(const void* row, int64_t c, int64_t n) {
  if constexpr (DT == DType::F32) return vloadu_n(static_cast<const float*>(row) + c, n);
  alignas(16) uint16_t buf[8] = {};
  std::memcpy(buf, static_cast<const uint16_t*>(row) + c, size_t(n) * 2);
  return vloadx<DT>(buf, 0);
}
// kF floats stored as DT at element c of row (round to nearest even; NaN stays NaN).
template <DType DT>
inline void vstorex(void* row, int64_t c, vf v) {
  if constexpr (DT == DType::F32) {
    _mm256_storeu_ps(static_cast<float*>(row) + c, v);
  } else {
    __m128i h;
    if constexpr (DT == DType::F16) {
      h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m256i u = _mm256_castps_si256(v);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i rnd = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
      // NaN stays a (quiet) NaN: keep the truncated pattern with the quiet bit set.
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
      rnd = _mm256_blendv_epi8(rnd, qnan, nan);
      const __m256i p = _mm256_packus_epi32(rnd, rnd);  // per 128-bit lane
      h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(row) + c), h);
  }
}

// Rows selected by a key threshold, appended in lane order: rows[i] = base + lane,
// keys[i] = key[lane] for each set bit of m; returns the count (hits are rare).
inline int64_t compress_hits(uint32_t m, vf key, uint32_t base, uint32_t* rows, float* keys) {
  alignas(32) float kb[8];
  _mm256_store_ps(kb, key);
  int64_t n = 0;
  for (; m; m &= m - 1, ++n) {
    const int l = __builtin_ctz(m);
    rows[n] = base + uint32_t(l);
    keys[n] = kb[l];
  }
  return n;
}
// Bit l set where allow[l] != 0, l < n (n <= kF).
inline uint32_t allow_mask(const uint8_t* allow, int64_t n) {
  uint64_t w = 0;
  std::memcpy(&w, allow, size_t(n));
  const __m128i z = _mm_cmpeq_epi8(_mm_cvtsi64_si128(int64_t(w)), _mm_setzero_si128());
  return ~uint32_t(_mm_movemask_epi8(z)) & ((1u << n) - 1);
}

// ------------------------------------------------------------------ int16 dot products
// vpmaddwd multiplies 16 int16 pairs into 8 int32 lanes, about 1.5x the multiply rate
// of float32 FMAs on Zen 3: the first pass of the dense two-pass route.
#define NV_SIMD_I16_DOT 1
using vi = __m256i;  // kF int32 lanes, each a pair of int16 values
inline vi vi_zero() { return _mm256_setzero_si256(); }
inline vi vi_load(const int32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
inline void vi_store(int32_t* p, vi v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
inline vi vi_bcast(const int32_t* p) { return _mm256_set1_epi32(*p); }
// acc + (a.lo * b.lo + a.hi * b.hi) per lane, int16 halves
inline vi vi_dot2(vi acc, vi a, vi b) {
  acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
  __asm__("" : "+x"(acc));  // updated in place: GCC otherwise adds into a fresh register and moves it back
  return acc;
}
inline vf vi_to_f(vi v) { return _mm256_cvtepi32_ps(v); }
// lo, hi (kF floats each, within int16) rounded to nearest even: 2 kF int16 in order.
inline vi vi_round16(vf lo, vf hi) {
  return _mm256_permute4x64_epi64(_mm256_packs_epi32(_mm256_cvtps_epi32(lo), _mm256_cvtps_epi32(hi)), 0xD8);
}
inline vf vi_bits_f(vi v) { return _mm256_castsi256_ps(v); }
inline vi vf_bits_i(vf v) { return _mm256_castps_si256(v); }
inline vf vabs(vf v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }
inline float vhmax(vf v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// ------------------------------------------------------------------ binary codes
// Popcounts by nibble lookup (vpshufb), 32 bytes a step: the byte counts of up to
// kCntMax chunks add up in bytes (<= 8 each), then vpsadbw sums them into qwords.
using vb = __m256i;
constexpr int kB = 32;
inline vb bload(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
// The first n bytes of a chunk (0 < n < kB), zero beyond: masked qword / dword loads
// when n allows, else a copy.
struct btail {
  __m256i mask;
  int kind;  // 0: qwords, 1: dwords, 2: copy
  int n;
};
inline btail btail_make(int64_t n) {
  if (n % 8 == 0) return {_mm256_cmpgt_epi64(_mm256_set1_epi64x(n / 8), _mm256_setr_epi64x(0, 1, 2, 3)), 0, int(n)};
  if (n % 4 == 0) return {lane_mask(n / 4), 1, int(n)};
  return {_mm256_setzero_si256(), 2, int(n)};
}
inline vb bload_tail(const uint8_t* p, const btail& t) {
  if (t.kind == 0) return _mm256_maskload_epi64(reinterpret_cast<const long long*>(p), t.mask);
  if (t.kind == 1) return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), t.mask);
  alignas(32) uint8_t buf[32] = {};
  std::memcpy(buf, p, size_t(t.n));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
}

// The popcounts of 0..15 in each 128-bit lane (a vpshufb table).
inline __m256i nib_pop() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
}
using vcnt = __m256i;      // byte counts
constexpr int kCntMax = 31;  // 31 x 8 < 256
inline vcnt cnt_popxor(vb a, vb b) {
  const __m256i lut = nib_pop();
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i v = _mm256_xor_si256(a, b);
  const __m256i lo = _mm256_and_si256(v, low);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}
inline vcnt cnt_add(vcnt a, vcnt b) { return _mm256_add_epi8(a, b); }
// The low / high nibble of each byte, in bytes of their own.
inline vb bnib_lo(vb x) { return _mm256_and_si256(x, _mm256_set1_epi8(0x0f)); }
inline vb bnib_hi(vb x) { return _mm256_and_si256(_mm256_srli_epi16(x, 4), _mm256_set1_epi8(0x0f)); }
inline vb bstore(uint8_t* p, vb x) {
  _mm256_store_si256(reinterpret_cast<__m256i*>(p), x);
  return x;
}
inline vb bload_a(const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
// Fast scan ("vertical" layout, as FAISS's 4-bit PQ fast scan does for its codes): 16
// rows transposed so that byte p of a 128-bit lane is row p, lane 0 holding byte j and
// lane 1 byte 16 + j of a chunk, nibble-split. A query becomes per-position tables
// T[x] = popcount(x ^ its nibble there), and one vpshufb counts a nibble position of 16
// rows at two byte positions: no xor, no per-row vpsadbw, no reduction tree (~4 vector
// ops per pair and chunk, against ~7.5 for the nibble-split rows it replaced).
#define NV_SIMD_LUT_SCAN 1
constexpr int kScanRows = 16;                // rows of a scan group
constexpr int64_t kScanChunkBytes = 16 * 64;  // one chunk of a group: 16 slots x (lo, hi)
// Chunk `off` of rows[0..15] -> out (kScanChunkBytes, 32-byte aligned): slot j holds
// the low nibbles at out + 64 j, the high nibbles at + 32. Four rounds of unpacks
// transpose each lane; they leave row bitrev(p) in byte p, hence the load order.
inline void scan_split16(const uint8_t* const* rows, int64_t off, uint8_t* out) {
  constexpr int kRev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  __m256i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = bload(rows[kRev[i]] + off);
  for (int i = 0; i < 8; ++i) t[2 * i] = _mm256_unpacklo_epi8(r[i], r[i + 8]), t[2 * i + 1] = _mm256_unpackhi_epi8(r[i], r[i + 8]);
  for (int i = 0; i < 8; ++i) r[2 * i] = _mm256_unpacklo_epi16(t[i], t[i + 8]), r[2 * i + 1] = _mm256_unpackhi_epi16(t[i], t[i + 8]);
  for (int i = 0; i < 8; ++i) t[2 * i] = _mm256_unpacklo_epi32(r[i], r[i + 8]), t[2 * i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 8]);
  for (int i = 0; i < 8; ++i) r[2 * i] = _mm256_unpacklo_epi64(t[i], t[i + 8]), r[2 * i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 8]);
  for (int j = 0; j < 16; ++j) {
    bstore(out + 64 * j, bnib_lo(r[j]));
    bstore(out + 64 * j + 32, bnib_hi(r[j]));
  }
}
// The tables of one query chunk q (32 bytes) -> out (kScanChunkBytes, the layout of
// scan_split16: slot j's low-nibble table at out + 64 j, lane 0 for byte j, lane 1 for
// byte 16 + j).
inline void scan_tables(const uint8_t* q, uint8_t* out) {
  const __m256i pop = nib_pop();
  const __m256i iota = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5,
                                        6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m256i x = bload(q), lo = bnib_lo(x), hi = bnib_hi(x);
  for (int j = 0; j < 16; ++j) {
    const __m256i sel = _mm256_set1_epi8(char(j));
    bstore(out + 64 * j, _mm256_shuffle_epi8(pop, _mm256_xor_si256(iota, _mm256_shuffle_epi8(lo, sel))));
    bstore(out + 64 * j + 32, _mm256_shuffle_epi8(pop, _mm256_xor_si256(iota, _mm256_shuffle_epi8(hi, sel))));
  }
}
inline vb scan_count0() { return _mm256_setzero_si256(); }
// acc + the counts of one slot (tables tl, th; split rows at p), per byte.
inline vb scan_add(vb acc, vb tl, vb th, const uint8_t* p) {
  acc = _mm256_add_epi8(acc, _mm256_shuffle_epi8(tl, bload_a(p)));
  return _mm256_add_epi8(acc, _mm256_shuffle_epi8(th, bload_a(p + 32)));
}
// 16 rows' distances as words, row p in word p.
using vscan = __m256i;
// The chunk's byte counts (<= 128 in each lane) -> words, the two lanes added.
inline vscan scan_widen(vb a) {
  return _mm256_add_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(a)), _mm256_cvtepu8_epi16(_mm256_extracti128_si256(a, 1)));
}
inline vscan scan_sum(vscan a, vscan b) { return _mm256_add_epi16(a, b); }
inline vscan scan_set1(uint32_t t) { return _mm256_set1_epi16(int16_t(t < 0x7fff ? t : 0x7fff)); }
// Bit p set where row p's distance < t.
inline uint32_t scan_lt(vscan d, vscan t) {
  const __m256i c = _mm256_cmpgt_epi16(t, d);
  return uint32_t(_mm_movemask_epi8(_mm_packs_epi16(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1))));
}
inline void scan_store(uint16_t* buf, vscan d) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(buf), d); }
using vacc = __m256i;  // qword sums
inline vacc acc_zero() { return _mm256_setzero_si256(); }
inline vacc acc_of(vcnt c) { return _mm256_sad_epu8(c, _mm256_setzero_si256()); }
inline vacc acc_popxor(vacc acc, vb a, vb b) { return _mm256_add_epi64(acc, acc_of(cnt_popxor(a, b))); }

// The totals of 8 rows' accumulators in one vector of 8 dwords, row r in dword r.
// reduce8_small, for qword sums below 2^16 (the fixed widths of 1-4 chunks): two
// saturating packs take the rows' qwords down to words, vpmaddwd adds neighbouring
// words, and the 128-bit halves are added (11 ops for 8 rows). reduce8, any sums below
// 2^32: rows r and r+4 share a qword (low / high dword), an unpack tree, and a vpermd
// back into row order (18 ops).
using vsum = __m256i;
constexpr int kSumLanes = 8;
constexpr int kSumLaneRow[8] = {0, 1, 2, 3, 4, 5, 6, 7};
inline vsum reduce8_small(const vacc* a) {
  const __m256i ones = _mm256_set1_epi16(1);
  // dwords [r q0, r q1, r+1 q0, r+1 q1 | the same of q2, q3]
  const __m256i p01 = _mm256_packus_epi32(a[0], a[1]), p23 = _mm256_packus_epi32(a[2], a[3]);
  const __m256i p45 = _mm256_packus_epi32(a[4], a[5]), p67 = _mm256_packus_epi32(a[6], a[7]);
  // words -> dwords [r0, r1, r2, r3 | r0, r1, r2, r3] (halves of the rows' sums)
  const __m256i m0 = _mm256_madd_epi16(_mm256_packus_epi32(p01, p23), ones);
  const __m256i m1 = _mm256_madd_epi16(_mm256_packus_epi32(p45, p67), ones);
  return _mm256_add_epi32(_mm256_permute2x128_si256(m0, m1, 0x20), _mm256_permute2x128_si256(m0, m1, 0x31));
}
inline vsum reduce8(const vacc* a) {
  __m256i p[4];
  for (int i = 0; i < 4; ++i) p[i] = _mm256_add_epi64(a[i], _mm256_slli_epi64(a[i + 4], 32));
  const __m256i b0 = _mm256_add_epi64(_mm256_unpacklo_epi64(p[0], p[1]), _mm256_unpackhi_epi64(p[0], p[1]));
  const __m256i b1 = _mm256_add_epi64(_mm256_unpacklo_epi64(p[2], p[3]), _mm256_unpackhi_epi64(p[2], p[3]));
  const __m256i c = _mm256_add_epi64(_mm256_permute2x128_si256(b0, b1, 0x20), _mm256_permute2x128_si256(b0, b1, 0x31));
  return _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));  // dwords held rows 0 4 1 5 2 6 3 7
}
inline vsum sum_set1(uint32_t t) { return _mm256_set1_epi32(int32_t(t)); }
inline uint32_t sum_valid(int valid_rows) {
  uint32_t m = 0;
  for (int p = 0; p < kSumLanes; ++p)
    if (kSumLaneRow[p] < valid_rows) m |= 1u << p;
  return m;
}
// Lanes (within `valid`) where s < t (signed compare: distances and thresholds stay
// far below 2^31).
inline uint32_t sum_lt(vsum s, vsum t, uint32_t valid) {
  return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, s)))) & valid;
}
inline void sum_store(uint32_t* buf, vsum s) { _mm256_store_si256(reinterpret_cast<__m256i*>(buf), s); }

// ------------------------------------------------------------------ tuning
constexpr int kHammingQB[] = {3, 2, 1};
// Hamming row kernel: packed rows prefetched into L2, 16 KiB ahead (README, Hamming on
// AVX2: the prefetch level).
constexpr bool kHammingPrefetchL2 = true;
// Fast scan from this many queries of a block (below, the transpose costs more than it
// saves; README, Hamming on AVX2).
constexpr int kScanMinQ = 4;
// Dense float32 scan (see isa/avx512.h): 16 registers, so smaller register tiles, and
// the stream kernel only up to 2 queries (beyond, its per-row reductions cost more).
constexpr int kDenseTiles[][2] = {{4, 2}, {2, 2}, {1, 4}};
constexpr int kDenseStreamMaxQB = 2;
constexpr int kDenseStreamSums = 2, kDenseStreamSums1 = 4;
// Dense large batches: the packed GEMM route from kGemmMinQ queries, a micro-tile of
// kGemmRowVecs vectors of rows x kGemmQueries queries (2 x 6: 12 accumulators).
constexpr int kGemmRowVecs = 2, kGemmQueries = 6, kGemmMinQ = 32;
// int16 first pass: micro-tile of kI16RowVecs vectors of rows x kI16Queries queries.
constexpr int kI16RowVecs = 4, kI16Queries = 2;
// LOST micro-kernel: MR rows x kLrsNV vectors of columns.
constexpr int kLrsMR = 6, kLrsNV = 2;
constexpr bool kLrsPrefetchB = false;

}  // namespace
}  // namespace simd
}  // namespace nestvec
