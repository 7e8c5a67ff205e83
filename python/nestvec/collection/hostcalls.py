"""The planner's calls into the ops for host (NumPy) searches.

A collection search validates its queries once (validate.queries: float32, finite, of
scorable norm) and hands the kernels only its own arrays: mapped segment columns, masks
it built, candidate ids from its own merges. The public ops validate all of that again
on every call, which was most of a small search's cost (a 1k-row funnel: two op calls
spent ~60 us in argument checks around ~15 us of kernels; README, single-query
latency). So on the cpu backend these functions call the registered kernels with the
checks skipped; any other backend (``NESTVEC_BACKEND``, torch inputs) goes through the
public op unchanged, and a cpu implementation swapped in the registry
(``_backend.override``) is called as registered.
"""
from __future__ import annotations

import os

import numpy as np

from .. import _backend as be
from .. import _checks as ck
from .. import ops
from ..ops import dense as dense_op
from ..ops import hamming as hamming_op
from ..ops import hamming_ranges as ranges_op


_DTYPE = {np.dtype(k): v for k, v in be.DTYPE_CODE.items() if k != "bfloat16"}


def _cpu(x) -> bool:
    """A host array that ``be.resolve`` would send to the cpu backend."""
    return type(x) is np.ndarray and be._C is not None and \
        os.environ.get("NESTVEC_BACKEND", "auto") in ("auto", "cpu", "")


_LAST = (None, None, None, None)  # (queries, dim, metric, prepared): one search's stages reuse it


def _prepared(queries, dim: int, metric: str) -> np.ndarray:
    """The queries as the cpu backend of ``ops.dense_topk`` prepares them (cosine:
    normalised in float64, then float32), so scores are bit-identical to the op's."""
    global _LAST
    last = _LAST
    if last[0] is queries and last[1] == dim and last[2] == metric:
        return last[3]
    q = queries[:, :dim]
    if metric == "cosine":
        q = q.astype(np.float64)
        nrm = np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]
        if len(nrm) == 1 and nrm[0, 0] > 0:  # one query: the same quotient without the mask
            np.divide(q, nrm, out=q)
        else:
            np.divide(q, nrm, out=q, where=nrm > 0)
    q = np.ascontiguousarray(q, dtype=np.float32)
    _LAST = (queries, dim, metric, q)  # one assignment: threads see an old or a new entry
    return q


def dense(db, queries, k, dim, metric, allow=None, candidates=None):
    """``ops.dense_topk`` (host: float32 queries [Q, >= dim] from validate.queries)."""
    if not (_cpu(db) and type(queries) is np.ndarray):
        return ops.dense_topk(db, queries, k, dim=dim, metric=metric, allow=allow, candidates=candidates)
    impl = be.implementation("dense_topk", "cpu")
    if impl is not dense_op._cpu:
        return impl(db, db.dtype.name, queries, k, dim, metric, allow, candidates)
    q = _prepared(queries, dim, metric)
    a = None if allow is None else allow.view(np.uint8)
    c = None
    if candidates is not None:
        c = candidates if (candidates.dtype == np.int64 and candidates.flags.c_contiguous) \
            else np.ascontiguousarray(candidates, dtype=np.int64)

    def run(q0, q1):  # the kernel's selectors grow with k: large k goes in query slices
        score = np.empty((q1 - q0, k), np.float32)
        idx = np.empty((q1 - q0, k), np.int64)
        be._C.dense_topk(db, _DTYPE[db.dtype], dim, q[q0:q1], k, be.METRIC_CODE[metric], a,
                         None if c is None else c[q0:q1], score, idx)
        return score, idx

    return ck.by_query_slices(run, q.shape[0], k)


