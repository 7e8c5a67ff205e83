"""ShardedCollection: one collection split into S shard collections, served by Ray
actors (docs/ARCHITECTURE.md, "Sharded collections"; README, "Scale-out on Ray").

The driver that holds a handle is the coordinator: it reads the cluster manifest
(``layout.py``), routes writes by a stable hash of the id (``routing.py``) to one
writer actor per shard, and fans searches out to reader actors, merging their lists
by (score, row) (``coordinator.py``). Writes: ``writes.py``.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import _checks as ck
from ..collection import filters
from ..collection import manifest as mf
from ..collection import validate as vd
from ..collection.collection import Collection
from ..collection.errors import LockError
from ..collection.planner import INDEX_MODES, MODES, Request, ladder_keep, resolve_mode
from . import coordinator as co
from . import indexes as ix
from . import layout, routing, runtime
from .writes import WriteMixin

FUNNELS = ("per_shard", "two_round")


LOCK_WAIT_S = 30.0  # writer actors of a driver that died are reaped by Ray within seconds


def _open_shard(path: str, i: int) -> Collection:
    """Open a shard for writing, waiting while a writer actor of a dead driver still
    holds its lock (Ray ends a driver's actors shortly after the driver)."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return Collection.open(path)
        except LockError as e:
            if time.monotonic() > deadline:
                raise LockError(f"shard {i}: {e} (is another driver writing to this sharded "
                                f"collection?)") from None
            time.sleep(0.2)


def _mode_of(modes: list) -> str:
    """The mode a sharded search reports: the shards' (auto may pick an index on a
    large shard and flat on a small one: the index mode then)."""
    for m in ("binary", "ivf", "hnsw", "funnel", "flat"):
        if m in modes:
            return m
    return modes[0]


class ShardedCollection(ix.IndexMixin, WriteMixin):
    """A collection split into ``shards`` Collection directories under one root, read
    and written through Ray actors. Same arguments and result tables as
    :class:`nestvec.Collection` for add / upsert / delete / get / count / search.

    Create with :meth:`create`, reopen with :meth:`open` (or
    :func:`nestvec.distributed.open`). Reads start Ray locally when no cluster is
    connected. One writing driver at a time (a file lock on the root); any number of
    readers, each on the cluster version it opened.
    """

    def __init__(self, root: layout.Root, m: dict, read_only: bool, pinned: bool, readers: int = 1,
                 reader_options=None, writer_options=None, reader_threads=None, funnel: str = "per_shard",
                 merge_policy=None, shards_per_reader=None, compiled_graph: bool = False):
        self._root = root
        self._m = m
        self._schema = mf.schema_from_b64(m["schema_ipc"])
        self._read_only = read_only
        self._pinned = pinned
        self._closed = False
        self._lock = threading.RLock()
        self._readers_per_shard = vd.positive_int(readers, "readers")
        self._reader_opts = runtime.options(runtime.READER_DEFAULTS, reader_options, "reader_options")
        self._writer_opts = runtime.options(runtime.WRITER_DEFAULTS, writer_options, "writer_options")
        self._reader_threads = reader_threads
        self._shards_per_reader = None if shards_per_reader is None else \
            vd.positive_int(shards_per_reader, "shards_per_reader")
        if not isinstance(compiled_graph, bool):
            raise TypeError(f"compiled_graph: expected True or False, got {compiled_graph!r}")
        self._compiled = compiled_graph
        self._readers = None  # per shard: a list of reader actor handles (shared: runtime)
        self._readers_key = None
        self._writers = None  # per shard: one writer actor handle
        self._writers_starting = None  # their first state() calls, until awaited
        self._rr = itertools.count()
        self._merge_policy = merge_policy
        self.funnel = funnel
        self.last_ingest = None  # what nestvec.distributed.ingest measured, when it wrote here

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, root, shards: int, dim: int, dtype: str = "float16", metric: str = "cosine",
               binary: bool = True, schema=None, id_type: str | None = None, **options) -> "ShardedCollection":
        """Create an empty sharded collection: ``root/shards/0000 .. S-1`` (each a
        Collection with the given dim, dtype, metric, binary, schema) and the first
        cluster manifest. Returns a writable handle (holding the root's lock).

        ``options``: ``readers`` (reader actors per shard, default 1),
        ``shards_per_reader`` (shards one reader actor serves; default: the shards
        spread over one reader actor per node of the cluster, which searches them as
        one: a search is one actor call and one plan per node), ``reader_options`` / ``writer_options`` (Ray actor
        options, e.g. ``{"num_gpus": 1}``), ``reader_threads`` (CPU threads per
        reader), ``funnel`` (``"per_shard"`` or ``"two_round"``), ``merge_policy``
        (the shards'), ``compiled_graph`` (searches fan out through a Ray compiled
        graph, ``ray.dag``: a shorter round trip; Ray marks it beta, so off by
        default; plain actor calls take over when it cannot serve a call).
        """
        shards = vd.positive_int(shards, "shards", layout.MAX_SHARDS)
        dim = vd.positive_int(dim, "dim")
        if dtype not in vd.DTYPES:
            raise ValueError(f"dtype: expected one of {tuple(vd.DTYPES)}, got {dtype!r}")
        if metric not in vd.METRICS:
            raise ValueError(f"metric: expected one of {vd.METRICS}, got {metric!r}")
        if id_type not in (None, "int64", "string"):
            raise ValueError(f"id_type: expected 'int64', 'string' or None, got {id_type!r}")
        user = vd.parse_schema(schema)
        r = layout.Root(root)
        if r.exists():
            raise FileExistsError(f"{r.path!r} already holds a sharded collection; use ShardedCollection.open()")
        if os.path.exists(os.path.join(r.path, "LATEST")):
            raise FileExistsError(f"{r.path!r} holds a (single) collection")
        r.init_dirs()
        r.acquire()
        try:
            if r.exists():
                raise FileExistsError(f"{r.path!r} already holds a sharded collection")
            # nothing was ever committed here: shard folders are what a create that died left
            for i in range(shards):
                p = r.p(layout.shard_dir(i))
                if os.path.exists(p):
                    shutil.rmtree(p)
                Collection.create(p, dim=dim, dtype=dtype, metric=metric, binary=binary, schema=user,
                                  id_type=id_type).close()
            m = layout.new_manifest(shards, dim, dtype, metric, binary, mf.schema_b64(user),
                                    {f.name: str(f.type) for f in user}, id_type, [0] * shards)
            r.commit(m)
        except BaseException:
            r.release()
            raise
        return cls(r, m, read_only=False, pinned=False, **options)

    @classmethod
    def open(cls, root, version: int | None = None, read_only: bool = False, **options) -> "ShardedCollection":
        """Open a sharded collection (the latest cluster version, or ``version``,
        read-only). A writable open takes the root's lock and first repairs what a
        writer that died left: shards ahead of the cluster manifest are restored to
        their recorded versions (a batch that was never acknowledged disappears).
        No Ray is needed until the first read or write."""
        r = layout.Root(root)
        latest = r.latest()
        pinned = version is not None
        if pinned:
            if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
                raise TypeError(f"version: expected an int >= 0, got {version!r}")
            if version > latest:
                raise KeyError(f"version {version} does not exist; the latest is {latest}")
            read_only = True
        if not read_only:
            r.acquire()
        try:
            if read_only:
                m = r.read(int(version) if pinned else latest)
            else:
                r.drop_uncommitted()
                m = r.read(r.latest())
                m = cls._recover_on_open(r, m)
        except BaseException:
            r.release()
            raise
        return cls(r, m, read_only=read_only, pinned=pinned, **options)

    @staticmethod
    def _recover_on_open(r: layout.Root, m: dict) -> dict:
        """Restore shards that ran ahead of the cluster record (locally: the writer
        actors do not exist yet) and raise the row/id counters past anything a dead
        writer may have handed out."""
        next_row, next_id = m["next_row"], m["next_id"]
        for i in range(m["shards"]):
            with _open_shard(r.shard_path(m, i), i) as col:
                if col.version != m["shard_versions"][i]:
                    col.restore(m["shard_versions"][i])
                sm = col._snapshot().manifest
                next_row, next_id = max(next_row, sm["next_row"]), max(next_id, sm.get("next_id", 0))
        return dict(m, next_row=next_row, next_id=next_id)

    # ------------------------------------------------------------------ properties

    def _manifest(self) -> dict:
        if self._closed:
            raise ValueError("sharded collection is closed")
        return self._m

    @property
    def path(self) -> str:
        return self._root.path

    @property
    def shards(self) -> int:
        return self._m["shards"]

    @property
    def dim(self) -> int:
        return self._m["dim"]

    @property
    def dtype(self) -> str:
        return self._m["dtype"]

    @property
    def metric(self) -> str:
        return self._m["metric"]

    @property
    def binary(self) -> bool:
        return self._m["binary"]

    @property
    def schema(self) -> pa.Schema:
        return self._schema

    @property
    def version(self) -> int:
        return self._m["version"]

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def shard_versions(self) -> list:
        """The version of each shard this handle reads."""
        return list(self._m["shard_versions"])

    @property
    def shard_paths(self) -> list:
        return [self._root.shard_path(self._m, i) for i in range(self.shards)]

    @property
    def funnel(self) -> str:
        """How ``mode="funnel"`` (and ``auto``) runs across shards: ``"per_shard"``
        (default: each reader actor runs the whole funnel over the shards it holds,
        searched as one, one round trip: with one actor for every shard (one node)
        that is exactly a single collection's funnel; with several, each actor's
        shortlist holds every row of the global one from its shards, so recall is at
        least a single collection's) or ``"two_round"`` (the global Hamming
        shortlist gathered first, then only its rows rescored on their shards:
        exactly a single collection's funnel, one more round trip; with one actor
        for every shard, the same single call as per_shard). README: the
        measurements."""
        return self._funnel

    @funnel.setter
    def funnel(self, value) -> None:
        if value not in FUNNELS:
            raise ValueError(f"funnel: expected one of {FUNNELS}, got {value!r}")
        self._funnel = value

    def __repr__(self):
        m = self._m
        return (f"ShardedCollection({self.path!r}, shards={m['shards']}, version={m['version']}, rows={m['rows']}, "
                f"dim={m['dim']}, dtype={m['dtype']}, metric={m['metric']}, binary={m['binary']}"
                f"{', read_only' if self._read_only else ''}{', closed' if self._closed else ''})")

    def __len__(self):
        return self.count()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop this handle's actors (writers release their shard locks first) and
        the root lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._writers:
                    try:
                        runtime.gather([w.close.remote() for w in self._writers], list(range(len(self._writers))),
                                       "writer")
                    except Exception:
                        pass  # a dead writer's lock died with it
                    runtime.kill(self._writers)
                if self._readers_key is not None:
                    runtime.release_readers(self._readers_key, self._compiled)
            finally:
                self._writers = self._readers = self._readers_key = self._writers_starting = None
                self._root.release()

    def __del__(self):
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ readers

    def _reader_handles(self) -> list:
        if self._readers is None:
            with self._lock:
                if self._readers is None:
                    self._manifest()
                    self._readers_key, self._readers = runtime.acquire_readers(
                        self.shard_paths, self._readers_per_shard, self._reader_opts, self._reader_threads,
                        self._shards_per_reader, self._compiled)
        return self._readers

    def _fan(self, shards, what: str, call, merged: bool = False):
        """``call(shard)`` -> (ShardReader method, args) for each shard; the results
        in shard order. One actor call per reader actor (it answers all of its shards
        the call names). A replica that died for good is skipped for the next one.
        ``merged``: a search whose caller only merges the lists (``ReaderGroup.run``)."""
        handles = self._reader_handles()
        if what == "reader" and self._compiled and self._readers_per_shard == 1:
            graph = runtime.fan_graph(self._readers_key)
            if graph is not None:
                work: dict = {}
                for s in shards:
                    method, args = call(s)
                    if method != "search":
                        break
                    work.setdefault(graph.index[id(handles[s][0])], []).append((s, args))
                else:
                    res = graph.run(work)
                    if res is not None:
                        out = {}
                        for i, calls in work.items():
                            out.update(zip([s for s, _ in calls], res[i]))
                        return [out[s] for s in shards]
        turn = next(self._rr)
        out = {}
        todo = list(shards)
        for attempt in range(self._readers_per_shard):
            groups: dict = {}
            for s in todo:
                h = handles[s][(turn + attempt) % len(handles[s])]
                groups.setdefault(id(h), (h, []))[1].append(s)  # a group's shards share its handles
            refs, labels, method = [], [], None
            for h, ss in groups.values():
                made = [(s, call(s)) for s in ss]
                method = made[0][1][0]
                refs.append(runtime.call_reader(h, method, [(s, args) for s, (_, args) in made], merged))
                labels.append(ss)
            try:
                res = runtime.answers(runtime.gather(refs, labels, what), method)
            except runtime.ShardUnavailableError:
                if attempt + 1 == self._readers_per_shard:
                    raise
                continue
            for ss, r in zip(labels, res):
                out.update(zip(ss, r))
            break
        return [out[s] for s in shards]

    def _readers_of(self, shards) -> int:
        """Reader actors (groups) serving ``shards``."""
        handles = self._reader_handles()
        return len({id(handles[s][0]) for s in shards})

    def reader_pids(self) -> list:
        """Process ids of the reader actors, per shard (tests kill them)."""
        return self._fan(range(self.shards), "reader", lambda s: ("pid", ()))

    # ------------------------------------------------------------------ reading

    def _stand_in(self, m=None):
        m = m or self._manifest()
        return SimpleNamespace(manifest=m, schema=self._schema)

    def _meta_schema(self, m) -> pa.Schema:
        id_t = pa.string() if m["id_type"] == "string" else pa.int64()
        return pa.schema([pa.field("_row", pa.int64()), pa.field("id", id_t)] + list(self._schema))

    def _check_filter(self, m, flt) -> None:
        filters.check_filter(flt)
        if flt is not None:
            filters.validate(flt, self._meta_schema(m))

    def _live_shards(self, m) -> list:
        return [i for i in range(m["shards"]) if m["shard_rows"][i] > 0]

    def count(self, filter=None) -> int:
        """Live rows (matching ``filter``), summed over the shards."""
        m = self._manifest()
        if filter is None:
            return int(m["rows"])
        self._check_filter(m, filter)
        live = self._live_shards(m)
        vs = m["shard_versions"]
        return int(sum(self._fan(live, "reader", lambda s: ("count", (vs[s], filter)))))

    def get(self, ids, columns=None) -> pa.Table:
        """Rows for ``ids`` in the order given (absent ids skipped); as Collection.get."""
        m = self._manifest()
        snap = self._stand_in(m)
        cols = Collection._columns(snap, columns, ["id"] + self._schema.names)
        if "id" not in cols:
            cols = ["id"] + cols
        arr = vd.ids_array(ids, m["id_type"])
        parts = routing.split(routing.shard_of(arr, m["shards"]), m["shards"]) if len(arr) else []
        want = [s for s, p in enumerate(parts) if len(p) and m["shard_rows"][s]]
        vs = m["shard_versions"]
        res = self._fan(want, "reader", lambda s: ("get", (vs[s], arr.take(pa.array(parts[s])), cols)))
        res = [t for t in res if t.num_rows]
        if not res:
            return Collection._empty_table(snap, cols)
        t = pa.concat_tables(res)
        order = np.argsort(np.asarray(pc.index_in(t.column("id"), value_set=arr)), kind="stable")
        return t.take(pa.array(order))

    def to_table(self, columns=None, filter=None) -> pa.Table:
        """Every live row (matching ``filter``) in row order (the order rows were added)."""
        m = self._manifest()
        snap = self._stand_in(m)
        cols = Collection._columns(snap, columns, ["id"] + self._schema.names)
        self._check_filter(m, filter)
        vs = m["shard_versions"]
        res = self._fan(self._live_shards(m), "reader", lambda s: ("to_table", (vs[s], cols, filter)))
        res = [(t, r) for t, r in res if t.num_rows]
        if not res:
            return Collection._empty_table(snap, cols)
        t = pa.concat_tables([t for t, _ in res])
        return t.take(pa.array(np.argsort(np.concatenate([r for _, r in res]), kind="stable")))

    def versions(self) -> list:
        """Committed cluster versions still readable: version, rows, created, op,
        shard_versions."""
        self._manifest()
        latest = self._root.latest()
        out = []
        for v in self._root.versions():
            if v <= latest:
                try:
                    mv = self._root.read(v)
                except KeyError:
                    continue
                out.append({"version": v, "rows": mv["rows"], "created": mv["created"], "op": mv["op"],
                            "shard_versions": mv["shard_versions"]})
        return out

    def refresh(self) -> int:
        """Move a reader to the newest cluster version; returns it."""
        self._manifest()
        if self._pinned:
            raise PermissionError(f"this handle is pinned to version {self.version}")
        with self._lock:
            latest = self._root.latest()
            if self._read_only and latest != self.version:
                self._m = self._root.read(latest)
        return self.version

    # ------------------------------------------------------------------ search

    def search(self, q, k: int = 10, dim: int | None = None, mode: str = "auto", rescore: int | None = None,
               filter=None, columns=None, device=None, ladder=(), nprobe: int | None = None,
               ef: int | None = None, explain: bool = False, min_score=None, max_distance=None, *,
               funnel: str | None = None) -> pa.Table:
        """Top-k rows per query over every shard: arguments and result table as
        :meth:`nestvec.Collection.search` (``device="cuda"``: readers search on their
        GPUs, see ``reader_options``), plus ``funnel``: this call's strategy
        (default :attr:`funnel`). flat and binary results equal a single collection's
        holding the same rows in the same order, ids and scores.

        ``ivf`` / ``hnsw`` search each shard's own index (:meth:`create_index`):
        ``nprobe`` is lists per shard (a shard with fewer lists probes them all),
        ``ef`` candidates per shard, and each shard's tuned defaults apply when they
        are not given. ``explain=True``: the plan (:meth:`explain`) in the result's
        schema metadata under ``b"nestvec.explain"``."""
        t0 = time.perf_counter()
        m = self._manifest()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        funnel = self._funnel if funnel is None else funnel
        if funnel not in FUNNELS:
            raise ValueError(f"funnel: expected one of {FUNNELS}, got {funnel!r}")
        k = vd.positive_int(k, "k")
        rescore = None if rescore is None else vd.positive_int(rescore, "rescore")
        nprobe = None if nprobe is None else vd.positive_int(nprobe, "nprobe")
        ef = None if ef is None else vd.positive_int(ef, "ef")
        d_full = m["dim"]
        dim = d_full if dim is None else vd.positive_int(dim, "dim", d_full)
        ladder = vd.ladder(ladder, dim)
        vd.cutoff(min_score, max_distance, m["metric"], mode)
        specs = m.get("indexes") or {}
        if mode in INDEX_MODES and mode not in specs:
            raise ValueError(f"mode={mode!r}: this sharded collection has no {mode} index "
                             f"(create one with sc.create_index({mode!r}))")
        nprobes = ix.nprobe_for(m, nprobe)
        snap = self._stand_in(m)
        cols = Collection._columns(snap, columns, [])
        self._check_filter(m, filter)
        if ck.is_torch(q) and q.device.type != "cpu" and device is None:
            device = str(q.device.type)
        qx, _ = vd.queries(q, d_full, dim, m["metric"])
        if ck.is_torch(qx):
            qx = qx.detach().cpu().numpy()
        qx = np.ascontiguousarray(qx)
        req = Request(k, dim, mode, rescore, m["metric"], d_full, m["binary"], ladder,
                      indexes=tuple(specs) if device is None else ())
        used = resolve_mode(req, m["rows"], qx.shape[1])  # also refuses binary/funnel without codes
        live = self._live_shards(m)
        names = ["id"] + [c for c in cols if c != "id"]
        vs = m["shard_versions"]
        rounds = []  # (shard, planner stats) of every call, for explain
        if not live:
            payloads = []
        elif used == "funnel" and funnel == "two_round" and self._readers_of(live) > 1:
            # (one reader actor searching every live shard as one takes the global
            # shortlist itself: the two rounds in one call)
            payloads, live = self._two_round(m, live, qx, k, dim, rescore or 10, filter, cols, ladder, device,
                                             min_score, max_distance, explain, rounds)
        else:
            payloads = self._fan(live, "reader", lambda s: ("search", (
                vs[s], qx, k, dim, mode, rescore, filter, cols, ladder, device, None, nprobes[s], ef,
                min_score, max_distance, explain)), merged=True)
            rounds += [(s, p[4]) for s, p in zip(live, payloads)]
        out = None
        if payloads:
            used = _mode_of([p[0] for p in payloads])
            out = co.one_list_table(payloads, k, used) if names == ["id"] else None
            if out is None:
                src, pos, score, row = co.merge_lists(payloads, k, co.larger_better(used, m["metric"]))
        else:
            shape = (qx.shape[0], 0)
            src, pos, score, row = (np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape),
                                    np.full(shape, -1, np.int64))
        if out is None:
            out = co.result_table(payloads, src, pos, score, row, used, names,
                                  lambda: Collection._empty_table(snap, names))
        if explain:
            plan = co.explain_plan(rounds, live, payloads, used, mode, k, dim, int(qx.shape[0]), filter is not None,
                                   m, funnel if used == "funnel" else None)
            plan["ms"] = round((time.perf_counter() - t0) * 1e3, 3)
            out = out.replace_schema_metadata({b"nestvec.explain": json.dumps(plan)})
        return out

    def explain(self, q, k: int = 10, **kwargs) -> dict:
        """Run ``search(q, k, **kwargs)`` and report its plan: what
        :meth:`nestvec.Collection.explain` reports, the counts (``rows``,
        ``matches``, ``rows_scanned``, ``rows_rescored``, ``lists_probed``,
        segments) summed over the shards, ``version`` / ``shard_versions``,
        ``shards`` (searched), ``funnel`` (for the funnel), and ``per_shard``: each
        shard's own plan (``mode``, ``route``, ``nprobe``, ``ef``, ...; for the
        two-round funnel, its calls' counts summed). Where a reader actor searched
        several shards as one (flat / binary / funnel), the first of them carries
        that search's plan with ``shards`` listing them, the others only their
        ``version``."""
        kwargs["explain"] = True
        t = self.search(q, k, **kwargs)
        return json.loads(t.schema.metadata[b"nestvec.explain"])

    def _two_round(self, m, live, qx, k, dim, rescore, filter, cols, ladder, device, min_score, max_distance,
                   explain, rounds):
        vs = m["shard_versions"]
        short = k * rescore
        # the funnel's codes: of the whole query when it is full width, else of the prefix
        d1 = m["dim"] if qx.shape[1] == m["dim"] else dim
        first = self._fan(live, "reader", lambda s: ("search", (
            vs[s], qx, short, d1, "binary", rescore, filter, [], (), device, None, None, None, None, None,
            explain)))
        rounds += [(s, p[4]) for s, p in zip(live, first)]
        cand = co.shortlist_split(first, live, short)
        # each Matryoshka stage is a round of its own, so every stage keeps the global
        # best rows exactly as a single collection does
        high = m["metric"] != "l2"
        for d, keep in zip(ladder, ladder_keep(short, k, len(ladder))):
            todo = sorted(cand)
            stage = self._fan(todo, "reader", lambda s: ("search", (
                vs[s], qx, keep, d, "funnel", 1, None, [], (), device, cand[s], None, None, None, None,
                explain)))
            rounds += [(s, {"rows_rescored": int((cand[s] >= 0).sum())}) for s in todo]
            cand = co.shortlist_split(stage, todo, keep, high)
        todo = sorted(cand)
        last = self._fan(todo, "reader", lambda s: ("search", (
            vs[s], qx, k, dim, "funnel", 1, None, cols, (), device, cand[s], None, None, min_score,
            max_distance, explain)))
        rounds += [(s, {"rows_rescored": int((cand[s] >= 0).sum())}) for s in todo]
        return last, todo
