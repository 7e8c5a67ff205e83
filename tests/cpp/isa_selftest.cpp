// Every CPU ISA this build compiled, op by op, against float64 / brute-force
// references over awkward sizes: the check that runs the aarch64 NEON kernels under
// qemu-aarch64 and the x86 ones natively (tests/test_isa_selftest.py builds it with
// tests/cpp/CMakeLists.txt, which takes its sources and ISA flags from
// csrc/cpu/sources.cmake like the Python module does).
//
//   isa_selftest [--quick]
//
// One line per (ISA, op): "ok <isa> <op> <cases>", "skip <isa> (not supported by this
// CPU)" for a compiled ISA the CPU cannot run, "FAIL ..." with the first mismatches.
// Exit status 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/dtype.h"
#include "nestvec/half.h"
#include "nestvec/hamming.h"
#include "nestvec/lowrank_sparse.h"
#include "nestvec/pooling.h"

using namespace nestvec;

namespace {

int g_failures = 0;
bool g_quick = false;

struct Check {
  std::string what;
  int64_t cases = 0, failed = 0;
  void fail(const std::string& msg) {
    if (failed++ < 5) std::printf("  mismatch %s: %s\n", what.c_str(), msg.c_str());
  }
};

// Values of a dtype: storage bytes and the float32 values they hold.
struct Table {
  DType dt;
  std::vector<uint16_t> h;
  std::vector<float> f;  // exact values (float32 storage, or the widened halves)
  const void* data() const { return dt == DType::F32 ? static_cast<const void*>(f.data()) : h.data(); }
  void* data() { return dt == DType::F32 ? static_cast<void*>(f.data()) : h.data(); }
};

Table make_table(DType dt, size_t count, std::mt19937_64& rng, float offset = 0.f) {
  std::normal_distribution<float> nd;
  Table t{dt, {}, std::vector<float>(count)};
  for (auto& x : t.f) x = nd(rng) + offset;
  if (dt != DType::F32) {
    t.h.resize(count);
    for (size_t i = 0; i < count; ++i) {
      t.h[i] = dt == DType::F16 ? f32_to_f16(t.f[i]) : f32_to_bf16(t.f[i]);
      t.f[i] = dt == DType::F16 ? f16_to_f32(t.h[i]) : bf16_to_f32(t.h[i]);
    }
  }
  return t;
}

// ---------------------------------------------------------------- hamming
void check_hamming(Check& ck) {
  std::mt19937_64 rng(7);
  const std::vector<int64_t> ns = g_quick ? std::vector<int64_t>{1, 97, 1023} : std::vector<int64_t>{1, 7, 97, 1023, 4099};
  const std::vector<int64_t> widths = {1, 3, 8, 16, 24, 32, 40, 48, 64, 65, 96, 128, 200, 256};
  for (int64_t n : ns)
    for (int64_t nb : widths)
      for (int64_t nq : {1, 2, 5, 13}) {
        std::vector<uint8_t> codes(n * nb), qs(nq * nb), allow(n);
        for (auto& c : codes) c = uint8_t(rng());
        for (auto& c : qs) c = uint8_t(rng());
        if (n > 4)  // ties: a third of the rows share a code, and so does query 0
          for (int64_t r = n / 3; r < 2 * n / 3; ++r) std::memcpy(&codes[size_t(r * nb)], &codes[0], size_t(nb));
        if (nq > 1) std::memcpy(qs.data(), codes.data(), size_t(nb));
        if (nq > 2)  // the largest distance, 8 nb: every bit of the last row differs
          for (int64_t b = 0; b < nb; ++b) qs[size_t(nb + b)] = uint8_t(~codes[size_t((n - 1) * nb + b)]);
        for (auto& a : allow) a = (rng() % 10) < 3;
        // pass 1: the same query buffer rewritten in place (a kernel that keeps per-query
        // tables across calls must notice)
        for (int pass = 0; pass < 2; ++pass)
        for (int with_allow = 0; with_allow < 2 && !(pass && with_allow); ++with_allow)
          for (int64_t k : {int64_t(1), int64_t(10), n + 3}) {
            if (pass && k == 1)
              for (auto& c : qs) c ^= 0x5A;
            const uint8_t* al = with_allow ? allow.data() : nullptr;
            std::vector<int32_t> d(size_t(nq * k));
            std::vector<int64_t> ix(size_t(nq * k));
            hamming::topk(codes.data(), n, nb, qs.data(), nq, nb, nb, k, al, d.data(), ix.data());
            ++ck.cases;
            for (int64_t j = 0; j < nq; ++j) {
              std::vector<std::pair<int32_t, int64_t>> ref;
              for (int64_t r = 0; r < n; ++r) {
                if (al && !al[r]) continue;
                int32_t s = 0;
                for (int64_t b = 0; b < nb; ++b) s += __builtin_popcount(unsigned(codes[size_t(r * nb + b)] ^ qs[size_t(j * nb + b)]));
                ref.emplace_back(s, r);
              }
              std::sort(ref.begin(), ref.end());
              for (int64_t i = 0; i < k; ++i) {
                const bool have = i < int64_t(ref.size());
                const int32_t wd = have ? ref[size_t(i)].first : INT32_MAX;
                const int64_t wi = have ? ref[size_t(i)].second : -1;
                if (d[size_t(j * k + i)] != wd || ix[size_t(j * k + i)] != wi) {
                  ck.fail("n=" + std::to_string(n) + " bytes=" + std::to_string(nb) + " q=" + std::to_string(nq) +
                          " k=" + std::to_string(k) + " allow=" + std::to_string(with_allow) + " pos " + std::to_string(i));
                  i = k, j = nq;
                }
              }
            }
          }
      }
}

// ---------------------------------------------------------------- dense
// A valid top-k within tol of the float64 keys: each returned score matches its row's
// key, scores are non-increasing, and no row left out beats the last one returned.
void check_dense(Check& ck) {
  std::mt19937_64 rng(11);
  struct Case {
    int64_t n, D, dim, nq;
  };
  // The last ones take the two-pass route where the ISA has one (>= 16 queries, >= 8192
  // query values, >= 4096 rows).
  std::vector<Case> cases = {{1, 1, 1, 1},     {7, 7, 7, 2},       {97, 16, 16, 3},  {97, 33, 20, 5},
                             {1023, 100, 100, 13}, {300, 64, 64, 40}, {1025, 40, 33, 37}, {130, 768, 256, 4},
                             {4099, 24, 24, 1}, {200, 17, 17, 64}, {5000, 64, 64, 130}, {4100, 301, 257, 33}};
  if (g_quick) cases.resize(7);  // (qemu: the two-pass cases cost minutes there, and NEON has no such route)
  for (const Case& c : cases)
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (int metric : {dense::kCosine, dense::kIP, dense::kL2})
        for (int mode = 0; mode < 3; ++mode) {  // 0: plain, 1: allow, 2: candidates
          Table db = make_table(dt, size_t(c.n * c.D), rng);
          std::normal_distribution<float> nd;
          std::vector<float> q(size_t(c.nq * c.D));
          for (auto& x : q) x = nd(rng);
          std::vector<uint8_t> allow(size_t(c.n));
          for (auto& a : allow) a = (rng() % 10) < 4;
          const int64_t ncand = std::min<int64_t>(c.n, 50) + 2;
          std::vector<int64_t> cand(size_t(c.nq * ncand));
          for (auto& x : cand) x = int64_t(rng() % uint64_t(c.n + 2)) - 1;  // with -1 and out-of-range padding
          for (int64_t k : {int64_t(1), int64_t(10), int64_t(100)}) {
            std::vector<float> sc(size_t(c.nq * k));
            std::vector<int64_t> ix(size_t(c.nq * k));
            dense::topk(db.data(), dt, c.n, c.D, c.dim, q.data(), c.nq, c.D, k, metric,
                        mode == 1 ? allow.data() : nullptr, mode == 2 ? cand.data() : nullptr,
                        mode == 2 ? ncand : 0, sc.data(), ix.data());
            ++ck.cases;
            for (int64_t j = 0; j < c.nq; ++j) {
              std::vector<char> eligible(size_t(c.n), mode != 2);
              if (mode == 1)
                for (int64_t r = 0; r < c.n; ++r) eligible[size_t(r)] = allow[size_t(r)];
              if (mode == 2)
                for (int64_t i = 0; i < ncand; ++i) {
                  const int64_t r = cand[size_t(j * ncand + i)];
                  if (r >= 0 && r < c.n) eligible[size_t(r)] = 1;
                }
              const float* qj = q.data() + j * c.D;
              double qq = 0;
              for (int64_t t = 0; t < c.dim; ++t) qq += double(qj[t]) * qj[t];
              std::vector<double> key(size_t(c.n));
              double scale = 1e-30;
              for (int64_t r = 0; r < c.n; ++r) {
                double dot = 0, xx = 0, mag = 0;
                for (int64_t t = 0; t < c.dim; ++t) {
                  const double x = db.f[size_t(r * c.D + t)];
                  dot += x * qj[t];
                  xx += x * x;
                  mag += std::fabs(x * qj[t]);
                }
                if (metric == dense::kCosine)
                  key[size_t(r)] = xx > 0 && qq > 0 ? dot / std::sqrt(xx * qq) : 0, scale = 1;
                else if (metric == dense::kIP)
                  key[size_t(r)] = dot, scale = std::max(scale, mag);
                else
                  key[size_t(r)] = -(qq + xx - 2 * dot), scale = std::max(scale, qq + xx);
              }
              const double tol = 2e-5 * scale + 1e-6;
              std::vector<char> taken(size_t(c.n), 0);
              int64_t m = 0;
              for (int64_t r = 0; r < c.n; ++r) m += eligible[size_t(r)];
              const float pad = metric == dense::kL2 ? std::numeric_limits<float>::infinity()
                                                      : -std::numeric_limits<float>::infinity();
              double last = std::numeric_limits<double>::infinity();
              std::string err;
              for (int64_t i = 0; i < k && err.empty(); ++i) {
                const float s = sc[size_t(j * k + i)];
                const int64_t r = ix[size_t(j * k + i)];
                if (i >= m) {
                  if (r != -1 || s != pad) err = "padding at " + std::to_string(i);
                  continue;
                }
                if (r < 0 || r >= c.n || !eligible[size_t(r)] || taken[size_t(r)]) {
                  err = "bad row at " + std::to_string(i);
                  continue;
                }
                taken[size_t(r)] = 1;
                const double kk = metric == dense::kL2 ? -double(s) : double(s);
                if (std::fabs(kk - key[size_t(r)]) > tol) err = "score at " + std::to_string(i);
                if (kk > last + tol) err = "order at " + std::to_string(i);
                last = std::min(last, kk);
              }
              if (err.empty() && m > k)
                for (int64_t r = 0; r < c.n; ++r)
                  if (eligible[size_t(r)] && !taken[size_t(r)] && key[size_t(r)] > last + tol) {
                    err = "row " + std::to_string(r) + " left out";
                    break;
                  }
              if (!err.empty()) {
                ck.fail("n=" + std::to_string(c.n) + " dim=" + std::to_string(c.dim) + " q=" +
                        std::to_string(c.nq) + " " + dtype_name(dt) + " metric=" + std::to_string(metric) +
                        " mode=" + std::to_string(mode) + " k=" + std::to_string(k) + ": " + err);
                break;
              }
            }
          }
        }
}

// The ivf probe's blocked float16 table (dense::kBlockRows layout): blocked_dots
// against float64 dots and norms, and topk_blocked's rows against the float64 keys.
void check_dense_blocked(Check& ck) {
  std::mt19937_64 rng(12);
  struct Case {
    int64_t n, dim, nq;
  };
  const std::vector<Case> cases = {{1, 1, 1},      {7, 7, 2},      {97, 16, 3},  {97, 33, 5},
                                   {1023, 100, 4}, {1025, 128, 9}, {16, 64, 1}, {300, 3, 6}};
  const int64_t B = dense::kBlockRows;
  for (const Case& c : cases) {
    Table t = make_table(DType::F16, size_t(c.n * c.dim), rng);
    const int64_t nb = (c.n + B - 1) / B;
    std::vector<uint16_t> blk(size_t(nb * c.dim * B), 0);
    for (int64_t r = 0; r < c.n; ++r)
      for (int64_t v = 0; v < c.dim; ++v) blk[size_t(((r / B) * c.dim + v) * B + r % B)] = t.h[size_t(r * c.dim + v)];
    std::normal_distribution<float> nd;
    std::vector<float> q(size_t(c.nq * c.dim));
    for (auto& x : q) x = nd(rng);
    std::vector<float> dots(size_t(c.nq * nb * B)), sq(size_t(nb * B));
    dense::active_kernels().blocked_dots(blk.data(), nb, c.dim, q.data(), c.dim, c.nq, dots.data(), nb * B, sq.data());
    ++ck.cases;
    std::vector<double> ref(size_t(c.nq * c.n)), xx(size_t(c.n)), mag(size_t(c.nq * c.n));
    for (int64_t r = 0; r < c.n; ++r)
      for (int64_t v = 0; v < c.dim; ++v) {
        const double x = t.f[size_t(r * c.dim + v)];
        xx[size_t(r)] += x * x;
        for (int64_t j = 0; j < c.nq; ++j) {
          ref[size_t(j * c.n + r)] += x * q[size_t(j * c.dim + v)];
          mag[size_t(j * c.n + r)] += std::fabs(x * q[size_t(j * c.dim + v)]);
        }
      }
    std::string err;
    for (int64_t r = 0; r < nb * B && err.empty(); ++r) {
      const double want_sq = r < c.n ? xx[size_t(r)] : 0.0;  // (padding rows are zero)
      if (std::fabs(sq[size_t(r)] - want_sq) > 2e-5 * want_sq + 1e-6) err = "sq of row " + std::to_string(r);
      for (int64_t j = 0; j < c.nq && err.empty(); ++j) {
        const double want = r < c.n ? ref[size_t(j * c.n + r)] : 0.0;
        const double tol = 2e-5 * (r < c.n ? mag[size_t(j * c.n + r)] : 0.0) + 1e-6;
        if (std::fabs(dots[size_t(j * nb * B + r)] - want) > tol) err = "dot of row " + std::to_string(r);
      }
    }
    for (int metric : {dense::kIP, dense::kL2})
      for (int64_t k : {int64_t(1), int64_t(10), int64_t(100)}) {
        if (!err.empty()) break;
        std::vector<float> sc(size_t(c.nq * k));
        std::vector<int64_t> ix(size_t(c.nq * k));
        dense::topk_blocked(blk.data(), c.n, c.dim, q.data(), c.nq, c.dim, k, metric, sc.data(), ix.data());
        ++ck.cases;
        for (int64_t j = 0; j < c.nq && err.empty(); ++j) {
          double qq = 0;
          for (int64_t v = 0; v < c.dim; ++v) qq += double(q[size_t(j * c.dim + v)]) * q[size_t(j * c.dim + v)];
          auto key = [&](int64_t r) {
            const double d = ref[size_t(j * c.n + r)];
            return metric == dense::kIP ? d : -(qq + xx[size_t(r)] - 2 * d);
          };
          double scale = 1e-30;
          for (int64_t r = 0; r < c.n; ++r)
            scale = std::max(scale, metric == dense::kIP ? mag[size_t(j * c.n + r)] : qq + xx[size_t(r)]);
          const double tol = 2e-5 * scale + 1e-6;
          const int64_t m = std::min(k, c.n);
          std::vector<char> taken(size_t(c.n), 0);
          double last = std::numeric_limits<double>::infinity();
          for (int64_t i = 0; i < k && err.empty(); ++i) {
            const int64_t r = ix[size_t(j * k + i)];
            if (i >= m) {
              if (r != -1) err = "padding at " + std::to_string(i);
              continue;
            }
            if (r < 0 || r >= c.n || taken[size_t(r)]) {
              err = "bad row at " + std::to_string(i);
              continue;
            }
            taken[size_t(r)] = 1;
            const double kk = metric == dense::kL2 ? -double(sc[size_t(j * k + i)]) : double(sc[size_t(j * k + i)]);
            if (std::fabs(kk - key(r)) > tol) err = "score at " + std::to_string(i);
            if (kk > last + tol) err = "order at " + std::to_string(i);
            last = std::min(last, kk);
          }
          for (int64_t r = 0; r < c.n && err.empty() && m < c.n; ++r)
            if (!taken[size_t(r)] && key(r) > last + tol) err = "row " + std::to_string(r) + " left out";
        }
        if (!err.empty()) err += " (metric " + std::to_string(metric) + ", k " + std::to_string(k) + ")";
      }
    if (!err.empty()) {
      ck.fail("blocked n=" + std::to_string(c.n) + " dim=" + std::to_string(c.dim) + " q=" + std::to_string(c.nq) +
              ": " + err);
    }
  }
}

// ---------------------------------------------------------------- pooling
void check_pool(Check& ck) {
  std::mt19937_64 rng(13);
  for (int64_t B : {1, 3})
    for (int64_t T : {1, 7, 33})
      for (int64_t H : {1, 5, 16, 100, 384})
        for (DType dt : {DType::F32, DType::F16, DType::BF16})
          for (int mode = 0; mode < 5; ++mode) {
            if (g_quick && H == 384 && dt != DType::F32) continue;
            const int64_t d = (mode + H) % 3 == 0 ? std::max<int64_t>(1, H / 2 + 1) : H;
            const bool normalize = (mode + T) % 2 == 0;
            Table h = make_table(dt, size_t(B * T * H), rng, 0.1f);
            std::vector<int32_t> mask(size_t(B * T));
            for (int64_t b = 0; b < B; ++b) {
              const int64_t len = b == 0 && B > 1 ? 0 : int64_t(rng() % uint64_t(T + 1));
              for (int64_t t = 0; t < T; ++t) mask[size_t(b * T + t)] = (b % 2 ? t >= T - len : t < len) ? 1 : 0;
            }
            std::vector<float> out(size_t(B * d));
            std::vector<uint8_t> codes(size_t(B * ((d + 7) / 8)));
            pooling::pool(h.data(), dt, B, T, d, T * H, H, mask.data(), 4, T, mode, normalize, out.data(),
                          codes.data());
            ++ck.cases;
            for (int64_t b = 0; b < B; ++b) {
              std::vector<int64_t> tok;
              for (int64_t t = 0; t < T; ++t)
                if (mask[size_t(b * T + t)]) tok.push_back(t);
              std::vector<double> want(size_t(d), 0.0);
              if (!tok.empty()) {
                const int64_t n = int64_t(tok.size());
                for (int64_t x = 0; x < d; ++x) {
                  auto v = [&](int64_t t) { return double(h.f[size_t((b * T + t) * H + x)]); };
                  double s = 0;
                  if (mode == pooling::kCls) s = v(tok[0]);
                  else if (mode == pooling::kLast) s = v(tok[size_t(n - 1)]);
                  else if (mode == pooling::kMax) {
                    s = -INFINITY;
                    for (int64_t t : tok) s = std::max(s, v(t));
                  } else if (mode == pooling::kWeightedMean) {
                    for (int64_t i = 0; i < n; ++i) s += double(i + 1) * v(tok[size_t(i)]);
                    s *= 2.0 / (double(n) * double(n + 1));
                  } else {
                    for (int64_t t : tok) s += v(t);
                    s /= double(n);
                  }
                  want[size_t(x)] = s;
                }
                if (normalize) {
                  double ss = 0;
                  for (double w : want) ss += w * w;
                  if (ss > 0)
                    for (double& w : want) w /= std::sqrt(ss);
                }
              }
              for (int64_t x = 0; x < d; ++x) {
                const double w = want[size_t(x)], g = out[size_t(b * d + x)];
                const bool bit = codes[size_t(b * ((d + 7) / 8) + x / 8)] & (0x80 >> (x % 8));
                if (std::fabs(g - w) > 2e-4 * std::fabs(w) + 2e-5 || (bit != (g > 0) && std::fabs(w) > 1e-5)) {
                  ck.fail("B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
                          " d=" + std::to_string(d) + " " + dtype_name(dt) + " mode=" + std::to_string(mode) +
                          " at " + std::to_string(b) + "," + std::to_string(x));
                  x = d, b = B;
                }
              }
            }
          }
}

// ---------------------------------------------------------------- lowrank_sparse
void check_lowrank(Check& ck) {
  std::mt19937_64 rng(17);
  struct Case {
    int64_t M, K, N, r, c;
  };
  std::vector<Case> cases = {{1, 7, 97, 1, 1},   {5, 33, 40, 8, 3},    {7, 97, 13, 16, 0}, {20, 17, 100, 0, 5},
                             {33, 64, 65, 16, 13}, {100, 40, 37, 7, 37}, {130, 300, 70, 20, 4}};
  if (g_quick) cases.resize(5);
  const double tol[3] = {2e-5, 4e-3, 3e-2};
  for (const Case& c : cases)
    for (DType dt : {DType::F32, DType::F16, DType::BF16})
      for (int bias = 0; bias < 2; ++bias) {
        Table x = make_table(dt, size_t(c.M * c.K), rng), A = make_table(dt, size_t(c.r * c.K), rng),
              B = make_table(dt, size_t(c.N * c.r), rng), S = make_table(dt, size_t(c.c * c.K), rng),
              bb = make_table(dt, size_t(c.N), rng);
        std::vector<int64_t> ch(size_t(c.N));
        std::iota(ch.begin(), ch.end(), 0);
        std::shuffle(ch.begin(), ch.end(), rng);
        ch.resize(size_t(c.c));
        Table y = make_table(dt, size_t(c.M * c.N), rng);
        lowrank_sparse::Args a{dt,     x.data(), c.M,      c.K, c.K,      A.data(), c.r,
                               c.K,    B.data(), c.N,      c.r, S.data(), c.c,      c.K,
                               ch.data(), bias ? bb.data() : nullptr, y.data(), c.N};
        lowrank_sparse::matmul(a);
        ++ck.cases;
        std::vector<double> t(size_t(c.r)), want(size_t(c.N)), mag(size_t(c.N));
        double scale = 1e-6;
        std::vector<double> err(size_t(c.M * c.N));
        for (int64_t m = 0; m < c.M; ++m) {
          for (int64_t n = 0; n < c.N; ++n) want[size_t(n)] = bias ? bb.f[size_t(n)] : 0, mag[size_t(n)] = std::fabs(want[size_t(n)]);
          std::vector<double> tm(size_t(c.r));
          for (int64_t i = 0; i < c.r; ++i) {
            double s = 0, sm = 0;
            for (int64_t kx = 0; kx < c.K; ++kx) {
              s += double(x.f[size_t(m * c.K + kx)]) * A.f[size_t(i * c.K + kx)];
              sm += std::fabs(double(x.f[size_t(m * c.K + kx)]) * A.f[size_t(i * c.K + kx)]);
            }
            t[size_t(i)] = s, tm[size_t(i)] = sm;
          }
          for (int64_t n = 0; n < c.N; ++n)
            for (int64_t i = 0; i < c.r; ++i) {
              want[size_t(n)] += t[size_t(i)] * B.f[size_t(n * c.r + i)];
              mag[size_t(n)] += tm[size_t(i)] * std::fabs(B.f[size_t(n * c.r + i)]);
            }
          for (int64_t j = 0; j < c.c; ++j) {
            double s = 0, sm = 0;
            for (int64_t kx = 0; kx < c.K; ++kx) {
              s += double(x.f[size_t(m * c.K + kx)]) * S.f[size_t(j * c.K + kx)];
              sm += std::fabs(double(x.f[size_t(m * c.K + kx)]) * S.f[size_t(j * c.K + kx)]);
            }
            want[size_t(ch[size_t(j)])] += s;
            mag[size_t(ch[size_t(j)])] += sm;
          }
          for (int64_t n = 0; n < c.N; ++n) {
            const size_t i = size_t(m * c.N + n);
            const double got = dt == DType::F32 ? double(y.f[i]) : dt == DType::F16 ? f16_to_f32(y.h[i]) : bf16_to_f32(y.h[i]);
            err[i] = std::fabs(got - want[size_t(n)]);
            scale = std::max(scale, mag[size_t(n)]);
          }
        }
        const double worst = err.empty() ? 0 : *std::max_element(err.begin(), err.end());
        if (!(worst <= tol[int(dt)] * scale))
          ck.fail("M=" + std::to_string(c.M) + " K=" + std::to_string(c.K) + " N=" + std::to_string(c.N) +
                  " r=" + std::to_string(c.r) + " c=" + std::to_string(c.c) + " " + dtype_name(dt) +
                  " bias=" + std::to_string(bias) + ": error " + std::to_string(worst / scale));
      }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "--quick")) g_quick = true;
  std::printf("cpu features: %s\n", cpu_features().c_str());
  for (Isa isa : compiled_isas()) {
    if (!set_isa(isa)) {
      std::printf("skip %s (not supported by this CPU)\n", isa_name(isa));
      continue;
    }
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      struct Op {
        const char* name;
        void (*run)(Check&);
      };
      for (const Op& op : {Op{"hamming", check_hamming},
                           Op{"dense", [](Check& ck) { check_dense(ck), check_dense_blocked(ck); }},
                           Op{"pool", check_pool},
                           Op{"lowrank_sparse", check_lowrank}}) {
        Check ck;
        ck.what = std::string(isa_name(isa)) + " " + op.name;
        op.run(ck);
        if (ck.failed) ++g_failures;
        std::printf("%s %s %s threads=%d %lld cases%s\n", ck.failed ? "FAIL" : "ok", isa_name(isa), op.name,
                    threads, (long long)ck.cases,
                    ck.failed ? (", " + std::to_string(ck.failed) + " failed").c_str() : "");
        std::fflush(stdout);
      }
    }
  }
  std::printf(g_failures ? "FAILED\n" : "ALL OK\n");
  return g_failures ? 1 : 0;
}
