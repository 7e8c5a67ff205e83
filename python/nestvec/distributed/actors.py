"""The per-shard actors, as plain classes (``runtime.py`` wraps them with ``ray.remote``).

``ShardWriter`` is its shard's single writer: it holds the shard directory's writer
lock for as long as it lives (the lock goes with the process, so a killed writer never
leaves it behind). A write is two calls: ``prepare`` checks and writes everything that
can fail (the segment file, the duplicate-id check) and commits nothing; ``commit``
makes the prepared change the shard's next version. The driver commits only when every
shard prepared, and records the shard versions in a cluster manifest afterwards.

``ShardReader`` answers reads of one shard at the version each request names (opened
read-only, memory-mapped, pinned: a reader never sees a version the cluster manifest
does not name). It keeps the last few versions open, so searches from handles on
different cluster versions do not reopen files. A ``ReaderGroup`` actor holds the
readers of the shards it serves (by default, the shards are spread over one actor
per node of the cluster) and searches them as one (``union.py``).
"""
from __future__ import annotations

import os
import pickle
import threading
import uuid
from collections import OrderedDict

import numpy as np
import pyarrow as pa

from ..collection import bulk
from ..collection.collection import Collection
from . import union

_OPEN_VERSIONS = 3  # versions a reader keeps mapped


class ShardWriter:
    def __init__(self, path: str, merge_policy=None):
        self.path = path
        self.col = Collection.open(path, merge_policy=merge_policy)
        self.pending: dict = {}

    def state(self) -> dict:
        m = self.col._snapshot().manifest
        return {"version": m["version"], "next_row": m["next_row"], "next_id": m.get("next_id", 0),
                "rows": m["rows"], "pid": os.getpid()}

    def sync(self, version: int) -> dict:
        """Make ``version`` (the cluster's record) current: a restore when a batch the
        cluster never committed ran ahead of it. Drops prepared writes."""
        self._drop_pending()
        if self.col.version != version:
            self.col.restore(version)
        return self.state()

    def prepare(self, txn: str, op: str, table=None, ids=None, filter=None, staged=None, mode="add") -> int:
        """Check and stage one shard's part of a write; returns the rows it adds.
        ``op``: add | upsert (``table``: rows built by the driver) | delete (``ids``,
        ``filter``) | import (``staged`` segments, checked in full here; ``mode``)."""
        col = self.col
        snap = col._snapshot()
        if op == "import":
            _, _, arr, _ = bulk.check_staged(col._store, snap, staged, verify=True)
            if mode == "add":
                self._refuse_present(snap, arr)
            self.pending[txn] = (mode, staged, "import")
            return len(arr)
        if op in ("add", "upsert"):
            id_type = "string" if pa.types.is_string(table.schema.field("id").type) else "int64"
            if op == "add":
                self._refuse_present(snap, table.column("id").combine_chunks())
            staged = bulk.stage_table(col._store, snap.manifest, table, id_type)
            self.pending[txn] = (op, [staged], None)
            return table.num_rows
        if op == "delete":
            if filter is not None:
                col._masks(snap, filter)  # a bad filter fails here, before any shard commits
            self.pending[txn] = (op, ids, filter)
            return 0
        raise ValueError(f"op: {op!r}")

    def _refuse_present(self, snap, arr) -> None:
        found = self.col._find(snap, arr)
        if any(m.any() for m in found):
            dup = pa.concat_arrays([s.column("id").filter(pa.array(m)).combine_chunks()
                                    for s, m in zip(snap.segments, found) if m.any()])[:5]
            raise ValueError(f"ids: already in the collection: {dup.to_pylist()} (use upsert to replace)")

    def commit(self, txn: str) -> dict:
        op, a, b = self.pending.pop(txn)
        if op == "delete":
            n = self.col.delete(ids=a, filter=b)
        else:  # staged segments: written (and for imports checked in full) by prepare
            n = self.col.import_segments(a, mode=op, verify=False)
        return dict(self.state(), changed=n)

    def abort(self, txn: str) -> None:
        item = self.pending.pop(txn, None)
        if item is not None and item[0] != "delete" and item[2] != "import":
            bulk.discard_segments(self.path, item[1])

    def _drop_pending(self):
        for txn in list(self.pending):
            self.abort(txn)

    def compact(self) -> dict:
        """Rewrite into one segment, keeping every version (the driver decides which
        ones its cluster manifests still need: ``remove_versions``)."""
        self.col.compact(keep_versions=1 << 62)
        return self.state()

    def optimize(self) -> dict:
        self.col.optimize()
        return self.state()

    def create_index(self, kind: str, options: dict, replace: bool) -> tuple:
        """Build and commit this shard's index; (its spec, the state)."""
        self._drop_pending()
        spec = self.col.create_index(kind, replace=replace, **options)
        return spec, self.state()

    def drop_index(self, kind: str) -> dict:
        self._drop_pending()
        self.col.drop_index(kind)
        return self.state()

    def remove_versions(self, keep) -> dict:
        return self.col.remove_versions(keep)

    def close(self) -> None:
        self._drop_pending()
        self.col.close()

    def pid(self) -> int:
        return os.getpid()


