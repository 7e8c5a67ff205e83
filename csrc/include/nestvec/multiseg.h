// Top-k over several segments in one call: the per-segment kernels (hamming.h,
// hamming_ranges.h, dense.h) run segment after segment and their lists merge here by
// (key, then global row position), the tie rule of every mode (collection/topk.py,
// merge_order), so a search over S segments crosses into native code once instead of
// S times plus a merge in NumPy.
#pragma once
#include <cstdint>

#include "nestvec/dtype.h"

namespace nestvec {
namespace multiseg {

// A row's global position: positions[local] when `positions` is set (a union of
// shards' segments, whose rows interleave), else offset + local.
struct Position {
  int64_t offset = 0;
  const int64_t* positions = nullptr;
  int64_t n_positions = 0;  // entries of `positions`: a local row beyond them throws
  int64_t at(int64_t local) const { return positions ? positions[local] : offset + local; }
};

// One segment's codes for hamming_topk.
struct HammingSeg {
  const uint8_t* codes = nullptr;  // [n, >= nbytes], row stride code_stride
  int64_t n = 0, code_stride = 0;
  const uint8_t* allow = nullptr;  // optional bool, indexed by id; n_allow entries
  int64_t n_allow = 0;
  // Probed ranges: either ranges [nq, nranges, 2] (start, stop) positions into codes,
  // or (list_offsets [nlist + 1], with the call's `lists`) the ranges of the lists;
  // neither: every row.
  const int64_t* ranges = nullptr;
  int64_t nranges = 0;
  bool ranges_shared = false;  // ivf::search only: ranges [1, nranges, 2], the same for every query
  const int64_t* list_offsets = nullptr;
  int64_t nlist = 0;
  // optional [n] id (local row) of each position (int32/int64): with ranges, codes may
  // be a gathered subset of the segment's rows (ids: their rows)
  const void* ids = nullptr;
  int ids_bytes = 0;
  // optional bool [n] by code row (with ids): a filter's mask in the codes' order, read
  // with the codes, so a row it excludes is skipped before its id and `allow` entry
  // are (a 10% filter at 10M spent a fifth of its search in those scattered reads)
  const uint8_t* allow_at = nullptr;
  Position pos;
  int64_t k = 0;  // this segment's list length (0: skipped)
  // A span (a list file over several segments' rows, ivf): ids (int64) are rows of
  // its members' rows concatenated, member m's from member_base[m] up to
  // member_base[m + 1]; a hit of member m is member_segs[m]'s row id - member_base[m]
  // (< 0: a member the call skips), read through that segment's allow and positions.
  // The members' own entries are searched through the span only (their k is 0).
  const int64_t* member_segs = nullptr;
  const int64_t* member_base = nullptr;  // [n_members + 1]
  int64_t n_members = 0;
};

// Per query the k best (distance, global position) over every segment's own top
// seg.k. lists: [nq, nprobe] list numbers (checked by the caller to be < nlist) for
// segments with list_offsets. Outputs [nq, k]; missing entries (INT32_MAX, -1, -1).
// Returns the code rows compared (the probed ranges' lengths, or n per query).
int64_t hamming_topk(const HammingSeg* segs, int64_t nseg, const uint8_t* queries, int64_t nq,
                     int64_t query_stride, int64_t nbytes, const int64_t* lists, int64_t nprobe,
                     int64_t k, int32_t* out_dist, int64_t* out_seg, int64_t* out_local);

// One segment's rows for rescore.
struct DenseSeg {
  const void* db = nullptr;  // [n, >= dim] of dtype, row stride `stride` elements
  DType dtype = DType::F32;
  int64_t n = 0, stride = 0;
  const uint8_t* allow = nullptr;  // optional bool [n] (full scans only)
  Position pos;
  int64_t k = 0;  // this segment's list length (0: its candidates are dropped)
};

// Exact scores at `dim` (dense::topk with candidates, so bit-identical to it) of a
// shortlist cand_seg / cand_local [nq, ncand] (local < 0: none; seg outside [0, nseg):
// dropped), keeping per query the k best by (score, global position). Without a
// shortlist (cand_seg null): every allowed row of each segment (flat search). queries:
// float32 as dense::topk takes them (cosine: already unit). Outputs [nq, k]; missing
// entries (-inf | +inf for l2, -1, -1).
void rescore(const DenseSeg* segs, int64_t nseg, int64_t dim, const float* queries, int64_t nq,
             int64_t query_stride, int metric, const int64_t* cand_seg, const int64_t* cand_local,
             int64_t ncand, int64_t k, float* out_score, int64_t* out_seg, int64_t* out_local);

// Whether rescore scores a shortlist that spans several segments in one dense::topk
// call (default on; NESTVEC_RESCORE_ONE_CALL=0 or set_one_call_rescore(false): one call
// per segment, the same answers, for comparison).
bool one_call_rescore();
void set_one_call_rescore(bool on);

}  // namespace multiseg
}  // namespace nestvec
