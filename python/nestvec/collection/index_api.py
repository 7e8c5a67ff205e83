"""Index management of a Collection (a mixin of :class:`~.collection.Collection`):
``create_index``, ``indexes``, ``drop_index``. The indexes themselves are in
``indexes/``; how a search uses them is ``indexes/plan.py``."""
from __future__ import annotations

from . import snapshot as sn
from .indexes import build


class IndexMixin:
    def create_index(self, kind: str = "ivf", replace: bool = False, **options) -> dict:
        """Build a sub-linear index over the collection and commit it (op ``"index"``).

        ``kind="ivf"`` (the default; needs faiss to build, nothing to search):
            centroids trained once with ``faiss.Kmeans`` on a sample of normalised
            ``dim``-value prefixes, shared by every segment; each segment of at least
            ``min_rows`` rows stores its rows grouped by list with their binary codes.
            Options: ``nlist`` (default 4 sqrt(rows), a multiple of 64), ``dim``
            (prefix the centroids cover, default min(D, 128)), ``codes`` (``"sign"``:
            the stored sign bits; ``"centred"``: sign bits of the normalised row minus
            the sample mean), ``nprobe`` / ``rescore`` (search defaults; tuned when
            not given), ``sample`` (training rows, default 64 per list within
            [65,536, 524,288] rows and [39, 256] per list), ``niter``
            (20), ``seed``, ``min_rows``, ``tune``.
        ``kind="hnsw"`` (needs hnswlib): an hnswlib graph over the ``dim``-value prefix
            (default min(D, 256)) of each segment of at least ``min_rows`` rows,
            reranked exactly. Options: ``dim``, ``M`` (16), ``ef_construction`` (200),
            ``ef`` (search default; tuned when not given), ``min_rows``, ``seed``,
            ``threads``, ``tune``.

        ``min_rows`` (default 65,536): smaller segments are searched exhaustively;
        segments that reach it later (large adds, merges, compaction) are indexed
        when they are written. Defaults not given are tuned on 200 of the
        collection's rows as queries: the smallest ``nprobe`` (ivf) whose recall@10
        against exact search reaches 0.96, and twice the smallest such ``ef`` (hnsw:
        a graph searched with its own rows overstates recall; indexes/build.py).

        Returns the index's spec (as :meth:`indexes` reports it). Raises ValueError /
        TypeError naming the option (unknown kind or option, a value out of range,
        an empty collection, an index that exists without ``replace=True``) before
        anything is written; ImportError when faiss / hnswlib is missing.
        """
        with self._write_lock:
            self._check_writable()
            snap = self._snap
            m = build.create(self._store, snap, kind, options,
                             lambda new: sn.load_snapshot(self._store, new, reuse=snap.segments,
                                                          reuse_indexes=snap.indexes),
                             replace=bool(replace))
            self._publish_manifest(m)
            return self.indexes()[kind]

    def drop_index(self, kind: str) -> None:
        """Remove index ``kind`` from the collection (a new version without it; its
        files go with the versions that name them, at ``compact``)."""
        with self._write_lock:
            self._check_writable()
            self._publish_manifest(build.drop(self._store, self._snap, kind))

    def indexes(self) -> dict:
        """``{kind: spec}`` of this version's indexes: the options, the tuned search
        defaults (``nprobe`` / ``rescore`` or ``ef``), build times, and
        ``segments_indexed`` / ``rows_indexed`` (segments below ``min_rows`` are
        searched exhaustively)."""
        snap = self._snapshot()
        out = {}
        for kind, spec in (snap.manifest.get("indexes") or {}).items():
            d = {k: v for k, v in spec.items() if k != "centroids"}
            segs = [s for s in snap.segments if kind in s.ann]
            d.update(segments_indexed=len(segs), rows_indexed=sum(s.n for s in segs),
                     segments=len(snap.segments))
            out[kind] = d
        return out

    @staticmethod
    def _index_checks(snap, block: int):
        """(check, bytes) of every index file of the snapshot, for verify()."""
        from . import integrity as ig

        ivf = snap.indexes.get("ivf")
        if ivf is not None and ivf.path is not None:
            ce = ivf.spec["centroids"]
            yield (lambda: ig.check_file_crc(ivf.path, ce.get("crc32"), block)), ce.get("bytes")
            for sp in ivf.spans:
                yield (lambda sp=sp: sp.verify(block)), sp.entry.get("bytes")
        for s in snap.segments:
            for kind, a in s.ann.items():
                yield ((lambda a=a: a.verify(block)) if kind == "ivf" else a.verify), a.entry.get("bytes")

    def _indexer(self):
        """What indexes the segments a commit writes (None: no index)."""
        snap = self._snap
        if not snap.manifest.get("indexes"):
            return None
        return build.Indexer(self._store, snap.manifest, snap.indexes)
