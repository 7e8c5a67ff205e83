"""Bulk ingestion with Ray Data: texts -> Encoder -> shard segments -> one commit.

A pool of actors each holds an :class:`~nestvec.Encoder`; Ray Data streams batches of
the source to them (``map_batches``), and each batch is embedded, split by shard
(the id's hash) and written as one staged segment per shard
(:func:`nestvec.collection.write_segment`'s machinery: files only, nothing
committed). The driver collects the small descriptions of the staged segments and
commits them all as one cluster version at the end: an ingestion is visible
entirely or not at all. If it fails midway, its staged files are removed.

Row numbers (the tie order) come from one small allocator actor, a range per
batch, so rows are numbered in the order batches are encoded.
"""
from __future__ import annotations

import glob
import json
import math
import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..collection import bulk
from ..collection import commit as cm
from ..collection import manifest as mf
from ..collection import storage as st
from . import actors, layout, routing, runtime


class RowAllocator:
    """Hands out disjoint ranges of row numbers and generated int ids."""

    def __init__(self, next_row: int, next_id: int, nice=None):
        actors.take_priority(nice)  # every batch waits for its range
        self.row, self.id = int(next_row), int(next_id)

    def take(self, n: int) -> tuple:
        out = (self.row, self.id)
        self.row += n
        self.id += n
        return out


class EncodeAndStage:
    """The Ray Data map_batches class: embed a batch, stage one segment per shard."""

    def __init__(self, encoder, root: str, m: dict, text_column: str, id_column, columns, allocator,
                 on_gpu: bool, threads: int, nice=None):
        import ray

        actors.take_priority(nice)  # before loading the encoder: the pipeline waits for it
        t0 = time.perf_counter()

        if isinstance(encoder, ray.ObjectRef):
            encoder = ray.get(encoder)
        if _is_factory(encoder):
            encoder = encoder()
        if on_gpu and str(getattr(encoder, "device", "cpu")).startswith("cpu"):
            import torch

            encoder.device = torch.device("cuda")
            encoder.model.to(encoder.device)
        # Ray sets OMP_NUM_THREADS to the actor's slots; the pool leaves a slot to the
        # reads, so an actor gets its share of the cores in threads instead (set by
        # each call, on the thread that runs it: see _threads).
        self.threads = threads
        self.encoder = encoder
        self.start_seconds = time.perf_counter() - t0  # reported with the first batch
        self.m = m
        self.schema = mf.schema_from_b64(m["schema_ipc"])
        self.stores = [st.DirStore(os.path.join(root, d)) for d in m["shard_dirs"]]
        self.text_column, self.id_column, self.columns = text_column, id_column, list(columns)
        self.allocator = allocator

    def _threads(self):
        """torch's thread count, for the calling thread: with OpenMP it is a per-thread
        setting, and Ray Data runs the batches on another thread than the constructor's,
        where torch fell back to OMP_NUM_THREADS=1 (one core of two encoding)."""
        torch = sys.modules.get("torch")
        if self.threads and torch is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """One row per staged segment (shard, its description); a bad input becomes a
        row with shard -1 and the error, after the segments staged before it: Ray
        ships an actor's exception back as text only, and the driver raises the
        error as the caller would have got it from a single collection."""
        t0 = time.perf_counter()
        self._threads()
        out = {"shard": [], "staged": []}
        try:
            self._stage(batch, out)
        except (ValueError, TypeError) as e:
            out["shard"].append(-1)
            out["staged"].append(json.dumps({"error": type(e).__name__, "message": str(e)}))
        n = len(out["shard"])
        # the batch's seconds (and the encoder's loading, once) on its first row
        secs = [time.perf_counter() - t0] + [0.0] * (n - 1) if n else []
        start = [self.start_seconds] + [0.0] * (n - 1) if n else []
        if n:
            self.start_seconds = 0.0
        return pa.table({"shard": pa.array(out["shard"], pa.int64()), "staged": pa.array(out["staged"], pa.string()),
                         "seconds": pa.array(secs, pa.float64()), "start_seconds": pa.array(start, pa.float64())})

    def _stage(self, batch: pa.Table, out: dict):
        import ray

        need = _needed(self.text_column, self.id_column, self.columns)
        missing = [c for c in need if c not in batch.column_names]
        if missing:  # a Ray Dataset source is taken as given: checked batch by batch
            raise ValueError(f"text_column / id_column / columns: {missing} not in the source's columns "
                             f"{batch.column_names}")
        n = batch.num_rows
        texts = batch.column(self.text_column).to_pylist()
        if any(not isinstance(t, str) for t in texts):
            raise ValueError(f"text_column: {self.text_column!r} holds a null or non-string value")
        vectors = self.encoder.encode(texts, progress=False)
        first_row, first_id = ray.get(self.allocator.take.remote(n))
        if self.id_column is None:
            ids = pa.array(np.arange(first_id, first_id + n, dtype=np.int64))
        else:
            ids = batch.column(self.id_column).combine_chunks()
        shard = routing.shard_of(ids, self.m["shards"])
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        for s, pos in enumerate(routing.split(shard, self.m["shards"])):
            if not len(pos):
                continue
            take = pa.array(pos)
            meta = {c: batch.column(c).take(take) for c in self.columns}
            table, _, id_type = cm.build_rows(self.m, self.schema, vectors[pos], ids.take(take), meta, True,
                                              rows=rows[pos])
            staged = bulk.stage_table(self.stores[s], self.m, table, id_type)
            out["shard"].append(s)
            out["staged"].append(json.dumps(staged.to_dict()))


