"""One search over every shard a reader actor holds: the collection's planner run
once over the union of those shards' segments.

A reader actor that serves several shards would otherwise search them one by one
and pay a search's fixed cost (planning, masks, the result's assembly) per shard;
here the shards' segments, each with its own allow mask (deletes and the filter, from
its own collection) and its small segments packed as its collection packs them, go
to one :class:`~nestvec.collection.planner.Planner`. Exactness across shards rests on
the tie order: a planner merges per-segment lists by (score, then global position),
and a segment's ``offset`` gives that position. The shards' rows interleave in the
cluster's row order (``_row``), so each part's ``offset`` here is the array of its
rows' ``_row`` numbers (``collection.topk.merge_parts`` takes either): the merge is
then by (score, ``_row``), the coordinator's rule (``coordinator.py``).

Consequences, stated in the README: flat and binary return exactly what the shards
searched apart return after the coordinator's merge; the funnel takes one Hamming
shortlist over all the actor's shards (on one node: the single collection's
shortlist, so the per-shard funnel equals a single collection's funnel there).
Index modes (each shard has its own centroids and graphs), device searches and the
two-round funnel's candidate rescoring keep the per-shard path (``eligible``).
"""
from __future__ import annotations

import numpy as np

from ..collection import packing
from ..collection import validate as vd
from ..collection.planner import INDEX_MODES, Planner, Request

# ShardReader.search's positional arguments after the shard's version
_Q, _K, _DIM, _MODE, _RESCORE, _FILTER, _COLS, _LADDER, _DEVICE, _CAND, _NPROBE, _EF, _MIN, _MAX, _EXPLAIN = \
    range(1, 16)
_SHARED = (_K, _DIM, _MODE, _RESCORE, _FILTER, _COLS, _LADDER, _DEVICE, _CAND, _EF, _MIN, _MAX, _EXPLAIN)


class _Part:
    """A segment (or a pack of adjacent small ones) of one shard, as the planner reads
    it; ``offset``: the ``_row`` of each of its rows."""

    __slots__ = ("name", "vectors", "codes", "n", "offset", "deletions", "ann")

    def __init__(self, seg, rows):
        self.name = seg.name
        self.vectors = seg.vectors
        self.codes = seg.codes
        self.n = seg.n
        self.offset = rows
        self.deletions = getattr(seg, "deletions", None)
        self.ann = {}


def _same(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and \
            np.array_equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return False


def eligible(calls: list, cols: list) -> bool:
    """Whether ``calls`` (``[(shard, ShardReader.search args)]``) can be one union
    search: a host search of one request, no given candidates, no index mode (nor
    ``auto`` on shards with an index: each shard's own plan picks it)."""
    first = calls[0][1]
    if first[_DEVICE] is not None or first[_CAND] is not None or first[_MODE] in INDEX_MODES:
        return False
    if not isinstance(first[_Q], np.ndarray):
        return False
    for _, args in calls[1:]:
        if not _same(args[_Q], first[_Q]) or not all(_same(args[i], first[i]) for i in _SHARED):
            return False
    if first[_MODE] == "auto" and any(c._snapshot().indexes for c in cols):
        return False
    return True


def search(cols: list, flat, args: tuple, payload, merged: bool = False) -> list:
    """The union search of one request over ``cols`` (the shards' collections at the
    requested versions). ``flat(j, what)``: shard j's ``_row`` (``"rows"``) or int
    ``id`` (``"ids"``) of every row of its snapshot, in its segments' order. Returns
    one payload per shard, as ``ShardReader.search`` returns them (``payload(col,
    snap, cols, used, seg, local, score, stats)`` builds one where the hits need a
    table): each shard's hits among the union's top-k, -1 elsewhere, so the
    coordinator's merge by (score, row) is unchanged.

    ``merged=True`` (a caller that needs the final list, not which shard holds each
    hit): with int ids only, the first shard's payload carries the whole union answer,
    already in merge order, and the others are empty, so the coordinator neither
    splits nor re-merges what the planner merged here."""
    q, k, dim, mode, rescore, flt = args[_Q], args[_K], args[_DIM], args[_MODE], args[_RESCORE], args[_FILTER]
    names, ladder = args[_COLS], args[_LADDER]
    snaps = [c._snapshot() for c in cols]
    m = snaps[0].manifest
    cut = vd.cutoff(args[_MIN], args[_MAX], m["metric"], mode)
    parts, pmasks, owner, remaps = [], [], [], []
    rows = allowed = 0
    for j, (col, snap) in enumerate(zip(cols, snaps)):
        masks = col._masks(snap, flt)  # each shard's filter masks, cached by its handle
        rows += sum(s.n for s in snap.segments)
        allowed += sum(s.n if mk is None else int(np.count_nonzero(mk)) for s, mk in zip(snap.segments, masks))
        segs, masks, remap = packing.pack(snap.segments, masks, col._packs)
        remaps.append(remap)
        all_rows = flat(j, "rows")
        for i, (s, mk) in enumerate(zip(segs, masks)):
            parts.append(_Part(s, all_rows[s.offset:s.offset + s.n]))
            pmasks.append(mk)
            owner.append((j, i, s.offset))
    req = Request(k, dim, mode, rescore, m["metric"], m["dim"], m["binary"], ladder,
                  selectivity=allowed / rows if rows else 1.0)
    planner = Planner(parts, pmasks, req, filtered=flt is not None)
    used, seg, local, score = planner.run(q)
    local = vd.apply_cutoff(cut, score, local)
    shard_of, index_in, start = (np.array(c, np.int64) for c in zip(*owner)) if owner else \
        (np.zeros(0, np.int64),) * 3
    valid = local >= 0
    seg0 = np.maximum(seg, 0)
    where = np.where(valid, shard_of[seg0], -1)
    stats = dict(planner.stats) if args[_EXPLAIN] else None
    out = []
    if names == [] and m["id_type"] == "int64":
        # the common answer, int ids only: gathered from the shards' flat arrays by
        # position in their snapshots (no per-segment work)
        pos = start[seg0] + local
        if merged:
            rows_all = np.full(local.shape, -1, np.int64)
            ids_all = np.full(local.shape, -1, np.int64)
            for j in np.unique(where[valid]):
                mine = where == j
                at = pos[mine]
                rows_all[mine] = flat(j, "rows")[at]
                ids_all[mine] = flat(j, "ids")[at]
            none = local[:, :0]
            return [(used, score, rows_all, ids_all[valid], stats)] + \
                [(used, score[:, :0], none, none.ravel(), None)] * (len(cols) - 1)
        for j in range(len(cols)):
            mine = where == j
            r = np.full(local.shape, -1, np.int64)
            at = pos[mine]
            r[mine] = flat(j, "rows")[at]
            out.append((used, score, r, flat(j, "ids")[at], stats if j == 0 else None))
        return out
    for j, (col, snap) in enumerate(zip(cols, snaps)):
        mine = where == j
        sseg = np.where(mine, index_in[seg0], -1)
        sloc = np.where(mine, local, -1)
        if remaps[j] is not None:
            sseg, sloc = remaps[j](sseg, sloc)
        out.append(payload(col, snap, names, used, sseg, sloc, score, stats if j == 0 else None))
    return out
