"""Search of a Collection: argument checks, the planner over one snapshot, and the
result table (a mixin of :class:`~.collection.Collection`)."""
from __future__ import annotations

import json
import time
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import _checks as ck
from . import filters, packing
from . import snapshot as sn
from . import validate as vd
from .embedding import is_text
from .planner import MODES, DeviceCache, Planner, Request
from .searcher import Searcher


def _check_device_type(dev, name: str) -> None:
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: searches run on the CPU or a CUDA device, got device type "
                         f"{dev.type!r}")


def _pint(v, name: str, hi: int | None = None) -> int:
    """vd.positive_int, with the common case (a plain int in range) first."""
    if type(v) is int and 0 < v and (hi is None or v <= hi):
        return v
    return vd.positive_int(v, name, hi)


def _locate(snap, rows):
    """``_row`` numbers ``[Q, s]`` (-1: none) -> (segment, local) ``[Q, s]``. Every row
    must be a live row of the snapshot (a shortlist taken from it)."""
    rows = np.asarray(rows, np.int64)
    seg = np.full(rows.shape, -1, np.int64)
    local = np.full(rows.shape, -1, np.int64)
    if not snap.segments:
        return seg, local
    firsts = np.array([e["first_row"] for e in snap.manifest["segments"]], np.int64)
    want = rows >= 0
    si = np.searchsorted(firsts, rows[want], side="right") - 1
    li = np.zeros(len(si), np.int64)
    ok = si >= 0
    for i in np.unique(si[ok]):
        sel = si == i
        srows = snap.segments[i].rows
        pos = np.minimum(np.searchsorted(srows, rows[want][sel]), len(srows) - 1)
        ok[sel] &= srows[pos] == rows[want][sel]
        live = snap.segments[i].live
        if live is not None:
            ok[sel] &= live[pos]
        li[sel] = pos
    if not ok.all():
        bad = rows[want][~ok][:5].tolist()
        raise ValueError(f"candidates: rows {bad} are not live rows of version {snap.version}")
    seg[want], local[want] = si, li
    return seg, local


# Argument sets of search() whose Searcher a collection keeps (on one snapshot).
_PLANS = 32


def _plan_key(k, dim, mode, rescore, flt, nprobe, ef):
    """The memo key of a search()'s arguments, or None when they are not plain ints
    (None allowed but for k), a str mode and a str / expression filter: anything else
    takes the full path, whose checks then run as they always do."""
    if type(k) is not int or type(mode) is not str:
        return None
    for v in (dim, rescore, nprobe, ef):
        if v is not None and type(v) is not int:
            return None
    if flt is None:
        fkey = None
    elif isinstance(flt, (str, pc.Expression)):
        fkey = filters.MaskCache.key(flt)
    else:
        return None
    return (k, dim, mode, rescore, nprobe, ef, fkey)


# the schema of a result with int64 ids and no extra columns (by binary mode)
_INT_RESULT = {b: pa.schema([("query", pa.int64()), ("id", pa.int64()),
                             ("score", pa.int32() if b else pa.float32())]) for b in (False, True)}


def _arrow(a: np.ndarray, typ) -> pa.Array:
    """A NumPy array of ``typ``'s width as an Arrow array over its buffer (pa.array
    infers the type and checks for nulls first)."""
    a = np.ascontiguousarray(a)
    return pa.Array.from_buffers(typ, len(a), [None, pa.py_buffer(a)])


def int_result_table(qi: np.ndarray, ids: np.ndarray, scores: np.ndarray, binary: bool) -> pa.Table:
    """The common result table: int64 ids and no other columns, from NumPy arrays in
    (query, rank) order, with a fixed schema (no type inference per call)."""
    sch = _INT_RESULT[binary]
    return pa.Table.from_arrays([_arrow(qi.astype(np.int64, copy=False), pa.int64()),
                                 _arrow(ids.astype(np.int64, copy=False), pa.int64()),
                                 _arrow(scores.astype(np.int32 if binary else np.float32, copy=False),
                                        sch.field(2).type)], schema=sch)


