"""On-disk layout of a collection: segments, deletion files, manifests, commits, lock.

A collection directory holds (DESIGN.md, Collections)::

    LATEST                          the current version number (replaced atomically)
    LOCK                            flock()ed by the single writer; holds its pid
    manifests/<version>.json        one per committed version
    segments/<uuid>.arrow           Arrow IPC *file*, uncompressed, one record batch
    deletions/<segment>.<version>.arrow   all deleted ``_row``s of that segment so far

Commit protocol: data files are written and fsynced, then the manifest (temp file,
fsync, rename, fsync dir), then ``LATEST`` the same way. A crash at any point leaves
``LATEST`` naming the previous complete version; files it does not reference are
garbage and removed by ``gc``. Readers read ``LATEST`` once and memory-map what that
manifest names, so they keep their version while a writer commits (POSIX keeps an
unlinked, mapped file readable until it is unmapped).

``MemoryStore`` is the same interface with no files, for ``Collection.create(None)``.
"""
from __future__ import annotations

import errno
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

FORMAT = "nestvec-collection/1"
LOCK_NAME = "LOCK"
LATEST_NAME = "LATEST"


class LockError(RuntimeError):
    """Another process holds the writer lock of a collection."""


class CollectionNotFound(FileNotFoundError):
    """The path is not a collection (no LATEST)."""


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
    """One uncompressed record batch in the IPC file format, fsynced."""
    batch = table.combine_chunks().to_batches()
    with pa.OSFile(path, "wb") as sink:
        with pa.ipc.new_file(sink, table.schema) as w:
            for b in batch:  # one batch (combine_chunks), or none for an empty table
                w.write_batch(b)
    fsync_file(path)


