"""Indexes of a ShardedCollection (a mixin): ``create_index``, ``indexes``,
``drop_index``.

Each shard builds its own index through its writer actor (``Collection.create_index``
on the shard, in parallel), and one cluster version names all of the shards' new
versions: like a multi-shard write, readers see every shard's index or none.

ivf centroids are trained per shard (each shard runs k-means on its own rows), not
shared across shards. A shard stays an independent collection (``nestvec.open`` on a
shard directory searches it with its index, and compaction, merges and ingestion
index new segments with the shard's own centroids); training needs no gather of a
sample at the driver and runs on every shard's machine at once; and since ids are
routed by hash, every shard holds a uniform sample of the data, so its centroids
cover the same space a global set would. The cost: ``nprobe`` counts lists per
shard, so a query probes ``shards x nprobe`` lists of about ``1/shards`` the size
(the same rows as one collection probing ``nprobe`` lists of its own, with nlist
near 4 sqrt(rows) per shard, from its own rows). Each shard also tunes its own default ``nprobe`` /
``ef`` on its rows.

The cluster manifest records each kind's options and every shard's spec (``nlist``,
the tuned defaults), so a search checks ``mode`` / ``nprobe`` before any actor is
called. Options are checked against every shard at the driver first: bad input
(an unknown kind or option, a value out of range, a shard without rows) raises
before anything is written anywhere.
"""
from __future__ import annotations

import numpy as np

from . import runtime

KINDS = ("ivf", "hnsw")
# per-shard values that differ between shards (reported in "per_shard" only)
_SPEC_PRIVATE = ("centroids",)


def _plain(v):
    """Options as JSON values (numpy scalars from a user's arrays included)."""
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def check_options(m: dict, kind, options: dict, replace: bool) -> dict:
    """Every shard's parse of ``options`` (nothing read or written): a ValueError /
    TypeError naming the option, and the shard when it is that shard's rows that make
    it invalid. Returns the options as stored in the cluster manifest."""
    from ..collection.indexes import build  # needs no faiss / hnswlib

    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not isinstance(replace, bool):
        raise TypeError(f"replace: expected True or False, got {replace!r}")
    if kind in (m.get("indexes") or {}) and not replace:
        raise ValueError(f"create_index({kind!r}): the sharded collection already has a {kind} index "
                         f"(drop_index({kind!r}) first, or pass replace=True)")
    if m["rows"] == 0:
        raise ValueError(f"create_index({kind!r}): the sharded collection has no rows; add rows first "
                         f"(each shard builds its index from its own rows)")
    options = {k: _plain(v) for k, v in options.items()}
    build.parse(kind, options, m, max(m["shard_rows"]))  # unknown options, values out of range
    for s, n in enumerate(m["shard_rows"]):
        if n == 0:
            raise ValueError(f"create_index({kind!r}): shard {s} has no rows (each shard builds its index "
                             f"from its own rows); add rows first, or use fewer shards")
        try:
            build.parse(kind, options, m, n)
        except ValueError as e:
            raise ValueError(f"{e} (shard {s} holds {n} rows; options apply to every shard)") from None
    return options


def summary(kind: str, per_shard: list) -> dict:
    """``indexes()[kind]`` of a sharded collection from each shard's own report: the
    values every shard agrees on, the counts summed, and ``per_shard``."""
    if not per_shard:
        return {"kind": kind, "per_shard": []}
    sums = ("segments_indexed", "rows_indexed", "segments")
    keys = [k for k in per_shard[0] if k not in sums and k not in _SPEC_PRIVATE]
    out = {k: per_shard[0][k] for k in keys if all(p.get(k) == per_shard[0][k] for p in per_shard)}
    for k in sums:
        out[k] = int(sum(p.get(k, 0) for p in per_shard))
    out["shards"] = len(per_shard)
    out["per_shard"] = per_shard
    return out


