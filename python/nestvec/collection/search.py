"""Search of a Collection: argument checks, the planner over one snapshot, and the
result table (a mixin of :class:`~.collection.Collection`)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import _checks as ck
from . import packing
from . import validate as vd
from .planner import MAX_K, MODES, DeviceCache, Planner, Request


def _check_device_type(dev, name: str) -> None:
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: searches run on the CPU or a CUDA device, got device type "
                         f"{dev.type!r}")


class SearchMixin:
    def search(self, q, k: int = 10, dim: int | None = None, mode: str = "auto", rescore: int = 10,
               filter=None, columns=None, device=None, ladder=()) -> pa.Table:
        """Top-k rows per query.

        Args:
            q: one vector ``[D]`` or a batch ``[Q, D]`` (also ``[.., dim]``): NumPy,
                list, or torch tensor. A CUDA tensor (or ``device="cuda"``) runs the
                GPU kernels on segment data cached on the device.
            k: results per query (<= 4096).
            dim: Matryoshka prefix length to score on (default D).
            mode: ``flat`` (exact dense), ``binary`` (Hamming on codes; score = the
                distance, lower is better), ``funnel`` (Hamming shortlist of
                ``k*rescore`` rows, exact rescoring at ``dim``), ``auto`` (funnel
                when codes exist and there are more than ``k*rescore`` candidate
                rows, else flat).
            filter: ``nv.field(...)`` expression or SQL WHERE text (DuckDB).
            columns: extra columns to return (metadata names, ``"vector"``).
            ladder: funnel only: increasing prefix dims below ``dim`` (e.g. ``(64,
                128)``) at which the Hamming shortlist is rescored exactly before
                ``dim``, each stage keeping fewer rows (geometric from ``k*rescore``
                down to ``k``): Matryoshka adaptive retrieval, fewer full-width reads.
                Ignored by ``flat`` and ``binary``.

        Returns:
            pyarrow Table ``query`` (int64), ``id``, ``score`` (float32; l2: squared
            distance, lower is better; binary: int32 Hamming distance) and
            ``columns``; per query exactly ``min(k, matching live rows)`` rows, best
            first, ties by row order.
        """
        snap = self._snapshot()  # the one snapshot this search reads
        m = snap.manifest
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        k = vd.positive_int(k, "k", MAX_K)
        rescore = vd.positive_int(rescore, "rescore")
        d_full = m["dim"]
        dim = d_full if dim is None else vd.positive_int(dim, "dim", d_full)
        if mode == "funnel" and k * rescore > MAX_K:
            raise ValueError(f"rescore: the shortlist k*rescore = {k * rescore} exceeds {MAX_K}")
        ladder = vd.ladder(ladder, dim)
        cols = self._columns(snap, columns, [])
        dev = self._device(q, device)
        qx, single = vd.queries(q, d_full, dim, m["metric"])
        if dev is not None and (not ck.is_torch(qx) or str(qx.device) != str(dev)):
            import torch

            qx = torch.as_tensor(qx).to(dev)
        req = Request(k, dim, mode, rescore, m["metric"], d_full, m["binary"], ladder)
        segs, masks, remap = snap.segments, self._masks(snap, filter), None
        if dev is None:
            segs, masks, remap = packing.pack(segs, masks, self._packs)
        planner = Planner(segs, masks, req, cache=self._cache(dev) if dev is not None else None,
                          filtered=filter is not None)
        used, seg, local, score = planner.run(qx)
        if remap is not None:
            seg, local = remap(seg, local)
        return self._result(snap, seg, local, score, cols, used)

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
        valid = local >= 0
        qi = np.nonzero(valid)[0].astype(np.int64)
        segs, locs, scores = seg[valid], local[valid], score[valid]
        names = ["id"] + [c for c in cols if c != "id"]
        score_arr = pa.array(scores.astype(np.int32 if mode == "binary" else np.float32))
        if names == ["id"] and snap.manifest["id_type"] == "int64":
            # the common result: int ids gathered in NumPy (one pyarrow take per
            # segment and a re-ordering take cost more than a small search)
            ids = np.empty(len(segs), np.int64)
            for i in np.unique(segs):
                sel = segs == i
                ids[sel] = snap.segments[i].file.int_ids()[locs[sel]]
            return pa.table({"query": pa.array(qi), "id": pa.array(ids), "score": score_arr})
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
