"""Exact merges of top-k lists from several segments: by (score, global row position),
the kernels' own tie rule, so a result never depends on how rows are split into
segments."""
from __future__ import annotations

import numpy as np

from .. import _checks as ck


def host(x):
    if ck.is_torch(x):
        return x.detach().cpu().numpy()
    return x


def merge_order(score, gpos, k: int, larger_better: bool):
    """The merge rule: per row of ``score`` / ``gpos`` ``[Q, n]`` (candidates from
    several lists; ``gpos`` < 0 for none), the column order of the best ``k`` by
    (score, then global position). The one place the tie rule lives: segments here,
    shards in ``nestvec.distributed``."""
    key = np.asarray(score).astype(np.float64)
    if larger_better:
        key = -key
    missing = gpos < 0
    key[missing] = np.inf
    gpos = np.where(missing, np.iinfo(np.int64).max, gpos)
    return np.lexsort((gpos, key), axis=-1)[:, :k]


def _position(offset, local):
    if isinstance(offset, np.ndarray):
        return offset[np.maximum(local, 0)]
    return local + offset


def merge_parts(parts, k: int, larger_better: bool, nq: int):
    """Exact top-k of per-segment lists. parts: (offset, seg_index, score [Q,kk], idx [Q,kk]);
    ``offset``: the segment's first row's global position, or an int64 array of every
    row's (a union of shards' segments, whose rows interleave: nestvec.distributed).
    Returns (seg [Q,k], local [Q,k], score [Q,k]) with local -1 for missing entries."""
    if not parts:
        return (np.zeros((nq, 0), np.int64), np.full((nq, 0), -1, np.int64), np.zeros((nq, 0)))
    if len(parts) == 1:  # one segment: its list is already in contract order
        _, i, score, idx = parts[0]
        local = host(idx).astype(np.int64, copy=False)
        return np.full(local.shape, i, np.int64), local, host(score)
    score = np.concatenate([host(p[2]) for p in parts], axis=1)
    locs = [host(p[3]).astype(np.int64) for p in parts]
    local = np.concatenate(locs, axis=1)
    seg = np.concatenate([np.full(li.shape, p[1], np.int64) for p, li in zip(parts, locs)], axis=1)
    gpos = np.concatenate([np.where(li >= 0, _position(p[0], li), -1) for p, li in zip(parts, locs)], axis=1)
    order = merge_order(score, gpos, k, larger_better)
    pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return pick(seg), pick(local), pick(score)


def merge_results(results, k: int, larger_better: bool, offsets, nq: int, gpos=None):
    """Exact top-k of several (seg, local, score) results of the same queries, by
    (score, global position = offsets[seg] + local, or ``gpos(seg, local)`` where
    segments' rows are not numbered that way: a union of shards)."""
    results = [r for r in results if r[0].shape[1]]
    if not results:
        return (np.zeros((nq, 0), np.int64), np.full((nq, 0), -1, np.int64), np.zeros((nq, 0), np.float32))
    if len(results) == 1:
        return results[0]
    seg = np.concatenate([r[0] for r in results], axis=1)
    local = np.concatenate([r[1] for r in results], axis=1)
    score = np.concatenate([r[2] for r in results], axis=1)
    pos = gpos(seg, local) if gpos is not None else np.where(local < 0, -1, offsets[seg] + local)
    order = merge_order(score, pos, k, larger_better)
    pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return pick(seg), pick(local), pick(score)