def read_ipc(path: str) -> pa.Table:
    """Memory-map an IPC file: reads the footer only, buffers point into the map."""
    with pa.memory_map(path, "r") as mm:
        return pa.ipc.open_file(mm).read_all()


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

    # -- layout
    def exists(self) -> bool:
        return os.path.exists(self._p(LATEST_NAME))

    def init_dirs(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        for d in ("manifests", "segments", "deletions"):
            os.makedirs(self._p(d), exist_ok=True)
        fsync_dir(self.path)
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def acquire(self) -> None:
        if self.lock is None:
            self.lock = FileLock(self.path)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- data files
    def write_segment(self, table: pa.Table) -> str:
        name = f"{uuid.uuid4().hex}.arrow"
        write_ipc(self._p("segments", name), table)
        return name

    def load_segment(self, name: str) -> pa.Table:
        return read_ipc(self._p("segments", name))

    def write_deletions(self, segment: str, version: int, rows: np.ndarray) -> str:
        name = deletion_name(segment, version)
        write_ipc(self._p("deletions", name), pa.table({"_row": pa.array(rows, pa.int64())}))
        return name

    def load_deletions(self, name: str) -> np.ndarray:
        return primitive_view(read_ipc(self._p("deletions", name)).column("_row"), np.int64)

    def sync_data(self) -> None:
        """Make new data-file directory entries durable before the manifest names them."""
        fsync_dir(self._p("segments"))
        fsync_dir(self._p("deletions"))

    # -- manifests
    def write_manifest(self, manifest: dict) -> None:
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        write_atomic(self._p("manifests", f"{manifest['version']}.json"), data)

    def read_manifest(self, version: int) -> dict:
        try:
            with open(self._p("manifests", f"{int(version)}.json"), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            raise KeyError(version) from None

    def set_latest(self, version: int) -> None:
        write_atomic(self._p(LATEST_NAME), f"{int(version)}\n".encode())

    def latest(self) -> int:
        try:
            with open(self._p(LATEST_NAME), "rb") as f:
                return int(f.read().strip())
        except FileNotFoundError:
            raise CollectionNotFound(f"{self.path!r} is not a nestvec collection (no LATEST file)") from None

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
        segs, dels = set(), set()
        for m in keep:
            for s in m["segments"]:
                segs.add(s["name"])
                if s.get("deletions"):
                    dels.add(s["deletions"])
        removed = {"manifests": 0, "segments": 0, "deletions": 0}
        for v in self.manifest_versions():
            if v not in keep_versions:
                _unlink(self._p("manifests", f"{v}.json"))
                removed["manifests"] += 1
        for sub, live in (("segments", segs), ("deletions", dels)):
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
        return removed

    def files(self) -> list[str]:
        """Every file under the directory, relative (tests compare before/after)."""
        out = []
        for root, _dirs, fns in os.walk(self.path):
            for fn in fns:
                out.append(os.path.relpath(os.path.join(root, fn), self.path))
        return sorted(out)


def deletion_name(segment: str, version: int) -> str:
    """``deletions/<segment uuid>.<version>.arrow``."""
    stem = segment[:-len(".arrow")] if segment.endswith(".arrow") else segment
    return f"{stem}.{int(version)}.arrow"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass
class MemoryStore:
    """The same interface without files (``Collection.create(None, ...)``)."""

    segments: dict = field(default_factory=dict)
    deletions: dict = field(default_factory=dict)
    manifests: dict = field(default_factory=dict)
    _latest: int | None = None
    path: str | None = None

    @property
    def persistent(self) -> bool:
        return False

    def exists(self) -> bool:
        return self._latest is not None

    def init_dirs(self) -> None:
        pass

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def write_segment(self, table: pa.Table) -> str:
        name = f"{uuid.uuid4().hex}.arrow"
        self.segments[name] = table.combine_chunks()
        return name

    def load_segment(self, name: str) -> pa.Table:
        return self.segments[name]

    def write_deletions(self, segment: str, version: int, rows: np.ndarray) -> str:
        name = deletion_name(segment, version)
        self.deletions[name] = np.asarray(rows, dtype=np.int64).copy()
        return name

    def load_deletions(self, name: str) -> np.ndarray:
        return self.deletions[name]

    def sync_data(self) -> None:
        pass

    def write_manifest(self, manifest: dict) -> None:
        self.manifests[manifest["version"]] = json.loads(json.dumps(manifest))

    def read_manifest(self, version: int) -> dict:
        return self.manifests[int(version)]

    def set_latest(self, version: int) -> None:
        self._latest = int(version)

    def latest(self) -> int:
        return self._latest

    def manifest_versions(self) -> list[int]:
        return sorted(self.manifests)

    def gc(self, keep: list[dict]) -> dict:
        keep_versions = {m["version"] for m in keep}
        segs = {s["name"] for m in keep for s in m["segments"]}
        dels = {s["deletions"] for m in keep for s in m["segments"] if s.get("deletions")}
        removed = {"manifests": 0, "segments": 0, "deletions": 0}
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


# --------------------------------------------------------------------------- snapshot


@dataclass
class Segment:
    """One mapped segment of a snapshot. ``vectors``/``codes`` are NumPy views over the
    mapped Arrow buffers (no copy); ``live`` is None when nothing is deleted."""

    name: str
    table: pa.Table
    vectors: np.ndarray
    codes: np.ndarray | None
    rows: np.ndarray
    live: np.ndarray | None
    n_live: int
    deletions: str | None
    offset: int = 0  # position of its first row in the snapshot's global order

    @property
    def n(self) -> int:
        return self.table.num_rows


def fixed_list_view(col, width: int, np_dtype) -> np.ndarray:
    """Zero-copy ``[n, width]`` NumPy view of a fixed_size_list / fixed_size_binary column."""
    arr = col.chunk(0) if isinstance(col, pa.ChunkedArray) and col.num_chunks == 1 else None
    if arr is None:  # not one chunk (only for foreign files): one copy
        arr = pa.concat_arrays(col.chunks) if isinstance(col, pa.ChunkedArray) and col.num_chunks \
            else pa.array([], col.type)
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type):
        buf = arr.buffers()[1]
        if buf is None or n == 0:
            return np.zeros((0, width), dtype=np_dtype)
        flat = np.frombuffer(buf, dtype=np_dtype, count=(arr.offset + n) * width)
        return flat.reshape(-1, width)[arr.offset:]
    values = arr.values  # the whole child array; slice by the list offset ourselves
    flat = primitive_view(values, np_dtype)
    return flat.reshape(-1, width)[arr.offset:arr.offset + n]


def primitive_view(arr, np_dtype) -> np.ndarray:
    """Zero-copy NumPy view of a null-free primitive Arrow array (straight from its
    buffer: ``to_numpy`` would import pandas, ~0.4 s and ~40 MB, on first use)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else pa.concat_arrays(arr.chunks) if arr.num_chunks \
            else pa.array([], arr.type)
    if arr.null_count:
        raise ValueError("unexpected nulls in a storage column")
    np_dtype = np.dtype(np_dtype)
    buf = arr.buffers()[1]
    if buf is None or len(arr) == 0:
        return np.zeros(0, dtype=np_dtype)
    return np.frombuffer(buf, dtype=np_dtype, count=arr.offset + len(arr))[arr.offset:]


def load_segment(store, seg: dict, dim: int, np_dtype, binary: bool, offset: int) -> Segment:
    table = store.load_segment(seg["name"])
    vectors = fixed_list_view(table.column("vector"), dim, np_dtype)
    codes = fixed_list_view(table.column("code"), (dim + 7) // 8, np.uint8) if binary else None
    rows = primitive_view(table.column("_row"), np.int64)
    live = None
    if seg.get("deletions"):
        deleted = store.load_deletions(seg["deletions"])
        live = np.ones(table.num_rows, dtype=bool)
        live[np.searchsorted(rows, deleted)] = False  # _row ascending within a segment
    n_live = table.num_rows if live is None else int(live.sum())
    return Segment(seg["name"], table, vectors, codes, rows, live, n_live, seg.get("deletions"), offset)


def read_snapshot(store, version: int | None, retries: int = 20):
    """(manifest, segments) of ``version`` (default: LATEST), all segments mapped.
    A writer's GC may remove an old version between reading LATEST and mapping its
    files; then we read LATEST again."""
    last = None
    for _ in range(retries):
        v = store.latest() if version is None else int(version)
        try:
            m = store.read_manifest(v)
        except KeyError:
            if version is not None:
                raise KeyError(f"version {version} does not exist (it may have been removed by "
                               f"compact); versions(): {store.manifest_versions()}") from None
            last = f"manifest {v} missing"
            time.sleep(0.01)
            continue
        if m.get("format") != FORMAT:
            raise ValueError(f"unsupported collection format {m.get('format')!r}")
        np_dtype = np.dtype(m["dtype"])
        try:
            segs, off = [], 0
            for s in m["segments"]:
                segs.append(load_segment(store, s, m["dim"], np_dtype, m["binary"], off))
                off += segs[-1].n
            return m, segs
        except (FileNotFoundError, KeyError) as e:
            if version is not None:
                raise KeyError(f"version {version} is no longer readable (compacted away): {e}") from None
            last = str(e)
            time.sleep(0.01)
    raise RuntimeError(f"could not read a consistent version after {retries} tries: {last}")
