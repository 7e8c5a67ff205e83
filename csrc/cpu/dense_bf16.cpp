// Two-pass exact dense top-k for compute-bound batches, on CPUs with a narrow format
// they multiply faster than float32 (ApproxPass in dense.h): bfloat16 on AVX512-BF16,
// int16 with a scale per row on AVX2.
//
// Pass 1 scores every row approximately (dense_impl.h: about twice the multiply rate
// of float32 FMAs with bf16, ~1.5x with int16) and keeps, per query, a shortlist of the
// kp = k + max(k, 256) best approximate keys. Pass 2 rescores the shortlist with the exact float32
// candidate kernel. The result is then certified by a bound eps on |approximate - exact|
// for every row: with bf16 (u = 2^-8) the dots differ by at most
//   c |q| |x|,   c = 2u + u^2 + m 2^-24   (m = float32 accumulation steps),
// because sum |q_i x_i| <= |q| |x|; with int16 (a value off by at most s/2, s = max|x_i|
// / L) by at most (s_x/2)|q|_1 + (s_q/2)|x|_1 + dim s_x s_q / 4, bounded over the rows
// by the largest max|x_i| and |x|_1 (relative to |x| for cosine) seen in pass 1. So a
// row left out of the shortlist has an exact key of at most A + eps, A = the
// shortlist's last approximate key, plus float32 slack. If the exact k-th key beats
// that bound, no row outside the shortlist can enter the top-k and the answer is the
// exact one; otherwise (many rows within ~2 eps of the k-th score) the query is handed
// back and the caller runs the float32 scan for it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "dense_driver.h"
#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/select.h"