def _dataset(source, text_column, id_column, columns):
    import ray.data

    if isinstance(source, ray.data.Dataset):
        ds = source
    else:
        paths = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        files = []
        for p in map(str, paths):
            if os.path.isdir(p):
                # hidden and "_" names are other tools' bookkeeping (_SUCCESS, .crc)
                files += sorted(f for f in glob.glob(os.path.join(p, "**", "*"), recursive=True)
                                if os.path.isfile(f) and _kind(f) and not any(
                                    part.startswith((".", "_")) for part in os.path.relpath(f, p).split(os.sep)))
            elif os.path.isfile(p):
                files.append(p)
            else:
                raise FileNotFoundError(f"source: {p!r} does not exist")
        kinds = {_kind(f) for f in files}
        if not files or None in kinds or len(kinds) != 1:
            raise ValueError(f"source: expected Parquet (.parquet) or JSON lines (.jsonl, .json) files, all of "
                             f"one kind; got {sorted(os.path.basename(f) for f in files)[:5]}")
        # Reads ask for no CPU slot where Ray lets us say so; ingest() leaves one free for
        # the steps that ask for one anyway (Ray Data's Parquet file listing).
        if kinds == {"parquet"}:
            ds = ray.data.read_parquet(files, num_cpus=0)
        elif max(os.path.getsize(f) for f in files) <= _ARROW_JSON_BYTES:
            # pyarrow's reader (JSON lines, as _kind accepts): C++ parsing, no pandas
            # in the read worker; it reads a file whole, so only small ones
            ds = ray.data.read_json(files, num_cpus=0)
        else:  # large files: Ray's pandas reader streams them in blocks
            ds = ray.data.read_json(files, lines=True, num_cpus=0)
        try:
            names = _file_columns(files[0], kinds.pop())
        except Exception:  # a first MiB pyarrow cannot parse as one table: Ray Data's reader
            names = set(ds.schema().names)
        for arg, cols in (("text_column", [text_column]), ("id_column", [id_column] if id_column else []),
                          ("columns", columns)):
            missing = [c for c in cols if c not in names]
            if missing:
                raise ValueError(f"{arg}: {missing} not in the source's columns {sorted(names)}")
        # only what is stored travels (and a Parquet read skips the other columns)
        ds = ds.select_columns(_needed(text_column, id_column, columns))
    return ds


_SNIFF_BYTES = 1 << 20
# JSON-lines files up to this size are read whole by pyarrow, larger ones streamed
_ARROW_JSON_BYTES = 256 << 20


