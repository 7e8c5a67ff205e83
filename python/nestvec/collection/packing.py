"""Small adjacent segments searched as one: every segment costs a search one kernel
call (and a funnel two) of fixed overhead, which dominates when segments are small
(many small commits between merges). Runs of adjacent small segments are packed into
one contiguous copy of their vectors and codes, cached per run (segments never
change, so a run of the same names is the same data), and the planner searches the
pack as one segment; hits are mapped back to (segment, row). Rows keep their global
order inside a pack, so results are exactly those of the segments searched apart.
Host searches only (the device cache holds per-segment copies).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

PACK_SEGMENT_BYTES = 4 << 20  # segments below this (vectors + codes) may be packed
PACK_BYTES = 64 << 20  # at most this much per pack
CACHE_BYTES = 128 << 20  # packs kept per collection handle


@dataclass
class Packed:
    """What the planner reads of a segment."""

    name: str
    vectors: np.ndarray
    codes: np.ndarray | None
    n: int
    offset: int
    deletions: None = None


class PackCache:
    def __init__(self, budget: int = CACHE_BYTES):
        self.budget = budget
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.unpacked = None  # the last segment list with no run to pack (pack())

    def get(self, segs):
        key = tuple(s.name for s in segs)
        with self._lock:
            hit = self._d.get(key)
            if hit is not None:
                self._d.move_to_end(key)
                return hit
        vec = np.concatenate([s.vectors for s in segs])
        codes = None if segs[0].codes is None else np.concatenate([s.codes for s in segs])
        vec.setflags(write=False)
        hit = (vec, codes)
        size = vec.nbytes + (codes.nbytes if codes is not None else 0)
        with self._lock:
            if key not in self._d:
                self._d[key] = hit
                self._bytes += size
            while self._bytes > self.budget and len(self._d) > 1:
                _, (v, c) = self._d.popitem(last=False)
                self._bytes -= v.nbytes + (c.nbytes if c is not None else 0)
        return hit

    def retain(self, names) -> None:
        keep = set(names)
        with self._lock:
            for key in [k for k in self._d if not keep.issuperset(k)]:
                v, c = self._d.pop(key)
                self._bytes -= v.nbytes + (c.nbytes if c is not None else 0)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._bytes = 0


def _size(s) -> int:
    return s.vectors.nbytes + (s.codes.nbytes if s.codes is not None else 0)


def pack(segments, masks, cache: PackCache):
    """(segments', masks', remap): runs of >= 2 adjacent small segments replaced by one
    packed segment each; ``remap(seg, local)`` maps the planner's hits back."""
    if cache.unpacked is segments:  # this snapshot's segments were found to pack into nothing
        return segments, masks, None
    groups, run, run_bytes = [], [], 0
    for i, s in enumerate(segments):
        # a segment with an index is searched through it, never packed
        b = PACK_SEGMENT_BYTES if getattr(s, "ann", None) else _size(s)
        if b < PACK_SEGMENT_BYTES and run_bytes + b <= PACK_BYTES:
            run.append(i)
            run_bytes += b
            continue
        groups.append(run)
        run, run_bytes = ([i], b) if b < PACK_SEGMENT_BYTES else ([], 0)
        if not run:
            groups.append([i])
    groups.append(run)
    groups = [g for g in groups if g]
    if len(groups) == len(segments):
        # held, not just its id: a snapshot's list never changes, and a list kept alive
        # cannot hand its id to another
        cache.unpacked = segments
        return segments, masks, None
    vsegs, vmasks, members = [], [], []
    for g in groups:
        if len(g) == 1:
            vsegs.append(segments[g[0]])
            vmasks.append(masks[g[0]])
            members.append((np.array(g), np.zeros(1, np.int64)))
            continue
        segs = [segments[i] for i in g]
        vec, codes = cache.get(segs)
        vsegs.append(Packed("+".join(s.name for s in segs), vec, codes, len(vec), segs[0].offset))
        ms = [masks[i] for i in g]
        vmasks.append(None if all(m is None for m in ms) else
                      np.concatenate([np.ones(s.n, bool) if m is None else m for s, m in zip(segs, ms)]))
        members.append((np.array(g), np.cumsum([0] + [s.n for s in segs[:-1]])))

    def remap(seg, local):
        rseg, rloc = seg.copy(), local.copy()
        for v, (g, starts) in enumerate(members):
            sel = (seg == v) & (local >= 0)
            if len(g) == 1:
                rseg[seg == v] = g[0]
                continue
            k = np.searchsorted(starts, local[sel], side="right") - 1
            rseg[sel] = g[k]
            rloc[sel] = local[sel] - starts[k]
        return rseg, rloc

    return vsegs, vmasks, remap