namespace nestvec {
namespace dense {

namespace {

std::atomic<int64_t> g_certified{0}, g_fallback{0};
std::atomic<int> g_enabled{-1};  // -1: not read yet; NESTVEC_DENSE_BF16=0 turns it off

}  // namespace

void set_bf16_pass(bool on) { g_enabled = on ? 1 : 0; }

bool bf16_pass_enabled() {
  int e = g_enabled.load();
  if (e < 0) {
    const char* s = std::getenv("NESTVEC_DENSE_BF16");
    e = (s && !std::strcmp(s, "0")) ? 0 : 1;
    g_enabled = e;
  }
  return e == 1;
}

int64_t two_pass_min_queries() {
  // bf16 (2-core Zen 5, AVX512-BF16, 1M x 768 float16): one pass wins below ~16
  // queries, where the scan is bound by memory rather than multiplies. int16 (2-core
  // Zen 3, AVX2, 200k x 768 float16, one thread): its first pass runs at about the
  // float32 tile scan's speed, so the scan wins below 32 queries (batch 16: 69 vs 89 ms;
  // 28: 114 vs 118) and the two-pass from 32, where the scan moves to its packed GEMM
  // route (32: 167 vs 131; 64: 266 vs 215; 128: 497 vs 386).
  switch (active_kernels().approx.kind) {
    case kApproxBf16: return 16;
    case kApproxI16: return 32;
    default: return 0;
  }
}

bool bf16_pass_wanted(int64_t nq, int64_t n, int64_t dim) {
  const int64_t min_q = two_pass_min_queries();
  return bf16_pass_enabled() && min_q > 0 && nq >= min_q && nq * dim >= 8192 && n >= 4096;
}

void bf16_stats(int64_t* certified, int64_t* fallback) {
  *certified = g_certified.load();
  *fallback = g_fallback.load();
}

namespace {

// Largest row statistics of one thread's share (allowed rows only): |x|^2, and for the
// int16 pass max|x_i|, sum|x_i| and both relative to |x| (rows with |x| > 0).
struct RowMax {
  double sq = 0, amax = 0, l1 = 0, amax_rel = 0, l1_rel = 0;
  void add(float s, float a, float l, bool i16) {
    sq = std::max(sq, double(s));
    if (!i16) return;
    amax = std::max(amax, double(a));
    l1 = std::max(l1, double(l));
    if (s > 0) {
      const double x = std::sqrt(double(s));
      amax_rel = std::max(amax_rel, double(a) / x);
      l1_rel = std::max(l1_rel, double(l) / x);
    }
  }
  void merge(const RowMax& o) {
    sq = std::max(sq, o.sq), amax = std::max(amax, o.amax), l1 = std::max(l1, o.l1);
    amax_rel = std::max(amax_rel, o.amax_rel), l1_rel = std::max(l1_rel, o.l1_rel);
  }
};

}  // namespace

int64_t topk_bf16(const void* db, DType dtype, int64_t n, int64_t stride, int64_t dim,
                  const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
                  const uint8_t* allow, float* out_score, int64_t* out_idx, int64_t* failed) {
  const Kernels kern = active_kernels();
  const ApproxPass& ap = kern.approx;
  if (ap.kind == kApproxNone) {  // not this ISA's route: every query goes back to the caller
    for (int64_t j = 0; j < nq; ++j) failed[j] = j;
    return nq;
  }
  const bool i16 = ap.kind == kApproxI16;
  const int64_t es = dtype_size(dtype);
  const int64_t kp = k + std::max<int64_t>(k, 256);

  int64_t n_allowed = n;
  if (allow) {
    n_allowed = 0;
    for (int64_t i = 0; i < n; ++i) n_allowed += allow[i] != 0;
  }

  // Queries packed for pass 1 (with their scales and statistics); exact norms for the
  // keys and the bounds.
  const int64_t nq64 = (nq + 63) / 64 * 64;
  auto qpk = aligned_array<char>(ap.queries_bytes(nq, dim));
  std::vector<float> qscale(static_cast<size_t>(nq64)), qamax(static_cast<size_t>(nq64)), ql1(static_cast<size_t>(nq64));
  std::vector<float> qa(static_cast<size_t>(nq)), qbb(static_cast<size_t>(nq));
  ap.pack_queries(queries, nq, query_stride, dim, qpk.get(), qscale.data(), qamax.data(), ql1.data());
  query_factors(queries, nq, query_stride, dim, qa.data(), qbb.data());

  // Rows per tile: ~96 KiB of packed values, packed once and kept in L2 for the batch.
  const int64_t tile = std::max<int64_t>(16, std::min<int64_t>(1024, (98304 / (((dim + 31) / 32 * 32) * 2)) / 16 * 16));
  const int64_t qchunk = 256;
  const int64_t min_rows = std::max<int64_t>(tile, 262144 / (dim * es));
  const int nthreads = int(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n / min_rows)));
  std::vector<std::vector<FloatTopK>> sel(static_cast<size_t>(nthreads), std::vector<FloatTopK>(static_cast<size_t>(nq)));
  std::vector<RowMax> row_max(static_cast<size_t>(nthreads));
  parallel_for(n, nthreads, 16, [&](int t, int64_t begin, int64_t end) {
    auto& s = sel[size_t(t)];
    for (auto& x : s) x.reset(kp);
    const int64_t qc = std::min(qchunk, nq), tile64 = (tile + 63) / 64 * 64;
    auto xb = aligned_array<char>(ap.rows_bytes(tile, dim));
    std::vector<float> dots(static_cast<size_t>(qc * tile)), rowf(static_cast<size_t>(tile));
    const size_t t64 = static_cast<size_t>(tile64);
    std::vector<float> sq(t64), xscale(t64), amax(t64), l1(t64);
    std::vector<uint32_t> hit_rows(static_cast<size_t>(tile));
    std::vector<float> hit_keys(static_cast<size_t>(tile));
    RowMax mx;
    for (int64_t r0 = begin; r0 < end; r0 += tile) {
      const int64_t nr = std::min(tile, end - r0);
      const uint8_t* al = allow ? allow + r0 : nullptr;
      if (al && !any_allowed(al, nr)) continue;
      const char* base = static_cast<const char*>(db) + r0 * stride * es;
      ap.pack_rows(base, dtype, stride, nr, dim, xb.get(), xscale.data(), sq.data(), amax.data(), l1.data());
      for (int64_t r = 0; r < nr; ++r)
        if (!al || al[r]) mx.add(sq[size_t(r)], i16 ? amax[size_t(r)] : 0.f, i16 ? l1[size_t(r)] : 0.f, i16);
      row_factors(sq.data(), nr, metric, rowf.data());
      for (int64_t q0 = 0; q0 < nq; q0 += qchunk) {
        const int64_t nqc = std::min(qchunk, nq - q0);
        ap.dots(xb.get(), xscale.data(), nr, dim, qpk.get() + ap.queries_bytes(q0, dim), qscale.data() + q0,
                nqc, dots.data(), tile);
        for (int64_t j = 0; j < nqc; ++j) {
          select_push(kern.select, dots.data() + j * tile, rowf.data(), nr, metric,
                      qa[size_t(q0 + j)], qbb[size_t(q0 + j)], al, hit_rows.data(),
                      hit_keys.data(), s[size_t(q0 + j)], [r0](uint32_t r) { return r0 + r; });
        }
      }
    }
    row_max[size_t(t)] = mx;
  });
  RowMax rm;
  for (const RowMax& m : row_max) rm.merge(m);
  const double xmax = std::sqrt(rm.sq);

