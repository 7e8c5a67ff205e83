"""Filters on a collection's metadata, evaluated into a bool mask per segment.

Two forms, both exact pre-filters (the mask becomes the kernels' ``allow``):

* a pyarrow compute expression, built with :func:`field`:
  ``(nv.field("lang") == "en") & (nv.field("year") >= 2020)``;
* SQL ``WHERE`` text evaluated by DuckDB over the Arrow metadata (zero-copy scan):
  ``"lang = 'en' AND year >= 2020"``. DuckDB is optional (``pip install duckdb``).

Null results count as "no match". An unknown column raises ``ValueError``; comparing
a column with a value of the wrong type raises ``TypeError``.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .storage import primitive_view

# Columns a filter may not see: vectors and codes are not metadata.
HIDDEN = ("vector", "code")


def field(name: str) -> pc.Expression:
    """A column reference for filter expressions: ``field("lang") == "en"``.
    Same as ``pyarrow.compute.field``; combine with ``&``, ``|``, ``~``, ``.isin()``,
    ``.is_null()`` and the ``pyarrow.compute`` functions."""
    if not isinstance(name, str):
        raise TypeError(f"field: expected a column name (str), got {type(name).__name__}")
    return pc.field(name)


def check_filter(flt) -> None:
    """Type check only (cheap): expression, SQL string or None."""
    if flt is None or isinstance(flt, (pc.Expression, str)):
        return
    raise TypeError("filter: expected a pyarrow expression (nv.field('col') == value) or SQL "
                    f"WHERE text (str), got {type(flt).__name__}")


def _metadata(table: pa.Table) -> pa.Table:
    return table.select([c for c in table.column_names if c not in HIDDEN])


def _columns_msg(table: pa.Table) -> str:
    return ", ".join(f"{c}: {table.schema.field(c).type}" for c in _metadata(table).column_names
                     if c != "_row")


def _eval_expression(expr: pc.Expression, table: pa.Table) -> np.ndarray:
    import pyarrow.acero as ac

    meta = _metadata(table)
    decl = ac.Declaration.from_sequence([
        ac.Declaration("table_source", ac.TableSourceNodeOptions(meta)),
        ac.Declaration("project", ac.ProjectNodeOptions([expr], ["_match"])),
    ])
    try:
        out = decl.to_table(use_threads=False).column(0)
    except pa.ArrowInvalid as e:
        msg = str(e)
        if "No match for FieldRef" in msg:
            raise ValueError(f"filter: unknown column in {expr}; columns are {_columns_msg(table)}") from None
        raise ValueError(f"filter: cannot evaluate {expr}: {msg}") from None
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise TypeError(f"filter: type mismatch in {expr} ({e}); columns are {_columns_msg(table)}") from None
    if not pa.types.is_boolean(out.type):
        raise TypeError(f"filter: expression {expr} gives {out.type}, expected a boolean")
    return _bool_mask(out)


def _bool_mask(arr) -> np.ndarray:
    """Arrow boolean (nulls = False) -> NumPy bool, from the bitmap (no pandas import)."""
    arr = pc.fill_null(arr, False)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=bool)
    bits = np.frombuffer(arr.buffers()[1], dtype=np.uint8)
    return np.unpackbits(bits, count=arr.offset + n, bitorder="little")[arr.offset:].astype(bool)


def _duckdb():
    try:
        import duckdb
    except ImportError:
        raise ImportError("filter: SQL filters need DuckDB (pip install duckdb, or nestvec[sql]); "
                          "or use an expression: nv.field('col') == value") from None
    return duckdb


_LOCAL = threading.local()


def _connection(duckdb):
    """One in-memory DuckDB connection per thread and process (connecting costs
    ~10 ms; a connection inherited through fork() is not reused)."""
    pid, con = getattr(_LOCAL, "con", (None, None))
    if con is None or pid != os.getpid():
        con = duckdb.connect()
        _LOCAL.con = (os.getpid(), con)
    return con


def _eval_sql(sql: str, table: pa.Table) -> np.ndarray:
    duckdb = _duckdb()
    if ";" in sql:
        raise ValueError("filter: SQL filter is a WHERE condition, ';' is not allowed")
    meta = _metadata(table)
    con = _connection(duckdb)
    con.register("t", meta)  # a zero-copy scan of the Arrow buffers
    try:
        try:
            # the position column keeps the mask aligned whatever order DuckDB scans in
            hit = np.asarray(con.execute(f"SELECT _row FROM t WHERE ({sql})").fetchnumpy()["_row"],
                             dtype=np.int64)
        except duckdb.BinderException as e:
            if "not found" in str(e):
                raise ValueError(f"filter: unknown column: {e}; columns are {_columns_msg(table)}") from None
            raise TypeError(f"filter: type mismatch in {sql!r}: {e}") from None
        except (duckdb.ConversionException, duckdb.TypeMismatchException) as e:
            raise TypeError(f"filter: type mismatch in {sql!r}: {e}") from None
        except duckdb.Error as e:
            raise ValueError(f"filter: invalid SQL condition {sql!r}: {e}") from None
    finally:
        con.unregister("t")
    rows = primitive_view(table.column("_row"), np.int64)
    mask = np.zeros(len(rows), dtype=bool)
    if len(hit):
        mask[np.searchsorted(rows, np.sort(hit))] = True
    return mask


def evaluate(flt, table: pa.Table) -> np.ndarray | None:
    """Bool mask ``[table.num_rows]`` of the rows ``flt`` matches (None: no filter)."""
    check_filter(flt)
    if flt is None:
        return None
    if table.num_rows == 0:
        return np.zeros(0, dtype=bool)
    if isinstance(flt, str):
        return _eval_sql(flt, table)
    return _eval_expression(flt, table)


def validate(flt, schema: pa.Schema) -> None:
    """Check ``flt`` against an empty table of ``schema`` (collections with no rows
    still report unknown columns and type errors)."""
    if flt is None:
        return
    empty = schema.empty_table()
    if isinstance(flt, str):
        _eval_sql(flt, empty)
    else:
        _eval_expression(flt, empty)
