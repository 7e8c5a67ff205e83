"""Search planning: flat / binary / funnel / ivf / hnsw over the segments of one snapshot.

Every segment is searched by the op kernels with its ``allow`` mask (live rows, and
filter matches), then per-segment top-k lists are merged exactly. Merge order is
(score, then global row position), the same tie rule as the kernels, so the answer
does not depend on how rows are split into segments (compaction never changes it).

``funnel`` takes the *global* Hamming top ``k*rescore`` (merged across segments,
identical to a single-segment shortlist), then rescores those rows exactly with
``dense_topk(candidates=...)`` at ``dim``. ``ivf`` and ``hnsw`` (indexes/plan.py) take
their candidates from the segments' indexes and rescore them the same way.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

from .. import _checks as ck
from . import hostcalls, onecall
from ..quant import binarize
from .topk import host as _host
from .topk import merge_parts as _merge
from .topk import merge_results

MODES = ("auto", "flat", "binary", "funnel", "ivf", "hnsw")
INDEX_MODES = ("ivf", "hnsw")
# flat search copies the allowed rows out when fewer than this fraction are allowed
GATHER_FRACTION = 0.05
# ... or, for at most this many host queries, scores them in place (candidate path):
# each query reads the rows on its own there, so a larger batch is cheaper on a copy
CANDIDATE_QUERIES = 2


def dense(db, queries, k, dim, metric, allow=None, candidates=None):
    """dense_topk on the backend for where ``db`` lives (hostcalls.py: host searches
    skip the op's checks of what the collection already checked)."""
    return hostcalls.dense(db, queries, k, dim, metric, allow, candidates)


# --------------------------------------------------------------------------- device cache


class DeviceCache:
    """Segment arrays copied to one device, keyed by what makes them valid: vectors and
    codes by segment name (segments are immutable), live masks by (segment, deletion
    file). ``retain`` drops every entry a new snapshot no longer names; the collection
    calls it on every commit/refresh, so a search never sees stale rows."""

    def __init__(self, device, transfer=None):
        self.device = device
        self._transfer = transfer or self._to_device
        self._items: dict = {}
        self._lock = threading.Lock()  # searching threads share one cache
        self.transfers = 0  # cache misses: segment arrays copied to the device
        self.temporaries = 0  # per-search arrays (filter masks, candidate lists)

    def _to_device(self, array):
        import torch

        with warnings.catch_warnings():  # the mmapped buffers are read-only; we never write
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(array)
        return t.to(self.device)

    def get(self, key, array):
        hit = self._items.get(key)
        if hit is None:
            hit = self._transfer(array)
            with self._lock:
                hit = self._items.setdefault(key, hit)
                self.transfers += 1
        return hit

    def put_temporary(self, array):
        """A per-search array (a filter mask): transferred, never cached."""
        self.temporaries += 1
        return self._transfer(array)

    def retain(self, keys) -> None:
        keys = set(keys)
        with self._lock:
            for key in [k for k in self._items if k not in keys]:
                del self._items[key]

    def keys(self):
        return set(self._items)

    @staticmethod
    def keys_for(segments, binary: bool) -> set:
        out = set()
        for s in segments:
            out.add(("vec", s.name))
            if binary:
                out.add(("code", s.name))
            if s.live is not None:
                out.add(("live", s.name, s.deletions))
        return out


# --------------------------------------------------------------------------- plan


@dataclass
class Request:
    k: int
    dim: int
    mode: str
    rescore: int
    metric: str
    d_full: int
    binary: bool
    ladder: tuple = ()  # funnel: increasing prefix dims < dim rescored before `dim`
    nprobe: int | None = None  # ivf: lists probed (None: the index's tuned default)
    ef: int | None = None  # hnsw: candidates per query (None: the index's default)
    indexes: tuple = ()  # index kinds the snapshot has (auto picks one)
    selectivity: float = 1.0  # allowed rows / rows (auto routes selective filters to exact modes)


def code_bytes(r: Request, q_width: int):
    """Bytes of the query codes a search compares: all D values' for full-width queries
    (mode="binary" at a narrower dim compares the prefix's), else the dim-value
    prefix's; None when that prefix is not whole bytes."""
    if q_width == r.d_full and (r.mode != "binary" or r.dim == r.d_full):
        return (r.d_full + 7) // 8
    return None if r.dim % 8 else r.dim // 8


def ladder_keep(short: int, k: int, stages: int) -> list:
    """Shortlist kept after each ladder stage: geometric from k*rescore down to k
    (e.g. 100 -> 46 -> 22 -> 10 for two stages), never below k."""
    ratio = (k / short) ** (1.0 / (stages + 1))
    return [max(k, int(round(short * ratio ** (i + 1)))) for i in range(stages)]


def resolve_mode(req: Request, n_allowed: int, q_width: int | None = None) -> str:
    """``q_width``: values per query (D, or just ``dim``)."""
    if req.mode in INDEX_MODES and req.mode not in req.indexes:
        raise ValueError(f"mode={req.mode!r}: this collection has no {req.mode} index "
                         f"(create one with col.create_index({req.mode!r}))")
    if req.mode == "auto":
        rescore = req.rescore or 10
        if req.indexes and n_allowed > req.k * rescore and (q_width is None or q_width >= req.d_full):
            # a selective filter (below EXACT_FRACTION) too: the index's plan searches
            # just its rows, with a wider shortlist than the funnel over every code
            # (docs/ann-benchmark-log.md: the filtered benchmark). Prefix-only queries
            # may be narrower than the index's dim: the exhaustive modes serve them.
            return "ivf" if "ivf" in req.indexes else req.indexes[0]
        if not req.binary:
            return "flat"
        if q_width is not None and q_width < req.d_full and req.dim % 8:
            return "flat"  # no query codes from a prefix that is not whole bytes
        # a shortlist that covers every allowed row is just flat search, done cheaper
        return "funnel" if n_allowed > req.k * rescore else "flat"
    if req.mode in ("binary", "funnel") and not req.binary:
        raise ValueError(f"mode={req.mode!r} needs binary codes; this collection was created "
                         f"with binary=False (use mode='flat')")
    return req.mode


_PLAN = []


def _index_plan():
    """indexes.plan, imported on the first index search (an import statement on every
    search cost microseconds)."""
    if not _PLAN:
        from .indexes import plan

        _PLAN.append(plan)
    return _PLAN[0]


def _take_rows(vec, rows):
    if ck.is_torch(vec):
        import torch

        return vec.index_select(0, torch.from_numpy(rows).to(vec.device))
    return vec[rows]


class Planner:
    """Runs one request over a snapshot's segments.

    ``masks[i]`` is the allow mask of segment i (None: every row), already combining
    deletions and the filter. With a ``cache`` the segment arrays come from the device
    cache and the queries must already be on that device."""

    def __init__(self, segments, masks, req: Request, cache: DeviceCache | None = None,
                 filtered: bool = False, indexes=None, counts=None):
        self.segments = segments
        self.masks = masks
        self.req = req
        self.cache = cache
        self.filtered = filtered
        self.indexes = indexes or {}  # kind -> the snapshot's index (ivf: IvfCentroids, hnsw: spec)
        self.counts = counts if counts is not None else \
            [s.n if m is None else int(np.count_nonzero(m)) for s, m in zip(segments, masks)]
        self.stats: dict = {}  # what the search did (explain)
        self._native = None  # whether host stages go to the multi-segment kernels (native())

    def native(self, queries) -> bool:
        """A host search on the cpu backend: each stage (Hamming shortlist, rescoring,
        flat scan) is one call over every segment (hostcalls.*_segments) instead of
        one per segment plus a merge in NumPy."""
        if self._native is None:
            self._native = self.cache is None and hostcalls.native_segments()
        return self._native and type(queries) is np.ndarray

    def gpos(self, seg, local):
        """Global positions of (seg, local) entries (-1 where local < 0)."""
        out = np.full(local.shape, -1, np.int64)
        for i in np.unique(seg[local >= 0]).tolist():
            sel = (seg == i) & (local >= 0)
            off = self.segments[i].offset
            out[sel] = off[local[sel]] if isinstance(off, np.ndarray) else local[sel] + off
        return out

    # -- arrays on the right device
    def _vec(self, i):
        s = self.segments[i]
        return s.vectors if self.cache is None else self.cache.get(("vec", s.name), s.vectors)

    def _codes(self, i, nbytes):
        s = self.segments[i]
        c = s.codes if self.cache is None else self.cache.get(("code", s.name), s.codes)
        return c if nbytes == c.shape[1] else c[:, :nbytes]

    def _allow(self, i):
        m, s = self.masks[i], self.segments[i]
        if m is None or self.cache is None:
            return m
        if not self.filtered:  # the live mask: cached until the deletion file changes
            return self.cache.get(("live", s.name, s.deletions), m)
        return self.cache.put_temporary(m)

    def _active(self, only=None):
        return [i for i, c in enumerate(self.counts) if c > 0 and (only is None or i in only)]

    # -- modes
    def run(self, queries):
        """queries: [Q, D] or [Q, dim] float (NumPy or a torch tensor on the cache's
        device). Returns (mode, seg [Q,k], local [Q,k], score [Q,k]); local -1 = none."""
        mode = resolve_mode(self.req, sum(self.counts), queries.shape[1])
        nq = queries.shape[0]
        self.stats["mode"] = mode
        if mode in INDEX_MODES:
            if self.cache is not None:
                raise ValueError(f"mode={mode!r} searches on the host; pass host queries (device "
                                 f"searches: mode='flat', 'binary' or 'funnel')")
            plan = _index_plan()
            return (mode,) + (plan.run_ivf if mode == "ivf" else plan.run_hnsw)(self, queries)
        self.stats.update(segments=len(self.segments), rows=sum(s.n for s in self.segments),
                          matches=sum(self.counts), rows_scanned=nq * sum(self.counts), rows_rescored=0)
        if mode == "flat":
            return (mode,) + self._flat(queries, nq)
        qcodes, nbytes = self._query_codes(queries)
        if mode == "binary":
            return (mode,) + self._hamming(qcodes, nbytes, self.req.k, nq)
        return (mode,) + self._funnel(queries, qcodes, nbytes, nq)

    def code_bytes(self, q_width: int):
        """:func:`code_bytes` of this request."""
        return code_bytes(self.req, q_width)

    def _query_codes(self, queries):
        r = self.req
        pack = (lambda x: np.packbits(x > 0, axis=-1)) if type(queries) is np.ndarray else binarize
        nbytes = code_bytes(r, queries.shape[1])
        if nbytes is None:
            raise ValueError(f"dim: binary codes of a {r.dim}-value prefix need dim % 8 == 0 "
                             f"(or pass full {r.d_full}-value queries with mode='funnel')")
        whole = nbytes == (r.d_full + 7) // 8  # the codes of all D values
        return pack(queries if whole else queries[:, :r.dim]), nbytes

    def gathers(self, i: int) -> bool:
        """Whether a flat scan scores a gathered copy of segment i's allowed rows (a
        filter selective enough) instead of streaming the segment in place."""
        return self.masks[i] is not None and self.counts[i] < GATHER_FRACTION * self.segments[i].n

    def scan_tuple(self, i: int) -> tuple:
        """Segment i's entry for the multi-segment flat scan in place
        (``hostcalls.dense_segments``)."""
        v = self.segments[i].vectors
        return (v, hostcalls.dtype_code(v), self.segments[i].offset, min(self.req.k, self.counts[i]), self.masks[i])

    def _flat(self, queries, nq, only=None):
        r = self.req
        parts = []
        native = self.native(queries)
        segs = [None] * len(self.segments) if native else None
        inplace = 0  # segments the one call scans
        for i in self._active(only):
            kk = min(r.k, self.counts[i])
            gather = self.gathers(i)
            if native and not gather:
                segs[i] = self.scan_tuple(i)
                inplace += 1
                continue
            if gather:
                # a selective filter: score a compact copy of the allowed rows instead of
                # streaming the whole segment (ascending rows keep the tie order)
                rows = np.flatnonzero(self.masks[i])
                vec = self._vec(i)
                if nq <= CANDIDATE_QUERIES and not ck.is_torch(vec):
                    # one or two queries on the host: score the rows in place through
                    # the candidate path (no copy of the rows; 1M x 384 f16, 1% allowed:
                    # 2.7 -> 1.6 ms)
                    s, idx = dense(vec, queries, kk, r.dim, r.metric,
                                   candidates=np.broadcast_to(rows, (nq, len(rows))))
                else:
                    s, idx = dense(_take_rows(vec, rows), queries, kk, r.dim, r.metric)
                    idx = _host(idx)
                    idx = np.where(idx >= 0, rows[np.maximum(idx, 0)], -1)
            else:
                s, idx = dense(self._vec(i), queries, kk, r.dim, r.metric, allow=self._allow(i))
            parts.append((self.segments[i].offset, i, s, idx))
        if inplace:
            res = hostcalls.dense_segments(queries, r.dim, r.metric, r.k, segs)
            if not parts:
                return res
            # a selective filter's segments were scored on their gathered rows
            return merge_results([res, _merge(parts, r.k, r.metric != "l2", nq)], r.k, r.metric != "l2", None,
                                 nq, gpos=self.gpos)
        return _merge(parts, r.k, r.metric != "l2", nq)

    def _hamming(self, qcodes, nbytes, k, nq, only=None):
        if self.native(qcodes):
            segs = [None] * len(self.segments)
            for i in self._active(only):
                s = self.segments[i]
                segs[i] = (s.codes, self.masks[i], s.offset, min(k, self.counts[i]), None, None)
            dist, seg, local, _ = hostcalls.hamming_segments(qcodes, k, segs)
            return seg, local, dist
        parts = []
        for i in self._active(only):
            d, idx = hostcalls.hamming(self._codes(i, nbytes), qcodes, min(k, self.counts[i]),
                                       allow=self._allow(i))
            parts.append((self.segments[i].offset, i, d, idx))
        return _merge(parts, k, False, nq)

    def _funnel(self, queries, qcodes, nbytes, nq):
        r = self.req
        short = r.k * (r.rescore or 10)
        call = onecall.funnel(self, queries.shape[1], nbytes) if self.native(queries) else None
        if call is not None:  # few rows: shortlist and rescoring in one native call
            score, seg, local, _, _, rescored, _ = call(queries, qcodes)
            self.stats["rows_rescored"] = rescored
            return seg, local, score
        seg, local, _ = self._hamming(qcodes, nbytes, short, nq)
        self.stats["rows_rescored"] = int(np.count_nonzero(local >= 0))
        return self._rescore(queries, seg, local, nq)

    def rescore(self, queries, seg, local):
        """Exact rescoring of a given shortlist (seg, local ``[Q, s]``, local -1 for
        none; a sharded funnel's second round). Returns (seg, local, score) ``[Q, k]``."""
        return self._rescore(queries, seg, local, queries.shape[0])

    def _rescore(self, queries, seg, local, nq):
        """Exact scores at ``dim`` of a shortlist (seg, local [Q, C]; local -1 =
        none), keeping k; through the ladder's prefix dims first."""
        r = self.req
        short = seg.shape[1]
        # Matryoshka ladder: rescore the survivors at each wider prefix, keeping fewer
        # (exact scores at every stage; the last stage is `dim` and keeps k)
        stages = [(r.dim, r.k)]
        if r.ladder:
            stages = list(zip(r.ladder, ladder_keep(max(short, r.k), r.k, len(r.ladder)))) + stages
        if self.native(queries):
            base = [(i, self.segments[i].vectors) for i in self._active()]
            for d, keep in stages:
                # the shortlist already honours allow; segments without allowed rows
                # (None) drop their candidates, as the per-segment path does
                segs = [None] * len(self.segments)
                for i, v in base:
                    segs[i] = (v, hostcalls.dtype_code(v), self.segments[i].offset, min(keep, self.counts[i]), None)
                seg, local, score = hostcalls.dense_segments(queries, d, r.metric, keep, segs, seg, local)
            return seg, local, score
        active = self._active()
        segs = active if len(active) == 1 else set(np.unique(seg[local >= 0]).tolist())
        for d, keep in stages:
            parts = []
            for i in self._active(segs):
                cand = local if len(segs) == 1 else np.where(seg == i, local, -1)
                if len(segs) > 1 and not (cand >= 0).any():
                    continue
                if self.cache is not None:
                    cand = self.cache.put_temporary(np.ascontiguousarray(cand))
                # the shortlist already honours allow; candidates restrict the exact pass
                # (to at most the segment's rows: more would only pad)
                s, idx = dense(self._vec(i), queries, min(keep, self.counts[i]), d, r.metric,
                               candidates=cand)
                parts.append((self.segments[i].offset, i, s, idx))
            seg, local, score = _merge(parts, keep, r.metric != "l2", nq)
        return seg, local, score
