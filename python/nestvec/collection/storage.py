"""On-disk layout of a collection: segments, deletion files, manifests, commits, lock.

A collection directory holds (docs/ARCHITECTURE.md, "Storage format")::

    LATEST                          the current version number (replaced atomically)
    LOCK                            flock()ed by the single writer; holds its pid
    manifests/<version>.json        one per committed version (manifest.py)
    segments/<uuid>.arrow           Arrow IPC *file*, uncompressed, one record batch
    deletions/<segment>.<version>.arrow   all deleted ``_row``s of that segment so far
    indexes/<uuid>.<kind suffix>    index files (indexes/spec.py): ivf centroids and
                                    lists (Arrow IPC), hnsw graphs (hnswlib's format)

The manifest records every data file's size and CRC-32 (whole file, per 64 MiB block;
and per metadata column of a segment); integrity.py checks them. File names come
only from names the manifest checks accept, so no path leaves the directory.

Commit protocol: data files are written and fsynced, then the manifest (temp file,
fsync, rename, fsync dir), then ``LATEST`` the same way. A crash at any point leaves
``LATEST`` naming the previous complete version; files it does not reference are
garbage and removed by ``gc``. Readers read ``LATEST`` once and memory-map what that
manifest names, so they keep their version while a writer commits (POSIX keeps an
unlinked, mapped file readable until it is unmapped).

``MemoryStore`` is the same interface with no files, for ``Collection.create(None)``.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import integrity as ig
from . import manifest as mf
from .indexes import spec as ix
from .errors import CollectionNotFound, CorruptionError, LockError  # noqa: F401 (re-exported)

LOCK_NAME = "LOCK"
LATEST_NAME = "LATEST"


# --------------------------------------------------------------------------- files


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    # fsync flushes the inode's dirty pages whichever descriptor it is called on
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the directory."""
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(d)