def hamming(codes, queries, k, allow=None):
    """``ops.hamming_topk`` (host: uint8 codes and query codes)."""
    if not (_cpu(codes) and type(queries) is np.ndarray):
        return ops.hamming_topk(codes, queries, k, allow=allow)
    impl = be.implementation("hamming_topk", "cpu")
    if impl is not hamming_op._cpu:
        return impl(codes, queries, k, allow)
    queries = np.ascontiguousarray(queries)
    a = None if allow is None else allow.view(np.uint8)

    def run(q0, q1):
        dist = np.empty((q1 - q0, k), np.int32)
        idx = np.empty((q1 - q0, k), np.int64)
        be._C.hamming_topk(codes, queries[q0:q1], k, a, dist, idx)
        return dist, idx

    return ck.by_query_slices(run, queries.shape[0], k)


def hamming_ranges(codes, queries, k, ranges, ids=None, allow=None):
    """``ops.hamming_topk_ranges`` (host; ranges from the index's own offsets)."""
    if not _cpu(codes):
        return ops.hamming_topk_ranges(codes, queries, k, ranges, ids=ids, allow=allow)
    queries = np.ascontiguousarray(queries)
    ranges = np.ascontiguousarray(ranges, dtype=np.int64)
    a = None if allow is None else allow.view(np.uint8)

    def run(q0, q1):
        dist = np.empty((q1 - q0, k), np.int32)
        idx = np.empty((q1 - q0, k), np.int64)
        be._C.hamming_topk_ranges(codes, queries[q0:q1], ranges[q0:q1], ids, a, k, dist, idx)
        return dist, idx

    return ck.by_query_slices(run, queries.shape[0], k)


# --------------------------------------------------------------------------- several segments
# One native call per search stage instead of one per segment plus a merge in NumPy
# (csrc/cpu/multiseg.cpp; README, per-query cost). Segments go as a list with None for
# those a search skips, so a result's `seg` is the planner's segment index.


def native_segments() -> bool:
    """Whether a host search's segments go to the multi-segment kernels: the cpu
    backend with its registered kernels (a kernel swapped through
    ``_backend.override`` is called per segment, as registered)."""
    if be._C is None or os.environ.get("NESTVEC_BACKEND", "auto") not in ("auto", "cpu", ""):
        return False
    reg = be._REGISTRY
    return (reg["hamming_topk"].get("cpu") is hamming_op._cpu
            and reg["hamming_topk_ranges"].get("cpu") is ranges_op._cpu
            and reg["dense_topk"].get("cpu") is dense_op._cpu)


def dtype_code(x: np.ndarray) -> int:
    code = _DTYPE.get(x.dtype)  # a dict hit: dtype.name costs microseconds
    return be.DTYPE_CODE[x.dtype.name] if code is None else code


def _slices(nq: int, k: int):
    step = nq if k <= ck.LARGE_K_MIN else max(1, ck.LARGE_K_KEYS // k)
    return [(q0, min(nq, q0 + step)) for q0 in range(0, nq, step)]


def hamming_segments(queries, k: int, segs: list, lists=None):
    """Hamming top-k over several segments: ``segs[i]`` None or (codes, allow,
    position, k_i, ranges, ids[, allow_at]) (position: the first row's global position, or an
    int64 array of each row's; ranges: int64 [Q, P, 2], or with ``lists`` [Q, P] the
    list offsets [nlist + 1]; ids: local row of each code row; allow_at: a mask by
    code row, checked before ``allow``, which is by local row). Returns (dist, seg,
    local [Q, min(k, sum of k_i)], rows compared), as wide as a merge of the
    segments' lists (a funnel's ladder sizes its stages by it); missing: local -1."""
    queries = np.ascontiguousarray(queries)
    if lists is not None:
        lists = np.ascontiguousarray(lists, dtype=np.int64)
    if k <= ck.LARGE_K_MIN:
        return be._C.multiseg_hamming_topk(queries, k, segs, lists)
    sl = _slices(queries.shape[0], k)
    outs = []
    for q0, q1 in sl:
        sub = segs if lists is not None else \
            [s if s is None or s[4] is None else s[:4] + (s[4][q0:q1],) + s[5:] for s in segs]
        outs.append(be._C.multiseg_hamming_topk(queries[q0:q1], k, sub, None if lists is None else lists[q0:q1]))
    return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]),
            np.concatenate([o[2] for o in outs]), sum(o[3] for o in outs))


