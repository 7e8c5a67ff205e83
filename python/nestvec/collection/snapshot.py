"""Snapshots: one committed version, its segments mapped and checked.

A :class:`Snapshot` is immutable. A search takes one reference to the collection's
current snapshot and uses nothing else, and a commit publishes a new one by a single
attribute assignment, so any number of threads can search while one thread writes.

Segment data is checked as integrity.py describes: structure at load, each metadata
column before its first read (``Segment.column`` / ``select`` / ``meta``), the live
mask when first needed. The check state lives in a :class:`SegmentFile` that every
snapshot naming the file shares, so a column is checked once per handle.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import integrity as ig
from . import manifest as mf
from .arrays import fixed_list_view, primitive_view  # noqa: F401 (re-exported)
from .errors import CorruptionError
from .indexes import spec as ixspec


class SegmentFile:
    """A mapped segment file and the set of its columns already checked."""

    def __init__(self, entry: dict, table: pa.Table, path, checked: bool):
        self.name = entry["name"]
        self.entry = entry
        self.table = table
        self.path = path
        self._checked = set(table.column_names) if checked else set(ig.BULK_COLUMNS)
        self._lock = threading.Lock()
        self._ids = None

    def int_ids(self) -> np.ndarray:
        """The int64 ``id`` column as a NumPy view (checked)."""
        if self._ids is None:
            self._ids = primitive_view(self.column("id"), np.int64)
        return self._ids

    def _ensure(self, names) -> None:
        todo = [n for n in names if n not in self._checked]
        if todo:
            with self._lock:
                for n in todo:
                    if n not in self._checked:
                        with ig.damage(self.path):
                            ig.check_column(self.table, n, self.entry, self.path)
                        self._checked.add(n)

    def column(self, name: str) -> pa.ChunkedArray:
        self._ensure((name,))
        return self.table.column(name)

    def select(self, names) -> pa.Table:
        self._ensure(names)
        return self.table.select(list(names))

    def meta_names(self) -> list:
        return [c for c in self.table.column_names if c not in ig.BULK_COLUMNS]

    def verify(self, crc_block: int) -> bool:
        """Every check, whatever was checked before (the file may have changed under
        the map): the whole-file checksum, then every column. Returns False when the
        file has no recorded checksum (format 1). In-memory segments have nothing to
        check."""
        if self.path is None:
            return True
        summed = ig.check_file_crc(self.path, self.entry.get("crc32"), crc_block)
        with self._lock, ig.damage(self.path):
            for n in self.table.column_names:
                if n in ig.BULK_COLUMNS:
                    try:
                        self.table.column(n).chunk(0).validate(full=True)
                    except pa.ArrowException as e:
                        raise CorruptionError(self.path, f"column {n!r} is damaged ({e})") from None
                else:
                    ig.check_column(self.table, n, self.entry, self.path)
                self._checked.add(n)
        return summed


class Segment:
    """One segment of a snapshot: NumPy views of vectors / codes (zero-copy, into the
    map), the checked metadata through :meth:`column` / :meth:`select`, and the live
    mask (``None``: nothing deleted). ``offset`` is its first row's position in the
    snapshot's global order (the tie order)."""

    __slots__ = ("file", "vectors", "codes", "deletions", "deletion_entry", "deletion_path", "_deleted", "n",
                 "n_live", "offset", "_live", "_lock", "ann")

    def __init__(self, file: SegmentFile, vectors, codes, deletion_entry, deletion_path, deleted, n_live: int,
                 offset: int, ann=None):
        self.file = file
        self.vectors = vectors
        self.codes = codes
        self.deletion_entry = deletion_entry
        self.deletions = deletion_entry["name"] if deletion_entry else None
        self.deletion_path = deletion_path
        self._deleted = deleted
        self.n = file.table.num_rows
        self.n_live = n_live
        self.offset = offset
        self._live = None
        self._lock = threading.Lock()
        self.ann = ann or {}  # index kind -> this segment's index (indexes/ivf.py, hnsw.py)

    @property
    def name(self) -> str:
        return self.file.name

    def key(self) -> tuple:
        """What makes two snapshots' segments interchangeable."""
        return (self.name, self.deletions) + tuple(sorted((k, v.name) for k, v in self.ann.items()))

    def at(self, offset: int) -> "Segment":
        s = Segment(self.file, self.vectors, self.codes, self.deletion_entry, self.deletion_path, self._deleted,
                    self.n_live, offset, self.ann)
        s._live = self._live
        return s

    def column(self, name):
        return self.file.column(name)

    def select(self, names) -> pa.Table:
        return self.file.select(names)

    def meta(self) -> pa.Table:
        """Every metadata column (``_row``, ``id``, user columns), checked."""
        return self.file.select(self.file.meta_names())

    @property
    def rows(self) -> np.ndarray:
        """The ``_row`` column (ascending)."""
        return primitive_view(self.file.column("_row"), np.int64)

    @property
    def live(self):
        if self._deleted is None:
            return None
        if self._live is None:
            with self._lock:
                if self._live is None:
                    rows = self.rows
                    with ig.damage(self.deletion_path):
                        pos = ig.deletion_positions(rows, self._deleted, self.deletion_path)
                    live = np.ones(self.n, dtype=bool)
                    live[pos] = False
                    live.setflags(write=False)
                    self._live = live
        return self._live

    @property
    def deleted_rows(self) -> np.ndarray:
        return self._deleted if self._deleted is not None else np.zeros(0, np.int64)