  // Shortlists: the kp best approximate keys over all threads; A = the last of them.
  std::vector<int64_t> cand(static_cast<size_t>(nq * kp), -1);
  std::vector<float> last_key(static_cast<size_t>(nq), -std::numeric_limits<float>::infinity());
  std::vector<uint8_t> complete(static_cast<size_t>(nq), 0);
  parallel_for(nq, int(std::min<int64_t>(std::max(1, nthreads), nq)), 1, [&](int, int64_t j0, int64_t j1) {
    std::vector<FloatTopK::Entry> merged;
    for (int64_t j = j0; j < j1; ++j) {
      merge_threads(sel, j, kp, merged);
      const int64_t m = int64_t(merged.size());
      for (int64_t i = 0; i < m; ++i) cand[size_t(j * kp + i)] = merged[size_t(i)].idx;
      if (m > 0) last_key[size_t(j)] = merged[size_t(m - 1)].key;
      // Every allowed row is on the list: nothing outside can compete.
      complete[size_t(j)] = m >= n_allowed;
      // Fewer than kp keys, yet rows left out: non-finite scores; let float32 decide.
      if (m < std::min(kp, n_allowed)) last_key[size_t(j)] = std::numeric_limits<float>::infinity();
    }
  });
  sel.clear();

  // Pass 2: exact float32 scores of the shortlists.
  topk(db, dtype, n, stride, dim, queries, nq, query_stride, k, metric, allow, cand.data(), kp,
       out_score, out_idx);

  // Certify each query (keys: larger is better; l2 keys are negated distances). eps
  // bounds |approximate - exact| for every row outside the shortlist; ip's and l2's
  // keys are dots (l2: twice), cosine's are dots / (|q| |x|).
  const double u = 1.0 / 256, f32 = 1.0 / 16777216.0;
  const double dimp = double((dim + 31) / 32 * 32);
  const double c_bf16 = (2 * u + u * u + (2 * dimp / 32 + 16) * f32) * 1.001;
  // int16: a value x is stored as s round(x / s) with s = max|x| / L, up to float32
  // rounding of s and 1/s: off by at most h max|x|, h = 1/(2L) + 2^-22. Then the int32
  // sums flushed into float32, the sums of those and the scaling round too.
  const double chunks = i16 ? double((dim + ap.i16_chunk - 1) / ap.i16_chunk) : 0;
  const double h = i16 ? 1 / (2 * double(ap.i16_max)) + f32 * 4 : 0;
  int64_t nfail = 0;
  for (int64_t j = 0; j < nq; ++j) {
    if (complete[size_t(j)]) continue;
    const double qn = std::sqrt(double(qbb[size_t(j)]));
    double eps_rel, eps_dot;  // cosine key error; ip dot error
    if (!i16) {
      eps_rel = c_bf16, eps_dot = c_bf16 * qn * xmax;
    } else {
      const double qa1 = ql1[size_t(j)], qmax = qamax[size_t(j)];
      const double q1r = qn > 0 ? qa1 / qn : 0, qmr = qn > 0 ? qmax / qn : 0;
      const double round_rel = (chunks + 3) * f32;
      eps_rel = h * (rm.amax_rel * q1r + qmr * rm.l1_rel) + dim * h * h * rm.amax_rel * qmr;
      eps_rel = (eps_rel + round_rel * (1 + eps_rel)) * 1.001;
      eps_dot = h * (rm.amax * qa1 + qmax * rm.l1) + dim * h * h * rm.amax * qmax;
      eps_dot = (eps_dot + round_rel * (qn * xmax + eps_dot)) * 1.001;
    }
    double eps, scale;
    if (metric == kCosine) {
      eps = eps_rel, scale = 1;
    } else if (metric == kIP) {
      eps = eps_dot, scale = qn * xmax;
    } else {
      eps = 2 * eps_dot, scale = (qn + xmax) * (qn + xmax);
    }
    // Float32 rounding of norms, keys and the exact pass itself.
    const double bound = double(last_key[size_t(j)]) + eps + 1e-5 * scale;
    const int64_t idx_k = out_idx[j * k + (k - 1)];
    const double key_k = metric == kL2 ? -double(out_score[j * k + (k - 1)]) : double(out_score[j * k + (k - 1)]);
    const bool ok = k <= n_allowed ? (idx_k >= 0 && key_k > bound) : false;
    if (!ok) failed[nfail++] = j;
  }
  g_certified += nq - nfail;
  g_fallback += nfail;
  return nfail;
}

}  // namespace dense
}  // namespace nestvec
