"""The Collection API: a persistent, versioned, filterable vector table.

See docs/ARCHITECTURE.md and ``storage.py`` for the on-disk format. Every write
validates all of its input first, writes new files, then commits a new version; a
failed call writes nothing and a crash leaves the last committed version intact.

Threads: a handle holds one immutable :class:`~.snapshot.Snapshot`; every read takes
one reference to it and uses nothing else, and every commit publishes a new one in a
single assignment, so any number of threads may search (count, get, ...) while
another writes. Writes from several threads of one handle are serialised by a lock.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import bulk
from . import commit as cm
from . import embedding as em
from . import filters
from . import manifest as mf
from . import packing
from . import snapshot as sn
from . import storage as st
from . import validate as vd
from .ingest import TableMixin, is_table_like
from .merge import MergePolicy, TieredMergePolicy
from .planner import DeviceCache
from .index_api import IndexMixin
from .search import SearchMixin
from .versions import VersionsMixin


class Collection(SearchMixin, IndexMixin, TableMixin, em.EmbeddingMixin, VersionsMixin):
    """A collection of vectors with ids and typed metadata columns.

    Create with :meth:`create`, reopen with :func:`nestvec.open`. One writer process
    at a time (file lock), any number of reader processes, each on the version it
    opened (:meth:`refresh` moves a reader to the newest one). Within a process, one
    handle serves any number of searching threads while one thread writes.
    """

    # ------------------------------------------------------------------ construction

    def __init__(self, store, snap: sn.Snapshot, read_only: bool, pinned: bool, merge_policy=None):
        self._store = store
        self._snap = snap
        self._read_only = read_only
        self._pinned = pinned
        self._closed = False
        self._caches: dict = {}
        self._mask_cache = filters.MaskCache()
        self._packs = packing.PackCache()
        self._plans: dict = {}  # search() argument sets -> their Searcher (search.py)
        self._write_lock = threading.RLock()
        self._reserved = 0  # rows handed out by reserve_rows: the next is above this
        self.merge_policy = merge_policy
        self._embedding = None  # bound, or rebuilt from the manifest on first use

    @property
    def merge_policy(self) -> MergePolicy:
        """Which segments to merge after a commit and on :meth:`optimize` (default
        :class:`TieredMergePolicy`; ``NoMergePolicy()`` keeps every segment)."""
        return self._policy

    @merge_policy.setter
    def merge_policy(self, policy) -> None:
        if policy is None:
            policy = TieredMergePolicy()
        if not isinstance(policy, MergePolicy):
            raise TypeError(f"merge_policy: expected a MergePolicy, got {type(policy).__name__}")
        self._policy = policy

    @classmethod
    def create(cls, path, dim: int | None = None, dtype: str = "float16", metric: str = "cosine",
               binary: bool | None = None, schema=None, id_type: str | None = None,
               merge_policy: MergePolicy | None = None, *, embedding=None,
               text_column: str | bool | None = None) -> "Collection":
        """Create an empty collection.

        Args:
            path: a new directory (created; must not already hold a collection), or
                None for an in-memory collection (same API, nothing persisted).
            dim: vector width D; default: the embedding's.
            dtype: storage type, ``"float16"`` or ``"float32"``.
            metric: ``"cosine"`` (zero vectors refused), ``"ip"`` or ``"l2"``.
            binary: also store packed sign codes (``quant.binarize``) for the
                ``binary`` and ``funnel`` search modes. Default True (an Encoder
                embedding: its own ``binary`` option).
            schema: ``{column: type}`` of metadata columns (a pyarrow type or its
                name: ``"string"``, ``"int32"``, ``"float64"``, ``"bool"``, ...).
            id_type: ``"int64"`` or ``"string"``; default: taken from the first add.
            merge_policy: see :attr:`merge_policy`.
            embedding: bind the collection to an embedding function (an
                :class:`nestvec.Encoder`, a sentence-transformers model, a LangChain
                ``Embeddings``, any callable ``texts -> vectors``, or an
                :class:`nestvec.Embedding` carrying query / document prompts):
                ``add(texts=...)`` and ``search("text")`` then embed. The manifest
                records how to rebuild it (no pickle), so :func:`nestvec.open`
                restores it; a plain callable must be passed again to ``open``.
            text_column: where ``add(texts=...)`` stores the texts: a string column
                (added to the schema); default ``"text"`` when an embedding is
                bound; ``False``: do not store them.

        Returns an open, writable Collection (holding the writer lock).
        """
        emb = em.bind(embedding)
        if dim is None:
            if emb is None:
                raise TypeError("dim: required (or pass embedding= to take it from the model)")
            dim = emb.dim
        dim = vd.positive_int(dim, "dim")
        if emb is not None:
            if emb._dim is not None and emb._dim != dim:
                raise ValueError(f"dim: {dim}, but the embedding returns {emb._dim} values per text")
            emb._dim = dim
        if binary is None:
            binary = emb.binary if emb is not None and emb.binary is not None else True
        if dtype not in vd.DTYPES:
            raise ValueError(f"dtype: expected one of {tuple(vd.DTYPES)}, got {dtype!r}")
        if metric not in vd.METRICS:
            raise ValueError(f"metric: expected one of {vd.METRICS}, got {metric!r}")
        if id_type not in (None, "int64", "string"):
            raise ValueError(f"id_type: expected 'int64', 'string' or None, got {id_type!r}")
        user = vd.parse_schema(schema)
        if text_column is None:
            text_column = em.DEFAULT_TEXT_COLUMN if emb is not None else False
        if text_column is True:
            text_column = em.DEFAULT_TEXT_COLUMN
        if text_column is not False:
            if not isinstance(text_column, str):
                raise TypeError(f"text_column: expected a column name, True or False, got {text_column!r}")
            if text_column in user.names:
                if not pa.types.is_string(user.field(text_column).type):
                    raise TypeError(f"text_column: schema column {text_column!r} is "
                                    f"{user.field(text_column).type}, expected string")
            else:
                user = vd.parse_schema(pa.schema(list(user) + [pa.field(text_column, pa.string())]))
        entry = em.manifest_entry(emb, text_column or None)
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
        m = {"format": mf.FORMAT, "version": 0, "dim": dim, "dtype": dtype, "metric": metric,
             "binary": bool(binary), "id_type": id_type, "schema": {f.name: str(f.type) for f in user},
             "schema_ipc": mf.schema_b64(user), "segments": [], "next_row": 0, "next_id": 0, "rows": 0,
             "created": time.time(), "op": "create", "crc_block": mf.CRC_BLOCK}
        if entry is not None:
            m["embedding"] = entry
        try:
            store.write_manifest(m)
            store.set_latest(0)
        except BaseException:
            store.release()
            raise
        col = cls(store, sn.Snapshot(m, (), user), read_only=False, pinned=False, merge_policy=merge_policy)
        col._embedding = emb
        return col

    @classmethod
    def open(cls, path, version: int | None = None, read_only: bool = False, verify: bool = False,
             merge_policy: MergePolicy | None = None, *, embedding=None) -> "Collection":
        """Open a collection directory; memory-maps its segments (vectors are not read).

        ``version=N`` opens that older version, read-only, until compact removes it.
        A writable open takes the writer lock (``LockError`` if another process has it).
        Every file is checked for size and structure (integrity.py); ``verify=True``
        also runs :meth:`verify` (reads every byte). Damage raises ``CorruptionError``.
        A collection created with an embedding rebuilds it from its description on
        first use; ``embedding=`` binds one now instead (same width required).
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
            store.check_dirs()
            snap = sn.read_snapshot(store, version)
            col = cls(store, snap, read_only=read_only, pinned=pinned, merge_policy=merge_policy)
            if embedding is not None:
                col._embedding = em.bind(embedding)
                col._check_embedding(col._embedding)
            if verify:
                col.verify()
        except BaseException:
            store.release()
            raise
        return col

    # ------------------------------------------------------------------ properties

    def _snapshot(self) -> sn.Snapshot:
        if self._closed:
            raise ValueError("collection is closed")
        return self._snap

    @property
    def path(self):
        return self._store.path

    @property
    def dim(self) -> int:
        return self._snap.manifest["dim"]

    @property
    def dtype(self) -> str:
        return self._snap.manifest["dtype"]

    @property
    def metric(self) -> str:
        return self._snap.manifest["metric"]

    @property
    def binary(self) -> bool:
        return self._snap.manifest["binary"]

    @property
    def schema(self) -> pa.Schema:
        """The metadata columns."""
        return self._snap.schema

    @property
    def version(self) -> int:
        return self._snap.version

    @property
    def read_only(self) -> bool:
        return self._read_only

    def __repr__(self):
        where = self.path or "memory"
        m = self._snap.manifest
        return (f"Collection({where!r}, version={m['version']}, rows={m['rows']}, dim={m['dim']}, "
                f"dtype={m['dtype']}, metric={m['metric']}, binary={m['binary']}"
                f"{', read_only' if self._read_only else ''}{', closed' if self._closed else ''})")

    def __len__(self):
        return self.count()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release the writer lock and this handle's caches (idempotent). Searches
        already running finish on their snapshot; the maps go when they do."""
        with self._write_lock:
            if not self._closed:
                self._closed = True
                self._store.release()
                self._snap = sn.Snapshot(self._snap.manifest, (), self._snap.schema)
                self._caches.clear()
                self._mask_cache.clear()
                self._packs.clear()
                self._plans.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check_writable(self):
        self._snapshot()
        if self._read_only:
            why = f"version {self.version} was opened explicitly" if self._pinned else "opened read_only=True"
            raise PermissionError(f"collection is read-only ({why})")

    # ------------------------------------------------------------------ reading

    def count(self, filter=None) -> int:
        """Live rows (matching ``filter`` when given)."""
        snap = self._snapshot()
        if filter is None:
            return sum(s.n_live for s in snap.segments)
        return int(sum(m.sum() if m is not None else s.n for s, m in zip(snap.segments, self._masks(snap, filter))))

    def _masks(self, snap, flt):
        """Per segment: allow mask = live & filter (None = every row)."""
        segs = snap.segments
        if flt is None:
            return [s.live for s in segs]
        filters.check_filter(flt)
        fmasks = [None] * len(segs)
        if flt is not None:
            fkey = self._mask_cache.key(flt)
            # (a filter with every mask cached was validated when they were made)
            if not segs or not self._mask_cache.has_all((s.name for s in segs), fkey):
                filters.validate(flt, self._meta_schema(snap))
            if segs:
                fmasks = self._mask_cache.masks(segs, fkey, flt)
        out = []
        for s, m in zip(segs, fmasks):
            live = s.live
            if live is not None:
                m = live if m is None else filters.and_live(m, live)
            out.append(m)
        return out

    @staticmethod
    def _meta_schema(snap) -> pa.Schema:
        id_t = pa.string() if snap.manifest["id_type"] == "string" else pa.int64()
        return pa.schema([pa.field("_row", pa.int64()), pa.field("id", id_t)] + list(snap.schema))

    @staticmethod
    def _columns(snap, columns, default) -> list:
        if columns is None:
            return list(default)
        columns = [columns] if isinstance(columns, str) else list(columns)
        allowed = ["id", "vector"] + (["code"] if snap.manifest["binary"] else []) + snap.schema.names
        bad = [c for c in columns if c not in allowed]
        if bad:
            raise ValueError(f"columns: unknown {bad}; available: {allowed}")
        if len(set(columns)) != len(columns):
            dup = sorted({c for c in columns if columns.count(c) > 1})
            raise ValueError(f"columns: {dup} named more than once")
        return columns

    @staticmethod
    def _find(snap, ids_arr: pa.Array) -> list:
        """Per segment: bool mask of live rows whose id is in ids_arr."""
        out = []
        for s in snap.segments:
            if len(ids_arr) == 0 or s.n == 0:
                out.append(np.zeros(s.n, bool))
                continue
            m = filters._bool_mask(pc.is_in(s.column("id"), value_set=ids_arr))
            out.append(m if s.live is None else m & s.live)
        return out

    def get(self, ids, columns=None) -> pa.Table:
        """Rows for ``ids`` (in the order given; absent ids are skipped).
        Default columns: id and the metadata columns; add ``"vector"`` to get vectors."""
        snap = self._snapshot()
        cols = self._columns(snap, columns, ["id"] + snap.schema.names)
        if "id" not in cols:
            cols = ["id"] + cols
        arr = vd.ids_array(ids, snap.manifest["id_type"])
        parts = [s.select(cols).filter(pa.array(m)) for s, m in zip(snap.segments, self._find(snap, arr))
                 if m.any()]
        if not parts:
            return self._empty_table(snap, cols)
        t = pa.concat_tables(parts)
        order = np.argsort(sn.primitive_view(pc.index_in(t.column("id"), value_set=arr), np.int32),
                           kind="stable")
        return t.take(pa.array(order))

    @staticmethod
    def _empty_table(snap, cols) -> pa.Table:
        m = snap.manifest
        d = m["dim"]
        types = {"id": pa.string() if m["id_type"] == "string" else pa.int64(),
                 "vector": pa.list_(pa.float16() if m["dtype"] == "float16" else pa.float32(), d),
                 "code": pa.binary((d + 7) // 8)}
        types.update({f.name: f.type for f in snap.schema})
        return pa.schema([pa.field(c, types[c]) for c in cols]).empty_table()

    def to_table(self, columns=None, filter=None) -> pa.Table:
        """Every live row (matching ``filter``), in row order."""
        snap = self._snapshot()
        cols = self._columns(snap, columns, ["id"] + snap.schema.names)
        parts = [s.select(cols) if m is None else s.select(cols).filter(pa.array(m))
                 for s, m in zip(snap.segments, self._masks(snap, filter))]
        return pa.concat_tables(parts) if parts else self._empty_table(snap, cols)

    def refresh(self) -> int:
        """Move a reader to the newest committed version; returns it."""
        self._snapshot()
        if self._pinned:
            raise PermissionError(f"this handle is pinned to version {self.version}")
        with self._write_lock:
            if self._store.persistent and self._read_only and self._store.latest() != self.version:
                self._publish(sn.read_snapshot(self._store, None))
        return self.version

    def _publish(self, snap: sn.Snapshot) -> None:
        self._snap = snap  # the one assignment readers see
        self._plans.clear()  # (their searchers would re-plan; this drops the old snapshot now)
        self._mask_cache.retain(s.name for s in snap.segments)
        self._packs.retain(s.name for s in snap.segments)
        keys = DeviceCache.keys_for(snap.segments, snap.manifest["binary"])
        for cache in list(self._caches.values()):
            cache.retain(keys)  # invalidation: drop what this version no longer names

    def _publish_manifest(self, m: dict) -> None:
        self._publish(sn.load_snapshot(self._store, m, reuse=self._snap.segments,
                                       reuse_indexes=self._snap.indexes))

    # ------------------------------------------------------------------ writing

    def add(self, vectors=None, ids=None, metadata=None, *, texts=None, vector_column=None,
            id_column=None, progress=None) -> pa.Array:
        """Append rows in one commit; returns their ids.

        Args:
            vectors: ``[n, D]`` (or one ``[D]``) NumPy / list / torch; finite; no
                zero rows under cosine; values must fit the storage dtype. Or a
                table: a pyarrow Table / RecordBatch / RecordBatchReader, a pandas or
                polars DataFrame, an Arrow C stream, or a Parquet file / directory
                path, with a vector column (``vector`` or ``vector_column=``: a
                fixed-size or variable list of numbers; pandas columns of NumPy
                arrays work), an optional id column (``id`` or ``id_column=``) and
                metadata columns of the schema. Read and written in chunks (one
                segment each, still one commit), with a progress bar (``progress``:
                None = from 2^20 rows or when the size is unknown; needs tqdm).
            ids: ``n`` unique int64 or str ids, not already present (use
                :meth:`upsert` to replace); default: consecutive ints above the
                largest int id ever added (int64 collections) or random hex
                strings (string collections).
            metadata: dict of columns, pyarrow Table/RecordBatch or pandas / polars
                DataFrame; columns from the schema only, missing ones are null.
            texts: ``n`` strings: embedded by the bound embedding when ``vectors``
                is not given, and stored in the text column when there is one.

        Raises ValueError / TypeError before anything is written (vectors of a large
        add are checked segment by segment as they are written: a bad row aborts the
        add, removes what it wrote and commits nothing). Rows go into segments of at
        most ``merge_policy.max_segment_bytes``, written one at a time, so an add of
        more rows than memory holds (a ``numpy.memmap``) streams. Segments reaching an
        index's ``min_rows`` are indexed before the commit. The merge policy may merge
        segments after the commit (a second commit, op ``"merge"``).
        """
        with self._write_lock:
            self._check_writable()
            if vectors is not None and is_table_like(vectors):
                if ids is not None or metadata is not None or texts is not None:
                    raise TypeError("add(table): ids, metadata and texts come from the table's columns")
                return self._add_table(vectors, vector_column, id_column, progress)
            if vector_column is not None or id_column is not None:
                raise TypeError("vector_column / id_column: only for add(table)")
            vectors, metadata = self._rows_with_texts(vectors, texts, metadata)
            snap = self._snap
            rows = cm.Rows(snap.manifest, snap.schema, vectors, ids, metadata, False)
            arr, id_type = rows.ids, rows.id_type
            if ids is not None:
                found = self._find(snap, arr)
                if any(m.any() for m in found):
                    dup = pa.concat_arrays([s.column("id").filter(pa.array(m)).combine_chunks()
                                            for s, m in zip(snap.segments, found) if m.any()])[:5].to_pylist()
                    raise ValueError(f"ids: already in the collection: {dup} (use upsert to replace)")
            if rows.n:
                self._commit(rows.tables(self._policy.max_segment_bytes), {}, "add", id_type)
            return arr

    def upsert(self, vectors=None, ids=None, metadata=None, *, texts=None) -> pa.Array:
        """Insert or replace rows by id, in one commit (old rows become deleted);
        ``texts`` as in :meth:`add`."""
        with self._write_lock:
            self._check_writable()
            vectors, metadata = self._rows_with_texts(vectors, texts, metadata)
            snap = self._snap
            rows = cm.Rows(snap.manifest, snap.schema, vectors, ids, metadata, True)
            arr = rows.ids
            if rows.n:
                dels = {s.name: s.rows[m] for s, m in zip(snap.segments, self._find(snap, arr)) if m.any()}
                self._commit(rows.tables(self._policy.max_segment_bytes), dels, "upsert", rows.id_type)
            return arr

    def delete(self, ids=None, filter=None) -> int:
        """Delete live rows by ``ids`` and/or ``filter`` (both: rows matching both).
        Returns the number of rows deleted; nothing is committed when it is 0."""
        with self._write_lock:
            self._check_writable()
            if ids is None and filter is None:
                raise ValueError("delete: pass ids= or filter= (delete(filter='true') clears all)")
            snap = self._snap
            masks = self._masks(snap, filter)
            if ids is not None:
                found = self._find(snap, vd.ids_array(ids, snap.manifest["id_type"]))
                masks = [f if m is None else (f & m) for f, m in zip(found, masks)]
            else:
                masks = [np.ones(s.n, bool) if m is None else m for s, m in zip(snap.segments, masks)]
            dels = {s.name: s.rows[m] for s, m in zip(snap.segments, masks) if m.any()}
            n = int(sum(len(r) for r in dels.values()))
            if n:
                self._commit([], dels, "delete", snap.manifest["id_type"])
            return n

    # ------------------------------------------------------------------ bulk import

    def reserve_rows(self, n: int) -> int:
        """Reserve ``n`` row numbers for :func:`nestvec.collection.write_segment`;
        returns the first (rows ``first .. first + n - 1``). Reservations live in this
        handle; rows reserved but never imported leave a gap, which is harmless."""
        with self._write_lock:
            self._check_writable()
            n = vd.positive_int(n, "n")
            first = max(self._snap.manifest["next_row"], self._reserved)
            self._reserved = first + n
            return first

    def import_segments(self, staged, mode: str = "add", verify: bool = True) -> int:
        """Commit segments staged by :func:`nestvec.collection.write_segment` in one
        version (all or none). ``mode="add"`` refuses ids already present; ``"upsert"``
        replaces their rows. Each file is checked first (name, size, structure, row
        ranges, ids unique across all of them, metadata columns, and with ``verify``
        the checksum of every byte: the files may come from other processes).
        Returns the number of rows imported. The merge policy may merge after it."""
        if mode not in ("add", "upsert"):
            raise ValueError(f"mode: expected 'add' or 'upsert', got {mode!r}")
        with self._write_lock:
            self._check_writable()
            snap = self._snap
            try:
                entries, id_type, arr, max_id = bulk.check_staged(self._store, snap, staged, verify)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"staged segment {e.filename!r} is gone (was the collection "
                                        f"compacted while it was being written?)") from None
            found = self._find(snap, arr)
            if mode == "add" and any(m.any() for m in found):
                dup = pa.concat_arrays([s.column("id").filter(pa.array(m)).combine_chunks()
                                        for s, m in zip(snap.segments, found) if m.any()])[:5].to_pylist()
                raise ValueError(f"ids: already in the collection: {dup} (use mode='upsert' to replace)")
            dels = {s.name: s.rows[m] for s, m in zip(snap.segments, found) if m.any()}
            self._publish_manifest(cm.commit(self._store, snap, [], dels, "import", id_type, self._indexer(),
                                             staged=entries, max_id=max_id))
            if self._policy.on_commit:
                self._merge(self._policy)
            return int(sum(e["rows"] for e in entries))

    def _commit(self, tables, deletions, op, id_type) -> None:
        self._publish_manifest(cm.commit(self._store, self._snap, tables, deletions, op, id_type,
                                         self._indexer()))
        if self._policy.on_commit:
            self._merge(self._policy)

def open(path, version: int | None = None, read_only: bool = False, verify: bool = False,  # noqa: A001
         merge_policy: MergePolicy | None = None, *, embedding=None) -> Collection:
    """Open a collection directory (see :meth:`Collection.open`)."""
    return Collection.open(path, version=version, read_only=read_only, verify=verify, merge_policy=merge_policy,
                           embedding=embedding)
