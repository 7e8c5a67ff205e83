"""Merge policy: keeps many small commits from piling up into many small segments.

Every ``add`` / ``upsert`` writes one new segment, and every segment costs each search
a kernel call, each open a mapping and each manifest an entry. After a commit (or on
``Collection.optimize()``) the collection asks its policy which runs of *adjacent*
segments to merge; each merge rewrites the live rows of a run into new segment(s) in
one commit (op ``"merge"``). Adjacent runs only: rows keep their global order, so
merging never changes a search result (ties break by row order).

The interface has two halves that change independently:

* :class:`MergePolicy` decides: ``find_merges(segments)`` gets a
  :class:`SegmentStats` per segment and returns ``(start, stop)`` ranges.
* the merge body executes one range (:func:`merge_tables`): it streams the run's live
  rows into output segments of at most ``max_segment_bytes`` each (balanced sizes),
  holding one output segment in memory at a time; the inputs stay memory-mapped.

:class:`TieredMergePolicy` (the default) is a log-structured policy over adjacent
segments (Lucene's LogMergePolicy): a segment's level is ``log_f(max(live rows,
floor_rows))`` with ``f = merge_factor``; from the oldest segment on, the band of
segments down to 0.75 levels below the largest remaining one (every segment, when
all are below the floor) is merged in groups of ``f`` adjacent segments, smaller
segments inside the band included. Each row is rewritten about
``log_f(N / floor_rows)`` times over its life, and N rows of small commits leave
O(merge_factor * log N) segments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class SegmentStats:
    """What a policy knows of a segment."""

    name: str
    rows: int  # rows in the file
    live: int  # rows not deleted
    bytes: int  # file size (estimated for in-memory collections)


DEFAULT_SEGMENT_BYTES = 1 << 30
# An Arrow array holds at most 2^31 - 1 elements, and a segment's vector column is one
# fixed-size list array of rows x D values: a segment holds at most max_rows(D) rows
# whatever its byte cap (10M x 384 rows under a 16 GiB cap failed to write as one).
ARROW_MAX_VALUES = 2**31 - 1


def max_rows(dim: int) -> int:
    """The most rows a segment of ``dim``-value vectors can hold (ARROW_MAX_VALUES)."""
    return ARROW_MAX_VALUES // max(int(dim), 1)
COPY_ROWS = 65536  # rows gathered at a time into an output column (bounds temporaries)


class MergePolicy:
    """Base class: decides which runs of adjacent segments to merge."""

    #: ask the policy after every commit (False: only ``Collection.optimize()``)
    on_commit: bool = True
    #: merges, compaction and large adds write segments of at most this many bytes
    max_segment_bytes: int = DEFAULT_SEGMENT_BYTES

    def find_merges(self, segments: Sequence[SegmentStats]) -> list:
        """Disjoint, ascending ``(start, stop)`` ranges (half-open, ``stop - start >= 1``)
        of ``segments`` to rewrite, each into new segment(s). A range of one segment
        rewrites it without its deleted rows. Empty: nothing to do."""
        raise NotImplementedError


class NoMergePolicy(MergePolicy):
    """Never merges (segments pile up until ``compact()``)."""

    on_commit = False

    def find_merges(self, segments):
        return []


class TieredMergePolicy(MergePolicy):
    """Merge ``merge_factor`` adjacent segments of one size tier.

    Args:
        merge_factor: segments per tier before they merge (>= 2). Larger: fewer
            rewrites, more segments to search.
        floor_rows: segments below this many live rows all count as tier 0, so
            commits of different small sizes still merge (a tier-0 merge output
            below the floor is merged again: keep the floor near the size of a
            typical small commit times ``merge_factor``).
        max_segment_bytes: a merge whose output would exceed this is not made (the
            size cap that issue 21's streaming compaction will split at).
        max_deleted_fraction: a segment with more deleted rows than this is rewritten
            on its own, reclaiming the space of its deleted rows.
        on_commit: merge after each commit (False: only ``Collection.optimize()``).
    """

    def __init__(self, merge_factor: int = 10, floor_rows: int = 100, max_segment_bytes: int = 1 << 30,
                 max_deleted_fraction: float = 0.5, on_commit: bool = True):
        for name, v, lo in (("merge_factor", merge_factor, 2), ("floor_rows", floor_rows, 1),
                            ("max_segment_bytes", max_segment_bytes, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if not isinstance(max_deleted_fraction, (int, float)) or not 0 < max_deleted_fraction <= 1:
            raise ValueError(f"max_deleted_fraction: expected a number in (0, 1], got {max_deleted_fraction!r}")
        self.merge_factor = int(merge_factor)
        self.floor_rows = int(floor_rows)
        self.max_segment_bytes = int(max_segment_bytes)
        self.max_deleted_fraction = float(max_deleted_fraction)
        self.on_commit = bool(on_commit)

    def __repr__(self):
        return (f"TieredMergePolicy(merge_factor={self.merge_factor}, floor_rows={self.floor_rows}, "
                f"max_segment_bytes={self.max_segment_bytes}, max_deleted_fraction="
                f"{self.max_deleted_fraction}, on_commit={self.on_commit})")

    LEVEL_SPAN = 0.75  # segments this close in level merge together (Lucene's value)

    def level(self, s: SegmentStats) -> float:
        return math.log(max(s.live, self.floor_rows)) / math.log(self.merge_factor)

    @staticmethod
    def _out_bytes(run) -> int:
        return int(sum(s.bytes * s.live / max(s.rows, 1) for s in run))

    def find_merges(self, segments):
        out, n, f = [], len(segments), self.merge_factor
        levels = [self.level(s) for s in segments]
        floor_level = math.log(self.floor_rows) / math.log(f)
        start, merged = 0, set()
        while start < n:
            top = max(levels[start:])
            low = top - self.LEVEL_SPAN if top > floor_level + 1e-9 else -math.inf
            upto = max(i for i in range(start, n) if levels[i] >= low)
            end = start
            while end + f <= upto + 1:
                run = segments[end:end + f]
                if self._out_bytes(run) <= self.max_segment_bytes:
                    out.append((end, end + f))
                    merged.update(range(end, end + f))
                end += f
            start = upto + 1
        for k, s in enumerate(segments):
            if k not in merged and s.rows - s.live > self.max_deleted_fraction * s.rows:
                out.append((k, k + 1))  # reclaim the space of its deleted rows
        return sorted(out)


def row_bytes(segments) -> int:
    """Bytes per row of a run's files (the largest; at least the fixed-width part)."""
    out = 1
    for s in segments:
        b = s.file.entry.get("bytes") or s.file.table.nbytes
        out = max(out, -(-int(b) // max(s.n, 1)))
    return out


def split_rows(total: int, per_row: int, max_bytes: int | None, most_rows: int | None = None) -> list:
    """Row counts of the outputs that hold ``total`` rows within ``max_bytes`` (None: no
    byte cap) and ``most_rows`` each, balanced (10 rows over a cap of 4 -> 4, 3, 3), so
    no output is a sliver."""
    if total <= 0:
        return []
    cap = total if max_bytes is None else max(1, max_bytes // max(per_row, 1))
    if most_rows is not None:
        cap = max(1, min(cap, most_rows))
    n_out = -(-total // cap)
    base, extra = divmod(total, n_out)
    return [base + (i < extra) for i in range(n_out)]


def merge_tables(segments, max_segment_bytes: int = DEFAULT_SEGMENT_BYTES):
    """The merge body: the live rows of a run of segments, in order, as a stream of
    tables of at most ``max_segment_bytes`` (balanced), each yielded as soon as it is
    built and written by the caller (commit.rewrite) before the next is built. Memory:
    one output table (its vector and code columns gathered straight from the mapped
    inputs into one buffer each, COPY_ROWS at a time), never the whole run."""
    schema = segments[0].file.table.schema
    pieces = []  # (segment, live positions or None for all)
    for s in segments:
        live = s.live
        if s.n_live:
            pieces.append((s, None if live is None else np.flatnonzero(live)))
    sizes = split_rows(sum(s.n_live for s, _ in pieces), row_bytes(segments), max_segment_bytes,
                       max_rows(schema.field("vector").type.list_size))
    cursor = [0, 0]  # piece index, rows of it taken
    for size in sizes:
        take = []  # (segment, positions or (start, stop))
        need = size
        while need:
            s, pos = pieces[cursor[0]]
            avail = s.n_live - cursor[1]
            m = min(avail, need)
            a = cursor[1]
            take.append((s, (a, a + m) if pos is None else pos[a:a + m]))
            need -= m
            cursor[1] += m
            if cursor[1] == s.n_live:
                cursor[0], cursor[1] = cursor[0] + 1, 0
        yield _gather(schema, take, size)


def _gather(schema: pa.Schema, take, n: int) -> pa.Table:
    cols = []
    for f in schema:
        if f.name in ("vector", "code"):
            cols.append(_gather_fixed(f, take, n))
            continue
        parts = []
        for s, sel in take:
            col = s.file.column(f.name).chunk(0)
            parts.append(col.slice(sel[0], sel[1] - sel[0]) if isinstance(sel, tuple)
                         else col.take(pa.array(sel)))
        cols.append(pa.concat_arrays(parts) if len(parts) > 1 else parts[0])
    return pa.Table.from_arrays(cols, schema=schema)


def _gather_fixed(f: pa.Field, take, n: int) -> pa.Array:
    """A vector / code column copied from the inputs' mapped views into one buffer."""
    views = [s.vectors if f.name == "vector" else s.codes for s, _ in take]
    out = np.empty((n,) + views[0].shape[1:], views[0].dtype)
    at = 0
    for view, (_, sel) in zip(views, take):
        if isinstance(sel, tuple):
            m = sel[1] - sel[0]
            out[at:at + m] = view[sel[0]:sel[1]]
        else:
            m = len(sel)
            for a in range(0, m, COPY_ROWS):
                part = sel[a:a + COPY_ROWS]
                np.take(view, part, axis=0, out=out[at + a:at + a + len(part)])
        at += m
    buf = pa.py_buffer(out)
    if f.name == "code":
        return pa.FixedSizeBinaryArray.from_buffers(f.type, n, [None, buf])
    width = f.type.list_size
    values = pa.Array.from_buffers(f.type.value_type, n * width, [None, buf])
    return pa.FixedSizeListArray.from_arrays(values, width)
