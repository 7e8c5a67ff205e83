"""Search planning: flat / binary / funnel over the segments of one snapshot.

Every segment is searched by the op kernels with its ``allow`` mask (live rows, and
filter matches), then per-segment top-k lists are merged exactly. Merge order is
(score, then global row position), the same tie rule as the kernels, so the answer
does not depend on how rows are split into segments (compaction never changes it).

``funnel`` takes the *global* Hamming top ``k*rescore`` (merged across segments,
identical to a single-segment shortlist), then rescores those rows exactly with
``dense_topk(candidates=...)`` at ``dim``.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import numpy as np

from .. import _checks as ck
from .. import ops
from ..ops import dense as dense_op
from ..quant import binarize

MODES = ("auto", "flat", "binary", "funnel")
MAX_K = dense_op.MAX_K_CPU
# flat search copies the allowed rows out when fewer than this fraction are allowed
GATHER_FRACTION = 0.05
# ... or, for at most this many host queries, scores them in place (candidate path):
# each query reads the rows on its own there, so a larger batch is cheaper on a copy
CANDIDATE_QUERIES = 2


def dense(db, queries, k, dim, metric, allow=None, candidates=None):
    """dense_topk on the backend for where ``db`` lives."""
    return ops.dense_topk(db, queries, k, dim=dim, metric=metric, allow=allow,
                          candidates=candidates)


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


def ladder_keep(short: int, k: int, stages: int) -> list:
    """Shortlist kept after each ladder stage: geometric from k*rescore down to k
    (e.g. 100 -> 46 -> 22 -> 10 for two stages), never below k."""
    ratio = (k / short) ** (1.0 / (stages + 1))
    return [max(k, int(round(short * ratio ** (i + 1)))) for i in range(stages)]


def resolve_mode(req: Request, n_allowed: int, q_width: int | None = None) -> str:
    """``q_width``: values per query (D, or just ``dim``)."""
    if req.mode == "auto":
        if not req.binary:
            return "flat"
        if q_width is not None and q_width < req.d_full and req.dim % 8:
            return "flat"  # no query codes from a prefix that is not whole bytes
        # a shortlist that covers every allowed row is just flat search, done cheaper;
        # a shortlist beyond the kernels' k limit falls back to exact flat search too
        short = req.k * req.rescore
        return "funnel" if n_allowed > short and short <= MAX_K else "flat"
    if req.mode in ("binary", "funnel") and not req.binary:
        raise ValueError(f"mode={req.mode!r} needs binary codes; this collection was created "
                         f"with binary=False (use mode='flat')")
    return req.mode


def _take_rows(vec, rows):
    if ck.is_torch(vec):
        import torch

        return vec.index_select(0, torch.from_numpy(rows).to(vec.device))
    return vec[rows]


def _host(x):
    if ck.is_torch(x):
        return x.detach().cpu().numpy()
    return x


def _merge(parts, k: int, larger_better: bool, nq: int):
    """Exact top-k of per-segment lists. parts: (offset, seg_index, score [Q,kk], idx [Q,kk]).
    Returns (seg [Q,k], local [Q,k], score [Q,k]) with local -1 for missing entries."""
    if not parts:
        return (np.zeros((nq, 0), np.int64), np.full((nq, 0), -1, np.int64), np.zeros((nq, 0)))
    if len(parts) == 1:  # one segment: its list is already in contract order
        _, i, score, idx = parts[0]
        local = _host(idx).astype(np.int64, copy=False)
        return np.full(local.shape, i, np.int64), local, _host(score)
    score = np.concatenate([_host(p[2]) for p in parts], axis=1)
    local = np.concatenate([_host(p[3]).astype(np.int64) for p in parts], axis=1)
    seg = np.concatenate([np.full(_host(p[3]).shape, p[1], np.int64) for p in parts], axis=1)
    gpos = np.concatenate([np.where(_host(p[3]) >= 0, _host(p[3]) + p[0], -1) for p in parts], axis=1)
    key = score.astype(np.float64)
    if larger_better:
        key = -key
    missing = local < 0
    key[missing] = np.inf
    gpos = np.where(missing, np.iinfo(np.int64).max, gpos)
    order = np.lexsort((gpos, key), axis=-1)[:, :k]
    pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return pick(seg), pick(local), pick(score)


class Planner:
    """Runs one request over a snapshot's segments.

    ``masks[i]`` is the allow mask of segment i (None: every row), already combining
    deletions and the filter. With a ``cache`` the segment arrays come from the device
    cache and the queries must already be on that device."""

    def __init__(self, segments, masks, req: Request, cache: DeviceCache | None = None,
                 filtered: bool = False):
        self.segments = segments
        self.masks = masks
        self.req = req
        self.cache = cache
        self.filtered = filtered
        self.counts = [s.n if m is None else int(m.sum()) for s, m in zip(segments, masks)]

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

    def _active(self):
        return [i for i, c in enumerate(self.counts) if c > 0]

    # -- modes
    def run(self, queries):
        """queries: [Q, D] or [Q, dim] float (NumPy or a torch tensor on the cache's
        device). Returns (mode, seg [Q,k], local [Q,k], score [Q,k]); local -1 = none."""
        mode = resolve_mode(self.req, sum(self.counts), queries.shape[1])
        nq = queries.shape[0]
        if mode == "flat":
            return (mode,) + self._flat(queries, nq)
        qcodes, nbytes = self._query_codes(queries)
        if mode == "binary":
            return (mode,) + self._hamming(qcodes, nbytes, self.req.k, nq)
        return (mode,) + self._funnel(queries, qcodes, nbytes, nq)

    def _query_codes(self, queries):
        r = self.req
        if queries.shape[1] == r.d_full and (r.mode != "binary" or r.dim == r.d_full):
            return binarize(queries), (r.d_full + 7) // 8
        if r.dim % 8:
            raise ValueError(f"dim: binary codes of a {r.dim}-value prefix need dim % 8 == 0 "
                             f"(or pass full {r.d_full}-value queries with mode='funnel')")
        return binarize(queries[:, :r.dim]), r.dim // 8

    def _flat(self, queries, nq):
        r = self.req
        parts = []
        for i in self._active():
            kk = min(r.k, self.counts[i])
            if self.masks[i] is not None and self.counts[i] < GATHER_FRACTION * self.segments[i].n:
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
        return _merge(parts, r.k, r.metric != "l2", nq)

    def _hamming(self, qcodes, nbytes, k, nq):
        parts = []
        for i in self._active():
            d, idx = ops.hamming_topk(self._codes(i, nbytes), qcodes, min(k, self.counts[i]),
                                      allow=self._allow(i))
            parts.append((self.segments[i].offset, i, d, idx))
        return _merge(parts, k, False, nq)

    def _funnel(self, queries, qcodes, nbytes, nq):
        r = self.req
        short = r.k * r.rescore
        seg, local, score = self._hamming(qcodes, nbytes, short, nq)
        # Matryoshka ladder: rescore the survivors at each wider prefix, keeping fewer
        # (exact scores at every stage; the last stage is `dim` and keeps k)
        stages = list(zip(r.ladder, ladder_keep(short, r.k, len(r.ladder)))) + [(r.dim, r.k)]
        for d, keep in stages:
            parts = []
            for i in self._active():
                cand = np.where(seg == i, local, -1)
                if not (cand >= 0).any():
                    continue
                if self.cache is not None:
                    cand = self.cache.put_temporary(np.ascontiguousarray(cand))
                # the shortlist already honours allow; candidates restrict the exact pass
                s, idx = dense(self._vec(i), queries, keep, d, r.metric, candidates=cand)
                parts.append((self.segments[i].offset, i, s, idx))
            seg, local, score = _merge(parts, keep, r.metric != "l2", nq)
        return seg, local, score
