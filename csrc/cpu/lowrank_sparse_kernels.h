// Building blocks of lowrank_sparse_impl.h: dtype conversions, the register-tile
// micro-kernels (one per ISA, chosen by the including TU's target macros), buffers and
// the packers. A fragment, not a standalone header: lowrank_sparse_impl.h includes it
// inside its per-ISA anonymous namespace, after the system headers it needs.
inline size_t esize(DType dt) { return dt == DType::F32 ? 4 : 2; }
inline const void* at(const void* base, int64_t i, DType dt) {
  return static_cast<const char*>(base) + i * int64_t(esize(dt));
}

// n values of dtype dt -> float32.
inline void load_f32(float* dst, const void* src, int64_t n, DType dt) {
  int64_t i = 0;
  if (dt == DType::F32) {
    std::memcpy(dst, src, size_t(n) * 4);
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m512 v = dt == DType::F16
                         ? _mm512_cvtph_ps(h)
                         : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    _mm512_storeu_ps(dst + i, v);
  }
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    const __m256 v = dt == DType::F16
                         ? _mm256_cvtph_ps(h)
                         : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    _mm256_storeu_ps(dst + i, v);
  }
#endif
  if (dt == DType::F16)
    for (; i < n; ++i) dst[i] = f16_to_f32(s[i]);
  else
    for (; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
}

// n float32 values -> dtype dt (round to nearest even).
inline void store_from_f32(void* dst, const float* src, int64_t n, DType dt) {
  int64_t i = 0;
  if (dt == DType::F32) {
    std::memcpy(dst, src, size_t(n) * 4);
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(src + i);
    __m256i h;
    if (dt == DType::F16)
      h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else
      h = (__m256i)_mm512_cvtneps_pbh(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + i), h);
  }
#elif defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(src + i);
    __m128i h;
    if (dt == DType::F16) {
      h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
      const __m256i u = _mm256_castps_si256(v);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
      __m256i rnd = _mm256_srli_epi32(
          _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
      // NaN stays a (quiet) NaN: keep the truncated pattern with the quiet bit set.
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
      rnd = _mm256_blendv_epi8(rnd, qnan, nan);
      const __m256i p = _mm256_packus_epi32(rnd, rnd);  // per 128-bit lane
      h = _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
  }
#endif
  if (dt == DType::F16)
    for (; i < n; ++i) d[i] = f32_to_f16(src[i]);
  else
    for (; i < n; ++i) d[i] = f32_to_bf16(src[i]);
}

