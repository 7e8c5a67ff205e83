"""hnsw: an hnswlib graph over a prefix of each large segment, reranked exactly.

The graph holds the first ``dim`` values of every row of its segment as float32
(normalised under cosine, hnswlib's ``ip`` space; raw under ip; ``l2`` under l2),
labelled by the row's position in the segment. It is built when an indexed segment
is written (``create_index``, a merge, ``compact``, a large ``add``), saved beside the
segment as ``indexes/<uuid>.hnsw`` in hnswlib's own format, and loaded on the first
search that needs it: hnswlib reads the whole file into memory (it cannot map it), so
``open()`` only checks the file's size and header and stays milliseconds. Before the
load the file's checksum and every structure hnswlib will follow (link counts,
neighbour ids, labels, the upper levels) are checked here, so a damaged or tampered
file is a CorruptionError, never a crash inside hnswlib.

A search asks the graph for ``ef`` candidates per query and rescores them exactly at
``dim`` (``dense_topk(candidates=...)``); filters and deletes drop candidates, and the
planner widens ``ef`` or searches the allowed rows exhaustively when too few remain
(hnswlib's own filter calls back into Python for every visited node; plan.py).
"""
from __future__ import annotations

import os
import struct
import threading

import numpy as np

from .. import integrity as ig
from ..errors import CorruptionError

_HEADER = struct.Struct("<6QiI3QdQ")  # hnswlib HierarchicalNSW::saveIndex, in order
ADD_ROWS = 65536  # rows converted to float32 and added at a time


def _hnswlib():
    try:
        import hnswlib
    except ImportError:
        raise ImportError("hnsw indexes need hnswlib (pip install 'nestvec[ann]')") from None
    return hnswlib


def space_for(metric: str) -> str:
    return "l2" if metric == "l2" else "ip"


def graph_input(vectors, dim: int, metric: str) -> np.ndarray:
    x = np.array(vectors[:, :dim], dtype=np.float32)  # a copy: normalised in place
    if metric == "cosine":
        n = np.sqrt(np.einsum("ij,ij->i", x, x))
        np.divide(x, n[:, None], out=x, where=n[:, None] > 0)
    return x


def build(vectors, spec: dict, metric: str, threads: int | None = None):
    """An hnswlib index over every row of ``vectors`` (labels: row positions)."""
    hnswlib = _hnswlib()
    n = vectors.shape[0]
    g = hnswlib.Index(space=spec["space"], dim=spec["dim"])
    g.init_index(max_elements=max(n, 1), ef_construction=spec["ef_construction"], M=spec["M"],
                 random_seed=spec.get("seed", 100))
    g.set_num_threads(threads or os.cpu_count() or 1)
    for a in range(0, n, ADD_ROWS):
        b = min(n, a + ADD_ROWS)
        g.add_items(graph_input(vectors[a:b], spec["dim"], metric), np.arange(a, b, dtype=np.int64))
    return g


# --------------------------------------------------------------------------- checks


def _header(data: bytes, path, n: int, spec: dict) -> dict:
    if len(data) < _HEADER.size:
        raise CorruptionError(path, "is shorter than an hnswlib header")
    (off0, max_el, count, per_el, label_off, data_off, maxlevel, entry, max_m, max_m0, m, mult,
     efc) = _HEADER.unpack_from(data, 0)
    dim = spec["dim"]
    links0 = 4 + 4 * max_m0
    ok = (off0 == 0 and count == n and max_el >= count and m == spec["M"] and max_m == m
          and max_m0 == 2 * m and data_off == links0 and label_off == links0 + 4 * dim
          and per_el == label_off + 8 and 0 <= maxlevel < 64 and (count == 0 or entry < count))
    if not ok:
        raise CorruptionError(path, f"hnswlib header does not describe a graph of {n} rows x {dim} "
                                    f"values with M={spec['M']}")
    return {"count": count, "per_el": per_el, "label_off": label_off, "max_m": max_m, "max_m0": max_m0,
            "maxlevel": maxlevel}


def check_header(path, n: int, spec: dict) -> None:
    with open(path, "rb") as f:
        _header(f.read(_HEADER.size), path, n, spec)


