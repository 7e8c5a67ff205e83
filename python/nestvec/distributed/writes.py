"""Writes of a ShardedCollection (a mixin): every write is one cluster transaction.

1. The driver validates the whole call and builds the rows (global row numbers, ids)
   before anything is sent, so bad input changes nothing anywhere.
2. prepare, on every shard the write touches (in parallel): the shard's part is
   checked against the shard (duplicate ids) and its segment file written; nothing
   is committed. Any failure: the prepared files are discarded, the error raised.
3. commit, on the same shards: each makes its part its next version.
4. The cluster manifest recording the new shard versions is committed (the commit
   point; the call returns after it: acknowledged).

A failure in 3 or 4 (a writer actor killed, a disk error, the driver killed) leaves
some shards ahead of the cluster manifest, which readers never see; the driver then
restores every shard to its recorded version (``_recover``; or the next writable
``open`` does, when the driver itself died) and raises. A batch is visible in all
shards or in none, and nothing a returned call committed is lost.
"""
from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from ..collection import commit as cm
from ..collection import validate as vd
from . import actors, routing, runtime


class WriteMixin:
    def _check_writable(self):
        self._manifest()
        if self._read_only:
            why = f"version {self.version} was opened explicitly" if self._pinned else "opened read_only=True"
            raise PermissionError(f"sharded collection is read-only ({why})")

    def _writer_handles(self, wait: bool = True) -> list:
        """The shards' writer actors, started on first use. ``wait=False`` starts them
        without waiting for them to open their shards (an ingestion starts them before
        its pipeline, so their start-up overlaps the encoding); the next call with
        ``wait=True`` waits and raises if one failed to start."""
        if self._writers is None:
            m = self._m
            self._writers = [runtime.writer(self._root.shard_path(m, i), self._writer_opts, self._merge_policy)
                             for i in range(m["shards"])]
            self._writers_starting = [w.state.remote() for w in self._writers]
        if wait and self._writers_starting is not None:
            refs, self._writers_starting = self._writers_starting, None
            try:
                runtime.gather(refs, list(range(len(refs))), "writer")
            except BaseException:
                runtime.kill(self._writers)
                self._writers = None
                raise
        return self._writers

    def _replace_writer(self, s: int):
        """A fresh writer for shard ``s`` (the old one died for good: its lock died with it)."""
        runtime.kill([self._writers[s]])
        self._writers[s] = runtime.writer(self._root.shard_path(self._m, s), self._writer_opts,
                                          self._merge_policy)

    def _recover(self) -> None:
        """Every shard back to the version the cluster manifest records."""
        m = self._m
        ws = self._writer_handles()
        for s in range(m["shards"]):
            for attempt in range(3):
                try:
                    st = runtime.gather([ws[s].sync.remote(m["shard_versions"][s])], [s], "writer")[0]
                    m["next_row"] = max(m["next_row"], st["next_row"])
                    m["next_id"] = max(m["next_id"], st["next_id"])
                    break
                except runtime.ShardUnavailableError:
                    if attempt == 2:
                        raise
                    self._replace_writer(s)

    def _transaction(self, op: str, parts: dict, **fields) -> dict:
        """Run one write (``parts``: ``{shard: prepare kwargs}``) as described in the
        module docstring; returns ``{shard: rows changed}``."""
        m = self._m
        ws = self._writer_handles()
        shards = sorted(parts)
        txn = actors.new_txn()
        try:
            runtime.gather([ws[s].prepare.remote(txn, op, **parts[s]) for s in shards], shards, "writer")
        except BaseException:
            self._abort(txn, shards)
            raise
        try:
            states = self._commit_shards(txn, shards)
            if not any(st["changed"] for st in states) and op == "delete":
                return {s: 0 for s in shards}
            new = dict(m, version=m["version"] + 1, created=time.time(), op=op, **fields)
            new["shard_versions"] = list(m["shard_versions"])
            new["shard_rows"] = list(m["shard_rows"])
            for s, st in zip(shards, states):
                new["shard_versions"][s] = st["version"]
                new["shard_rows"][s] = st["rows"]
            new["rows"] = int(sum(new["shard_rows"]))
            self._root.commit(new)
        except BaseException as e:
            try:
                self._recover()
            except BaseException as r:
                raise runtime.ShardUnavailableError(
                    f"{op} failed ({type(e).__name__}: {e}) and the shards could not all be restored "
                    f"({type(r).__name__}: {r}); nothing was committed: reopen the collection to finish "
                    f"the repair") from e
            if isinstance(e, runtime.ShardUnavailableError):
                raise runtime.ShardUnavailableError(
                    f"{e}; {op} was not committed on any shard (the collection is at version "
                    f"{m['version']}); retry the call") from None
            raise
        self._m = new
        return {s: st["changed"] for s, st in zip(shards, states)}

    def _commit_shards(self, txn, shards) -> list:
        return runtime.gather([self._writers[s].commit.remote(txn) for s in shards], shards, "writer")

    def _abort(self, txn, shards) -> None:
        try:
            runtime.gather([self._writers[s].abort.remote(txn) for s in shards], shards, "writer")
        except Exception:
            pass  # a dead writer's staged file is garbage for compact()

    # ------------------------------------------------------------------ the API

    def _rows_write(self, op, vectors, ids, metadata) -> pa.Array:
        with self._lock:
            self._check_writable()
            m = self._m
            table, arr, id_type = cm.build_rows(m, self._schema, vectors, ids, metadata, op == "upsert",
                                                rows=m["next_row"])
            n = table.num_rows
            if not n:
                return arr
            next_id = m["next_id"]
            if id_type == "int64":
                next_id = max(next_id, int(pc.max(table.column("id")).as_py()) + 1)
            parts = routing.split(routing.shard_of(table.column("id"), m["shards"]), m["shards"])
            self._transaction(op, {s: {"table": table.take(pa.array(p))} for s, p in enumerate(parts) if len(p)},
                              next_row=m["next_row"] + n, next_id=next_id, id_type=id_type)
            return arr

    def add(self, vectors, ids=None, metadata=None) -> pa.Array:
        """Append rows (one cluster version, whichever shards they land on); returns
        their ids. As :meth:`nestvec.Collection.add`."""
        return self._rows_write("add", vectors, ids, metadata)

    def upsert(self, vectors, ids, metadata=None) -> pa.Array:
        """Insert or replace rows by id; an id's new row lands on the shard its old
        row was on (routing depends on the id only)."""
        return self._rows_write("upsert", vectors, ids, metadata)

    def delete(self, ids=None, filter=None) -> int:
        """Delete live rows by ``ids`` and/or ``filter`` (pushed down to the shards);
        returns the number deleted; nothing is committed when it is 0."""
        with self._lock:
            self._check_writable()
            if ids is None and filter is None:
                raise ValueError("delete: pass ids= or filter= (delete(filter='true') clears all)")
            m = self._m
            self._check_filter(m, filter)
            if ids is None:
                parts = {s: {"filter": filter} for s in range(m["shards"]) if m["shard_rows"][s]}
            else:
                arr = vd.ids_array(ids, m["id_type"])
                split = routing.split(routing.shard_of(arr, m["shards"]), m["shards"]) if len(arr) else []
                parts = {s: {"ids": arr.take(pa.array(p)), "filter": filter} for s, p in enumerate(split)
                         if len(p) and m["shard_rows"][s]}
            if not parts:
                return 0
            return int(sum(self._transaction("delete", parts).values()))

    def compact(self, keep_versions: int = 1) -> dict:
        """Compact every shard (one segment each, deleted rows dropped), commit a
        cluster version, then remove all but the newest ``keep_versions`` cluster
        versions and every shard version none of them names."""
        with self._lock:
            self._check_writable()
            keep_versions = vd.positive_int(keep_versions, "keep_versions")
            ws = self._writer_handles()
            shards = list(range(self.shards))
            try:
                states = runtime.gather([w.compact.remote() for w in ws], shards, "writer")
                self._commit_states(states, "compact")
            except BaseException:
                self._recover()
                raise
            keep = [v for v in self._root.versions() if v <= self.version][-keep_versions:]
            kept = [self._root.read(v) for v in keep]
            removed = {"cluster_manifests": self._root.gc(keep)}
            res = runtime.gather([ws[s].remove_versions.remote({km["shard_versions"][s] for km in kept})
                                  for s in shards], shards, "writer")
            for key in ("manifests", "segments", "deletions"):
                removed[key] = int(sum(r[key] for r in res))
            return removed

    def optimize(self) -> None:
        """Run each shard's merge policy to completion (one cluster version)."""
        with self._lock:
            self._check_writable()
            ws = self._writer_handles()
            shards = list(range(self.shards))
            try:
                states = runtime.gather([w.optimize.remote() for w in ws], shards, "writer")
                if any(st["version"] != v for st, v in zip(states, self._m["shard_versions"])):
                    self._commit_states(states, "optimize")
            except BaseException:
                self._recover()
                raise

    def _commit_states(self, states: list, op: str, **fields) -> None:
        m = self._m
        new = dict(m, version=m["version"] + 1, created=time.time(), op=op,
                   shard_versions=[st["version"] for st in states], shard_rows=[st["rows"] for st in states],
                   **fields)
        new["rows"] = int(sum(new["shard_rows"]))
        self._root.commit(new)
        self._m = new

    def _import(self, staged: dict, next_row: int, next_id: int, id_type, mode: str = "add") -> int:
        """Commit staged segments ``{shard: [StagedSegment]}`` as one cluster version
        (ingestion). Each shard checks its files in full before the commit."""
        with self._lock:
            self._check_writable()
            m = self._m
            parts = {s: {"staged": list(v), "mode": mode} for s, v in staged.items() if v}
            if not parts:
                return 0
            changed = self._transaction("import", parts, next_row=max(m["next_row"], next_row),
                                        next_id=max(m["next_id"], next_id), id_type=m["id_type"] or id_type)
            return int(sum(changed.values()))