// ------------------------------------------------------------------ micro-kernels
// c[MR][NR] (row stride ldc) (+)= a-panel [kc][MR] · b-panel [kc][NR]. ROWS: the A
// operand is MR row-major rows instead, a[i * lda + k] (the skinny path's weights).
#if defined(__AVX512F__)
constexpr int MR = 12, NR = 32;
// H: only the first NR/2 columns (a last panel with <= NR/2 valid columns).
template <bool H = false, bool ROWS = false>
inline void kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                   float* __restrict c, int64_t ldc, bool acc, int64_t lda = 0) {
  __m512 c0[MR], c1[MR];
  if (acc) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      c0[i] = _mm512_loadu_ps(c + i * ldc);
      c1[i] = H ? _mm512_setzero_ps() : _mm512_loadu_ps(c + i * ldc + 16);
    }
  } else {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = H ? b0 : _mm512_loadu_ps(b + 16);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * NR), _MM_HINT_T0);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 av = _mm512_set1_ps(a[ROWS ? i * lda : i]);
      c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
      if (!H) c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
    }
    a += ROWS ? 1 : MR;
    b += NR;
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(c + i * ldc, c0[i]);
    if (!H) _mm512_storeu_ps(c + i * ldc + 16, c1[i]);
  }
}
#elif defined(__AVX2__)
constexpr int MR = 6, NR = 16;
template <bool H = false, bool ROWS = false>  // H: half panel is not specialised here
inline void kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                   float* __restrict c, int64_t ldc, bool acc, int64_t lda = 0) {
  __m256 c0[MR], c1[MR];
  if (acc) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      c0[i] = _mm256_loadu_ps(c + i * ldc);
      c1[i] = _mm256_loadu_ps(c + i * ldc + 8);
    }
  } else {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 av = _mm256_broadcast_ss(a + (ROWS ? i * lda : i));
      c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
    }
    a += ROWS ? 1 : MR;
    b += NR;
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(c + i * ldc, c0[i]);
    _mm256_storeu_ps(c + i * ldc + 8, c1[i]);
  }
}
#else
constexpr int MR = 4, NR = 16;
template <bool H = false, bool ROWS = false>
inline void kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                   float* __restrict c, int64_t ldc, bool acc, int64_t lda = 0) {
  float t[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) t[i][j] = acc ? c[i * ldc + j] : 0.0f;
  for (int64_t k = 0; k < kc; ++k) {
    for (int i = 0; i < MR; ++i) {
      const float av = a[ROWS ? i * lda : i];
      for (int j = 0; j < NR; ++j) t[i][j] += av * b[j];
    }
    a += ROWS ? 1 : MR;
    b += NR;
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = t[i][j];
}
#endif

// ------------------------------------------------------------------ buffers and packing
#ifndef NV_LRS_KC
#define NV_LRS_KC 256
#endif
#ifndef NV_LRS_MC_PANELS
#define NV_LRS_MC_PANELS 16
#endif
constexpr int64_t KC = NV_LRS_KC;               // depth of one x slice (GEMM 1) / GEMM 2 step
constexpr int64_t MC = MR * NV_LRS_MC_PANELS;   // rows of x per block: x slice + t stay in L2
#ifndef NV_LRS_KC2
#define NV_LRS_KC2 256
#endif
constexpr int64_t KC2 = NV_LRS_KC2;  // GEMM 2 depth step: the B sub-panel stays in L1

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Buf = std::unique_ptr<float, FreeDeleter>;
Buf alloc_f(int64_t n) {
  const size_t bytes = (size_t(std::max<int64_t>(n, 16)) * 4 + 63) / 64 * 64;
  return Buf(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// Large packed buffers on 2 MiB pages where the kernel allows it (THP "madvise" mode):
// 20 MiB of weight panels on 4 KiB pages cost TLB misses in every block.
Buf alloc_f_huge(int64_t n) {
  const size_t huge = size_t(1) << 21;
  const size_t bytes = (size_t(std::max<int64_t>(n, 16)) * 4 + huge - 1) / huge * huge;
  if (bytes < 2 * huge) return alloc_f(n);
  float* p = static_cast<float*>(std::aligned_alloc(huge, bytes));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return Buf(p);
}

#if defined(__AVX2__) || defined(__AVX512F__)
// Four rows of n values into a k-major layout of row width ld: dst[k * ld + i] =
// r[i][k], through 4x4 transposes (one 16-byte store per 4 values instead of four
// strided scalar stores). Both packers below go through it.
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
#endif

// Weight rows j (row(j) -> K values of dtype dt) into panels p of NR rows, each stored
// k-major [K][NR]; rows j >= rows are zero. Rows go four at a time through
// transpose4_rows: value-by-value strided stores made packing ~4% of a 4096-sized
// call. `tmp` holds 4 * K floats (conversions).
template <class RowFn>
void pack_panels(RowFn row, int64_t rows, int64_t K, DType dt, float* dst, int64_t p0,
                 int64_t p1, float* tmp) {
  auto src = [&](int64_t j, int slot) -> const float* {
    if (dt == DType::F32) return static_cast<const float*>(row(j));
    load_f32(tmp + slot * K, row(j), K, dt);
    return tmp + slot * K;
  };
  for (int64_t p = p0; p < p1; ++p) {
    float* P = dst + p * K * NR;
    int64_t jj = 0;
#if defined(__AVX2__) || defined(__AVX512F__)
    for (; jj + 4 <= NR && p * NR + jj + 4 <= rows; jj += 4) {
      const int64_t j = p * NR + jj;
      transpose4_rows(src(j, 0), src(j + 1, 1), src(j + 2, 2), src(j + 3, 3), K, P + jj, NR);
    }
#endif
    for (; jj < NR; ++jj) {
      const int64_t j = p * NR + jj;
      if (j < rows) {
        const float* sf = src(j, 0);
        for (int64_t k = 0; k < K; ++k) P[k * NR + jj] = sf[k];
      } else {
        for (int64_t k = 0; k < K; ++k) P[k * NR + jj] = 0.0f;
      }
    }
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Packed weights of the calling thread, kept between calls: a fresh 10-20 MiB buffer
// per call costs page faults worth several percent of a 4096² product.
struct CachedBuf {
  Buf buf;
  int64_t cap = 0;
  float* get(int64_t n) {
    if (n > cap || n < cap / 4) {  // grow, or shrink after a much larger call
      buf = alloc_f_huge(n);
      cap = n;
    }
    return buf.get();
  }
};
struct PackCache {
  CachedBuf weights;
  std::vector<CachedBuf> per_thread;  // worker t uses per_thread[t] only
};

// One MR-row panel, k-major: dst[k * MR + ii] = rows[ii][k] for ii < nvalid, else 0.
inline void pack_panel(const float* const* rows, int64_t nvalid, int64_t kc, float* dst) {
#if defined(__AVX2__) || defined(__AVX512F__)
  if (nvalid == MR && MR % 4 == 0) {
    for (int g = 0; g < MR; g += 4)
      transpose4_rows(rows[g], rows[g + 1], rows[g + 2], rows[g + 3], kc, dst + g, MR);
    return;
  }
#endif
  for (int64_t ii = 0; ii < MR; ++ii) {
    float* d = dst + ii;
    if (ii < nvalid) {
      const float* r = rows[ii];
      for (int64_t k = 0; k < kc; ++k) d[k * MR] = r[k];
    } else {
      for (int64_t k = 0; k < kc; ++k) d[k * MR] = 0.0f;
    }
  }
}

// Σ a[i]·b[i] in float32 (four independent partial sums).
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (; i + 64 <= n; i += 64) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
    s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
  }
  for (; i + 16 <= n; i += 16)
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
  float acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#elif defined(__AVX2__)
  __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float acc = _mm_cvtss_f32(h);
#else
  float p0 = 0.f, p1 = 0.f, p2 = 0.f, p3 = 0.f;
  for (; i + 4 <= n; i += 4) {
    p0 += a[i] * b[i];
    p1 += a[i + 1] * b[i + 1];
    p2 += a[i + 2] * b[i + 2];
    p3 += a[i + 3] * b[i + 3];
  }
  float acc = (p0 + p1) + (p2 + p3);
#endif
  for (; i < n; ++i) acc += a[i] * b[i];
  return acc;
}
