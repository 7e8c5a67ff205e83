"""The coordinator's side of a sharded search: merge per-shard top-k lists into one
result table, and the two-round funnel.

Every shard answers with its own top-k by (score, row) where ``row`` is the global
row number (``_row``: a sharded collection numbers rows across all shards in the
order they were added), so merging by the planner's rule, (score, then row), gives
exactly the list a single collection holding the same rows in the same order
returns (``collection.topk.merge_order``; the tie rule lives there only).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..collection.search import int_result_table
from ..collection.topk import merge_order


def larger_better(mode: str, metric: str) -> bool:
    return mode != "binary" and metric != "l2"


def merge_lists(payloads: list, k: int, better_high: bool):
    """payloads: per shard ``(used, score [Q,kk], rows [Q,kk], hits, ...)``. Returns
    (src [Q,k], pos [Q,k], score [Q,k], rows [Q,k]): the shard (index into
    ``payloads``) and the position among that shard's hits (its valid entries in
    (query, rank) order), -1 rows where there is no hit."""
    scores, rows, src, pos = [], [], [], []
    for i, p in enumerate(payloads):
        s, r = p[1], np.asarray(p[2], np.int64)
        valid = r >= 0
        p = np.cumsum(valid.ravel()).reshape(r.shape) - 1
        scores.append(np.asarray(s))
        rows.append(r)
        src.append(np.full(r.shape, i, np.int64))
        pos.append(np.where(valid, p, -1))
    cat = lambda xs: np.concatenate(xs, axis=1)  # noqa: E731
    score, row, src, pos = cat(scores), cat(rows), cat(src), cat(pos)
    order = merge_order(score, row, k, better_high)
    pick = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return pick(src), pick(pos), pick(score), pick(row)


def one_list_table(payloads: list, k: int, mode: str):
    """The result table when a single payload holds every list (one shard, or a reader
    actor's merged union) with int ids only: its list is already in merge order, so
    it is the answer; None otherwise (then :func:`merge_lists` and
    :func:`result_table`)."""
    full = [p for p in payloads if np.shape(p[2])[1]]
    if len(full) != 1 or not isinstance(full[0][3], np.ndarray) or np.shape(full[0][2])[1] > k:
        return None
    _, score, rows, ids, _ = full[0]
    rows = np.asarray(rows)
    if len(rows) == 1:  # one query: 1-D selections
        valid = rows[0] >= 0
        qi = np.zeros(len(ids), np.int64)
        score = np.asarray(score)[0] if valid.all() else np.asarray(score)[0][valid]
    else:
        valid = rows >= 0
        qi = np.nonzero(valid)[0]
        score = np.asarray(score)[valid]
    return int_result_table(qi, ids, score, mode == "binary")


def result_table(payloads: list, src, pos, score, row, mode: str, names: list, empty) -> pa.Table:
    """The search result table (``query``, ``id``, ``score``, columns) of a merge;
    ``empty()``: the table of no hits, with the columns' types."""
    valid = row >= 0
    qi = np.nonzero(valid)[0].astype(np.int64)
    src, pos = src[valid], pos[valid]
    score_arr = pa.array(score[valid].astype(np.int32 if mode == "binary" else np.float32))
    counts = [int((np.asarray(p[2]) >= 0).sum()) for p in payloads]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    gidx = starts[src] + pos if len(src) else np.zeros(0, np.int64)
    hits = [p[3] for p, c in zip(payloads, counts) if c]
    if hits and all(isinstance(h, np.ndarray) for h in hits):
        ids = np.concatenate(hits)[gidx]
        return pa.table({"query": pa.array(qi), "id": pa.array(ids, pa.int64()), "score": score_arr})
    if hits:
        tables = [pa.table({"id": pa.array(h, pa.int64())}) if isinstance(h, np.ndarray) else h for h in hits]
        t = pa.concat_tables(tables).take(pa.array(gidx))
    else:
        t = empty()
    out = pa.table({"query": pa.array(qi, pa.int64()), "id": t.column("id"), "score": score_arr})
    for c in names[1:]:
        out = out.append_column(c, t.column(c))
    return out


def shortlist_split(payloads: list, shards: list, short: int, better_high: bool = False) -> dict:
    """Between the rounds of the two-round funnel: merge per-shard top-``short``
    lists (Hamming distances in round one, exact scores after a ladder stage) into
    the global list, and split it back by shard: ``{shard: rows [Q, <= short]}``
    (-1 padded), only shards holding candidates."""
    src, _, _, row = merge_lists(payloads, short, better_high)
    out = {}
    for i, s in enumerate(shards):
        cand = np.where((src == i) & (row >= 0), row, -1)
        if (cand >= 0).any():
            # each query's candidates first, in shortlist order; pad with -1
            order = np.argsort(cand < 0, axis=1, kind="stable")
            cand = np.take_along_axis(cand, order, axis=1)
            width = int((cand >= 0).sum(axis=1).max())
            out[s] = np.ascontiguousarray(cand[:, :width])
    return out


_SUMMED = ("segments", "indexed_segments", "scanned_segments", "rows", "matches", "rows_scanned",
           "rows_rescored", "lists_probed", "fallback_queries")
_ACROSS_ROUNDS = ("rows_scanned", "rows_rescored", "lists_probed")


def explain_plan(rounds: list, live: list, payloads: list, used: str, requested: str, k: int, dim: int,
                 nq: int, filtered: bool, m: dict, funnel) -> dict:
    """A sharded search's plan: each shard's planner stats (``rounds``: (shard,
    stats) of every call; a shard's calls of a two-round funnel are added up), and
    the counts summed over the shards."""
    per: dict = {}
    for s, st in rounds:
        mine = per.setdefault(s, {"shard": s, "version": m["shard_versions"][s]})
        for key, v in (st or {}).items():
            if key in _ACROSS_ROUNDS and key in mine:
                mine[key] += v
            else:
                mine[key] = v
    plan = {"mode": used, "requested": requested, "k": k, "dim": dim, "queries": nq, "filtered": filtered,
            "version": m["version"], "shard_versions": list(m["shard_versions"]), "shards": len(per)}
    if funnel is not None:
        plan["funnel"] = funnel
    shard_modes = sorted({p[0] for p in payloads})
    if len(shard_modes) > 1:
        plan["shard_modes"] = shard_modes
    for key in _SUMMED:
        vals = [p[key] for p in per.values() if key in p]
        if vals:
            plan[key] = int(sum(vals))
    plan["per_shard"] = [per[s] for s in sorted(per)]
    return plan
