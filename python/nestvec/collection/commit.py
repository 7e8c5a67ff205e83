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
from .indexes import span
from .merge import DEFAULT_SEGMENT_BYTES, merge_tables


VALIDATE_ROWS = 65536  # vectors checked and converted at a time (bounds temporaries)


class Rows:
    """New rows, validated: ids and metadata in full at construction; vectors chunk by
    chunk as :meth:`tables` builds each segment (a large add streams: no full copy of
    the input, however large; a bad row found late aborts the commit, and the files
    already written are removed). ``ids``: the ids array; ``id_type``."""

    def __init__(self, m: dict, schema: pa.Schema, vectors, ids, metadata, need_ids: bool, rows=None):
        self.m = m
        dim, dtype = m["dim"], m["dtype"]
        x = vd.to_host_float(vectors, "vectors")
        if x.ndim == 1:
            x = x[None, :]
        vd.vectors(x[:0], dim, dtype, m["metric"])  # shape and dtype errors before anything else
        self.x = x
        n = self.n = x.shape[0]
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
        self.ids = arr
        self.id_type = id_type
        self.meta = vd.metadata(metadata, schema, n)
        self.rows = row_numbers(m["next_row"] if rows is None else rows, n)

    def row_bytes(self) -> int:
        """Stored bytes per row (vector, code, _row, id, metadata), for the size cap."""
        d = self.m["dim"]
        per = d * np.dtype(self.m["dtype"]).itemsize + (d + 7) // 8 * self.m["binary"] + 8
        extra = self.ids.nbytes + sum(a.nbytes for a in self.meta.values())
        return int(per + -(-extra // max(self.n, 1)))

    def tables(self, max_bytes: int | None = None):
        """Segment tables of at most ``max_bytes`` each (balanced), built one at a time."""
        from .merge import max_rows, split_rows

        sizes = [self.n] if max_bytes is None else \
            split_rows(self.n, self.row_bytes(), max_bytes, max_rows(self.m["dim"]))
        a = 0
        for size in sizes:
            yield self._table(a, a + size)
            a += size

    def _table(self, a: int, b: int) -> pa.Table:
        m, n = self.m, b - a
        dim, dtype = m["dim"], m["dtype"]
        vec = np.empty((n, dim), np.dtype(dtype))
        codes = np.empty((n, (dim + 7) // 8), np.uint8) if m["binary"] else None
        for c in range(0, n, VALIDATE_ROWS):
            part = vd.vectors(self.x[a + c:min(b, a + c + VALIDATE_ROWS)], dim, dtype, m["metric"], first_row=a + c)
            vec[c:c + len(part)] = part
            if codes is not None:
                codes[c:c + len(part)] = vd.sign_codes(part)
        id_type = self.id_type
        values = pa.Array.from_buffers(vd.DTYPES[dtype], n * dim, [None, pa.py_buffer(vec)])
        cols = {"_row": pa.array(self.rows[a:b]),
                "id": self.ids[a:b].cast(pa.string() if id_type == "string" else pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(values, dim)}
        if codes is not None:
            cols["code"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(codes.shape[1]), n,
                                                                [None, pa.py_buffer(codes)])
        cols.update((k, v[a:b]) for k, v in self.meta.items())
        return pa.table(cols)


def build_rows(m: dict, schema: pa.Schema, vectors, ids, metadata, need_ids: bool, rows=None):
    """Validate everything and build the new rows as one table (nothing written).
    ``rows``: the ``_row`` numbers, by default consecutive from ``m["next_row"]``; an
    int (the first of consecutive rows) or a strictly ascending int array (bulk
    import, sharded collections). Returns (table, ids array, id_type)."""
    r = Rows(m, schema, vectors, ids, metadata, need_ids, rows=rows)
    return next(r.tables()), r.ids, r.id_type


def row_numbers(rows, n: int) -> np.ndarray:
    """``rows`` (an int: the first of ``n`` consecutive rows, or an array) as checked
    int64 row numbers: n of them, >= 0, strictly ascending."""
    if isinstance(rows, (int, np.integer)) and not isinstance(rows, bool):
        if rows < 0 or rows + n - 1 > np.iinfo(np.int64).max:
            raise ValueError(f"rows: the first row must be in [0, 2**63 - n], got {rows}")
        return np.arange(rows, rows + n, dtype=np.int64)
    arr = np.asarray(rows)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise TypeError(f"rows: expected an int or a 1-D int array, got {type(rows).__name__} "
                        f"of dtype {getattr(arr, 'dtype', None)}")
    if len(arr) != n:
        raise ValueError(f"rows: {len(arr)} row numbers for {n} vectors")
    arr = arr.astype(np.int64)
    if n and (arr[0] < 0 or not (arr[1:] > arr[:-1]).all()):
        raise ValueError("rows: row numbers must be >= 0 and strictly ascending")
    return arr


def _segment_entry(store, table: pa.Table, crc_block: int, indexer=None, lists=None, written=None) -> dict:
    """Write one segment (and, with an ``indexer``, its index files); ``written``
    collects the entries so a failed commit can remove them."""
    rows = table.column("_row")
    info = store.write_segment(table, crc_block)
    e = {**info, "rows": table.num_rows, "deleted": 0, "deletions": None, "deletions_bytes": None,
         "deletions_crc32": None,
         "first_row": int(rows[0].as_py()), "last_row": int(rows[-1].as_py())}
    if written is not None:
        written.append(e)
    if indexer:
        e.update(indexer(table, lists))
    return e


def publish(store, old: dict, entries: list, **fields) -> dict:
    """Write the manifest of a new version naming ``entries`` and commit it (index
    builds commit through here)."""
    return _publish(store, old, entries, **fields)


def _publish(store, old: dict, entries: list, **fields) -> dict:
    store.sync_data()
    m = dict(old, crc_block=old.get("crc_block", mf.CRC_BLOCK), segments=entries,
             created=time.time(), rows=int(sum(e["rows"] - e["deleted"] for e in entries)), **fields)
    if not m.get("indexes"):
        m.pop("indexes", None)
    elif (m["indexes"].get("ivf") or {}).get("spans"):  # spans whose members all stay
        ivf = m["indexes"]["ivf"]
        m["indexes"] = dict(m["indexes"], ivf=dict(ivf, spans=span.live_spans(ivf, entries)))
    m["format"] = mf.format_for(m)
    store.write_manifest(m)
    store.set_latest(m["version"])  # the commit point
    return m


def staged_entry(info: dict, table: pa.Table) -> dict:
    """The manifest entry of a segment file already written (``write_segment``)."""
    rows = table.column("_row")
    return {"name": info["name"], "bytes": info["bytes"], "crc32": info["crc32"], "columns": info["columns"],
            "rows": table.num_rows, "deleted": 0, "deletions": None, "deletions_bytes": None,
            "deletions_crc32": None, "first_row": int(rows[0].as_py()), "last_row": int(rows[-1].as_py())}


def commit(store, snap, tables, deletions: dict, op: str, id_type, indexer=None, staged=(),
           max_id=None) -> dict:
    """New segments from ``tables`` (an iterable: each is written as it comes) and
    ``staged`` entries (written before, by ``bulk.write_segment``), and new deleted
    rows ``{segment name: _rows}``. New segments are ordered by their first row;
    ``max_id``: the largest int id of the staged segments. ``indexer(table, None)``
    returns the index files of a new segment (indexes/build.py). If building or
    writing a table fails, the segments already written are removed and nothing is
    committed."""
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
    next_id = old.get("next_id", 0)
    if max_id is not None:
        next_id = max(next_id, int(max_id) + 1)
    new, written = list(staged), []
    try:
        if indexer:
            # staged segments (bulk imports, sharded writes) are indexed like written ones
            for j, e in enumerate(new):
                if any(indexer.wants(kind, e["rows"]) for kind in indexer.specs):
                    files = indexer(store.load_segment(e), None)
                    written.append({"name": None, **files})
                    new[j] = dict(e, **files)
        for t in tables:
            if id_type == "int64" and t.num_rows:
                next_id = max(next_id, int(pc.max(t.column("id")).as_py()) + 1)
            new.append(_segment_entry(store, t, block, indexer, None, written))
    except BaseException:
        store.discard(written)
        raise
    new.sort(key=lambda e: e["first_row"])
    entries += new
    next_row = max([old["next_row"]] + [e["last_row"] + 1 for e in new])
    return _publish(store, old, entries, version=v, next_row=next_row, next_id=next_id, id_type=id_type, op=op)


def restore(store, snap, target: dict) -> dict:
    """A new version holding the segments (and index spec) of the older manifest
    ``target`` (row and id counters never go back, so no row number is handed out
    twice)."""
    old = snap.manifest
    return _publish(store, old, [dict(e) for e in target["segments"]], version=old["version"] + 1,
                    next_row=max(old["next_row"], target["next_row"]),
                    next_id=max(old.get("next_id", 0), target.get("next_id", 0)),
                    id_type=target["id_type"], op="restore", indexes=target.get("indexes"))


def rewrite(store, snap, ranges: list, op: str, max_segment_bytes: int = DEFAULT_SEGMENT_BYTES,
            indexer=None) -> dict:
    """Replace each ``(start, stop)`` run of segments by the merge body's output
    (segments of at most ``max_segment_bytes``, written one at a time). Inputs are
    verified in full first (checksums, every column), so a merge never copies damaged
    data into a new, correctly checksummed file. ``indexer``: as in :func:`commit`;
    it is handed each output's ivf lists, carried over from the inputs."""
    old = snap.manifest
    block = old.get("crc_block", mf.CRC_BLOCK)
    entries, pos, written = [], 0, []
    try:
        for start, stop in sorted(ranges):
            entries += old["segments"][pos:start]
            run = snap.segments[start:stop]
            for s in run:
                s.file.verify(block)
            at = 0
            for t in merge_tables(run, max_segment_bytes):
                lists = indexer.carried_lists(run, at, t.num_rows) if indexer else None
                entries.append(_segment_entry(store, t, block, indexer, lists, written))
                at += t.num_rows
            pos = stop
    except BaseException:
        store.discard(written)
        raise
    entries += old["segments"][pos:]
    return _publish(store, old, entries, version=old["version"] + 1, op=op)