def _file_columns(path: str, kind: str) -> set:
    """The column names of the source's first file, read directly: a Parquet file's
    schema, or the columns of the JSON lines in its first MiB (what ``ds.schema()``
    would report, without the Ray Data run it takes to get it: seconds of an
    ingestion's fixed cost)."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return set(pq.read_schema(path).names)
    import io

    import pyarrow.json as pj

    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        if len(head) == _SNIFF_BYTES:  # whole lines only
            head = head[:head.rfind(b"\n") + 1] or head + f.readline()
    if not head.strip():
        return set()
    return set(pj.read_json(io.BytesIO(head)).column_names)


def _needed(text_column, id_column, columns) -> list:
    return [text_column] + ([id_column] if id_column is not None else []) + list(columns)


def _kind(f: str):
    if f.endswith(".parquet"):
        return "parquet"
    if f.endswith((".jsonl", ".json")):
        return "json"
    return None


def ingest(source, root, text_column: str = "text", id_column: str | None = None, encoder=None,
           shards: int | None = None, batch_size: int = 512, columns=(), concurrency: int | None = None,
           num_gpus: float = 0, dtype: str = "float16", metric: str = "cosine", binary: bool = True,
           mode: str = "add"):
    """Embed a corpus and write it into a sharded collection, in one commit.

    Args:
        source: a Ray Dataset, or a path (file or folder) or list of paths of Parquet
            or JSON-lines files.
        root: a sharded collection (a path, created when absent, with ``shards``
            shards and the encoder's width; or a writable ShardedCollection).
        text_column: the texts to embed; ``id_column``: the ids (int or string;
            default: generated int ids); ``columns``: more columns to store (their
            types from the data when the collection is created).
        encoder: an :class:`nestvec.Encoder`, or a function returning one (built in
            each actor: use it for GPU encoders); default: the bundled MiniLM.
        batch_size: rows per Ray Data batch (one staged segment per shard each).
        concurrency: Encoder actors (default: one per GPU with ``num_gpus``, else
            one per CPU slot on a one-node cluster, one per slot but one across
            nodes); ``num_gpus``: GPUs per actor. CPU actors leave at least one slot
            of the cluster free: whole slots when there are fewer actors than
            slots, else fractional ones. Ray Data starts the pool before the reads,
            and a read task that waits for a slot held by an idle actor waits
            forever (ray-project/ray#44687). Each actor runs torch on its share of
            the cluster's cores (``CPUs // concurrency`` threads: one by default).
        mode: ``"add"`` (refuses ids already present) or ``"upsert"``.

    Returns the writable :class:`ShardedCollection` (close it when done). Rows are
    visible only after the whole source was embedded and every shard's files were
    checked (one cluster version, op ``"import"``); on failure nothing is visible
    and the staged files are removed.
    """
    from .sharded import ShardedCollection

    t_call = time.perf_counter()
    ray = runtime.ray_module()
    if mode not in ("add", "upsert"):
        raise ValueError(f"mode: expected 'add' or 'upsert', got {mode!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                    or concurrency < 1):
        raise ValueError(f"concurrency: expected a positive int, got {concurrency!r}")
    columns = [columns] if isinstance(columns, str) else list(columns)
    if encoder is None:
        from ..embed import Encoder

        encoder = Encoder
    ds = _dataset(source, text_column, id_column, columns)
    own = not isinstance(root, ShardedCollection)
    if own:
        if layout.Root(root).exists():
            sc = ShardedCollection.open(root)
            if shards is not None and shards != sc.shards:
                sc.close()
                raise ValueError(f"shards: {root!r} has {sc.shards} shards, not {shards}")
        else:
            if shards is None:
                raise ValueError("shards: the number of shards is needed to create a sharded collection")
            dim = _dim(encoder)
            schema = _column_types(ds, columns) if columns else None
            sc = ShardedCollection.create(root, shards=shards, dim=dim, dtype=dtype, metric=metric, binary=binary,
                                          schema=schema)
    else:
        sc = root
    staged, allocator = [], None
    try:
        sc._check_writable()
        m = sc._m
        nice = runtime.driver_nice()
        allocator = ray.remote(num_cpus=0)(RowAllocator).remote(m["next_row"], m["next_id"], nice)
        sc._writer_handles(wait=False)  # they start while the source is encoded
        enc_arg = encoder if _is_factory(encoder) else ray.put(encoder)
        concurrency, actor_cpus, threads = _pool(ray, concurrency, num_gpus)
        t0 = time.perf_counter()
        out = ds.map_batches(
            EncodeAndStage, batch_size=batch_size, batch_format="pyarrow",
            fn_constructor_args=(enc_arg, sc.path, m, text_column, id_column, columns, allocator, bool(num_gpus),
                                 threads, nice),
            compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=actor_cpus, num_gpus=num_gpus or None)
        busy = start = 0.0  # the Encoder actors' seconds in batches, and loading their encoders
        for b in out.iter_batches(batch_format="pyarrow", batch_size=None):
            busy += float(pc.sum(b.column("seconds")).as_py() or 0.0)
            start += float(pc.sum(b.column("start_seconds")).as_py() or 0.0)
            error = None
            for s, text in zip(b.column("shard").to_pylist(), b.column("staged").to_pylist()):
                if s < 0:
                    error = error or json.loads(text)
                else:
                    staged.append((s, bulk.StagedSegment(**json.loads(text))))
            if error:
                raise {"TypeError": TypeError}.get(error["error"], ValueError)(error["message"])
        by_shard: dict = {}
        for s, seg in staged:
            by_shard.setdefault(s, []).append(seg)
        next_row, next_id = ray.get(allocator.take.remote(0))
        id_type = staged[0][1].id_type if staged else None
        t_commit = time.perf_counter()
        sc._import(by_shard, next_row, next_id, id_type, mode=mode)
        rows, seconds = int(sum(seg.rows for _, seg in staged)), time.perf_counter() - t0
        sc.last_ingest = {"rows": rows, "segments": len(staged), "seconds": seconds, "actors": int(concurrency),
                          "prepare_seconds": t0 - t_call, "commit_seconds": time.perf_counter() - t_commit}
        # what the actors spent encoding and staging, and loading their encoders: the
        # rest of ``seconds`` is Ray Data's start-up and the pipeline's waits
        sc.last_ingest.update(encode_seconds=busy, actor_start_seconds=start,
                              encode_rows_per_s=rows / busy * concurrency if busy else None)
        ray.kill(allocator)
    except BaseException:
        if allocator is not None:
            ray.kill(allocator)
        for s, seg in staged:
            bulk.discard_segments(sc.shard_paths[s], [seg])
        if own:
            sc.close()
        raise
    return sc


def _pool(ray, concurrency, num_gpus) -> tuple:
    """(actors, CPU slots per actor, torch threads per actor; 0: leave as is)."""
    res = ray.cluster_resources()
    if num_gpus:
        if concurrency is None:
            concurrency = max(1, int(res.get("GPU", 0) // num_gpus))
        return concurrency, 0, 0
    cpus = int(res.get("CPU", 1))
    if concurrency is None:
        # One single-threaded actor per core: torch's threads of one process wait for
        # each other at every op, and a Ray process scheduled on one core stalls them
        # all. On one node the actors take fractional slots, leaving one slot's worth
        # for the reads; across nodes whole slots, one node keeping one free.
        one_node = sum(1 for n in ray.nodes() if n.get("Alive")) <= 1
        concurrency = max(1, cpus if one_node else cpus - 1)
    if cpus < 2:
        slots = 0  # a one-slot cluster: the actor takes none, the reads get the slot
    elif concurrency <= cpus - 1:
        slots = 1  # whole slots on whole-slot nodes: at least one node keeps one free
    else:
        # fractional slots (Ray counts them in 1e-4 units): fine on one node, and a
        # pool this much larger than the cluster is the caller's explicit choice
        slots = math.floor((cpus - 1) / concurrency * 1e4) / 1e4
    return concurrency, slots, max(1, cpus // concurrency)


def _column_types(ds, columns) -> dict:
    """Arrow types of ``columns`` as Ray Data reads them (a pandas-backed read gives
    NumPy dtypes, and ``object`` for strings)."""
    sch = ds.schema()
    types = dict(zip(sch.names, sch.types))
    out = {}
    for c in columns:
        t = types.get(c)
        if not isinstance(t, pa.DataType):
            try:
                t = pa.from_numpy_dtype(t)
            except (TypeError, pa.ArrowNotImplementedError):
                t = pa.string()
        out[c] = pa.string() if pa.types.is_null(t) or pa.types.is_large_string(t) else t
    return out


def _dim(encoder) -> int:
    """The encoder's width; the default encoder's from its config (building one here
    would load torch and the weights in the driver only to read a number)."""
    from .. import embed

    if encoder is embed.Encoder:
        return embed.default_dim()
    return int(encoder().dim if _is_factory(encoder) else encoder.dim)


def _is_factory(encoder) -> bool:
    """An Encoder class or a function making one (built in each actor), not an instance."""
    return isinstance(encoder, type) or not hasattr(encoder, "encode")
