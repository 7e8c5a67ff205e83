"""Creating, dropping and maintaining indexes.

``create`` validates every option before anything is written, trains what the index
needs once per collection (ivf centroids), writes one index file per large segment,
tunes the default ``nprobe`` / ``ef`` on a sample of the collection's own rows, and
commits one new version naming them (op ``"index"``): like any commit, a crash at any
point leaves the previous version complete, and the files it wrote are garbage.

From then on every commit that writes a segment of at least ``min_rows`` rows (a large
``add``, a merge, ``compact``) indexes it before the commit: an :class:`Indexer` built
from the writer's snapshot. A merge carries its inputs' ivf lists over (the rows'
lists are read from the input list files, not recomputed); graphs are rebuilt.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .. import commit as cm
from .. import manifest as mf
from ..arrays import fixed_list_view
from . import hnsw, ivf, span
from .spec import KINDS

MIN_ROWS = 65536  # segments below this are searched exhaustively (README: the crossover)
TUNE_RECALL = 0.96  # recall@10 the tuned defaults reach on the collection's own rows
TUNE_QUERIES = 200
TUNE_K = 10
# hnsw tuned on the collection's own rows is optimistic: the search reaches the query's
# own node, whose links are its neighbours. The default ef is this multiple of the
# smallest ef that reaches TUNE_RECALL there (docs/ann-benchmark-log.md: what it measured).
HNSW_EF_MARGIN = 2
# ivf training sample: 64 rows per list, at least 65,536 rows, at most TRAIN_MAX rows
# (k-means costs sample x nlist x dim per iteration), never fewer than TRAIN_MIN_PER_LIST
# rows per list (FAISS warns below 39) nor more than TRAIN_MAX_PER_LIST (faiss.Kmeans
# subsamples to 256 per list anyway).
TRAIN_PER_LIST = 64
TRAIN_MAX = 1 << 19
TRAIN_MIN_PER_LIST = 39
TRAIN_MAX_PER_LIST = 256

_IVF = {"nlist", "dim", "codes", "min_rows", "nprobe", "rescore", "sample", "niter", "seed", "tune"}
_HNSW = {"dim", "M", "ef_construction", "ef", "min_rows", "seed", "threads", "tune"}


def _int(v, name, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name}: expected an int {rng}, got {v!r}")
    return int(v)


def default_nlist(n_live: int) -> int:
    """4 sqrt(N) (FAISS's rule of thumb), a multiple of 64 from 64 lists up: 1,792 lists
    at 200k rows, 4,032 at 1M, 12,672 at 10M (lists of ~110 to ~790 rows); at most
    N / 39 lists (below ~24k rows: 128 lists at 5,000). Fewer lists
    than the data has natural clusters split none of them and merge several into one,
    so a query's neighbours spread over many lists (README: 1.5 sqrt(N) needed half the
    lists for recall 0.95 on the benchmark's 1,024 clusters)."""
    n = max(1, int(n_live))
    want = 4.0 * math.sqrt(n)
    nlist = int(want + 0.5) if want < 64 else 64 * int(want / 64 + 0.5)
    # small collections: at least TRAIN_MIN_PER_LIST rows to train each list on
    return max(1, min(nlist, n // TRAIN_MIN_PER_LIST))


def default_sample(n_live: int, nlist: int) -> int:
    """Rows the centroids are trained on (see TRAIN_*): 114,688 at 200k rows, 258,048 at
    1M (64 per list), 524,288 at 10M (41 per list)."""
    want = min(max(TRAIN_PER_LIST * nlist, 65536), TRAIN_MAX)
    want = min(max(want, TRAIN_MIN_PER_LIST * nlist), TRAIN_MAX_PER_LIST * nlist)
    return max(nlist, min(n_live, want))


def parse(kind, options: dict, m: dict, n_live: int) -> tuple:
    """(spec without files, build-only options), or a ValueError / TypeError naming the
    option. Nothing is read or written."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    known = _IVF if kind == "ivf" else _HNSW
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"create_index({kind!r}): unknown option(s) {unknown}; options are {sorted(known)}")
    if n_live == 0:
        raise ValueError(f"create_index({kind!r}): the collection has no rows; add rows first "
                         f"(centroids and graphs are built from them)")
    d = m["dim"]
    o = dict(options)
    min_rows = _int(o.get("min_rows", MIN_ROWS), "min_rows", 0)
    seed = _int(o.get("seed", 0), "seed", 0)
    tune = o.get("tune", True)
    if not isinstance(tune, bool):
        raise TypeError(f"tune: expected True or False, got {tune!r}")
    if kind == "ivf":
        dim = _int(o.get("dim", min(d, 128)), "dim", 1, d)
        nlist = _int(o.get("nlist", default_nlist(n_live)), "nlist", 1, n_live)
        codes = o.get("codes", "sign")
        if codes not in ("sign", "centred"):
            raise ValueError(f"codes: expected 'sign' or 'centred', got {codes!r}")
        nprobe = o.get("nprobe")
        nprobe = None if nprobe is None else _int(nprobe, "nprobe", 1, nlist)
        rescore = o.get("rescore")
        rescore = None if rescore is None else _int(rescore, "rescore", 1)
        sample = o.get("sample")
        sample = default_sample(n_live, nlist) if sample is None else \
            min(_int(sample, "sample", nlist, n_live), TRAIN_MAX_PER_LIST * nlist)
        niter = _int(o.get("niter", 20), "niter", 1)
        spec = {"kind": "ivf", "nlist": nlist, "dim": dim, "metric": m["metric"], "codes": codes,
                "min_rows": min_rows, "nprobe": nprobe or max(1, nlist // 16), "rescore": rescore or 10,
                "sample": sample, "seed": seed}
        build = {"niter": niter, "tune": tune and (nprobe is None or rescore is None),
                 "fixed": {"nprobe": nprobe, "rescore": rescore}}
    else:
        dim = _int(o.get("dim", min(d, 256)), "dim", 1, d)
        M = _int(o.get("M", 16), "M", 2, 512)
        efc = _int(o.get("ef_construction", 200), "ef_construction", 1)
        ef = o.get("ef")
        ef = None if ef is None else _int(ef, "ef", 1)
        threads = o.get("threads")
        threads = None if threads is None else _int(threads, "threads", 1)
        spec = {"kind": "hnsw", "dim": dim, "metric": m["metric"], "space": hnsw.space_for(m["metric"]),
                "M": M, "ef_construction": efc, "ef": ef or 64, "min_rows": min_rows, "seed": seed}
        build = {"threads": threads, "tune": tune and ef is None, "fixed": {"ef": ef}}
    return spec, build


# --------------------------------------------------------------------------- sampling


def sample_positions(segments, n: int, seed: int) -> list:
    """(segment index, sorted live positions) drawing ``n`` live rows uniformly."""
    live = np.array([s.n_live for s in segments], np.int64)
    total = int(live.sum())
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(total, size=min(n, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(live)])
    out = []
    for i, s in enumerate(segments):
        mine = pick[(pick >= starts[i]) & (pick < starts[i + 1])] - starts[i]
        if not len(mine):
            continue
        pos = mine if s.live is None else np.flatnonzero(s.live)[mine]
        out.append((i, pos))
    return out


def sample_prefixes(segments, n: int, dim: int, metric: str, seed: int) -> tuple:
    """(prefixes float32 [n, dim] normalised unless l2, mean of the normalised full
    rows [D] float32)."""
    parts, total, count = [], None, 0
    for i, pos in sample_positions(segments, n, seed):
        v = segments[i].vectors
        for a in range(0, len(pos), 65536):
            rows = v[pos[a:a + 65536]]
            parts.append(ivf.prefix_f32(rows, dim, metric))
            full = ivf.prefix_f32(rows, rows.shape[1], metric).sum(axis=0, dtype=np.float64)
            total = full if total is None else total + full
            count += len(rows)
    return np.concatenate(parts), (total / max(count, 1)).astype(np.float32)


# --------------------------------------------------------------------------- indexer


class Indexer:
    """Index files for new segments of one snapshot's collection: ``indexer(table,
    lists)`` -> ``{kind: file entry}`` for the kinds whose ``min_rows`` the table
    reaches (``lists``: the rows' ivf lists when known, else assigned here)."""

    def __init__(self, store, m: dict, indexes: dict, threads: int | None = None):
        self.store = store
        self.m = m
        self.specs = dict(m.get("indexes") or {})
        self.cent = indexes.get("ivf")
        self.threads = threads
        self._run_lists = {}

    def __bool__(self) -> bool:
        return bool(self.specs)

    def wants(self, kind: str, n: int) -> bool:
        spec = self.specs.get(kind)
        return spec is not None and n >= max(1, spec["min_rows"])

    def __call__(self, table, lists=None) -> dict:
        m = self.m
        n = table.num_rows
        out = {}
        if not any(self.wants(k, n) for k in self.specs):
            return out
        vec = fixed_list_view(table.column("vector"), m["dim"], np.dtype(m["dtype"]))
        codes = fixed_list_view(table.column("code"), (m["dim"] + 7) // 8, np.uint8) if m["binary"] else None
        block = m.get("crc_block", mf.CRC_BLOCK)
        if self.wants("ivf", n):
            out["ivf"] = self.ivf_file(vec, codes, lists, block)
        if self.wants("hnsw", n):
            out["hnsw"] = self.hnsw_file(vec, block)
        return out

    def ivf_file(self, vec, codes, lists, block) -> dict:
        spec, cent = self.specs["ivf"], self.cent
        if lists is None:
            lists = ivf.assign(vec, cent.centroids, spec["metric"])
        codes = self.ivf_codes(vec, codes)
        return self.store.write_index_table("ivf", ivf.lists_table(lists, codes, spec["nlist"], cent.name), block)

    def ivf_codes(self, vec, codes):
        spec = self.specs["ivf"]
        if spec["codes"] == "sign" and codes is not None:
            return codes
        out = np.empty((vec.shape[0], (vec.shape[1] + 7) // 8), np.uint8)
        for a in range(0, len(vec), 65536):
            part = vec[a:a + 65536]
            out[a:a + len(part)] = ivf.sign_codes(part) if spec["codes"] == "sign" else \
                ivf.centred_codes(part, self.cent.mean, spec["metric"])
        return out

    def hnsw_file(self, vec, block) -> dict:
        spec = self.specs["hnsw"]
        g = hnsw.build(vec, spec, spec["metric"], self.threads)
        if self.store.persistent:
            return self.store.write_index_file("hnsw", g.save_index, block)
        return self.store.write_index_object("hnsw", g)

    def carried_lists(self, run, at: int, n: int):
        """The ivf lists of rows ``[at, at + n)`` of a merge run's live rows: from the
        inputs' list files (assigned for inputs without one)."""
        if "ivf" not in self.specs or not self.wants("ivf", n):
            return None
        key = tuple(s.name for s in run)
        whole = self._run_lists.get(key)
        if whole is None:
            parts = []
            for s in run:
                lst = s.ann.get("ivf")
                if lst is not None and lst.entry is not None:
                    lids = lst.list_of_rows()
                    parts.append(lids if s.live is None else lids[s.live])
                else:
                    v = s.vectors if s.live is None else s.vectors[s.live]
                    parts.append(ivf.assign(v, self.cent.centroids, self.specs["ivf"]["metric"]))
            whole = self._run_lists[key] = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        return whole[at:at + n]


# --------------------------------------------------------------------------- create / drop


def create(store, snap, kind: str, options: dict, load_snapshot, replace: bool = False) -> dict:
    """Build index ``kind`` over the snapshot's segments and commit it; returns the new
    manifest. ``load_snapshot(m)`` maps an uncommitted manifest (for tuning)."""
    m = snap.manifest
    if kind in KINDS and kind in (m.get("indexes") or {}) and not replace:
        raise ValueError(f"create_index({kind!r}): the collection already has a {kind} index "
                         f"(drop_index({kind!r}) first, or pass replace=True)")
    n_live = sum(s.n_live for s in snap.segments)
    spec, opts = parse(kind, options, m, n_live)
    block = m.get("crc_block", mf.CRC_BLOCK)
    written = []  # file entries to remove if anything fails before the commit
    t0 = time.perf_counter()
    try:
        indexes = {k: v for k, v in snap.indexes.items() if k != kind}
        if kind == "ivf":
            prefixes, mean = sample_prefixes(snap.segments, spec["sample"], spec["dim"], spec["metric"],
                                             spec["seed"])
            cent = ivf.train(prefixes, spec["nlist"], spec["metric"], opts["niter"], spec["seed"])
            del prefixes
            ce = store.write_index_table("centroids", ivf.centroids_table(
                cent, mean if spec["codes"] == "centred" else None), block)
            written.append({"name": None, "ivf": ce})
            spec["centroids"] = ce
            spec["train_s"] = round(time.perf_counter() - t0, 3)
            indexes["ivf"] = ivf.IvfCentroids(spec, store.load_index_table(ce), store.index_path(ce["name"]),
                                              m["dim"])
        specs = dict(m.get("indexes") or {}, **{kind: spec})
        indexer = Indexer(store, dict(m, indexes=specs), indexes, opts.get("threads"))
        entries = []
        for s, e in zip(snap.segments, m["segments"]):
            e = {k: v for k, v in e.items() if k != kind}
            if indexer.wants(kind, s.n):
                lists = None
                if kind == "ivf":
                    e[kind] = indexer.ivf_file(s.vectors, s.codes, lists, block)
                else:
                    e[kind] = indexer.hnsw_file(s.vectors, block)
                written.append({"name": None, kind: e[kind]})
            entries.append(e)
        if kind == "ivf":  # one span over the indexed segments (span.py)
            done = [(s, e) for s, e in zip(snap.segments, entries) if e.get("ivf")]
            if len(done) >= span.MIN_MEMBERS:
                lists = [ivf.IvfLists(e["ivf"], store.load_index_table(e["ivf"]), store.index_path(e["ivf"]["name"]),
                                      spec, s.n, (m["dim"] + 7) // 8) for s, e in done]
                se = span.write(store, [e["name"] for _, e in done], lists, spec, block)
                written.append({"name": None, "ivf": se})
                spec["spans"] = [se]
                del lists
        spec["build_s"] = round(time.perf_counter() - t0, 3)
        new = dict(m, indexes=specs, segments=entries, version=m["version"] + 1, format=mf.FORMAT_V3)
        if opts["tune"]:
            spec.update(tune(load_snapshot(new), kind, opts["fixed"]))
            spec["tune_s"] = round(time.perf_counter() - t0 - spec["build_s"], 3)
        return cm.publish(store, m, entries, version=m["version"] + 1, op="index", indexes=specs)
    except BaseException:
        _discard(store, written)
        raise


def _discard(store, written) -> None:
    for e in written:
        for kind in ("ivf", "hnsw"):
            if e.get(kind):
                path = store.index_path(e[kind]["name"])
                if path is None:
                    store.indexes.pop(e[kind]["name"], None)
                else:
                    try:
                        import os

                        os.unlink(path)
                    except FileNotFoundError:
                        pass


def drop(store, snap, kind: str) -> dict:
    m = snap.manifest
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if kind not in (m.get("indexes") or {}):
        raise ValueError(f"drop_index({kind!r}): the collection has no {kind} index")
    specs = {k: v for k, v in m["indexes"].items() if k != kind}
    entries = [{k: v for k, v in e.items() if k != kind} for e in m["segments"]]
    return cm.publish(store, m, entries, version=m["version"] + 1, op="drop_index", indexes=specs)


def commit_span(store, snap):
    """The manifest of a new version whose ivf index also has a span over the
    snapshot's indexed segments that no span covers, committed; None when fewer than
    span.MIN_MEMBERS are uncovered. A crash before the commit leaves only an unnamed file."""
    idx = span.uncovered(snap)
    if len(idx) < span.MIN_MEMBERS:
        return None
    m = snap.manifest
    spec = m["indexes"]["ivf"]
    segs = [snap.segments[i] for i in idx]
    e = span.write(store, [s.name for s in segs], [s.ann["ivf"] for s in segs], spec, m.get("crc_block"))
    try:
        specs = dict(m["indexes"], ivf=dict(spec, spans=list(spec.get("spans") or ()) + [e]))
        return cm.publish(store, m, m["segments"], version=m["version"] + 1, op="index", indexes=specs)
    except BaseException:
        store.discard_index(e["name"])
        raise


# --------------------------------------------------------------------------- tuning


def tune(snap, kind: str, fixed: dict) -> dict:
    """The smallest nprobe (ivf; then rescore if needed) or ef (hnsw) whose recall@10
    against exact search reaches TUNE_RECALL on rows of the collection used as queries
    (their own row excluded); hnsw's default is HNSW_EF_MARGIN times that ef. Only
    indexed segments take part; with none, the defaults stay."""
    from ..planner import Planner, Request

    segs = [s for s in snap.segments if kind in s.ann and s.n_live]
    if not segs:
        return {}
    m = snap.manifest
    picks = sample_positions(segs, TUNE_QUERIES, 12345)
    q = np.concatenate([segs[i].vectors[p] for i, p in picks]).astype(np.float32)
    own = np.concatenate([segs[i].offset + p for i, p in picks])
    masks = [s.live for s in snap.segments]
    offsets = np.array([s.offset for s in snap.segments], np.int64)

    def run(mode, **kw):
        req = Request(TUNE_K + 1, m["dim"], mode, kw.pop("rescore", None), m["metric"], m["dim"], m["binary"],
                      indexes=tuple(snap.indexes), **kw)
        pl = Planner(snap.segments, masks, req, indexes=snap.indexes)
        _, seg, local, _ = pl.run(q)
        g = np.where(local >= 0, offsets[np.maximum(seg, 0)] + local, -1)
        return [set(row[row != o][:TUNE_K].tolist()) for row, o in zip(g, own)]

    truth = run("flat")

    def recall(got):
        return float(np.mean([len(a & b) / max(1, len(b)) for a, b in zip(got, truth)]))

    out = {}
    if kind == "ivf":
        spec = snap.indexes["ivf"].spec
        nlist = spec["nlist"]
        rescores = [fixed["rescore"]] if fixed["rescore"] else [10, 20, 40, 100]
        # powers of two and the midpoints between them (1, 2, 3, 4, 6, 8, 12, ...)
        probes = [fixed["nprobe"]] if fixed["nprobe"] else sorted(
            {min(nlist, f * 2 ** i) for i in range(0, int(math.log2(nlist)) + 2) for f in (2, 3)} | {1})
        best = None
        for rs in rescores:
            for p in probes:
                r = recall(run("ivf", nprobe=p, rescore=rs))
                if r >= TUNE_RECALL:
                    best = (p, rs, r)
                    break
            if best:
                break
        if best is None:
            best = (probes[-1], rescores[-1], r)
        out = {"nprobe": best[0], "rescore": best[1], "tuned_recall": round(best[2], 4)}
    else:
        r, reached = 0.0, False
        for ef in (8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024):
            r = recall(run("hnsw", ef=ef))
            if r >= TUNE_RECALL:
                reached = True
                break
        out = {"ef": ef * HNSW_EF_MARGIN if reached else ef, "tuned_ef": ef, "tuned_recall": round(r, 4)}
    return out
