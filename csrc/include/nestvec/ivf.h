// An ivf search in one native call: the centroid probe (dense::topk over the
// centroids), the Hamming shortlist over every indexed segment's probed lists
// (multiseg::hamming_topk) and its exact rescoring (multiseg::rescore). Each query is
// answered by one thread from start to end, so a batch splits by queries and a single
// query crosses into native code once (the three stages from Python cost more in
// call overhead than in work at batch 1; README, per-query cost of ivf).
#pragma once
#include <cstdint>

#include "nestvec/dtype.h"
#include "nestvec/multiseg.h"

namespace nestvec {
namespace ivf {

struct Probe {
  const void* centroids = nullptr;  // [nlist, >= dim] of dtype, row stride `stride` elements
  DType dtype = DType::F32;
  // centroids is instead the float16 table in dense::kBlockRows blocks (dense.h),
  // ceil(nlist / kBlockRows) * dim * kBlockRows values (stride unused)
  bool blocked = false;
  int kind = 0;  // blocked: the table's dense::BlockedKind (float16, bf16 pairs, int8 quads)
  int64_t nlist = 0, stride = 0, dim = 0;
  int metric = 0;  // dense::Metric of the probe: kIP (unit centroids) or kL2
  int64_t nprobe = 0;
};

// probe.centroids null: no probe; each segment is searched as hamming_topk searches it
// without lists (its ranges, shared ones included, or every row: a selective filter's
// gathered rows). queries: float32 [nq, >= dim] as validated (dim >= probe.dim): each block's first
// `dim` values are prepared as dense::topk takes them (normalise: divided by their
// norm, summed in double, as hostcalls._prepared does for cosine). qcodes: uint8
// [nq, >= nbytes] in the list files' encoding, or null for the sign bits of the
// queries' first 8 * nbytes values (MSB first, as np.packbits). hsegs[s] (with
// list_offsets) and dsegs[s] describe segment s (k == 0: skipped). short_k: the
// Hamming shortlist's width, k: the answer's (both already capped by the segments' k).
// need: fewest shortlist hits a query must find; lacking[q] = 1 when it found fewer
// (the caller probes it again wider). Outputs [nq, k]: (score, seg, local), missing
// entries (-inf | +inf for l2, -1, -1). Returns the code rows compared; *rescored:
// the shortlist entries scored exactly.
int64_t search(const Probe& probe, const float* queries, int64_t nq, int64_t query_stride, bool normalise,
               const uint8_t* qcodes, int64_t code_stride, int64_t nbytes,
               const multiseg::HammingSeg* hsegs, const multiseg::DenseSeg* dsegs, int64_t nseg,
               int64_t short_k, int64_t dim, int metric, int64_t k, int64_t need, float* out_score,
               int64_t* out_seg, int64_t* out_local, uint8_t* lacking, int64_t* rescored);

}  // namespace ivf
}  // namespace nestvec
