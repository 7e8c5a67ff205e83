"""Versions and their upkeep, a mixin of :class:`~.collection.Collection`: the list of
versions, verify(), restore() / remove_versions(), and the rewrites that keep
segments few and large (the merge policy after commits, optimize(), compact())."""
from __future__ import annotations

import numpy as np

from . import commit as cm
from . import manifest as mf
from . import snapshot as sn
from . import validate as vd
from .errors import CorruptionError
from .merge import SegmentStats

_MAX_MERGE_ROUNDS = 64  # cascades (a merge output completing the next tier) per call


class VersionsMixin:
    """Mixed into Collection: reads ``_snapshot()`` / ``_store`` / ``_policy``, writes
    through ``_publish_manifest`` under ``_write_lock``."""

    def versions(self) -> list[dict]:
        """Committed versions still readable: version, live rows, segments, time, op
        (from each manifest's summary line)."""
        self._snapshot()
        latest = self._store.latest()
        # versions above LATEST: an uncommitted manifest (a crashed writer); GC removes it
        vs = [v for v in self._store.manifest_versions() if v <= latest]
        return [{"version": v, "rows": s["rows"], "segments": s["segments"], "created": s["created"],
                 "op": s["op"]} for v, s in self._store.summaries(vs)]

    def verify(self) -> dict:
        """Check every byte of this handle's version: each file's checksums, sizes and
        structure, every column in full, every deletion file against its segment.

        Returns a report (``files``, ``bytes``, ``not_checksummed``: files written by
        format 1, which has no checksums; they were checked for structure only).
        Raises :class:`CorruptionError` listing every damaged file."""
        snap = self._snapshot()
        block = snap.manifest.get("crc_block", mf.CRC_BLOCK)
        problems, unchecked, nbytes = [], [], 0
        for s in snap.segments:
            try:
                if not s.file.verify(block):
                    unchecked.append(s.name)
                nbytes += s.file.entry.get("bytes") or 0
                if s.deletions is not None:
                    self._store.load_deletions(s.deletion_entry)  # size + checksum again
                    s.live  # noqa: B018  (every deleted row is a row of the segment)
                    if s.deletion_entry.get("crc32") is None:
                        unchecked.append(s.deletions)
            except CorruptionError as e:
                problems.extend(e.problems)
            except FileNotFoundError as e:
                problems.append((e.filename, "is missing"))
        n_index = 0
        for check, nb in self._index_checks(snap, block):
            try:
                check()
                n_index += 1
                nbytes += nb or 0
            except CorruptionError as e:
                problems.extend(e.problems)
            except FileNotFoundError as e:
                problems.append((e.filename, "is missing"))
        if problems:
            raise CorruptionError(problems[0][0], problems[0][1], problems)
        return {"version": snap.version, "files": len(snap.segments) + n_index + sum(
                    s.deletions is not None for s in snap.segments),
                "bytes": nbytes, "not_checksummed": unchecked}

    def restore(self, version: int) -> int:
        """Make an older version current again, as a new commit (op ``"restore"``):
        its rows, deletions and metadata, nothing written after it. The versions in
        between stay readable until :meth:`compact` removes them. Returns the new
        version. KeyError if ``version`` was removed."""
        with self._write_lock:
            self._check_writable()
            if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
                raise TypeError(f"version: expected an int >= 0, got {version!r}")
            if version > self.version:
                raise KeyError(f"version {version} does not exist; the latest is {self.version}")
            target = sn.read_snapshot(self._store, int(version))  # KeyError when removed
            self._publish_manifest(cm.restore(self._store, self._snap, target.manifest))
            return self.version

    def remove_versions(self, keep=()) -> dict:
        """Remove every version except the current one and those in ``keep``, with the
        files only removed versions use (and staged files no version names). Returns
        the counts removed. For version sets that ``compact(keep_versions=N)`` cannot
        express (a sharded collection keeps the versions its manifests name)."""
        with self._write_lock:
            self._check_writable()
            want = {int(v) for v in keep} | {self.version}
            manifests = [self._snap.manifest]
            for v in self._store.manifest_versions():
                if v in want and v != self.version:
                    try:
                        manifests.append(self._store.read_manifest(v))
                    except KeyError:
                        pass
            return self._store.gc(manifests)

    def _stats(self) -> list:
        out = []
        for s in self._snap.segments:
            b = s.file.entry.get("bytes") or (s.vectors.nbytes + (s.codes.nbytes if s.codes is not None else 0))
            out.append(SegmentStats(s.name, s.n, s.n_live, int(b)))
        return out

    def _merge(self, policy) -> dict:
        before, merges, rewritten = len(self._snap.segments), 0, 0
        for _ in range(_MAX_MERGE_ROUNDS):
            ranges = policy.find_merges(self._stats())
            if not ranges:
                break
            merges += len(ranges)
            rewritten += sum(s.n_live for a, b in ranges for s in self._snap.segments[a:b])
            self._publish_manifest(cm.rewrite(self._store, self._snap, ranges, "merge",
                                              self._policy.max_segment_bytes, self._indexer()))
        return {"merges": merges, "rows_rewritten": rewritten, "segments_before": before,
                "segments_after": len(self._snap.segments)}

    def _span_lists(self) -> None:
        """An ivf span over the indexed segments no span covers (indexes/span.py): a
        probe then reads one range per list instead of one per list and segment."""
        from .indexes import build

        m = build.commit_span(self._store, self._snap)
        if m is not None:
            self._publish_manifest(m)

    def _compact_ranges(self) -> list:
        return _rewrite_runs(self._stats(), self._policy.max_segment_bytes)

    def optimize(self) -> dict:
        """Run the merge policy until it finds nothing to merge (merges it would
        have made after commits, and those it skips when ``on_commit`` is False).
        Search results never change (rows keep their order). Then an ivf span over
        the indexed segments no span covers (indexes/span.py), when there are two or
        more. Returns ``merges``, ``rows_rewritten``, ``segments_before``,
        ``segments_after``."""
        with self._write_lock:
            self._check_writable()
            out = self._merge(self._policy)
            self._span_lists()
            return out

    def compact(self, keep_versions: int = 1) -> dict:
        """Rewrite the live rows into as few segments as the size cap allows
        (``merge_policy.max_segment_bytes``; row order and ids unchanged), streaming:
        one output segment in memory at a time; segments already at least half the
        cap and without deleted rows are kept as they are; an ivf span over the
        indexed segments no span covers, as ``optimize``. Then remove all but the
        newest ``keep_versions`` versions with the files only they use. Readers that
        already opened a removed version keep reading it."""
        with self._write_lock:
            self._check_writable()
            keep_versions = vd.positive_int(keep_versions, "keep_versions")
            ranges = self._compact_ranges()
            if ranges:
                self._publish_manifest(cm.rewrite(self._store, self._snap, ranges, "compact",
                                                  self._policy.max_segment_bytes, self._indexer()))
            self._span_lists()
            keep = []
            for v in sorted(self._store.manifest_versions(), reverse=True):
                if v <= self.version and len(keep) < keep_versions:
                    try:
                        keep.append(self._store.read_manifest(v))
                    except KeyError:
                        pass
            return self._store.gc(keep)


def _rewrite_runs(stats, cap: int) -> list:
    """Maximal runs of adjacent segments that compaction rewrites: every segment but
    those at least half the cap with nothing deleted (a run of one is rewritten only
    to drop deleted rows)."""
    keep = [s.live == s.rows and s.bytes * 2 >= cap for s in stats]
    out, start = [], None
    for i, k in enumerate(keep + [True]):
        if not k and start is None:
            start = i
        elif k and start is not None:
            if i - start > 1 or stats[start].live < stats[start].rows:
                out.append((start, i))
            start = None
    return out
