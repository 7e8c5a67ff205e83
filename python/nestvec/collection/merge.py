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
* the merge body executes one range (:func:`merge_tables` today: the run's live rows
  in memory, one output segment). Issue 21's streaming, size-capped compaction
  replaces the body (output split at ``max_segment_bytes``) without touching a policy.

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


class MergePolicy:
    """Base class: decides which runs of adjacent segments to merge."""

    #: ask the policy after every commit (False: only ``Collection.optimize()``)
    on_commit: bool = True

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


def merge_tables(segments):
    """The merge body: the live rows of a run of segments (in order) as an iterable of
    tables, each written as one output segment as soon as it is produced (commit.rewrite
    consumes them one at a time). Today one table built in memory; a streaming,
    size-capped body yields capped tables from bounded buffers instead."""
    parts = []
    for s in segments:
        t = s.file.table
        parts.append(t if s.live is None else t.filter(pa.array(s.live)))
    return [pa.concat_tables(parts).combine_chunks()]
