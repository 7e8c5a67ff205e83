"""Writes: new rows into a segment table, and the commit protocol that turns new files
into a new version (storage.py describes the order of writes and fsyncs).

Every function here takes the writer's current :class:`Snapshot` and returns the new
manifest, already committed (``LATEST`` replaced); the Collection then publishes the
matching snapshot. Nothing here is called without the writer lock (the file lock
across processes, the handle's write lock across threads).
"""
from __future__ import annotations

import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import manifest as mf
from . import validate as vd
from .merge import merge_tables


def build_rows(m: dict, schema: pa.Schema, vectors, ids, metadata, need_ids: bool):
    """Validate everything and build the new segment table (nothing written).
    Returns (table, ids array, id_type)."""
    dim, dtype = m["dim"], m["dtype"]
    vec = vd.vectors(vectors, dim, dtype, m["metric"])
    n = vec.shape[0]
    id_type = m["id_type"]
    if ids is None:
        if need_ids:
            raise ValueError("ids: upsert needs ids")
        # generated int ids start above every int id ever added: never a collision
        start = m.get("next_id", m["next_row"])
        if id_type != "string" and start + n - 1 > np.iinfo(np.int64).max:
            raise ValueError(f"ids: cannot generate {n} int64 ids above the largest id already "
                             f"added ({start - 1}); pass ids explicitly")
        arr = pa.array([uuid.uuid4().hex for _ in range(n)], pa.string()) if id_type == "string" \
            else pa.array(np.arange(start, start + n, dtype=np.int64))
    else:
        arr = vd.ids_array(ids, id_type)
        if len(arr) != n:
            raise ValueError(f"ids: {len(arr)} ids for {n} vectors")
        vd.unique_ids(arr)
    if id_type is None and n:
        id_type = "string" if pa.types.is_string(arr.type) else "int64"
    if n and pa.types.is_null(arr.type):
        arr = arr.cast(pa.int64())
    meta = vd.metadata(metadata, schema, n)
    start = m["next_row"]
    cols = {"_row": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "id": arr.cast(pa.string() if id_type == "string" else pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), dim)}
    if m["binary"]:
        codes = np.ascontiguousarray(vd.sign_codes(vec))
        nb = (dim + 7) // 8
        cols["code"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nb), n, [None, pa.py_buffer(codes.tobytes())])
    cols.update(meta)
    return pa.table(cols), arr, id_type


def _segment_entry(store, table: pa.Table, crc_block: int) -> dict:
    rows = table.column("_row")
    info = store.write_segment(table, crc_block)
    return {**info, "rows": table.num_rows, "deleted": 0, "deletions": None, "deletions_bytes": None,
            "deletions_crc32": None,
            "first_row": int(rows[0].as_py()), "last_row": int(rows[-1].as_py())}


def _publish(store, old: dict, entries: list, **fields) -> dict:
    store.sync_data()
    m = dict(old, format=mf.FORMAT, crc_block=old.get("crc_block", mf.CRC_BLOCK), segments=entries,
             created=time.time(), rows=int(sum(e["rows"] - e["deleted"] for e in entries)), **fields)
    store.write_manifest(m)
    store.set_latest(m["version"])  # the commit point
    return m


def commit(store, snap, tables: list, deletions: dict, op: str, id_type) -> dict:
    """New segments from ``tables`` and new deleted rows ``{segment name: _rows}``."""
    old = snap.manifest
    v = old["version"] + 1
    block = old.get("crc_block", mf.CRC_BLOCK)
    by_name = {s.name: s for s in snap.segments}
    entries = []
    for e in old["segments"]:
        if e["name"] in deletions:
            rows = np.union1d(by_name[e["name"]].deleted_rows, deletions[e["name"]]).astype(np.int64)
            if len(rows) == e["rows"]:
                continue  # every row deleted: the new version drops the segment
            d = store.write_deletions(e["name"], v, rows)
            e = dict(e, deleted=int(len(rows)), deletions=d["name"], deletions_bytes=d["bytes"],
                     deletions_crc32=d["crc32"])
        entries.append(e)
    next_row, next_id = old["next_row"], old.get("next_id", 0)
    for t in tables:
        if id_type == "int64" and t.num_rows:
            next_id = max(next_id, int(pc.max(t.column("id")).as_py()) + 1)
        entries.append(_segment_entry(store, t, block))
        next_row += t.num_rows
    return _publish(store, old, entries, version=v, next_row=next_row, next_id=next_id, id_type=id_type, op=op)


def rewrite(store, snap, ranges: list, op: str) -> dict:
    """Replace each ``(start, stop)`` run of segments by the merge body's output.
    Inputs are verified in full first (checksums, every column), so a merge never
    copies damaged data into a new, correctly checksummed file."""
    old = snap.manifest
    block = old.get("crc_block", mf.CRC_BLOCK)
    entries, pos = [], 0
    for start, stop in sorted(ranges):
        entries += old["segments"][pos:start]
        run = snap.segments[start:stop]
        for s in run:
            s.file.verify(block)
        for t in merge_tables(run):
            if t.num_rows:
                entries.append(_segment_entry(store, t, block))
        pos = stop
    entries += old["segments"][pos:]
    return _publish(store, old, entries, version=old["version"] + 1, op=op)