class SearchMixin:
    def search(self, q, k: int = 10, dim: int | None = None, mode: str = "auto", rescore: int | None = None,
               filter=None, columns=None, device=None, ladder=(), nprobe: int | None = None,
               ef: int | None = None, explain: bool = False, min_score=None,
               max_distance=None) -> pa.Table:
        """Top-k rows per query.

        Args:
            q: one vector ``[D]`` or a batch ``[Q, D]`` (also ``[.., dim]``): NumPy,
                list, or torch tensor. A CUDA tensor (or ``device="cuda"``) runs the
                GPU kernels on segment data cached on the device. With an embedding
                bound: a query text, or a list of them (embedded as queries).
            k: results per query, any ``k >= 1`` in every mode (the funnel's
                shortlist ``k*rescore`` may be of any size too).
            dim: Matryoshka prefix length to score on (default D).
            mode: ``flat`` (exact dense), ``binary`` (Hamming on codes; score = the
                distance, lower is better), ``funnel`` (Hamming shortlist of
                ``k*rescore`` rows, exact rescoring at ``dim``), ``ivf`` (the funnel
                over the ``nprobe`` lists nearest each query), ``hnsw`` (``ef``
                graph candidates, exact rescoring), ``auto`` (an index when the
                collection has one, the queries are full width and more than
                ``k*rescore`` rows are allowed: its plan searches a selective
                filter's rows exhaustively; else the funnel when codes exist and
                there are more than ``k*rescore`` candidate rows, else flat).
            rescore: shortlist factor of funnel / ivf (default: the ivf index's
                tuned value, else 10).
            nprobe: ivf lists probed per query (default: the index's tuned value).
            ef: hnsw candidates per query (default: the index's tuned value).
            explain: attach the plan (see :meth:`explain`) to the result's schema
                metadata under ``b"nestvec.explain"`` (JSON).
            filter: ``nv.field(...)`` expression or SQL WHERE text (DuckDB).
            columns: extra columns to return (metadata names, ``"vector"``).
            ladder: funnel only: increasing prefix dims below ``dim`` (e.g. ``(64,
                128)``) at which the Hamming shortlist is rescored exactly before
                ``dim``, each stage keeping fewer rows (geometric from ``k*rescore``
                down to ``k``): Matryoshka adaptive retrieval, fewer full-width reads.
                Ignored by ``flat`` and ``binary``.
            min_score: cosine / ip: drop results scoring below it (a similarity
                threshold; the top-k are found first, so at most k rows remain).
            max_distance: l2: drop results whose score (the squared distance) is
                above it; mode="binary": results with a larger Hamming distance.

        Returns:
            pyarrow Table ``query`` (int64), ``id``, ``score`` (float32; l2: squared
            distance, lower is better; binary: int32 Hamming distance) and
            ``columns``; per query exactly ``min(k, matching live rows)`` rows, best
            first, ties by row order (every mode, filters and deletes included; fewer
            when ``min_score`` / ``max_distance`` cut). ``.to_pandas()`` or
            ``polars.from_arrow(table)`` convert it.
        """
        t0 = time.perf_counter()
        plan_key = None
        if columns is None and device is None and not explain and min_score is None and max_distance is None \
                and type(q) is np.ndarray and type(ladder) is tuple and not ladder:
            plan_key = _plan_key(k, dim, mode, rescore, filter, nprobe, ef)
            s = self._plans.get(plan_key) if plan_key is not None else None
            if s is not None:  # this argument set was searched (and checked) on this snapshot
                snap, seg, local, score, _, req, _ = s._hits(q)
                return self._result(snap, seg, local, score, [], req.mode)
        snap, cols, used, seg, local, score, planner, nq = self._hits(
            q, k, dim, mode, rescore, filter, columns, device, ladder, nprobe=nprobe, ef=ef,
            min_score=min_score, max_distance=max_distance)
        out = self._result(snap, seg, local, score, cols, used)
        if plan_key is not None:  # (a host search: plan_key needs a NumPy query and no device)
            self._remember_plan(plan_key, snap, k, dim, mode, rescore, filter, nprobe, ef)
        if explain:
            plan = dict(planner.stats, requested=mode, k=planner.req.k, dim=planner.req.dim, queries=nq,
                        filtered=filter is not None, version=snap.version,
                        ms=round((time.perf_counter() - t0) * 1e3, 3))
            out = out.replace_schema_metadata({b"nestvec.explain": json.dumps(plan)})
        return out

    def _hits(self, q, k, dim, mode, rescore, filter, columns, device, ladder, candidates=None,
              nprobe=None, ef=None, min_score=None, max_distance=None):
        """The search without its result table: (snapshot, columns, mode used, seg
        [Q,k], local [Q,k], score [Q,k], the planner, Q), local -1 for no row.
        ``candidates``: per query the ``_row`` numbers to rescore exactly (-1 padded),
        instead of a Hamming shortlist (the second round of a sharded funnel)."""
        snap = self._snapshot()  # the one snapshot this search reads
        m = snap.manifest
        if is_text(q):
            q = self._embed_query(q)
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        k = _pint(k, "k")
        rescore = None if rescore is None else _pint(rescore, "rescore")
        nprobe = None if nprobe is None else _pint(nprobe, "nprobe")
        ef = None if ef is None else _pint(ef, "ef")
        d_full = m["dim"]
        dim = d_full if dim is None else _pint(dim, "dim", d_full)
        if mode in ("ivf", "hnsw") or nprobe is not None:
            self._check_index_args(snap, mode, dim, nprobe)
        ladder = () if type(ladder) is tuple and not ladder else vd.ladder(ladder, dim)
        cut = vd.cutoff(min_score, max_distance, m["metric"], mode)
        cols = self._columns(snap, columns, [])
        dev = self._device(q, device)
        qx, single = vd.queries(q, d_full, dim, m["metric"])
        if dev is not None and (not ck.is_torch(qx) or str(qx.device) != str(dev)):
            import torch

            qx = torch.as_tensor(qx).to(dev)
        segs, masks, remap = snap.segments, self._masks(snap, filter), None
        counts = [s.n if mk is None else filters.allowed_count(mk) for s, mk in zip(segs, masks)]
        rows = sum(s.n for s in segs)
        req = Request(k, dim, mode, rescore, m["metric"], d_full, m["binary"], ladder, nprobe, ef,
                      tuple(snap.indexes) if dev is None else (), sum(counts) / rows if rows else 1.0)
        if dev is None and candidates is None:
            segs, masks, remap = packing.pack(segs, masks, self._packs)
            if remap is not None:
                counts = None
        planner = Planner(segs, masks, req, cache=self._cache(dev) if dev is not None else None,
                          filtered=filter is not None, indexes=snap.indexes, counts=counts)
        if candidates is None:
            used, seg, local, score = planner.run(qx)
        else:
            used = "funnel"
            seg, local, score = planner.rescore(qx, *_locate(snap, candidates))
        if remap is not None:
            seg, local = remap(seg, local)
        local = vd.apply_cutoff(cut, score, local)
        return snap, cols, used, seg, local, score, planner, int(qx.shape[0])

    def _remember_plan(self, key, snap, k, dim, mode, rescore, flt, nprobe, ef) -> None:
        """Keep a Searcher for a host search's argument set that just ran on ``snap``
        for the second time: the next search() with the same arguments skips the
        checks and the planning (filter masks, segment tuples) and pays the searcher's
        cost plus its table. A set seen once is only noted, so that searches whose
        filters never repeat do not plan twice. Publishing a version empties the memo
        (Collection._publish)."""
        if len(self._plans) >= _PLANS:
            self._plans.clear()
        if key not in self._plans:
            self._plans[key] = None
            return
        try:
            # (a weak reference: the memo must not keep this handle alive, its writer lock
            # held, after the caller drops it)
            s = Searcher(weakref.proxy(self), k, dim=dim, mode=mode, rescore=rescore, filter=flt, nprobe=nprobe,
                         ef=ef)
        except Exception:  # noqa: BLE001 - a plan we cannot keep is simply not kept
            return
        if s._state[0] is snap and self._snap is snap:
            self._plans[key] = s

    def searcher(self, k: int = 10, dim: int | None = None, mode: str = "auto", rescore: int | None = None,
                 filter=None, ladder=None, nprobe: int | None = None, ef: int | None = None) -> Searcher:
        """A search with these arguments fixed, answering ``(ids, scores)`` NumPy arrays
        ``[Q, k]`` instead of a table: the arguments are checked and the plan made once
        per snapshot, so a batch-1 search costs little more than its kernels (README,
        Sub-linear search). It follows this handle to new versions. See
        :class:`~nestvec.collection.searcher.Searcher`."""
        return Searcher(self, k, dim=dim, mode=mode, rescore=rescore, filter=filter, ladder=ladder,
                        nprobe=nprobe, ef=ef)

    def explain(self, q, k: int = 10, **kwargs) -> dict:
        """Run ``search(q, k, **kwargs)`` and report its plan: the ``mode`` used (and
        ``requested``), the ``route`` (index probe, or exhaustive search of a
        selective filter's rows), ``segments`` / ``indexed_segments`` /
        ``scanned_segments``, ``rows`` and the filter's ``matches``, and what the
        search read: ``lists_probed`` (ivf: over all queries), ``nprobe`` (after
        widening for a filter) and ``probe_rounds`` (re-probes of queries that found
        too few rows), ``ef`` (hnsw), ``rows_scanned`` (binary codes compared, or graph
        candidates), ``rows_rescored`` (rows scored exactly at ``dim``), ``ms``."""
        kwargs["explain"] = True
        t = self.search(q, k, **kwargs)
        return json.loads(t.schema.metadata[b"nestvec.explain"])

    @staticmethod
    def _check_index_args(snap, mode, dim, nprobe) -> None:
        """An index mode the snapshot cannot serve: a clear error before any work."""
        specs = snap.manifest.get("indexes") or {}
        if mode in ("ivf", "hnsw") and mode not in specs:
            raise ValueError(f"mode={mode!r}: this collection has no {mode} index "
                             f"(create one with col.create_index({mode!r}))")
        ivf = specs.get("ivf")
        if nprobe is not None and ivf is not None and nprobe > ivf["nlist"]:
            raise ValueError(f"nprobe: expected an int in [1, nlist={ivf['nlist']}], got {nprobe}")

    def _device(self, q, device):
        """None (host search) or the torch device whose cached segment copies to search
        (CUDA; ``"cpu"`` runs the same path on CPU tensors)."""
        if device is not None:
            try:
                import torch
            except ImportError:
                raise ValueError(f"device: searching on a device ({device!r}) needs torch "
                                 "(pip install torch)") from None
            try:
                dev = torch.device(device)
            except Exception as e:  # RuntimeError, TypeError, ModuleNotFoundError for odd names
                raise ValueError(f"device: expected 'cuda', 'cuda:N' or a torch.device, got "
                                 f"{device!r} ({e})") from None
            _check_device_type(dev, "device")
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device")
            # "cuda" and "cuda:0" must name one cache: otherwise device="cuda" and a
            # cuda:0 query tensor each hold a full copy of the segments, and the
            # index-less cache follows torch's current device while an older copy stays.
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
            return dev
        if ck.is_torch(q) and q.device.type != "cpu":
            _check_device_type(q.device, "q")
            return q.device
        return None

    def _cache(self, dev) -> DeviceCache:
        key = str(dev)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches.setdefault(key, DeviceCache(dev))
        return cache

    def _result(self, snap, seg, local, score, cols, mode) -> pa.Table:
        nq, k = local.shape
        if nq == 1:  # one query: 1-D selections
            valid = local[0] >= 0
            n = int(np.count_nonzero(valid))
            qi = np.zeros(n, np.int64)
            if n == k:
                segs, locs, scores = seg[0], local[0], score[0]
            else:
                segs, locs, scores = seg[0][valid], local[0][valid], score[0][valid]
        elif not local.size or local.min() >= 0:  # every query has k rows: no masking
            qi = np.repeat(np.arange(nq, dtype=np.int64), k)
            segs, locs, scores = seg.ravel(), local.ravel(), score.ravel()
        else:
            valid = local >= 0
            qi = np.nonzero(valid)[0].astype(np.int64)
            segs, locs, scores = seg[valid], local[valid], score[valid]
        binary = mode == "binary"
        scores = scores.astype(np.int32 if binary else np.float32, copy=False)
        names = ["id"] + [c for c in cols if c != "id"]
        if len(names) == 1 and snap.manifest["id_type"] == "int64":
            # the common result: int ids gathered in NumPy (one pyarrow take per
            # segment and a re-ordering take cost more than a small search), the
            # table from arrays of a fixed schema (no type inference per call)
            ids = sn.gather_int_ids(snap.segments, segs, locs)
            return int_result_table(qi, ids, scores, binary)
        score_arr = pa.array(scores)
        pieces, pos = [], []
        for i in np.unique(segs):
            sel = np.flatnonzero(segs == i)
            pieces.append(snap.segments[i].select(names).take(pa.array(locs[sel])))
            pos.append(sel)
        if len(pieces) == 1:  # rows already in result order
            t = pieces[0]
        elif pieces:
            t = pa.concat_tables(pieces)
            t = t.take(pa.array(np.argsort(np.concatenate(pos), kind="stable")))
        else:
            t = self._empty_table(snap, names)
        out = pa.table({"query": pa.array(qi), "id": t.column("id"), "score": score_arr})
        for c in names[1:]:
            out = out.append_column(c, t.column(c))
        return out