def nprobe_for(m: dict, nprobe):
    """Per-shard ``nprobe`` (None: each shard's tuned default): a shard with fewer
    lists than asked probes all of its lists. ValueError above the largest nlist."""
    if nprobe is None:
        return [None] * m["shards"]
    ivf = (m.get("indexes") or {}).get("ivf")
    if ivf is None:
        return [nprobe] * m["shards"]
    nlists = [sp["nlist"] for sp in ivf["shards"]]
    if nprobe > max(nlists):
        lo, hi = min(nlists), max(nlists)
        what = f"nlist={hi}" if lo == hi else f"the largest shard nlist={hi}"
        raise ValueError(f"nprobe: expected an int in [1, {what}], got {nprobe}")
    return [min(nprobe, n) for n in nlists]


class IndexMixin:
    def create_index(self, kind: str = "ivf", replace: bool = False, **options) -> dict:
        """Build index ``kind`` (``"ivf"`` or ``"hnsw"``) on every shard and commit one
        cluster version naming all of them. Options and their defaults are
        :meth:`nestvec.Collection.create_index`'s, applied to each shard (``nlist``
        and the tuned ``nprobe`` / ``ef`` defaults are per shard: each shard trains
        its own centroids on its own rows; see ``distributed/indexes.py`` for why).

        Returns :meth:`indexes`\\ ``[kind]``. Raises ValueError / TypeError naming
        the option (or the shard whose rows make it invalid, e.g. a shard without
        rows or with fewer rows than ``nlist``) before anything is written. A writer
        actor that dies during the build leaves no shard changed (they are restored
        to the cluster's version) and raises :class:`ShardUnavailableError`."""
        with self._lock:
            self._check_writable()
            m = self._m
            opts = check_options(m, kind, options, replace)
            ws = self._writer_handles()
            shards = list(range(m["shards"]))
            try:
                res = runtime.gather([ws[s].create_index.remote(kind, opts, replace) for s in shards], shards,
                                     "writer")
                specs = dict(m.get("indexes") or {})
                specs[kind] = {"kind": kind, "options": opts,
                               "shards": [{k: v for k, v in spec.items() if k not in _SPEC_PRIVATE}
                                          for spec, _ in res]}
                self._commit_states([st for _, st in res], "index", indexes=specs)
            except BaseException as e:
                self._recover()
                if isinstance(e, runtime.ShardUnavailableError):
                    raise runtime.ShardUnavailableError(
                        f"{e}; create_index was not committed on any shard (the collection is at version "
                        f"{m['version']}); retry the call") from None
                raise
        return self.indexes()[kind]

    def drop_index(self, kind: str) -> None:
        """Remove index ``kind`` from every shard (one cluster version)."""
        with self._lock:
            self._check_writable()
            m = self._m
            if kind not in KINDS:
                raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
            if kind not in (m.get("indexes") or {}):
                raise ValueError(f"drop_index({kind!r}): the sharded collection has no {kind} index")
            ws = self._writer_handles()
            shards = list(range(m["shards"]))
            try:
                states = runtime.gather([ws[s].drop_index.remote(kind) for s in shards], shards, "writer")
                specs = {k: v for k, v in m["indexes"].items() if k != kind}
                self._commit_states(states, "drop_index", indexes=specs)
            except BaseException:
                self._recover()
                raise

    def indexes(self) -> dict:
        """``{kind: spec}`` of this cluster version: the values every shard agrees on
        (``dim``, ``metric``, ``codes``, ``M``, ... and ``nlist`` / ``nprobe`` /
        ``ef`` when equal), ``segments_indexed`` / ``rows_indexed`` / ``segments``
        summed over the shards, ``shards``, and ``per_shard``: each shard's own
        :meth:`nestvec.Collection.indexes` entry (its nlist, tuned defaults, build
        times)."""
        m = self._manifest()
        specs = m.get("indexes") or {}
        if not specs:
            return {}
        vs = m["shard_versions"]
        per = self._fan(range(m["shards"]), "reader", lambda s: ("indexes", (vs[s],)))
        return {kind: dict(summary(kind, [p[kind] for p in per]), options=specs[kind]["options"])
                for kind in specs}
