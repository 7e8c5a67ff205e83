"""Bulk import: segment files written by any number of processes, then one commit.

The writer reserves row numbers, hands them out with the data, and commits what
the workers wrote in one version::

    col = nv.open(path)                                  # the writer (holds the lock)
    first = col.reserve_rows(n)                          # rows first .. first + n - 1
    # any process, any machine that sees the directory (no lock needed):
    staged = nv.collection.write_segment(path, vectors, ids=ids, metadata=meta, rows=first)
    col.import_segments([staged, ...])                   # one commit, all or nothing

A :class:`StagedSegment` is a complete, fsynced segment file in ``segments/`` that no
version names yet, plus the small description the commit checks it against. Until
``import_segments`` commits it, it is invisible; if the commit never comes, the file
is garbage that :meth:`~nestvec.Collection.compact` removes (so do not compact while
workers are still writing), or :func:`discard_segments` removes it at once.

Row numbers order ties in search results (docs/ARCHITECTURE.md), so they must be
unique and ascending: each staged segment carries its own (an int: the first of
consecutive rows, or an ascending array), and the commit refuses overlaps and rows
below the collection's next row.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

from . import commit as cm
from . import integrity as ig
from . import manifest as mf
from . import storage as st
from . import validate as vd


@dataclass(frozen=True)
class StagedSegment:
    """A segment file written but not committed (picklable; ``asdict`` is JSON-able)."""

    name: str
    rows: int
    first_row: int
    last_row: int
    bytes: int
    crc32: str
    columns: dict
    id_type: str
    max_id: int | None  # the largest id of an int64-id segment (the next generated id is above it)

    def entry(self) -> dict:
        """The manifest entry this segment gets when committed."""
        return {"name": self.name, "bytes": self.bytes, "crc32": self.crc32, "columns": dict(self.columns),
                "rows": self.rows, "deleted": 0, "deletions": None, "deletions_bytes": None,
                "deletions_crc32": None, "first_row": self.first_row, "last_row": self.last_row}

    def to_dict(self) -> dict:
        return asdict(self)


def write_segment(path, vectors, ids=None, metadata=None, rows=None) -> StagedSegment:
    """Validate rows and write them as one segment file of the collection at ``path``,
    without committing (no writer lock; any process that sees the directory).

    Args as :meth:`~nestvec.Collection.add`, plus ``rows``: their row numbers, the
    first of consecutive rows (an int, from the writer's ``reserve_rows``) or a strictly
    ascending int array. ``ids`` are required unless the collection has string ids
    (then random ones are made). Raises ValueError / TypeError before writing.
    """
    if rows is None:
        raise ValueError("rows: staged segments need row numbers (the writer's reserve_rows(n) hands "
                         "them out)")
    store = st.DirStore(str(path))
    m = store.read_manifest(store.latest())
    schema = mf.schema_from_b64(m["schema_ipc"])
    if ids is None and m["id_type"] != "string":
        raise ValueError("ids: staged segments need ids (only string-id collections make random ones)")
    table, _, id_type = cm.build_rows(m, schema, vectors, ids, metadata, False, rows=rows)
    if table.num_rows == 0:
        raise ValueError("vectors: a staged segment needs at least one row")
    return stage_table(store, m, table, id_type)


def stage_table(store, m: dict, table: pa.Table, id_type: str) -> StagedSegment:
    """Write a segment table built by ``commit.build_rows`` (nothing committed)."""
    info = store.write_segment(table, m.get("crc_block", mf.CRC_BLOCK))
    max_id = int(pc.max(table.column("id")).as_py()) if id_type == "int64" else None
    e = cm.staged_entry(info, table)
    return StagedSegment(e["name"], e["rows"], e["first_row"], e["last_row"], e["bytes"], e["crc32"],
                         dict(e["columns"]), id_type, max_id)


def discard_segments(path, staged) -> int:
    """Remove staged segment files that will not be committed; returns how many.
    Never call it for a segment a version already names."""
    store = st.DirStore(str(path))
    n = 0
    for s in staged:
        try:
            os.unlink(store.segment_path(_as_staged(s).name))
            n += 1
        except FileNotFoundError:
            pass
    return n


def _as_staged(s) -> StagedSegment:
    if isinstance(s, StagedSegment):
        return s
    if isinstance(s, dict):
        try:
            return StagedSegment(**s)
        except TypeError as e:
            raise TypeError(f"staged: not a StagedSegment description ({e})") from None
    raise TypeError(f"staged: expected StagedSegment objects (from write_segment), got {type(s).__name__}")


def check_staged(store, snap, staged, verify: bool) -> tuple:
    """Check staged segments against the writer's snapshot before they are committed:
    names, sizes, structure, row ranges (ascending, disjoint, above every committed
    row), one id type, each metadata column, and with ``verify`` every byte's
    checksum. Returns (entries ordered by first row, id_type, ids array, max_id)."""
    m = snap.manifest
    items = sorted((_as_staged(s) for s in staged), key=lambda s: s.first_row)
    if not items:
        raise ValueError("staged: nothing to import")
    types = {s.id_type for s in items}
    if len(types) != 1 or next(iter(types)) not in ("int64", "string"):
        raise ValueError(f"staged: segments of different id types {sorted(map(str, types))}")
    id_type = items[0].id_type
    if m["id_type"] is not None and id_type != m["id_type"]:
        raise ValueError(f"staged: {id_type} ids, but the collection's ids are {m['id_type']}")
    prev = m["next_row"] - 1
    for s in items:
        if s.first_row <= prev:
            raise ValueError(f"staged: segment {s.name} starts at row {s.first_row}, at or below row {prev} "
                             f"(rows overlap another staged or committed segment: reserve them from the "
                             f"writer, and import before the writer adds more rows)")
        prev = s.last_row
    schema = ig.expected_schema(dict(m, id_type=id_type), snap.schema)
    block = m.get("crc_block", mf.CRC_BLOCK)
    entries, ids = [], []
    for s in items:
        e = s.entry()
        if not mf.SEGMENT_RE.match(e["name"]):
            raise ValueError(f"staged: {e['name']!r} is not a segment file name")
        path = store.segment_path(e["name"])
        with ig.damage(path):
            table = store.load_segment(e)  # a regular file of the recorded size
            ig.check_structure(table, e, schema, path)
            for c in ("_row", "id") + tuple(snap.schema.names):
                ig.check_column(table, c, e, path)
            if verify:
                ig.check_file_crc(path, e["crc32"], block)
        ids.append(table.column("id").combine_chunks())
        entries.append(e)
    arr = pa.concat_arrays(ids) if len(ids) > 1 else ids[0]
    vd.unique_ids(arr)
    max_id = max(s.max_id for s in items) if id_type == "int64" else None
    return entries, id_type, arr, max_id
