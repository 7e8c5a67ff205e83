"""A host search's stages in one native call (``hostcalls.ivf_search`` ->
csrc/cpu/ivf_search.cpp): the ivf probe (or none), the Hamming shortlist over every
segment and its exact rescoring, each query on one thread from start to end.

Called stage by stage from Python a small search spent more in call overhead than in
its kernels (README, per-query cost of ivf). The planner takes this route for an ivf
search, a selective filter's exhaustive search and a funnel over few rows; a
``Searcher`` keeps the :class:`OneCall` of its plan across searches of one snapshot
(and, for a flat search, the :class:`FlatCall` of the multi-segment scan).
"""
from __future__ import annotations

from . import hostcalls

# A funnel whose allowed rows are at most this many runs in one call: below it the
# staged kernels keep a single query on one thread too (multiseg.cpp: kThreadRows).
FUNNEL_ROWS = 1 << 16


def fits(pl, short: int, cent=None) -> bool:
    """Whether the call can run this search: host arrays, no ladder, a shortlist the
    per-thread selectors hold, and (ivf) a ``dim`` at least the centroids' width."""
    r = pl.req
    return not r.ladder and (cent is None or r.dim >= cent.centroids.shape[1]) and pl.cache is None \
        and short <= hostcalls.ONE_CALL_MAX_K


class OneCall:
    """One search's call with its arguments built once: ``hsegs`` (Hamming tuples of
    ``hostcalls.hamming_segments``: list offsets for a probe, shared ranges for a
    filter's gathered rows, nothing for full scans) and the rows of segments
    ``only`` for the rescoring. ``cent``: the ivf centroids to probe (None: no probe).
    The answer is the staged calls' (but for lists whose probe scores tie within the
    float16 rounding of ``IvfCentroids.probe_table``). A query that found fewer than
    ``need`` rows comes back ``lacking`` (the caller probes it again wider)."""

    def __init__(self, pl, only, hsegs, short: int, need: int, nbytes: int, cent=None, nprobe: int = 0):
        r = pl.req
        self.cent, self.nprobe, self.short, self.need, self.nbytes = cent, nprobe, short, need, nbytes
        self.nlist = cent.spec["nlist"] if cent is not None else 0
        self.table = cent.probe_table() if cent is not None else None
        self.l2 = cent is not None and cent.spec["metric"] == "l2"
        self.k, self.dim, self.metric = r.k, r.dim, r.metric
        self.hsegs = hsegs
        self.dsegs = [None] * len(hsegs)  # (hsegs past the segments: ivf spans, rescored in their members)
        for i in only:
            v = pl.segments[i].vectors
            self.dsegs[i] = (v, hostcalls.dtype_code(v), pl.segments[i].offset, min(r.k, pl.counts[i]), None)

    # per segment None or its int64 id column: the call then answers each hit's id (a
    # Searcher sets it; a gather per hit in Python cost more than the call's own work)
    ids = None

    def __call__(self, queries, qcodes=None):
        """(score, seg, local [Q, k'], lacking bool [Q], rows compared, rows rescored,
        ids [Q, k'] or None); ``qcodes`` None: the sign bits of the queries' first 8 *
        nbytes values."""
        return hostcalls.ivf_search(queries, qcodes, self.nbytes, self.table, self.l2, self.nprobe,
                                    self.hsegs, self.dsegs, self.short, self.dim, self.metric, self.k, self.need,
                                    self.nlist, self.ids)


def funnel(pl, q_width: int, nbytes):
    """The OneCall of ``pl``'s funnel for queries of ``q_width`` values whose codes are
    ``nbytes`` wide (planner.code_bytes) when it fits (few allowed rows, whole bytes of
    the queries' values), else None."""
    r = pl.req
    short = r.k * (r.rescore or 10)
    active = pl._active()
    if not fits(pl, short) or sum(pl.counts) > FUNNEL_ROWS or not hostcalls.native_segments() \
            or any(pl.segments[i].codes is None for i in active):
        return None
    if nbytes is None or 8 * nbytes > q_width:  # (the call takes whole bytes of values)
        return None
    hsegs = [None] * len(pl.segments)
    for i in active:
        s = pl.segments[i]
        hsegs[i] = (s.codes, pl.masks[i], s.offset, min(short, pl.counts[i]), None, None)
    return OneCall(pl, active, hsegs, short, 0, nbytes)


class FlatCall:
    """A flat search's one call with its segments' arguments built once
    (``hostcalls.dense_segments`` over every allowed row in place: the call the
    planner's flat route makes when no filter is selective enough to gather rows).
    Called like :class:`OneCall`; nothing is ever ``lacking``."""

    nprobe = nlist = 0  # (no probe to widen)

    def __init__(self, pl, segs):
        r = pl.req
        self.k, self.dim, self.metric, self.segs = r.k, r.dim, r.metric, segs

    def __call__(self, queries, qcodes=None):
        seg, local, score = hostcalls.dense_segments(queries, self.dim, self.metric, self.k, self.segs)
        return score, seg, local, None, None, None, None


def flat(pl):
    """The FlatCall of ``pl``'s flat search when every allowed row is scanned in place
    (host segments, no filter selective enough to gather rows), else None."""
    active = pl._active()
    if not active or pl.cache is not None or not hostcalls.native_segments() \
            or any(pl.gathers(i) for i in active):
        return None
    segs = [None] * len(pl.segments)
    for i in active:
        segs[i] = pl.scan_tuple(i)
    return FlatCall(pl, segs)
