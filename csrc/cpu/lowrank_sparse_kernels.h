// Building blocks of lowrank_sparse_impl.h: dtype conversions, the register-tile
// micro-kernel and the packers, written with the ISA primitives of the including
// translation unit (isa/<isa>.h). A fragment, not a standalone header:
// lowrank_sparse_impl.h includes it inside its anonymous namespace, after the system
// headers it needs.
inline const void* at(const void* base, int64_t i, DType dt) {
  return static_cast<const char*>(base) + i * dtype_size(dt);
}

// n values of dtype dt -> float32.
inline void load_f32(float* dst, const void* src, int64_t n, DType dt) {
  with_dtype(dt, [&](auto t) {
    constexpr DType DT = decltype(t)::value;
    if constexpr (DT == DType::F32) {
      std::memcpy(dst, src, size_t(n) * 4);
    } else {
      int64_t i = 0;
      for (; i + kF <= n; i += kF) vstoreu(dst + i, vloadx<DT>(src, i));
      if (i < n) vstoreu_n(dst + i, vloadx_n<DT>(src, i, n - i), n - i);
    }
  });
}

// n float32 values -> dtype dt (round to nearest even).
inline void store_from_f32(void* dst, const float* src, int64_t n, DType dt) {
  with_dtype(dt, [&](auto t) {
    constexpr DType DT = decltype(t)::value;
    if constexpr (DT == DType::F32) {
      std::memcpy(dst, src, size_t(n) * 4);
    } else {
      uint16_t* d = static_cast<uint16_t*>(dst);
      int64_t i = 0;
      for (; i + kF <= n; i += kF) vstorex<DT>(d, i, vloadu(src + i));
      for (; i < n; ++i) d[i] = DT == DType::F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
    }
  });
}

// ------------------------------------------------------------------ micro-kernel
// c[MR][NR] (row stride ldc) (+)= a-panel [kc][MR] · b-panel [kc][NR], NR = kLrsNV
// vectors: each a value is broadcast against the NR-wide b row. ROWS: the A operand is
// MR row-major rows instead, a[i * lda + k] (the skinny path's weights).
constexpr int MR = kLrsMR, NV = kLrsNV, NR = NV * kF;
// H: only the first half of the columns (a last panel with <= NR/2 valid columns).
template <bool H = false, bool ROWS = false>
inline void kernel(int64_t kc, const float* __restrict a, const float* __restrict b,
                   float* __restrict c, int64_t ldc, bool acc, int64_t lda = 0) {
  constexpr int NVH = H ? (NV + 1) / 2 : NV;  // vectors of columns computed
  vf cv[MR][NV];
  if (acc) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) cv[i][v] = v < NVH ? vloadu(c + i * ldc + v * kF) : vzero();
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) cv[i][v] = vzero();
  }
  for (int64_t k = 0; k < kc; ++k) {
    vf bv[NV];
    for (int v = 0; v < NVH; ++v) bv[v] = vloadu(b + v * kF);
    if (kLrsPrefetchB) __builtin_prefetch(b + 8 * NR, 0, 3);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vf av = vbroadcast(a + (ROWS ? i * lda : i));
      for (int v = 0; v < NVH; ++v) cv[i][v] = vfma(av, bv[v], cv[i][v]);
    }
    a += ROWS ? 1 : MR;
    b += NR;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NVH; ++v) vstoreu(c + i * ldc + v * kF, cv[i][v]);
}

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

// Both packers below go through the ISA's transpose4_rows where it has one (four rows
// into k-major order through 4x4 transposes: one 16-byte store per 4 values instead of
// four strided scalar stores).

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
#if defined(NV_SIMD_TRANSPOSE4)
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
#if defined(NV_SIMD_TRANSPOSE4)
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
  vf s0 = vzero(), s1 = s0, s2 = s0, s3 = s0;
  for (; i + 4 * kF <= n; i += 4 * kF) {
    s0 = vfma(vloadu(a + i), vloadu(b + i), s0);
    s1 = vfma(vloadu(a + i + kF), vloadu(b + i + kF), s1);
    s2 = vfma(vloadu(a + i + 2 * kF), vloadu(b + i + 2 * kF), s2);
    s3 = vfma(vloadu(a + i + 3 * kF), vloadu(b + i + 3 * kF), s3);
  }
  for (; i + kF <= n; i += kF) s0 = vfma(vloadu(a + i), vloadu(b + i), s0);
  float acc = vhsum(vadd(vadd(s0, s1), vadd(s2, s3)));
  for (; i < n; ++i) acc += a[i] * b[i];
  return acc;
}
