// Two-pass exact dense top-k for compute-bound batches on CPUs with AVX512-BF16.
//
// Pass 1 scores every row in bfloat16 (the bf16 first pass in dense_impl.h: about
// twice the multiply rate of float32 FMAs) and keeps, per query, a shortlist of the
// kp = k + max(k, 256) best approximate keys. Pass 2 rescores the shortlist with the exact float32
// candidate kernel. The result is then certified: with u = 2^-8 (bf16 rounding) the
// approximate dot of q and x differs from the exact one by at most
//   c |q| |x|,   c = 2u + u^2 + m 2^-24   (m = float32 accumulation steps),
// because sum |q_i x_i| <= |q| |x|. So a row left out of the shortlist has an exact key
// of at most A + eps, A = the shortlist's last approximate key, eps = c (cosine),
// c |q| max|x| (ip) or 2 c |q| max|x| (l2), plus float32 slack. If the exact k-th key
// beats that bound, no row outside the shortlist can enter the top-k and the answer is
// the exact one; otherwise (many rows within ~2 eps of the k-th score) the query is
// handed back and the caller runs the float32 scan for it.
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

bool bf16_pass_wanted(int64_t nq, int64_t n, int64_t dim) {
  // Measured on 1M x 768 float16 (2-core Zen 5, AVX512-BF16): below ~16 queries, or
  // ~8192 query values, the scan is bound by memory rather than multiplies and one
  // pass wins.
  return bf16_pass_enabled() && active_kernels().dots_bf16 && nq >= 16 && nq * dim >= 8192 &&
         n >= 4096;
}

void bf16_stats(int64_t* certified, int64_t* fallback) {
  *certified = g_certified.load();
  *fallback = g_fallback.load();
}

int64_t topk_bf16(const void* db, DType dtype, int64_t n, int64_t stride, int64_t dim,
                  const float* queries, int64_t nq, int64_t query_stride, int64_t k, int metric,
                  const uint8_t* allow, float* out_score, int64_t* out_idx, int64_t* failed) {
  const Kernels kern = active_kernels();
  if (!kern.dots_bf16) {  // not this ISA's route: every query goes back to the caller
    for (int64_t j = 0; j < nq; ++j) failed[j] = j;
    return nq;
  }
  const int64_t es = dtype_size(dtype);
  const int64_t dimp = (dim + kern.bf16_block - 1) / kern.bf16_block * kern.bf16_block;
  const int64_t kp = k + std::max<int64_t>(k, 256);

  int64_t n_allowed = n;
  if (allow) {
    n_allowed = 0;
    for (int64_t i = 0; i < n; ++i) n_allowed += allow[i] != 0;
  }

  // Queries: bf16 for pass 1; exact norms for keys and bounds.
  auto qb = aligned_array<uint16_t>(nq * dimp);
  std::vector<float> qa(static_cast<size_t>(nq)), qbb(static_cast<size_t>(nq));
  kern.to_bf16(queries, DType::F32, query_stride, nq, dim, dimp, qb.get(), nullptr);
  query_factors(queries, nq, query_stride, dim, qa.data(), qbb.data());

  // Rows per tile: ~96 KiB of bf16 values, rounded once and kept in L2 for the batch.
  const int64_t tile = std::max<int64_t>(16, std::min<int64_t>(1024, (98304 / (dimp * 2)) / 16 * 16));
  const int64_t qchunk = 256;
  const int64_t min_rows = std::max<int64_t>(tile, 262144 / (dim * es));
  const int nthreads = int(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n / min_rows)));
  std::vector<std::vector<FloatTopK>> sel(static_cast<size_t>(nthreads), std::vector<FloatTopK>(static_cast<size_t>(nq)));
  std::vector<float> max_sq(static_cast<size_t>(nthreads), 0.f);
  parallel_for(n, nthreads, 16, [&](int t, int64_t begin, int64_t end) {
    auto& s = sel[size_t(t)];
    for (auto& x : s) x.reset(kp);
    const int64_t qc = std::min(qchunk, nq);
    auto xb = aligned_array<uint16_t>(tile * dimp);
    std::vector<float> dots(static_cast<size_t>(qc * tile)), sq(static_cast<size_t>(tile)), rowf(static_cast<size_t>(tile));
    std::vector<uint32_t> hit_rows(static_cast<size_t>(tile));
    std::vector<float> hit_keys(static_cast<size_t>(tile));
    float mx = 0.f;
    for (int64_t r0 = begin; r0 < end; r0 += tile) {
      const int64_t nr = std::min(tile, end - r0);
      const uint8_t* al = allow ? allow + r0 : nullptr;
      if (al && !any_allowed(al, nr)) continue;
      const char* base = static_cast<const char*>(db) + r0 * stride * es;
      kern.to_bf16(base, dtype, stride, nr, dim, dimp, xb.get(), sq.data());
      for (int64_t r = 0; r < nr; ++r)
        if (!al || al[r]) mx = std::max(mx, sq[size_t(r)]);
      row_factors(sq.data(), nr, metric, rowf.data());
      for (int64_t q0 = 0; q0 < nq; q0 += qchunk) {
        const int64_t nqc = std::min(qchunk, nq - q0);
        kern.dots_bf16(xb.get(), nr, dimp, qb.get() + q0 * dimp, nqc, dots.data(), tile);
        for (int64_t j = 0; j < nqc; ++j) {
          select_push(kern.select, dots.data() + j * tile, rowf.data(), nr, metric,
                      qa[size_t(q0 + j)], qbb[size_t(q0 + j)], al, hit_rows.data(),
                      hit_keys.data(), s[size_t(q0 + j)], [r0](uint32_t r) { return r0 + r; });
        }
      }
    }
    max_sq[size_t(t)] = mx;
  });
  const double xmax = std::sqrt(double(*std::max_element(max_sq.begin(), max_sq.end())));

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

  // Certify each query (keys: larger is better; l2 keys are negated distances).
  const double u = 1.0 / 256;
  const double c = (2 * u + u * u + double(2 * dimp / 32 + 16) / 16777216.0) * 1.001;
  int64_t nfail = 0;
  for (int64_t j = 0; j < nq; ++j) {
    if (complete[size_t(j)]) continue;
    const double qn = std::sqrt(double(qbb[size_t(j)]));
    double eps, scale;
    if (metric == kCosine) {
      eps = c, scale = 1;
    } else if (metric == kIP) {
      eps = c * qn * xmax, scale = qn * xmax;
    } else {
      eps = 2 * c * qn * xmax, scale = (qn + xmax) * (qn + xmax);
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