class ReaderGroup:
    """A reader actor: the readers of one or more shards in one process. A request
    names its shards, and one actor call answers all of a group's shards (an actor
    call costs the driver far more than a small shard's search: one call per node
    rather than one per shard). ``paths``: ``{shard: path}``."""

    def __init__(self, paths: dict, device=None, threads=None, nice=None):
        take_priority(nice)
        if threads:
            from .. import _info

            _info.set_num_threads(int(threads))
        self.readers = {int(s): ShardReader(p, device) for s, p in paths.items()}

    def pid(self) -> int:
        return os.getpid()

    def run_graph(self, work: dict, i: int):
        """This actor's part of a compiled-graph search (``runtime.FanGraph``)."""
        calls = work.get(i)
        return None if calls is None else self.run("search", calls)

    def run_packed(self, blob: bytes) -> bytes:
        """:meth:`run` with its arguments and answer as one pickle each: Ray serializes
        every NumPy array of a structure as a buffer of its own, which costs more than
        the search itself saves for a query's few small arrays (``ShardedCollection._fan``)."""
        return pickle.dumps(self.run(*pickle.loads(blob)), protocol=pickle.HIGHEST_PROTOCOL)

    def run(self, method: str, calls: list, merged: bool = False) -> list:
        """``[(shard, args)]`` -> each shard's ``ShardReader.<method>(*args)``, in order.
        A search of several shards is one search over all of them (``union.py``)
        where it can be: one fixed cost per actor rather than one per shard;
        ``merged``: its answer may come as one list (``union.search``)."""
        if method == "search" and len(calls) > 1:
            readers = [self.readers[s] for s, _ in calls]
            cols = [r._col(args[0]) for r, (_, args) in zip(readers, calls)]
            if union.eligible(calls, cols):
                vs = [args[0] for _, args in calls]
                out = union.search(cols, lambda j, what: readers[j]._flat(vs[j], cols[j], what), calls[0][1],
                                   _payload, merged)
                if out[0][4] is not None:
                    out[0][4]["shards"] = [s for s, _ in calls]
                return out
        return [getattr(self.readers[s], method)(*args) for s, args in calls]