def write_ipc(path: str, table: pa.Table) -> None:
    """One uncompressed record batch in the IPC file format, fsynced; a write that
    fails removes what it had written (no manifest names the file yet)."""
    batch = table.combine_chunks().to_batches()
    try:
        with pa.OSFile(path, "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as w:
                for b in batch:  # one batch (combine_chunks), or none for an empty table
                    w.write_batch(b)
        fsync_file(path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


# --------------------------------------------------------------------------- lock


class FileLock:
    """Exclusive, non-blocking ``flock`` on ``<dir>/LOCK``; released on close or when
    the process dies (so a SIGKILLed writer never leaves a stale lock)."""

    def __init__(self, path: str):
        import fcntl

        self.path = os.path.join(path, LOCK_NAME)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            try:
                holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (pid {holder})" if holder else ""
                raise LockError(f"collection {path!r} is already open for writing{who}; "
                                f"only one writer at a time: open it with read_only=True to read, "
                                f"or close the other writer") from None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


# --------------------------------------------------------------------------- stores


@dataclass
class DirStore:
    """A collection directory."""

    path: str
    lock: FileLock | None = field(default=None, repr=False)

    @property
    def persistent(self) -> bool:
        return True

    def _p(self, *parts) -> str:
        return os.path.join(self.path, *parts)

    def segment_path(self, name: str) -> str:
        if not mf.SEGMENT_RE.match(name):  # the manifest check already refused it; never join it
            raise CorruptionError(self.path, f"invalid segment name {name!r}")
        return self._p("segments", name)

    def deletion_path(self, name: str) -> str:
        if not mf.DELETION_RE.match(name):
            raise CorruptionError(self.path, f"invalid deletion file name {name!r}")
        return self._p("deletions", name)

    def index_path(self, name: str) -> str:
        if not ix.INDEX_RE.match(name):
            raise CorruptionError(self.path, f"invalid index file name {name!r}")
        return self._p("indexes", name)

    def manifest_path(self, version: int) -> str:
        return self._p("manifests", f"{int(version)}.json")

    # -- layout
    def exists(self) -> bool:
        return os.path.exists(self._p(LATEST_NAME))

    def init_dirs(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        for d in ("manifests", "segments", "deletions"):  # indexes/: with the first index
            os.makedirs(self._p(d), exist_ok=True)
        fsync_dir(self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def check_dirs(self) -> None:
        """The data folders are real folders of this directory (not links out);
        ``indexes/`` may be missing (collections created before indexes existed)."""
        for d in ("manifests", "segments", "deletions", "indexes"):
            p = self._p(d)
            if d == "indexes" and not os.path.lexists(p):
                continue
            if not os.path.isdir(p) or os.path.islink(p):
                raise CorruptionError(p, "is missing or not a plain folder of the collection")

    def ensure_index_dir(self) -> None:
        p = self._p("indexes")
        if not os.path.lexists(p):
            os.makedirs(p, exist_ok=True)
            fsync_dir(self.path)
        self.check_dirs()

    def acquire(self) -> None:
        if self.lock is None:
            self.lock = FileLock(self.path)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- data files
    def write_segment(self, table: pa.Table, crc_block: int) -> dict:
        """Write a segment; returns its manifest fields (name, size, checksums). The
        checksums are taken from the file as written and mapped back, so they are
        exactly what a reader will check."""
        name = f"{uuid.uuid4().hex}.arrow"
        path = self._p("segments", name)
        write_ipc(path, table)
        back = ig.read_ipc(path)
        return {"name": name, "bytes": os.path.getsize(path), "crc32": ig.file_crc(path, crc_block),
                "columns": ig.column_crcs(back)}

    def write_index_table(self, what: str, table: pa.Table, crc_block: int) -> dict:
        """An Arrow index file (ivf centroids or lists): like a segment, its manifest
        fields are taken from the file as written."""
        self.ensure_index_dir()
        name = ix.new_name(what)
        path = self._p("indexes", name)
        write_ipc(path, table)
        back = ig.read_ipc(path)
        return {"name": name, "bytes": os.path.getsize(path), "crc32": ig.file_crc(path, crc_block),
                "columns": ig.column_crcs(back)}

    def write_index_file(self, what: str, write, crc_block: int) -> dict:
        """An index file written by ``write(path)`` (a library's own format), fsynced."""
        self.ensure_index_dir()
        name = ix.new_name(what)
        path = self._p("indexes", name)
        write(path)
        fsync_file(path)
        return {"name": name, "bytes": os.path.getsize(path), "crc32": ig.file_crc(path, crc_block),
                "columns": None}

    def load_index_table(self, entry: dict) -> pa.Table:
        path = self.index_path(entry["name"])
        ig.regular_file(path, entry.get("bytes"))
        return ig.read_ipc(path)

    def discard(self, entries) -> None:
        """Remove files this writer wrote for a commit it then abandoned (no manifest
        names them); garbage collection would remove them too."""
        for e in entries:
            if e["name"] is not None:  # None: index files of a staged segment only
                _unlink(self._p("segments", e["name"]))
            for kind in ix.KINDS:
                if e.get(kind):
                    _unlink(self._p("indexes", e[kind]["name"]))

    def load_segment(self, entry: dict) -> pa.Table:
        path = self.segment_path(entry["name"])
        ig.regular_file(path, entry.get("bytes"))
        return ig.read_ipc(path)

    def write_deletions(self, segment: str, version: int, rows: np.ndarray) -> dict:
        name = mf.deletion_name(segment, version)
        path = self._p("deletions", name)
        write_ipc(path, pa.table({"_row": pa.array(rows, pa.int64())}))
        with open(path, "rb") as f:
            data = f.read()
        return {"name": name, "bytes": len(data), "crc32": mf.crc_hex(data)}

    def load_deletions(self, dentry: dict) -> np.ndarray:
        path = self.deletion_path(dentry["name"])
        ig.regular_file(path, dentry.get("bytes"))
        if dentry.get("crc32") is not None:  # small: checked whole at open
            with open(path, "rb") as f:
                if mf.crc_hex(f.read()) != dentry["crc32"]:
                    raise CorruptionError(path, "fails its checksum (damaged)")
        t = ig.read_ipc(path)
        if t.schema.names != ["_row"] or t.schema.field(0).type != pa.int64() or t.column(0).null_count:
            raise CorruptionError(path, f"is not a deletion file (schema {t.schema})")
        arr = t.column(0).chunk(0) if t.num_rows else pa.array([], pa.int64())
        try:
            arr.validate()
        except pa.ArrowException as e:
            raise CorruptionError(path, f"is damaged ({e})") from None
        if not len(arr):
            return np.zeros(0, np.int64)
        return np.frombuffer(arr.buffers()[1], np.int64, count=arr.offset + len(arr))[arr.offset:].copy()

    def sync_data(self) -> None:
        """Make new data-file directory entries durable before the manifest names them."""
        fsync_dir(self._p("segments"))
        fsync_dir(self._p("deletions"))
        if os.path.isdir(self._p("indexes")):
            fsync_dir(self._p("indexes"))

    # -- manifests
    def write_manifest(self, manifest: dict) -> None:
        write_atomic(self.manifest_path(manifest["version"]), mf.encode(manifest))

    def read_manifest(self, version: int) -> dict:
        """The checked manifest of ``version``; KeyError when its file does not exist,
        CorruptionError when it is damaged."""
        path = self.manifest_path(version)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise KeyError(version) from None
        return mf.check(mf.decode(data, path), int(version), path)

    def manifest_summary(self, version: int, dir_fd=None) -> dict:
        """The summary of a manifest (its first bytes); ``dir_fd``: an open
        ``manifests/`` folder (saves a path lookup per version in ``versions()``)."""
        path = self.manifest_path(version)
        try:
            fd = os.open(f"{int(version)}.json", os.O_RDONLY, dir_fd=dir_fd) if dir_fd is not None \
                else os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise KeyError(version) from None
        try:
            head = os.read(fd, 512)
            if head.startswith(mf._HEAD) and b"}" in head:
                return mf.summary(head, path)
            parts = [head]
            while parts[-1]:
                parts.append(os.read(fd, 1 << 20))
        finally:
            os.close(fd)
        return mf.summary(b"".join(parts), path)

    def set_latest(self, version: int) -> None:
        write_atomic(self._p(LATEST_NAME), f"{int(version)}\n".encode())

    def latest(self) -> int:
        path = self._p(LATEST_NAME)
        try:
            with open(path, "rb") as f:
                data = f.read(64)
        except FileNotFoundError:
            raise CollectionNotFound(f"{self.path!r} is not a nestvec collection (no LATEST file)") from None
        text = data.strip()
        if not text.isdigit() or len(text) > 18:
            raise CorruptionError(path, f"does not hold a version number (got {data[:40]!r})")
        return int(text)

    def summaries(self, versions) -> list:
        """(version, summary) of each of ``versions`` whose manifest exists."""
        out = []
        dfd = os.open(self._p("manifests"), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            for v in versions:
                try:
                    out.append((v, self.manifest_summary(v, dfd)))
                except KeyError:
                    pass
        finally:
            os.close(dfd)
        return out

    def manifest_versions(self) -> list[int]:
        out = []
        for fn in os.listdir(self._p("manifests")):
            stem, ext = os.path.splitext(fn)
            if ext == ".json" and stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    # -- garbage collection
    def gc(self, keep: list[dict]) -> dict:
        """Remove manifests not in ``keep`` and every data/temp file none of them names.
        Only the writer (holding the lock) calls this, so no commit is in flight."""
        keep_versions = {m["version"] for m in keep}
        segs, dels, idx = _live_names(keep)
        removed = {"manifests": 0, "segments": 0, "deletions": 0, "indexes": 0}
        for v in self.manifest_versions():
            if v not in keep_versions:
                _unlink(self.manifest_path(v))
                removed["manifests"] += 1
        subs = [("segments", segs), ("deletions", dels)]
        if os.path.isdir(self._p("indexes")):
            subs.append(("indexes", idx))
        for sub, live in subs:
            for fn in os.listdir(self._p(sub)):
                if fn not in live:
                    _unlink(self._p(sub, fn))
                    removed[sub] += 1
        for fn in os.listdir(self._p("manifests")):
            if fn.endswith(".tmp"):
                _unlink(self._p("manifests", fn))
        for fn in os.listdir(self.path):
            if fn.endswith(".tmp"):
                _unlink(self._p(fn))
        for d in ("manifests", "segments", "deletions"):
            fsync_dir(self._p(d))
        if os.path.isdir(self._p("indexes")):
            fsync_dir(self._p("indexes"))
        return removed

    def segment_names(self) -> set:
        """Names of the segment files present (committed or not)."""
        return set(os.listdir(self._p("segments")))

    def discard_segment(self, name: str) -> None:
        """Remove a segment file no manifest names (a failed write's); writer only."""
        if mf.SEGMENT_RE.match(name):
            _unlink(self._p("segments", name))

    def discard_index(self, name: str) -> None:
        """Remove an index file no manifest names (a failed commit's); writer only."""
        if ix.INDEX_RE.match(name):
            _unlink(self._p("indexes", name))

    def files(self) -> list[str]:
        """Every file under the directory, relative (tests compare before/after)."""
        out = []
        for root, _dirs, fns in os.walk(self.path):
            for fn in fns:
                out.append(os.path.relpath(os.path.join(root, fn), self.path))
        return sorted(out)


def _live_names(keep: list[dict]) -> tuple:
    segs, dels, idx = set(), set(), set()
    for m in keep:
        for spec in (m.get("indexes") or {}).values():
            if spec.get("centroids"):
                idx.add(spec["centroids"]["name"])
            for sp in spec.get("spans") or ():
                idx.add(sp["name"])
        for s in m["segments"]:
            segs.add(s["name"])
            if s.get("deletions"):
                dels.add(s["deletions"])
            for kind in ix.KINDS:
                if s.get(kind):
                    idx.add(s[kind]["name"])
    return segs, dels, idx


def deletion_name(segment: str, version: int) -> str:
    return mf.deletion_name(segment, version)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass
class MemoryStore:
    """The same interface without files (``Collection.create(None, ...)``); nothing
    leaves the process, so nothing is checksummed."""

    segments: dict = field(default_factory=dict)
    deletions: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)
    indexes: dict = field(default_factory=dict)  # name -> Arrow table or a library's index object
    _latest: int | None = None
    path: str | None = None

    @property
    def persistent(self) -> bool:
        return False

    def exists(self) -> bool:
        return self._latest is not None

    def init_dirs(self) -> None:
        pass

    def check_dirs(self) -> None:
        pass

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def segment_path(self, name: str):
        return None

    def deletion_path(self, name: str):
        return None

    def write_segment(self, table: pa.Table, crc_block: int) -> dict:
        name = f"{uuid.uuid4().hex}.arrow"
        self.segments[name] = table.combine_chunks()
        return {"name": name, "bytes": None, "crc32": None, "columns": None}

    def load_segment(self, entry: dict) -> pa.Table:
        return self.segments[entry["name"]]

    def index_path(self, name: str):
        return None

    def ensure_index_dir(self) -> None:
        pass

    def write_index_table(self, what: str, table: pa.Table, crc_block: int) -> dict:
        name = ix.new_name(what)
        self.indexes[name] = table.combine_chunks()
        return {"name": name, "bytes": None, "crc32": None, "columns": None}

    def write_index_object(self, what: str, obj) -> dict:
        name = ix.new_name(what)
        self.indexes[name] = obj
        return {"name": name, "bytes": None, "crc32": None, "columns": None}

    def load_index_table(self, entry: dict) -> pa.Table:
        return self.indexes[entry["name"]]

    def discard(self, entries) -> None:
        for e in entries:
            self.segments.pop(e["name"], None)
            for kind in ix.KINDS:
                if e.get(kind):
                    self.indexes.pop(e[kind]["name"], None)

    def segment_names(self) -> set:
        return set(self.segments)

    def discard_segment(self, name: str) -> None:
        self.segments.pop(name, None)

    def discard_index(self, name: str) -> None:
        self.indexes.pop(name, None)

    def write_deletions(self, segment: str, version: int, rows: np.ndarray) -> dict:
        name = mf.deletion_name(segment, version)
        self.deletions[name] = np.asarray(rows, dtype=np.int64).copy()
        return {"name": name, "bytes": None, "crc32": None}

    def load_deletions(self, dentry: dict) -> np.ndarray:
        return self.deletions[dentry["name"]]

    def sync_data(self) -> None:
        pass

    def write_manifest(self, manifest: dict) -> None:
        self.manifests[manifest["version"]] = json.loads(json.dumps(manifest))

    def read_manifest(self, version: int) -> dict:
        return self.manifests[int(version)]

    def manifest_summary(self, version: int) -> dict:
        m = self.manifests[int(version)]
        return {"version": m["version"], "rows": m["rows"], "segments": len(m["segments"]),
                "created": m["created"], "op": m["op"]}

    def set_latest(self, version: int) -> None:
        self._latest = int(version)

    def summaries(self, versions) -> list:
        return [(v, self.manifest_summary(v)) for v in versions if v in self.manifests]

    def latest(self) -> int:
        return self._latest

    def manifest_versions(self) -> list[int]:
        return sorted(self.manifests)

    def gc(self, keep: list[dict]) -> dict:
        keep_versions = {m["version"] for m in keep}
        segs, dels, idx = _live_names(keep)
        removed = {"manifests": 0, "segments": 0, "deletions": 0, "indexes": 0}
        for name in list(self.indexes):
            if name not in idx:
                del self.indexes[name]
                removed["indexes"] += 1
        for v in list(self.manifests):
            if v not in keep_versions:
                del self.manifests[v]
                removed["manifests"] += 1
        for name in list(self.segments):
            if name not in segs:
                del self.segments[name]
                removed["segments"] += 1
        for name in list(self.deletions):
            if name not in dels:
                del self.deletions[name]
                removed["deletions"] += 1
        return removed
