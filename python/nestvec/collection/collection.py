"""The Collection API: a persistent, versioned, filterable vector table.

See DESIGN.md (Collections) and ``storage.py`` for the on-disk format. Every write
validates all of its input first, writes new files, then commits a new version; a
failed call writes nothing and a crash leaves the last committed version intact.
"""
from __future__ import annotations

import base64
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import _checks as ck
from . import filters
from . import storage as st
from . import validate as vd
from .planner import MAX_K, MODES, DeviceCache, Planner, Request


def _schema_b64(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema_from_b64(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


class Collection:
    """A collection of vectors with ids and typed metadata columns.

    Create with :meth:`create`, reopen with :func:`nestvec.open`. Not thread-safe;
    one writer process at a time (file lock), any number of reader processes, each
    on the version it opened (:meth:`refresh` moves a reader to the newest one).
    """

    # ------------------------------------------------------------------ construction

    def __init__(self, store, manifest: dict, segments: list, read_only: bool, pinned: bool):
        self._store = store
        self._m = manifest
        self._segs = segments
        self._read_only = read_only
        self._pinned = pinned
        self._closed = False
        self._caches: dict = {}
        self._mask_cache = filters.MaskCache()
        self._schema = _schema_from_b64(manifest["schema_ipc"])

    @classmethod
    def create(cls, path, dim: int, dtype: str = "float16", metric: str = "cosine",
               binary: bool = True, schema=None, id_type: str | None = None) -> "Collection":
        """Create an empty collection.

        Args:
            path: a new directory (created; must not already hold a collection), or
                None for an in-memory collection (same API, nothing persisted).
            dim: vector width D.
            dtype: storage type, ``"float16"`` or ``"float32"``.
            metric: ``"cosine"`` (zero vectors refused), ``"ip"`` or ``"l2"``.
            binary: also store packed sign codes (``quant.binarize``) for the
                ``binary`` and ``funnel`` search modes.
            schema: ``{column: type}`` of metadata columns (a pyarrow type or its
                name: ``"string"``, ``"int32"``, ``"float64"``, ``"bool"``, ...).
            id_type: ``"int64"`` or ``"string"``; default: taken from the first add.

        Returns an open, writable Collection (holding the writer lock).
        """
        dim = vd.positive_int(dim, "dim")
        if dtype not in vd.DTYPES:
            raise ValueError(f"dtype: expected one of {tuple(vd.DTYPES)}, got {dtype!r}")
        if metric not in vd.METRICS:
            raise ValueError(f"metric: expected one of {vd.METRICS}, got {metric!r}")
        if id_type not in (None, "int64", "string"):
            raise ValueError(f"id_type: expected 'int64', 'string' or None, got {id_type!r}")
        user = vd.parse_schema(schema)
        if path is None:
            store = st.MemoryStore()
        else:
            store = st.DirStore(str(path))
            if store.exists():
                raise FileExistsError(f"{str(path)!r} already holds a collection; use nestvec.open()")
            store.init_dirs()
            store.acquire()
            if store.exists():  # another process created it while we waited for the lock
                store.release()
                raise FileExistsError(f"{str(path)!r} already holds a collection; use nestvec.open()")
        m = {"format": st.FORMAT, "version": 0, "dim": dim, "dtype": dtype, "metric": metric,
             "binary": bool(binary), "id_type": id_type, "schema": {f.name: str(f.type) for f in user},
             "schema_ipc": _schema_b64(user), "segments": [], "next_row": 0, "next_id": 0, "rows": 0,
             "created": time.time(), "op": "create"}
        try:
            store.write_manifest(m)
            store.set_latest(0)
        except BaseException:
            store.release()
            raise
        return cls(store, m, [], read_only=False, pinned=False)

    @classmethod
    def open(cls, path, version: int | None = None, read_only: bool = False) -> "Collection":
        """Open a collection directory; memory-maps its segments (vectors are not read).

        ``version=N`` opens that older version, read-only, until compact removes it.
        A writable open takes the writer lock (``LockError`` if another process has it).
        """
        store = st.DirStore(str(path))
        latest = store.latest()  # CollectionNotFound when not a collection
        pinned = version is not None
        if pinned:
            if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
                raise TypeError(f"version: expected an int >= 0, got {version!r}")
            version = int(version)
            if version > latest:
                raise KeyError(f"version {version} does not exist; the latest is {latest}")
            read_only = True
        if not read_only:
            store.acquire()
        try:
            m, segs = st.read_snapshot(store, version)
        except BaseException:
            store.release()
            raise
        return cls(store, m, segs, read_only=read_only, pinned=pinned)

    # ------------------------------------------------------------------ properties

    @property
    def path(self):
        return self._store.path

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
        """The metadata columns."""
        return self._schema

    @property
    def version(self) -> int:
        return self._m["version"]

    @property
    def read_only(self) -> bool:
        return self._read_only

    def __repr__(self):
        where = self.path or "memory"
        return (f"Collection({where!r}, version={self.version}, rows={self._m['rows']}, dim={self.dim}, "
                f"dtype={self.dtype}, metric={self.metric}, binary={self.binary}"
                f"{', read_only' if self._read_only else ''}{', closed' if self._closed else ''})")

    def __len__(self):
        return self.count()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release the writer lock and the memory maps (idempotent)."""
        if not self._closed:
            self._closed = True
            self._store.release()
            self._segs = []
            self._caches.clear()
            self._mask_cache.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check_open(self):
        if self._closed:
            raise ValueError("collection is closed")

    def _check_writable(self):
        self._check_open()
        if self._read_only:
            why = f"version {self.version} was opened explicitly" if self._pinned else "opened read_only=True"
            raise PermissionError(f"collection is read-only ({why})")

    # ------------------------------------------------------------------ reading

    def count(self, filter=None) -> int:
        """Live rows (matching ``filter`` when given)."""
        self._check_open()
        if filter is None:
            return sum(s.n_live for s in self._segs)
        return int(sum(m.sum() if m is not None else s.n for s, m in zip(self._segs, self._masks(filter))))

    def _masks(self, flt):
        """Per segment: allow mask = live & filter (None = every row)."""
        filters.check_filter(flt)
        fkey = None
        if flt is not None:
            fkey = self._mask_cache.key(flt)
            # (a filter with every mask cached was validated when they were made)
            if not self._segs or not self._mask_cache.has_all((s.name for s in self._segs), fkey):
                filters.validate(flt, self._meta_schema())
        out = []
        for s in self._segs:
            m = None if flt is None else self._mask_cache.mask(s.name, fkey, flt, s.table)
            if s.live is not None:
                m = s.live if m is None else (m & s.live)
            out.append(m)
        return out

    def _meta_schema(self) -> pa.Schema:
        id_t = pa.string() if self._m["id_type"] == "string" else pa.int64()
        return pa.schema([pa.field("_row", pa.int64()), pa.field("id", id_t)] + list(self._schema))

    def _columns(self, columns, default) -> list:
        if columns is None:
            return list(default)
        columns = [columns] if isinstance(columns, str) else list(columns)
        allowed = ["id", "vector"] + (["code"] if self.binary else []) + self._schema.names
        bad = [c for c in columns if c not in allowed]
        if bad:
            raise ValueError(f"columns: unknown {bad}; available: {allowed}")
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise ValueError(f"columns: {dup} named more than once")
        return columns

    def _find(self, ids_arr: pa.Array) -> list:
        """Per segment: bool mask of live rows whose id is in ids_arr."""
        out = []
        for s in self._segs:
            if len(ids_arr) == 0 or s.n == 0:
                out.append(np.zeros(s.n, bool))
                continue
            hit = pc.is_in(s.table.column("id"), value_set=ids_arr)
            m = filters._bool_mask(hit)
            out.append(m if s.live is None else m & s.live)
        return out

    def get(self, ids, columns=None) -> pa.Table:
        """Rows for ``ids`` (in the order given; absent ids are skipped).
        Default columns: id and the metadata columns; add ``"vector"`` to get vectors."""
        self._check_open()
        cols = self._columns(columns, ["id"] + self._schema.names)
        if "id" not in cols:
            cols = ["id"] + cols
        arr = vd.ids_array(ids, self._m["id_type"])
        parts = [s.table.select(cols).filter(pa.array(m)) for s, m in zip(self._segs, self._find(arr)) if m.any()]
        if not parts:
            return self._empty_table(cols)
        t = pa.concat_tables(parts)
        order = np.argsort(st.primitive_view(pc.index_in(t.column("id"), value_set=arr), np.int32),
                           kind="stable")
        return t.take(pa.array(order))

    def _empty_table(self, cols) -> pa.Table:
        d = self.dim
        types = {"id": pa.string() if self._m["id_type"] == "string" else pa.int64(),
                 "vector": pa.list_(pa.float16() if self.dtype == "float16" else pa.float32(), d),
                 "code": pa.binary((d + 7) // 8)}
        types.update({f.name: f.type for f in self._schema})
        return pa.schema([pa.field(c, types[c]) for c in cols]).empty_table()

    def to_table(self, columns=None, filter=None) -> pa.Table:
        """Every live row (matching ``filter``), in row order."""
        self._check_open()
        cols = self._columns(columns, ["id"] + self._schema.names)
        parts = [s.table.select(cols) if m is None else s.table.select(cols).filter(pa.array(m))
                 for s, m in zip(self._segs, self._masks(filter))]
        return pa.concat_tables(parts) if parts else self._empty_table(cols)

    def versions(self) -> list[dict]:
        """Committed versions still readable: version, live rows, segments, time, op."""
        self._check_open()
        latest = self._store.latest()
        out = []
        for v in self._store.manifest_versions():
            if v > latest:
                continue  # an uncommitted manifest (a crashed writer); GC removes it
            try:
                m = self._store.read_manifest(v)
            except KeyError:
                continue
            out.append({"version": v, "rows": m["rows"], "segments": len(m["segments"]),
                        "created": m["created"], "op": m.get("op")})
        return out

    def refresh(self) -> int:
        """Move a reader to the newest committed version; returns it."""
        self._check_open()
        if self._pinned:
            raise PermissionError(f"this handle is pinned to version {self.version}")
        if self._store.persistent and self._read_only and self._store.latest() != self.version:
            m, segs = st.read_snapshot(self._store, None)
            self._set_snapshot(m, segs)
        return self.version

    def _set_snapshot(self, m, segs):
        self._m, self._segs = m, segs
        self._mask_cache.retain(s.name for s in segs)
        keys = DeviceCache.keys_for(segs, self.binary)
        for cache in self._caches.values():
            cache.retain(keys)  # invalidation: drop what this version no longer names

    # ------------------------------------------------------------------ search

    def search(self, q, k: int = 10, dim: int | None = None, mode: str = "auto", rescore: int = 10,
               filter=None, columns=None, device=None, ladder=()) -> pa.Table:
        """Top-k rows per query.

        Args:
            q: one vector ``[D]`` or a batch ``[Q, D]`` (also ``[.., dim]``): NumPy,
                list, or torch tensor. A CUDA tensor (or ``device="cuda"``) runs the
                GPU kernels on segment data cached on the device.
            k: results per query (<= 4096).
            dim: Matryoshka prefix length to score on (default D).
            mode: ``flat`` (exact dense), ``binary`` (Hamming on codes; score = the
                distance, lower is better), ``funnel`` (Hamming shortlist of
                ``k*rescore`` rows, exact rescoring at ``dim``), ``auto`` (funnel
                when codes exist and there are more than ``k*rescore`` candidate
                rows, else flat).
            filter: ``nv.field(...)`` expression or SQL WHERE text (DuckDB).
            columns: extra columns to return (metadata names, ``"vector"``).
            ladder: funnel only: increasing prefix dims below ``dim`` (e.g. ``(64,
                128)``) at which the Hamming shortlist is rescored exactly before
                ``dim``, each stage keeping fewer rows (geometric from ``k*rescore``
                down to ``k``): Matryoshka adaptive retrieval, fewer full-width reads.
                Ignored by ``flat`` and ``binary``.

        Returns:
            pyarrow Table ``query`` (int64), ``id``, ``score`` (float32; l2: squared
            distance, lower is better; binary: int32 Hamming distance) and
            ``columns``; per query exactly ``min(k, matching live rows)`` rows, best
            first, ties by row order.
        """
        self._check_open()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        k = vd.positive_int(k, "k", MAX_K)
        rescore = vd.positive_int(rescore, "rescore")
        d_full = self.dim
        dim = d_full if dim is None else vd.positive_int(dim, "dim", d_full)
        if mode == "funnel" and k * rescore > MAX_K:
            raise ValueError(f"rescore: the shortlist k*rescore = {k * rescore} exceeds {MAX_K}")
        ladder = vd.ladder(ladder, dim)
        cols = self._columns(columns, [])
        dev = self._device(q, device)
        qx, single = vd.queries(q, d_full, dim, self.metric)
        if dev is not None and (not ck.is_torch(qx) or str(qx.device) != str(dev)):
            import torch

            qx = torch.as_tensor(qx).to(dev)
        req = Request(k, dim, mode, rescore, self.metric, d_full, self.binary, ladder)
        planner = Planner(self._segs, self._masks(filter), req,
                          cache=self._cache(dev) if dev is not None else None,
                          filtered=filter is not None)
        used, seg, local, score = planner.run(qx)
        return self._result(seg, local, score, cols, used)

    def _device(self, q, device):
        if device is not None:
            import torch

            try:
                dev = torch.device(device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"device: expected 'cuda', 'cuda:N' or a torch.device, got "
                                 f"{device!r} ({e})") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device: {device!r} asked for, but torch sees no CUDA device")
            # "cuda" and "cuda:0" must name one cache: otherwise device="cuda" and a
            # cuda:0 query tensor each hold a full copy of the segments, and the
            # index-less cache follows torch's current device while an older copy stays.
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
            return dev
        if ck.is_torch(q) and ck.device_of(q) != "cpu":
            return q.device
        return None

    def _cache(self, dev) -> DeviceCache:
        key = str(dev)
        if key not in self._caches:
            self._caches[key] = DeviceCache(dev)
        return self._caches[key]

    def _result(self, seg, local, score, cols, mode) -> pa.Table:
        valid = local >= 0
        qi = np.nonzero(valid)[0].astype(np.int64)
        segs, locs, scores = seg[valid], local[valid], score[valid]
        names = ["id"] + [c for c in cols if c != "id"]
        pieces, pos = [], []
        for i in np.unique(segs):
            sel = np.flatnonzero(segs == i)
            pieces.append(self._segs[i].table.select(names).take(pa.array(locs[sel])))
            pos.append(sel)
        if len(pieces) == 1:  # rows already in result order
            t = pieces[0]
        elif pieces:
            t = pa.concat_tables(pieces)
            t = t.take(pa.array(np.argsort(np.concatenate(pos), kind="stable")))
        else:
            t = self._empty_table(names)
        score_arr = pa.array(scores.astype(np.int32 if mode == "binary" else np.float32))
        out = pa.table({"query": pa.array(qi), "id": t.column("id"), "score": score_arr})
        for c in names[1:]:
            out = out.append_column(c, t.column(c))
        return out

    # ------------------------------------------------------------------ writing

    def _build(self, vectors, ids, metadata, need_ids: bool):
        """Validate everything and build the new segment table (nothing written)."""
        vec = vd.vectors(vectors, self.dim, self.dtype, self.metric)
        n = vec.shape[0]
        id_type = self._m["id_type"]
        if ids is None:
            if need_ids:
                raise ValueError("ids: upsert needs ids")
            # generated int ids start above every int id ever added: never a collision
            start = self._m.get("next_id", self._m["next_row"])
            if id_type != "string" and start + n - 1 > np.iinfo(np.int64).max:
                raise ValueError(f"ids: cannot generate {n} int64 ids above the largest id already "
                                 f"added ({start - 1}); pass ids explicitly")
            arr = pa.array([uuid.uuid4().hex for _ in range(n)], pa.string()) if id_type == "string" \
                else pa.array(np.arange(start, start + n, dtype=np.int64))
        else:
            arr = vd.ids_array(ids, id_type)
            if len(arr) != n:
                raise ValueError(f"ids: {len(arr)} ids for {n} vectors")
            vd.unique_ids(arr)
        if id_type is None and n:
            id_type = "string" if pa.types.is_string(arr.type) else "int64"
        if n and pa.types.is_null(arr.type):
            arr = arr.cast(pa.int64())
        meta = vd.metadata(metadata, self._schema, n)
        start = self._m["next_row"]
        d = self.dim
        cols = {"_row": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "id": arr.cast(pa.string() if id_type == "string" else pa.int64()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), d)}
        if self.binary:
            codes = np.ascontiguousarray(vd.sign_codes(vec))
            nb = (d + 7) // 8
            cols["code"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nb), n,
                                                               [None, pa.py_buffer(codes.tobytes())])
        cols.update(meta)
        return pa.table(cols), arr, id_type

    def add(self, vectors, ids=None, metadata=None) -> pa.Array:
        """Append rows in one commit; returns their ids.

        Args:
            vectors: ``[n, D]`` (or one ``[D]``) NumPy / list / torch; finite; no
                zero rows under cosine; values must fit the storage dtype.
            ids: ``n`` unique int64 or str ids, not already present (use
                :meth:`upsert` to replace); default: consecutive ints above the
                largest int id ever added (int64 collections) or random hex
                strings (string collections).
            metadata: dict of columns, pyarrow Table/RecordBatch or pandas
                DataFrame; columns from the schema only, missing ones are null.

        Raises ValueError / TypeError before anything is written.
        """
        self._check_writable()
        table, arr, id_type = self._build(vectors, ids, metadata, need_ids=False)
        if ids is not None:
            found = self._find(arr)
            if any(m.any() for m in found):
                dup = pa.concat_arrays([s.table.column("id").filter(pa.array(m)).combine_chunks()
                                        for s, m in zip(self._segs, found) if m.any()])[:5].to_pylist()
                raise ValueError(f"ids: already in the collection: {dup} (use upsert to replace)")
        if table.num_rows:
            self._commit([table], {}, "add", id_type)
        return arr

    def upsert(self, vectors, ids, metadata=None) -> pa.Array:
        """Insert or replace rows by id, in one commit (old rows become deleted)."""
        self._check_writable()
        table, arr, id_type = self._build(vectors, ids, metadata, need_ids=True)
        if table.num_rows:
            dels = {s.name: s.rows[m] for s, m in zip(self._segs, self._find(arr)) if m.any()}
            self._commit([table], dels, "upsert", id_type)
        return arr

    def delete(self, ids=None, filter=None) -> int:
        """Delete live rows by ``ids`` and/or ``filter`` (both: rows matching both).
        Returns the number of rows deleted; nothing is committed when it is 0."""
        self._check_writable()
        if ids is None and filter is None:
            raise ValueError("delete: pass ids= or filter= (delete(filter='true') clears all)")
        masks = self._masks(filter)
        if ids is not None:
            found = self._find(vd.ids_array(ids, self._m["id_type"]))
            masks = [f if m is None else (f & m) for f, m in zip(found, masks)]
        else:
            masks = [np.ones(s.n, bool) if m is None else m for s, m in zip(self._segs, masks)]
        dels = {s.name: s.rows[m] for s, m in zip(self._segs, masks) if m.any()}
        n = int(sum(len(r) for r in dels.values()))
        if n:
            self._commit([], dels, "delete", self._m["id_type"])
        return n

    def _commit(self, tables, deletions: dict, op: str, id_type) -> None:
        store, old = self._store, self._m
        v = old["version"] + 1
        by_name = {s.name: s for s in self._segs}
        entries = []
        for e in old["segments"]:
            e = dict(e)
            if e["name"] in deletions:
                s = by_name[e["name"]]
                prev = s.rows[~s.live] if s.live is not None else np.zeros(0, np.int64)
                rows = np.union1d(prev, deletions[e["name"]]).astype(np.int64)
                e["deleted"] = int(len(rows))
                if e["deleted"] == e["rows"]:
                    continue  # every row deleted: the new version drops the segment
                e["deletions"] = store.write_deletions(e["name"], v, rows)
            entries.append(e)
        next_row, next_id = old["next_row"], old.get("next_id", 0)
        for t in tables:
            if id_type == "int64" and t.num_rows:
                next_id = max(next_id, int(pc.max(t.column("id")).as_py()) + 1)
            name = store.write_segment(t)
            entries.append({"name": name, "rows": t.num_rows, "deleted": 0, "deletions": None,
                            "first_row": next_row, "last_row": next_row + t.num_rows - 1})
            next_row += t.num_rows
        store.sync_data()
        m = dict(old, version=v, segments=entries, next_row=next_row, next_id=next_id, id_type=id_type, op=op,
                 created=time.time(), rows=int(sum(e["rows"] - e["deleted"] for e in entries)))
        store.write_manifest(m)
        store.set_latest(v)  # the commit point
        self._reload(m)

    def _reload(self, m):
        by_key = {(s.name, s.deletions): s for s in self._segs}
        segs, off = [], 0
        np_dtype = np.dtype(m["dtype"])
        for e in m["segments"]:
            s = by_key.get((e["name"], e.get("deletions")))
            if s is None:
                s = st.load_segment(self._store, e, m["dim"], np_dtype, m["binary"], off)
            else:
                s = st.Segment(**{**s.__dict__, "offset": off})
            segs.append(s)
            off += s.n
        self._set_snapshot(m, segs)

    def compact(self, keep_versions: int = 1) -> dict:
        """Rewrite the live rows into one segment (row order and ids unchanged) and
        remove all but the newest ``keep_versions`` versions with the files only they
        use. Readers that already opened a removed version keep reading it."""
        self._check_writable()
        keep_versions = vd.positive_int(keep_versions, "keep_versions")
        segs = self._segs
        if len(segs) > 1 or any(s.live is not None for s in segs):
            parts = [s.table if s.live is None else s.table.filter(pa.array(s.live)) for s in segs]
            self._commit_compacted(pa.concat_tables(parts).combine_chunks())
        keep = []
        for v in sorted(self._store.manifest_versions(), reverse=True):
            if v <= self.version and len(keep) < keep_versions:
                try:
                    keep.append(self._store.read_manifest(v))
                except KeyError:
                    pass
        return self._store.gc(keep)

    def _commit_compacted(self, table: pa.Table) -> None:
        store, old = self._store, self._m
        v = old["version"] + 1
        entries = []
        if table.num_rows:
            rows = table.column("_row")
            name = store.write_segment(table)
            entries.append({"name": name, "rows": table.num_rows, "deleted": 0, "deletions": None,
                            "first_row": int(rows[0].as_py()), "last_row": int(rows[-1].as_py())})
        store.sync_data()
        m = dict(old, version=v, segments=entries, op="compact", created=time.time(), rows=table.num_rows)
        store.write_manifest(m)
        store.set_latest(v)
        self._reload(m)


def open(path, version: int | None = None, read_only: bool = False) -> Collection:  # noqa: A001
    """Open a collection directory (see :meth:`Collection.open`)."""
    return Collection.open(path, version=version, read_only=read_only)