class ShardReader:
    def __init__(self, path: str, device=None, threads=None):
        self.path = path
        self.device = device
        if threads:
            from .. import _info

            _info.set_num_threads(int(threads))
        self._open: OrderedDict = OrderedDict()
        self._flats: dict = {}  # (version, what) -> _flat
        self._lock = threading.Lock()

    def pid(self) -> int:
        return os.getpid()

    def _col(self, version: int) -> Collection:
        with self._lock:
            col = self._open.get(version)
            if col is not None:
                self._open.move_to_end(version)
                return col
        col = Collection.open(self.path, version=version)  # pinned, read-only, mmap
        with self._lock:
            col = self._open.setdefault(version, col)
            while len(self._open) > _OPEN_VERSIONS:
                old, c = self._open.popitem(last=False)
                for what in ("rows", "ids"):
                    self._flats.pop((old, what), None)
                c.close()
        return col

    def _device(self, device):
        return self.device if device is None else device

    def search(self, version, q, k, dim, mode, rescore, filter, columns, ladder, device=None,
               candidates=None, nprobe=None, ef=None, min_score=None, max_distance=None,
               explain=False) -> tuple:
        """One shard's top-k: (mode used, score [Q,kk], rows [Q,kk] (-1: none), the
        id and ``columns`` of the hits in (query, rank) order, the planner's stats or
        None). Hits are an int64 array when only int ids are asked for (NumPy
        travels back to the driver without Arrow's per-call cost), else a pa.Table."""
        col = self._col(version)
        snap, cols, used, seg, local, score, planner, _ = col._hits(
            q, k, dim, mode, rescore, filter, columns, self._device(device), ladder, candidates=candidates,
            nprobe=nprobe, ef=ef, min_score=min_score, max_distance=max_distance)
        return _payload(col, snap, cols, used, seg, local, score, planner.stats if explain else None)

    def _flat(self, version, col, what: str) -> np.ndarray:
        """``_row`` (``what="rows"``) or the int ``id`` (``"ids"``) of every row of
        ``version``, in its segments' order: a union search's tie order and hits. A
        view of the column for a one-segment shard, else a copy: 8 bytes a row each,
        per version kept open (a few % of a float16 row of a few hundred values)."""
        with self._lock:
            hit = self._flats.get((version, what))
        if hit is None:
            segs = col._snapshot().segments
            get = (lambda s: s.rows) if what == "rows" else (lambda s: s.file.int_ids())
            hit = get(segs[0]) if len(segs) == 1 else \
                np.concatenate([get(s) for s in segs]) if segs else np.zeros(0, np.int64)
            with self._lock:
                if version in self._open:  # else evicted meanwhile: not kept
                    self._flats[(version, what)] = hit
        return hit

    def indexes(self, version) -> dict:
        return self._col(version).indexes()

    def count(self, version, filter=None) -> int:
        return self._col(version).count(filter)

    def get(self, version, ids, columns=None) -> pa.Table:
        return self._col(version).get(ids, columns)

    def to_table(self, version, columns=None, filter=None) -> tuple:
        """(table, _row of each row) of the live rows matching ``filter``, row order."""
        col = self._col(version)
        snap = col._snapshot()
        t = col.to_table(columns, filter)
        rows = [s.rows if m is None else s.rows[m] for s, m in zip(snap.segments, col._masks(snap, filter))]
        return t, (np.concatenate(rows) if rows else np.zeros(0, np.int64))


def take_priority(nice) -> None:
    """Ray starts its workers at niceness 15 (``RAY_worker_niceness``), fine for batch
    tasks; a reader actor answers searches its caller waits for, and an ingestion's
    Encoder actors (and its row allocator) do the work its caller waits for. At that
    priority they lose the cores to every normal process on a busy node (then the same
    search runs slower in the actor than in the driver), and share them evenly with
    Ray's own idle-time actors. So they take the driver's niceness ``nice`` where the
    process may raise its priority (root, CAP_SYS_NICE, RLIMIT_NICE); else it stays as
    Ray set it (``runtime_env={"env_vars": {"RAY_worker_niceness": "0"}}`` in the
    actor options does it for everyone)."""
    if nice is None:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > nice:
            os.setpriority(os.PRIO_PROCESS, 0, int(nice))
    except (OSError, AttributeError):  # no permission, or no such call on this platform
        pass


def _payload(col, snap, cols, used, seg, local, score, stats) -> tuple:
    """A shard's answer to a search: (mode used, score [Q,kk], rows [Q,kk] (the
    ``_row`` of each hit, -1: none), the hits, the planner's stats or None)."""
    valid = local >= 0
    rows = np.full(local.shape, -1, np.int64)
    segs = np.unique(seg[valid]) if len(snap.segments) > 1 else (0,) if valid.any() else ()
    score = np.asarray(score.cpu() if hasattr(score, "cpu") else score)
    names = ["id"] + [c for c in cols if c != "id"]
    int_ids = names == ["id"] and snap.manifest["id_type"] == "int64"
    hits = np.empty(int(valid.sum()), np.int64) if int_ids else None
    flat_seg, flat_local = seg[valid], local[valid]
    for i in segs:
        sel = valid & (seg == i)
        rows[sel] = snap.segments[i].rows[local[sel]]
        if int_ids:
            fsel = flat_seg == i
            hits[fsel] = snap.segments[i].file.int_ids()[flat_local[fsel]]
    if not int_ids:
        hits = col._result(snap, seg, local, score, cols, used).select(names)
    return used, score, rows, hits, stats


def new_txn() -> str:
    return uuid.uuid4().hex