def dense_segments(queries, dim: int, metric: str, k: int, segs: list, cand_seg=None, cand_local=None):
    """Exact top-k at ``dim`` over several segments (``segs[i]`` None or (vectors,
    dtype code, position, k_i, allow)) of the shortlist ``cand_seg`` / ``cand_local``
    ``[Q, C]`` (local -1: none), or of every allowed row without one. Scores are
    ``dense_topk``'s, bit for bit. Returns (seg, local, score) ``[Q, min(k, sum of k_i)]``."""
    q = _prepared(queries, dim, metric)
    m = be.METRIC_CODE[metric]
    if cand_seg is not None:
        cand_seg = np.ascontiguousarray(cand_seg, dtype=np.int64)
        cand_local = np.ascontiguousarray(cand_local, dtype=np.int64)
    if k <= ck.LARGE_K_MIN:  # one call whatever the batch
        score, seg, local = be._C.multiseg_rescore(q, dim, m, k, segs, cand_seg, cand_local)
        return seg, local, score
    sl = _slices(q.shape[0], k)
    outs = []
    for q0, q1 in sl:
        if len(sl) == 1:
            cs, cl, qq = cand_seg, cand_local, q
        else:
            qq = q[q0:q1]
            cs = None if cand_seg is None else cand_seg[q0:q1]
            cl = None if cand_local is None else cand_local[q0:q1]
        score, seg, local = be._C.multiseg_rescore(qq, dim, m, k, segs, cs, cl)
        outs.append((seg, local, score))
    if len(outs) == 1:
        return outs[0]
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(3))


# The one-call search keeps a shortlist per query on each thread; larger shortlists
# go through the staged calls, which slice large k by queries (_checks.by_query_slices).
ONE_CALL_MAX_K = ck.LARGE_K_MIN


def probe_bf16_available() -> bool:
    """Whether the native ivf probe scores a bfloat16 pair table on this CPU."""
    return be._C is not None and bool(be._C.probe_bf16_available())


def probe_i8_available() -> bool:
    """Whether the native ivf probe scores an int8 quad table on this CPU."""
    return be._C is not None and bool(be._C.probe_i8_available())


def ivf_search(queries, qcodes, nbytes: int, centroids, l2_probe: bool, nprobe: int, hsegs: list, dsegs: list,
               short: int, dim: int, metric: str, k: int, need: int, nlist: int = 0, ids=None):
    """One search in one call (csrc/cpu/ivf_search.cpp) of validated float32 queries:
    the centroid probe with their first values, as many as the centroids have
    (centroids None: no probe; a 3-D float16 array: ``IvfCentroids.probe_table``'s
    blocks of ``nlist`` centroids), the Hamming shortlist of ``short`` (query codes
    ``qcodes``, or None for the sign bits of the first 8 * ``nbytes`` values) over ``hsegs``
    (``hamming_segments``' tuples: list offsets with a probe, else ranges [Q or 1, P,
    2] or full scans), its exact rescoring at ``dim`` in ``dsegs`` (as
    ``dense_segments``'; the queries prepared as there, in native code). Returns (score,
    seg, local [Q, min(k, sum of k_i)], lacking bool [Q] (fewer than ``need`` rows in
    the shortlist), rows compared, rows rescored, ids): ``ids`` None, or with ``ids`` (per
    segment None or its int64 id column) each hit's id ``[Q, k']``, -1 where none."""
    score, seg, local, lacking, scanned, rescored, hit_ids = be._C.ivf_search(
        queries, qcodes, nbytes, centroids, 2 if l2_probe else 1, nprobe, hsegs, dsegs, short, dim,
        be.METRIC_CODE[metric], k, need, nlist, ids)
    return score, seg, local, lacking.view(bool), scanned, rescored, hit_ids
