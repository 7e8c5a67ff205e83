// ivf::search (include/nestvec/ivf.h): probe, Hamming shortlist and rescoring per
// block of queries, each block on one thread from start to end.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <vector>

#include "nestvec/dense.h"
#include "nestvec/dispatch.h"
#include "nestvec/ivf.h"

namespace nestvec {
namespace ivf {

namespace {
// Queries a task takes at a time: the probe scores a block against each tile of
// centroids, and a batch still spreads over the threads in several blocks each.
constexpr int64_t kBlock = 4;

// Rows [nb, dim] of q (stride qs) as float32 for the dense kernels: cosine divides each
// by its norm in double first (zero rows stay zero).
void prepare(const float* q, int64_t nb, int64_t qs, int64_t dim, bool normalise, float* out) {
  for (int64_t j = 0; j < nb; ++j) {
    const float* x = q + j * qs;
    float* o = out + j * dim;
    double s = 0;
    if (normalise)
      for (int64_t c = 0; c < dim; ++c) s += double(x[c]) * double(x[c]);
    const double nrm = std::sqrt(s);
    if (normalise && nrm > 0) {
      for (int64_t c = 0; c < dim; ++c) o[c] = float(double(x[c]) / nrm);
    } else {
      std::copy(x, x + dim, o);
    }
  }
}

// Sign bits of the first 8 * nbytes values, most significant bit first (np.packbits).
void sign_codes(const float* q, int64_t nb, int64_t qs, int64_t nbytes, uint8_t* out) {
  for (int64_t j = 0; j < nb; ++j)
    for (int64_t b = 0; b < nbytes; ++b) {
      const float* x = q + j * qs + 8 * b;
      uint8_t v = 0;
      for (int i = 0; i < 8; ++i) v = uint8_t((v << 1) | (x[i] > 0.f));
      out[j * nbytes + b] = v;
    }
}
}  // namespace

int64_t search(const Probe& probe, const float* queries, int64_t nq, int64_t query_stride, bool normalise,
               const uint8_t* qcodes, int64_t code_stride, int64_t nbytes,
               const multiseg::HammingSeg* hsegs, const multiseg::DenseSeg* dsegs, int64_t nseg,
               int64_t short_k, int64_t dim, int metric, int64_t k, int64_t need, float* out_score,
               int64_t* out_seg, int64_t* out_local, uint8_t* lacking, int64_t* rescored) {
  *rescored = 0;
  if (nq <= 0) return 0;
  const int64_t nprobe = std::min(probe.nprobe, probe.nlist);
  if ((probe.centroids && nprobe <= 0) || short_k <= 0 || k <= 0 || dim < probe.dim)
    throw std::invalid_argument("ivf: nprobe, short_k and k must be positive, dim >= the centroids' width");
  std::atomic<int64_t> scanned{0}, hits{0};
  const int nthreads = int(std::min<int64_t>(num_threads(), (nq + kBlock - 1) / kBlock));
  parallel_blocks(nq, nthreads, kBlock, [&](int, int64_t q0, int64_t q1) {
    // a batch's stages stay on its blocks' threads; a single query may split its
    // Hamming ranges and its per-segment rescoring over the pool (parallel_for_pooled)
    std::optional<SerialScope> serial;
    if (nq > 1) serial.emplace();
    const int64_t nb = q1 - q0;
    std::vector<float> qp(size_t(nb * dim));
    prepare(queries + q0 * query_stride, nb, query_stride, dim, normalise, qp.data());
    const float* q = qp.data();
    std::vector<uint8_t> own_codes;
    const uint8_t* qc = qcodes ? qcodes + q0 * code_stride : nullptr;
    int64_t cs = code_stride;
    if (!qc) {
      own_codes.resize(size_t(nb * nbytes));
      sign_codes(queries + q0 * query_stride, nb, query_stride, nbytes, own_codes.data());
      qc = own_codes.data();
      cs = nbytes;
    }
    std::vector<int64_t> lists;
    if (probe.centroids) {
      std::vector<float> pscore(size_t(nb * nprobe));
      lists.resize(size_t(nb * nprobe));
      if (probe.blocked)
        dense::topk_blocked(static_cast<const uint16_t*>(probe.centroids), probe.nlist, probe.dim, q, nb, dim, nprobe,
                            probe.metric, pscore.data(), lists.data(), probe.kind);
      else
        dense::topk(probe.centroids, probe.dtype, probe.nlist, probe.stride, probe.dim, q, nb, dim, nprobe,
                    probe.metric, nullptr, nullptr, 0, pscore.data(), lists.data());
      for (int64_t l : lists)
        if (l < 0 || l >= probe.nlist) throw std::runtime_error("ivf: the probe found fewer lists than nprobe");
    }
    // segments with per-query ranges: this block's rows of them (shared ranges: the
    // same row for every query, repeated)
    std::vector<multiseg::HammingSeg> hs(hsegs, hsegs + nseg);
    std::vector<std::vector<int64_t>> own_ranges(static_cast<size_t>(nseg));
    for (int64_t s = 0; s < nseg; ++s) {
      multiseg::HammingSeg& g = hs[size_t(s)];
      if (!g.ranges) continue;
      if (g.ranges_shared) {
        auto& r = own_ranges[size_t(s)];
        r.resize(size_t(nb * g.nranges * 2));
        for (int64_t j = 0; j < nb; ++j) std::copy(g.ranges, g.ranges + 2 * g.nranges, r.data() + j * 2 * g.nranges);
        g.ranges = r.data();
      } else {
        g.ranges += q0 * g.nranges * 2;
      }
    }
    std::vector<int32_t> dist(size_t(nb * short_k));
    std::vector<int64_t> seg(size_t(nb * short_k)), local(size_t(nb * short_k));
    scanned += multiseg::hamming_topk(hs.data(), nseg, qc, nb, cs, nbytes, probe.centroids ? lists.data() : nullptr,
                                      probe.centroids ? nprobe : 0, short_k, dist.data(), seg.data(), local.data());
    hits += std::count_if(local.begin(), local.end(), [](int64_t l) { return l >= 0; });
    for (int64_t j = 0; j < nb; ++j)
      lacking[q0 + j] = uint8_t(need > 0 && local[size_t(j * short_k + std::min(need, short_k) - 1)] < 0);
    multiseg::rescore(dsegs, nseg, dim, q, nb, dim, metric, seg.data(), local.data(), short_k, k,
                      out_score + q0 * k, out_seg + q0 * k, out_local + q0 * k);
  });
  *rescored = hits.load();
  return scanned.load();
}

}  // namespace ivf
}  // namespace nestvec
