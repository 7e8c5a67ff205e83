"""``col.add(table)``: rows from tables with a vector column.

Sources: a pyarrow Table / RecordBatch / RecordBatchReader, a pandas or polars
DataFrame, anything exporting the Arrow C stream (``__arrow_c_stream__``: polars,
DuckDB relations, ...), or a Parquet file or directory. The vector column is a
``fixed_size_list<float>[D]`` or ``list<float>`` (pandas columns of NumPy arrays arrive
as lists); ``id`` (or ``id_column=``) gives the ids, every other column is metadata
(its name must be in the collection's schema). A collection bound to an embedding
embeds its text column when the table has no vector column.

Input is read in chunks of about CHUNK_BYTES of vectors, each chunk validated, built
and written as one segment before the next is read; the whole call is still one
commit (a failure removes the files it wrote and commits nothing). A fixed-size list
column with no nulls is read zero-copy (NumPy views of the Arrow buffers; a chunk
made of several record batches is concatenated once).
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import commit as cm

CHUNK_BYTES = 256 << 20
# a progress bar by default from this many rows (or when the size is unknown)
PROGRESS_ROWS = 1 << 20


def is_table_like(x) -> bool:
    if isinstance(x, (pa.Table, pa.RecordBatch, pa.RecordBatchReader, os.PathLike)):
        return True
    if isinstance(x, str):
        return True
    t = type(x)
    if t.__name__ in ("DataFrame", "LazyFrame") and t.__module__.split(".")[0] in ("pandas", "polars"):
        return True
    return hasattr(x, "__arrow_c_stream__") and not hasattr(x, "__array__")


def _source(src, chunk_rows: int):
    """(iterator of pa.Table chunks of <= chunk_rows rows, total rows or None, schema)."""
    total = None
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.exists(path):
            raise FileNotFoundError(f"table: {path!r} does not exist (a Parquet file or directory)")
        import pyarrow.dataset as ds

        try:
            d = ds.dataset(path, format="parquet")
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"table: {path!r} is not a Parquet file or directory ({e})") from None
        total = d.count_rows()
        batches, schema = d.to_batches(batch_size=min(chunk_rows, 1 << 16)), d.schema
    else:
        t = type(src)
        if t.__module__.split(".")[0] == "polars":
            src = src.collect() if t.__name__ == "LazyFrame" else src
            src = src.to_arrow()
        elif t.__name__ == "DataFrame" and t.__module__.split(".")[0] == "pandas":
            src = pa.Table.from_pandas(src, preserve_index=False)
        elif not isinstance(src, (pa.Table, pa.RecordBatch, pa.RecordBatchReader)):
            src = pa.RecordBatchReader.from_stream(src)
        if isinstance(src, pa.RecordBatch):
            src = pa.Table.from_batches([src])
        if isinstance(src, pa.Table):
            total, schema = src.num_rows, src.schema
            batches = src.to_batches(max_chunksize=chunk_rows)
        else:
            batches, schema = src, src.schema
    return _regroup(batches, chunk_rows), total, schema


def _regroup(batches, chunk_rows: int):
    """Record batches -> tables of up to chunk_rows rows (one batch: no copy)."""
    held, n = [], 0
    for b in batches:
        while b.num_rows:
            take = min(b.num_rows, chunk_rows - n)
            held.append(b.slice(0, take))
            n += take
            b = b.slice(take)
            if n == chunk_rows:
                yield pa.Table.from_batches(held)
                held, n = [], 0
    if held:
        yield pa.Table.from_batches(held)


def _vector_column(schema: pa.Schema, wanted, text_column) -> str | None:
    if wanted is not None:
        if wanted not in schema.names:
            raise ValueError(f"vector_column: no column {wanted!r} in the table ({schema.names})")
        return wanted
    if "vector" in schema.names:
        return "vector"
    cands = [f.name for f in schema if _is_list_of_numbers(f.type) and f.name != text_column]
    if len(cands) == 1:
        return cands[0]
    if len(cands) > 1:
        raise ValueError(f"vector_column: the table has several list columns {cands}; name the "
                         "vector column with vector_column=")
    return None


def _is_list_of_numbers(t) -> bool:
    return ((pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t))
            and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)))


def vectors_of(col, dim: int, name: str) -> np.ndarray:
    """A list / fixed-size-list column -> [n, dim] NumPy (a view of the Arrow buffer
    when the layout allows)."""
    if isinstance(col, pa.ChunkedArray):
        chunks = [vectors_of(c, dim, name) for c in col.chunks]
        return chunks[0] if len(chunks) == 1 else (np.concatenate(chunks) if chunks else
                                                   np.zeros((0, dim), np.float32))
    if not _is_list_of_numbers(col.type):
        raise TypeError(f"{name}: expected a list or fixed_size_list column of numbers, got {col.type}")
    n = len(col)
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{name}: row {row} is null")
    if pa.types.is_fixed_size_list(col.type):
        if col.type.list_size != dim:
            raise ValueError(f"{name}: vectors have {col.type.list_size} values, the collection stores {dim}")
    else:
        lens = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lens != dim)
        if len(bad):
            raise ValueError(f"{name}: row {int(bad[0])} has {int(lens[bad[0]])} values, the collection "
                             f"stores {dim}")
    values = col.flatten()
    if values.null_count:
        raise ValueError(f"{name}: vectors contain null values")
    if len(values) != n * dim:  # cannot happen after the checks; guards the reshape
        raise ValueError(f"{name}: expected {n * dim} values, got {len(values)}")
    return values.to_numpy(zero_copy_only=False).reshape(n, dim)


class TableMixin:
    """``add(table)`` for :class:`~.collection.Collection` (writer lock held by caller)."""

    def _add_table(self, source, vector_column=None, id_column=None, progress=None) -> pa.Array:
        snap = self._snap
        m = snap.manifest
        dim, dtype = m["dim"], m["dtype"]
        text_col = self.text_column
        itemsize = 2 if dtype == "float16" else 4
        chunk_rows = max(1, CHUNK_BYTES // (dim * itemsize))
        chunks, total, schema = _source(source, chunk_rows)
        vcol = _vector_column(schema, vector_column, text_col)
        icol = id_column if id_column is not None else ("id" if "id" in schema.names else None)
        if icol is not None and icol not in schema.names:
            raise ValueError(f"id_column: no column {icol!r} in the table ({schema.names})")
        if vcol is None:
            if text_col is None or text_col not in schema.names or self.embedding is None:
                raise ValueError(f"table: no vector column (a list column named 'vector', or pass "
                                 f"vector_column=) among {schema.names}"
                                 + ("" if self.embedding is None else
                                    f", and no {text_col!r} text column to embed"))
        meta_cols = [c for c in schema.names if c not in (vcol, icol)]
        unknown = [c for c in meta_cols if c not in snap.schema.names]
        if unknown:
            raise ValueError(f"table: columns {unknown} are not in the collection's schema "
                             f"({snap.schema.names}); declare them in Collection.create(schema=...) "
                             f"or drop them from the table")
        bar = _progress(progress, total)
        state = {"next_row": m["next_row"], "next_id": m.get("next_id", m["next_row"]),
                 "id_type": m["id_type"], "ids": []}

        def tables():
            for t in chunks:
                yield self._chunk_table(snap, t, vcol, icol, meta_cols, state)
                if bar is not None:
                    bar.update(t.num_rows)

        before = self._store.segment_names()
        try:
            self._commit_stream(tables(), state)
        except BaseException:
            for name in self._store.segment_names() - before:
                self._store.discard_segment(name)
            raise
        finally:
            if bar is not None:
                bar.close()
        ids = state["ids"]
        if not ids:
            return pa.array([], pa.string() if state["id_type"] == "string" else pa.int64())
        return pa.concat_arrays(ids)

    def _commit_stream(self, tables, state) -> None:
        """One commit whose segments are built and written one at a time (the first
        chunk fixes the id type of an empty collection before the commit starts)."""
        it = iter(tables)
        first = next(it, None)
        if first is not None:
            self._commit(itertools.chain([first], it), {}, "add", state["id_type"])

    def _chunk_table(self, snap, t: pa.Table, vcol, icol, meta_cols, state) -> pa.Table:
        m = snap.manifest
        if vcol is not None:
            vec = vectors_of(t.column(vcol), m["dim"], vcol if vcol != "vector" else "vector column")
        else:
            col = t.column(self.text_column)
            if col.null_count:
                raise ValueError(f"table: column {self.text_column!r} has null texts to embed")
            vec = self.embedding.embed_documents(col.to_pylist())
        ids = t.column(icol) if icol is not None else None
        meta = {c: t.column(c) for c in meta_cols}
        mm = dict(m, next_row=state["next_row"], next_id=state["next_id"], id_type=state["id_type"])
        table, arr, id_type = cm.build_rows(mm, snap.schema, vec, ids, meta, False)
        if ids is not None:
            found = self._find(snap, arr)
            if any(f.any() for f in found):
                dup = pa.concat_arrays([s.column("id").filter(pa.array(f)).combine_chunks()
                                        for s, f in zip(snap.segments, found) if f.any()])[:5].to_pylist()
                raise ValueError(f"ids: already in the collection: {dup} (use upsert to replace)")
            if state["ids"]:
                seen = pc.is_in(arr, value_set=pa.concat_arrays(state["ids"]))
                if pc.any(seen).as_py():
                    raise ValueError(f"ids: duplicate ids within one call: "
                                     f"{arr.filter(seen)[:5].to_pylist()}")
        state["ids"].append(arr)
        state["id_type"] = id_type
        state["next_row"] += table.num_rows
        if id_type == "int64" and table.num_rows:
            state["next_id"] = max(state["next_id"], int(pc.max(arr).as_py()) + 1)
        return table


def _progress(progress, total):
    if progress is False or (progress is None and total is not None and total < PROGRESS_ROWS):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm (pip install tqdm)") from None
        return None
    return tqdm(total=total, desc="add", unit="rows", mininterval=0.5)
