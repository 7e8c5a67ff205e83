"""A search with its arguments fixed that answers in NumPy arrays (``Collection.searcher``).

``Collection.search`` checks every argument, plans and builds an Arrow table on each
call; at batch 1 over an index that fixed cost is most of the search (README, per-query
cost of ivf). A :class:`Searcher` checks the arguments once, keeps the plan of the
collection's current snapshot (the filter's masks, the segments, and for an ivf search,
a funnel over few rows or a flat scan the arguments of the one native call) and answers ``(ids,
scores)`` arrays, as FAISS, hnswlib and USearch do. It follows the collection: after a
write or ``refresh()`` its next search plans the new snapshot. Its answers are
``search()``'s rows, in the same order.
"""
from __future__ import annotations

import numpy as np

from . import filters, onecall, packing
from . import snapshot as sn
from . import validate as vd
from .embedding import is_text
from .planner import MODES, Planner, Request, _index_plan, code_bytes, resolve_mode


class Searcher:
    """``col.searcher(k, dim=None, mode="auto", rescore=None, filter=None,
    ladder=None, nprobe=None, ef=None)``; the arguments mean what they mean for
    ``Collection.search`` (host searches; no extra columns or score cut).

    ``search(q)`` takes what ``Collection.search`` takes (``[Q, D]``, ``[D]``, prefix
    queries ``[Q, dim]``, or text with an embedding) and returns ``(ids, scores)``:
    ``[Q, k]`` (``[k]`` for one 1-D query), best first, ties by row order. ``ids`` is
    int64 (``-1`` where a query has fewer than k matching rows) or, for string ids,
    an object array (``None`` there); ``scores`` float32 (-inf there, +inf for l2),
    int32 Hamming distances for ``mode="binary"`` (int32 max there).
    """

    def __init__(self, col, k: int = 10, dim: int | None = None, mode: str = "auto", rescore: int | None = None,
                 filter=None, ladder=None, nprobe: int | None = None, ef: int | None = None):
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self._col = col
        self.k = vd.positive_int(k, "k")
        self.mode = mode
        self._dim_arg = dim
        self._rescore = None if rescore is None else vd.positive_int(rescore, "rescore")
        self._nprobe = None if nprobe is None else vd.positive_int(nprobe, "nprobe")
        self._ef = None if ef is None else vd.positive_int(ef, "ef")
        self._ladder_arg = ladder
        self._filter = filter
        self._state = None
        self._bind(col._snapshot())

    @property
    def version(self) -> int:
        """The collection version the last search (or the constructor) planned."""
        return self._state[0].version

    def __repr__(self):
        return (f"Searcher(k={self.k}, mode={self.mode!r}, version={self.version}, "
                f"route={'one call' if self._state[6] is not None else 'planner'})")

    def _bind(self, snap) -> None:
        """Plan ``snap``: argument checks that depend on it, masks, the request and
        the one-call route (ivf, a funnel over few rows, flat) when it applies."""
        col = self._col
        m = snap.manifest
        d_full = m["dim"]
        dim = d_full if self._dim_arg is None else vd.positive_int(self._dim_arg, "dim", d_full)
        if self.mode in ("ivf", "hnsw") or self._nprobe is not None:
            col._check_index_args(snap, self.mode, dim, self._nprobe)
        ladder = vd.ladder(self._ladder_arg, dim)
        segs, masks = snap.segments, col._masks(snap, self._filter)
        counts = [s.n if mk is None else filters.allowed_count(mk) for s, mk in zip(segs, masks)]
        rows = sum(s.n for s in segs)
        req = Request(self.k, dim, self.mode, self._rescore, m["metric"], d_full, m["binary"], ladder,
                      self._nprobe, self._ef, tuple(snap.indexes), sum(counts) / rows if rows else 1.0)
        segs, masks, remap = packing.pack(segs, masks, col._packs)
        if remap is not None:
            counts = None
        planner_args = (segs, masks, req, counts)
        pl = self._planner(planner_args, snap)
        mode = resolve_mode(req, sum(pl.counts), d_full)
        fast = None
        if mode == "ivf" and remap is None:
            fast = _index_plan().plain_ivf(pl, d_full)
        elif mode == "funnel":  # (packed segments too: its hits map back through remap)
            fast = onecall.funnel(pl, d_full, code_bytes(req, d_full))
        elif mode == "flat":
            fast = onecall.flat(pl)
        if isinstance(fast, onecall.OneCall) and remap is None and m["id_type"] == "int64":
            # the call answers ids (_answer); entries past the segments are ivf spans
            fast.ids = [s.file.int_ids() for s in segs] + [None] * (len(fast.hsegs) - len(segs))
        self._state = (snap, planner_args, remap, d_full, dim, m["metric"], fast)  # one assignment

    def _planner(self, args, snap) -> Planner:
        segs, masks, req, counts = args
        return Planner(segs, masks, req, filtered=self._filter is not None, indexes=snap.indexes, counts=counts)

    def search(self, q):
        """``(ids, scores)`` of ``q``'s k best rows (see the class)."""
        snap, seg, local, score, single, req, hit_ids = self._hits(q)
        if hit_ids is not None and hit_ids.shape[1] == self.k:  # the call's own answer
            ids, scores = hit_ids, score
        else:
            ids, scores = self._answer(snap, seg, local, score, req)
        return (ids[0], scores[0]) if single else (ids, scores)

    def _hits(self, q):
        """(snapshot, seg, local, score [Q, w], single query, request, ids [Q, w] or
        None) of ``q``; local -1 (id -1) where a query has fewer rows (``Collection.search``
        builds its table from them when it reuses a searcher). ``ids``: the int64 ids
        of the hits when the kept call answered them."""
        col = self._col
        snap = col._snapshot()
        st = self._state
        if st[0] is not snap:  # a write or refresh() published a new snapshot
            self._bind(snap)
            st = self._state
        _, args, remap, d_full, dim, metric, fast = st
        if is_text(q):
            q = col._embed_query(q)
        qx, single = vd.queries(q, d_full, dim, metric)
        done, ids = False, None
        if fast is not None and qx.shape[1] == d_full:
            score, seg, local, lacking, _, _, ids = fast(qx)
            done = fast.nprobe >= fast.nlist or not lacking.any()
        if not done:  # every other route, and queries that need a wider probe
            ids = None
            _, seg, local, score = self._planner(args, snap).run(qx)
        if remap is not None:
            seg, local = remap(seg, local)
        return snap, seg, local, score, single, args[2], ids

    def _answer(self, snap, seg, local, score, req):
        nq, w = local.shape
        k = self.k
        binary = req.mode == "binary"
        valid = local >= 0
        if w == k and len(snap.segments) == 1 and snap.manifest["id_type"] == "int64" and local.min() >= 0:
            # the common answer: one segment, k rows per query
            return (snap.segments[0].file.int_ids()[local],
                    score.astype(np.int32 if binary else np.float32, copy=False))
        if snap.manifest["id_type"] == "int64":
            ids = np.full((nq, k), -1, np.int64)
            ids[:, :w][valid] = sn.gather_int_ids(snap.segments, seg[valid], local[valid])
        else:
            ids = np.full((nq, k), None, object)
            for i in np.unique(seg[valid]).tolist():
                sel = valid & (seg == i)
                ids[:, :w][sel] = np.asarray(snap.segments[i].select(["id"]).column(0).take(local[sel]).to_pylist(),
                                             object)
        if binary:
            out = np.full((nq, k), np.iinfo(np.int32).max, np.int32)
        else:
            out = np.full((nq, k), np.inf if req.metric == "l2" else -np.inf, np.float32)
        out[:, :w][valid] = score[valid]
        return ids, out
