// Pooling driver: per batch row, read the mask, list the tokens to combine (and their
// weights), reduce them with the ISA kernel straight into the output row, then scale,
// L2-normalise and pack sign bits while the row is still in L1. Threads over rows.
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "nestvec/dispatch.h"
#include "nestvec/pooling.h"

namespace nestvec {
namespace pooling {
namespace {

ReduceFn pick_reduce() {
  return with_isa(active_isa(), [](auto isa) { return kernels<decltype(isa)::value>().reduce; });
}

inline bool present(const uint8_t* m, int itemsize, int64_t t) {
  switch (itemsize) {
    case 1: return m[t] != 0;
    case 2: return reinterpret_cast<const uint16_t*>(m)[t] != 0;
    case 4: return reinterpret_cast<const uint32_t*>(m)[t] != 0;
    default: return reinterpret_cast<const uint64_t*>(m)[t] != 0;
  }
}

void pack_signs(const float* x, int64_t d, uint8_t* code) {
  for (int64_t b = 0; b < (d + 7) / 8; ++b) {
    uint8_t v = 0;
    for (int j = 0; j < 8; ++j) {
      const int64_t c = 8 * b + j;
      if (c < d && x[c] > 0.0f) v |= uint8_t(0x80u >> j);
    }
    code[b] = v;
  }
}

}  // namespace

void pool(const void* hidden, DType dtype, int64_t B, int64_t T, int64_t d, int64_t sb, int64_t st,
          const void* mask, int mask_itemsize, int64_t mask_sb, int mode, bool normalize,
          float* out, uint8_t* codes) {
  const ReduceFn reduce = pick_reduce();
  const int64_t es = dtype_size(dtype);
  const int64_t cb = (d + 7) / 8;
  // Waking a pooled worker costs a few us: split when each thread gets >= 128 KiB.
  const int64_t bytes = B * T * d * es;
  const int64_t want = std::max<int64_t>(1, bytes / (int64_t(1) << 17));
  const int nthreads = int(std::min<int64_t>({int64_t(num_threads()), B, want}));

  // Rows are handed out one at a time from a shared counter rather than in fixed
  // ranges: on a busy machine a thread that gets descheduled then delays the call by
  // one row, not by half the batch.
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    std::vector<int32_t> tok(size_t(std::max<int64_t>(T, 1)));
    std::vector<float> w;
    if (mode == kWeightedMean) w.resize(tok.size());
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < B;) {
      const uint8_t* m = static_cast<const uint8_t*>(mask) + b * mask_sb * mask_itemsize;
      int64_t n = 0;
      for (int64_t t = 0; t < T; ++t)
        if (present(m, mask_itemsize, t)) tok[n++] = int32_t(t);
      float* o = out + b * d;
      double scale = 1.0;
      if (n == 0) {
        std::memset(o, 0, size_t(d) * sizeof(float));
      } else {
        const void* base = static_cast<const char*>(hidden) + b * sb * es;
        switch (mode) {
          case kCls: reduce(base, st, dtype, tok.data(), nullptr, 1, d, false, o); break;
          case kLast: reduce(base, st, dtype, tok.data() + n - 1, nullptr, 1, d, false, o); break;
          case kMax: reduce(base, st, dtype, tok.data(), nullptr, n, d, true, o); break;
          case kWeightedMean:
            // weight of the i-th present token is its 1-based rank i + 1
            for (int64_t i = 0; i < n; ++i) w[i] = float(i + 1);
            reduce(base, st, dtype, tok.data(), w.data(), n, d, false, o);
            scale = 2.0 / (double(n) * double(n + 1));
            break;
          default:
            reduce(base, st, dtype, tok.data(), nullptr, n, d, false, o);
            scale = 1.0 / double(n);
        }
        if (normalize) {
          double ss = 0.0;
          for (int64_t j = 0; j < d; ++j) ss += double(o[j]) * o[j];
          scale = ss > 0.0 ? 1.0 / std::sqrt(ss) : 1.0;
        }
        if (scale != 1.0) {
          const float s = float(scale);
          for (int64_t j = 0; j < d; ++j) o[j] *= s;
        }
      }
      if (codes) pack_signs(o, d, codes + b * cb);
    }
  };
  parallel_for(nthreads, nthreads, 1, [&](int, int64_t, int64_t) { worker(); });
}

}  // namespace pooling
}  // namespace nestvec