@dataclass(frozen=True)
class Snapshot:
    manifest: dict
    segments: tuple
    schema: pa.Schema  # the user's metadata columns
    indexes: dict = field(default_factory=dict)  # kind -> ivf.IvfCentroids / the hnsw spec

    @property
    def version(self) -> int:
        return self.manifest["version"]


# --------------------------------------------------------------------------- loading


def load_segment(store, entry: dict, m: dict, schema: pa.Schema, offset: int,
                 file: SegmentFile | None = None, anns=None) -> Segment:
    """Map (or reuse ``file``) and check one segment of manifest ``m``; read its
    deletion file and map its index files (or reuse them from ``anns``: file name ->
    loaded index). ``schema`` is the full expected file schema."""
    persistent = store.persistent
    path = store.segment_path(entry["name"])
    with ig.damage(path):
        if file is None:
            table = store.load_segment(entry)
            if persistent:
                ig.check_structure(table, entry, schema, path)
            file = SegmentFile(entry, table, path, checked=not persistent)
        d, np_dtype = m["dim"], np.dtype(m["dtype"])
        vectors = fixed_list_view(file.table.column("vector"), d, np_dtype)
        codes = fixed_list_view(file.table.column("code"), (d + 7) // 8, np.uint8) if m["binary"] else None
    deleted, dentry, dpath = None, mf.deletion_entry(entry), None
    if dentry:
        dpath = store.deletion_path(dentry["name"])
        with ig.damage(dpath):
            deleted = store.load_deletions(dentry)
            if persistent:
                ig.check_deletions(deleted, entry, dpath)
    ann = {}
    for kind in ixspec.KINDS:
        ie = entry.get(kind)
        if ie:
            ann[kind] = (anns or {}).get(ie["name"]) or load_index(store, kind, ie, m, file.table.num_rows)
    return Segment(file, vectors, codes, dentry, dpath, deleted, entry["rows"] - entry["deleted"], offset, ann)


def load_index(store, kind: str, ie: dict, m: dict, n: int):
    """Map and check (structure only: integrity.py) one segment's index file."""
    from .indexes import hnsw, ivf

    spec = m["indexes"][kind]
    path = store.index_path(ie["name"])
    with ig.damage(path):
        if kind == "ivf":
            return ivf.IvfLists(ie, store.load_index_table(ie), path, spec, n, (m["dim"] + 7) // 8)
        if path is None:
            return hnsw.HnswGraph(ie, None, spec, n, m["crc_block"], obj=store.indexes[ie["name"]])
        ig.regular_file(path, ie.get("bytes"))
        return hnsw.HnswGraph(ie, path, spec, n, m["crc_block"])


def load_indexes(store, m: dict, reuse: dict) -> dict:
    """The collection-level part of each index (ivf: its centroids, mapped)."""
    from .indexes import ivf

    out = {}
    for kind, spec in (m.get("indexes") or {}).items():
        if kind == "ivf":
            ce = spec["centroids"]
            old = reuse.get("ivf")
            if old is not None and old.name == ce["name"]:
                out[kind] = old
                continue
            path = store.index_path(ce["name"])
            with ig.damage(path):
                out[kind] = ivf.IvfCentroids(spec, store.load_index_table(ce), path, m["dim"])
        else:
            out[kind] = spec
    return out


def load_snapshot(store, m: dict, reuse=(), reuse_indexes=None) -> Snapshot:
    """Segments of checked manifest ``m``; ``reuse``: segments of a previous snapshot
    (same files: reused as is; same segment file: its mapping is reused; same index
    file: its mapping too)."""
    user = mf.schema_from_b64(m["schema_ipc"])
    schema = ig.expected_schema(m, user)
    by_key = {s.key(): s for s in reuse}
    files = {s.name: s.file for s in reuse}
    anns = {a.name: a for s in reuse for a in s.ann.values()}
    indexes = load_indexes(store, m, reuse_indexes or {})
    segs, off = [], 0
    for e in m["segments"]:
        key = (e["name"], e.get("deletions")) + tuple(sorted((k, e[k]["name"]) for k in ixspec.KINDS if e.get(k)))
        s = by_key.get(key)
        s = s.at(off) if s is not None else load_segment(store, e, m, schema, off, files.get(e["name"]), anns)
        segs.append(s)
        off += s.n
    if "ivf" in indexes:
        from .indexes import span

        indexes = span.attach(store, m, indexes, segs, reuse_indexes)
    return Snapshot(m, tuple(segs), user, indexes)


def read_snapshot(store, version: int | None, retries: int = 20) -> Snapshot:
    """The snapshot of ``version`` (default: LATEST), every segment mapped and checked.

    A writer's GC may remove the files of an old version between our reading LATEST
    and mapping them: a missing file while LATEST has moved on means "read again". A
    file missing while LATEST still names its version is lost, and damage is damage:
    both raise CorruptionError at once (no retry can fix them)."""
    last = None
    for _ in range(retries):
        v = store.latest() if version is None else int(version)
        try:
            m = store.read_manifest(v)
        except KeyError:
            if version is not None:
                raise KeyError(f"version {version} does not exist (it may have been removed by "
                               f"compact); versions(): {store.manifest_versions()}") from None
            if store.latest() == v:
                raise CorruptionError(store.manifest_path(v), f"is missing, but LATEST names version {v}") \
                    from None
            last = f"manifest {v} removed while reading"
            continue
        try:
            return load_snapshot(store, m)
        except FileNotFoundError as e:
            if version is None and store.latest() != v:
                last = str(e)
                time.sleep(0.001)
                continue
            if version is not None and not _exists(store, v):
                raise KeyError(f"version {version} is no longer readable (compacted away)") from None
            raise CorruptionError(e.filename, f"is missing; the manifest of version {v} names it") from None
    raise RuntimeError(f"could not read a consistent version after {retries} tries (a writer is "
                       f"compacting faster than this reader opens): {last}")


def _exists(store, v) -> bool:
    try:
        store.read_manifest(v)
        return True
    except KeyError:
        return False


# results of at most this many rows gather their ids row by row (gather_int_ids)
_SMALL_RESULT = 64


def gather_int_ids(segments, segs: np.ndarray, locs: np.ndarray) -> np.ndarray:
    """int64 ids of hits (segment index, local row) [m] of int-id segments: in NumPy
    (one pyarrow take per segment and a re-ordering take cost more than a small
    search), row by row for a few hits (batch 1), by a mask per segment otherwise."""
    if len(segments) == 1:
        return segments[0].file.int_ids()[locs]
    if len(segs) <= _SMALL_RESULT:
        arrs, out = {}, []
        for i, j in zip(segs.tolist(), locs.tolist()):
            a = arrs.get(i)
            if a is None:
                a = arrs[i] = segments[i].file.int_ids()
            out.append(a[j])
        return np.array(out, np.int64)
    ids = np.empty(len(segs), np.int64)
    for i in np.unique(segs):
        sel = segs == i
        ids[sel] = segments[i].file.int_ids()[locs[sel]]
    return ids