def check_graph(path, n: int, spec: dict) -> None:
    """Every structure hnswlib's loader and search follow: level-0 link counts and
    neighbour ids, labels (a permutation of the rows), upper-level block sizes, their
    counts and ids, and the file ending where the last block does."""
    with open(path, "rb") as f:
        data = f.read()
    h = _header(data, path, n, spec)
    count, per_el, mm0, mm = h["count"], h["per_el"], h["max_m0"], h["max_m"]
    end0 = _HEADER.size + count * per_el
    if len(data) < end0 + 4 * count:
        raise CorruptionError(path, "is shorter than its level-0 graph")
    lv0 = np.frombuffer(data, np.uint8, count * per_el, _HEADER.size).reshape(count, per_el)
    cnt = lv0[:, :4].copy().view(np.uint32)[:, 0] & 0xFFFF
    ids = lv0[:, 4:4 + 4 * mm0].copy().view(np.uint32)
    used = np.arange(mm0)[None, :] < cnt[:, None]
    labels = lv0[:, h["label_off"]:h["label_off"] + 8].copy().view(np.uint64)[:, 0]
    if (cnt > mm0).any() or (ids[used] >= count).any():
        raise CorruptionError(path, "level-0 links are out of range")
    if count and (labels.max() >= count or (np.bincount(labels.astype(np.int64), minlength=count) != 1).any()):
        raise CorruptionError(path, "labels are not a permutation of the segment's rows")
    words = np.frombuffer(data, np.uint32, (len(data) - end0) // 4, end0)
    if (len(data) - end0) % 4:
        raise CorruptionError(path, "upper levels do not end on a link boundary")
    block = 4 + 4 * mm  # bytes of one upper-level link list
    nz = np.flatnonzero(words)
    pos, seen, starts, sizes = 0, 0, [], []
    while seen < count:
        j = int(nz[np.searchsorted(nz, pos)]) if np.searchsorted(nz, pos) < len(nz) else len(words)
        skip = min(j - pos, count - seen)  # elements without upper levels: one 0 word each
        seen += skip
        pos += skip
        if seen == count:
            break
        size = int(words[pos])
        if size % block or size // block > h["maxlevel"] or pos + 1 + size // 4 > len(words):
            raise CorruptionError(path, "an upper-level link list has an impossible size")
        starts.append(pos + 1)
        sizes.append(size // 4)
        pos += 1 + size // 4
        seen += 1
    if pos != len(words):
        raise CorruptionError(path, "bytes follow the last upper-level link list")
    if starts:
        lists = np.concatenate([words[a:a + s] for a, s in zip(starts, sizes)]).reshape(-1, 1 + mm)
        c = lists[:, 0] & 0xFFFF
        if (c > mm).any() or (lists[:, 1:][np.arange(mm)[None, :] < c[:, None]] >= count).any():
            raise CorruptionError(path, "upper-level links are out of range")


# --------------------------------------------------------------------------- graph


class HnswGraph:
    """One segment's graph: header checked at open, loaded (after the full check) on
    first use. ``obj``: an in-memory collection's graph (nothing to load)."""

    def __init__(self, entry: dict, path, spec: dict, n: int, crc_block: int, obj=None):
        self.entry = entry
        self.name = entry["name"]
        self.path = path
        self.spec = spec
        self.n = n
        self.crc_block = crc_block
        self._index = obj
        self._lock = threading.Lock()
        if path is not None:
            with ig.damage(path):
                check_header(path, n, spec)

    @property
    def loaded(self) -> bool:
        return self._index is not None

    def index(self):
        if self._index is None:
            with self._lock:
                if self._index is None:
                    self.verify()
                    g = _hnswlib().Index(space=self.spec["space"], dim=self.spec["dim"])
                    g.load_index(self.path, max_elements=max(self.n, 1))
                    self._index = g
        return self._index

    def verify(self) -> None:
        if self.path is None:
            return
        with ig.damage(self.path):
            ig.check_file_crc(self.path, self.entry.get("crc32"), self.crc_block)
            check_graph(self.path, self.n, self.spec)

    def search(self, queries: np.ndarray, kk: int, ef: int, threads: int | None = None) -> np.ndarray:
        """Labels (int64 ``[Q, kk]``, -1 where the graph returned fewer) of the ``kk``
        nearest rows by the graph, searched with ``ef`` (at least ``kk``)."""
        g = self.index()
        kk = min(kk, self.n)
        x = graph_input(queries, self.spec["dim"], self.spec["metric"])
        with self._lock:  # ef is the index's state: one search at a time per graph
            g.set_ef(max(ef, kk))
            try:
                labels, _ = g.knn_query(x, k=kk, num_threads=threads or -1)
            except RuntimeError:  # fewer than kk reachable (small graphs, kk near n)
                g.set_ef(max(ef, self.n))
                labels = self._search_each(g, x, kk)
        return labels.astype(np.int64, copy=False)

    @staticmethod
    def _search_each(g, x: np.ndarray, kk: int) -> np.ndarray:
        """hnswlib refuses a batch when one query reaches fewer than ``kk`` rows: ask each
        query for fewer until it answers, and pad its row with -1."""
        out = np.full((x.shape[0], kk), -1, dtype=np.int64)
        for i in range(x.shape[0]):
            k = kk
            while k > 0:
                try:
                    lab, _ = g.knn_query(x[i:i + 1], k=k, num_threads=1)
                    out[i, :k] = lab[0]
                    break
                except RuntimeError:
                    k = k * 3 // 4 if k > 4 else k - 1
        return out
