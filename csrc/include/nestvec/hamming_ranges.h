// Hamming top-k over per-query row ranges: the probe of an inverted-file (IVF) index,
// where each query scans only the lists it probes (contiguous ranges of codes stored
// in list order). Reuses the per-ISA tiles of hamming.h.
#pragma once
#include <cstdint>

namespace nestvec {
namespace hamming {

// codes [n, nbytes] (row stride code_stride); queries [nq, nbytes] (row stride
// query_stride); ranges [nq, nranges, 2] (start, stop) positions into codes, disjoint
// within a query (stop <= start: empty). ids: optional [n] row id of each position
// (int32 or int64 by ids_bytes; null: the position is the id). allow: optional
// bool [n_allow] indexed by id. Output [nq, k]: (distance, id) ascending, missing
// entries (INT32_MAX, -1); ids >= n_allow (or < 0) with an allow mask throw.
void topk_ranges(const uint8_t* codes, int64_t n, int64_t code_stride, const uint8_t* queries,
                 int64_t nq, int64_t query_stride, int64_t nbytes, const int64_t* ranges,
                 int64_t nranges, const void* ids, int ids_bytes, const uint8_t* allow,
                 int64_t n_allow, int64_t k, int32_t* out_dist, int64_t* out_idx);

}  // namespace hamming
}  // namespace nestvec
