"""SQL filters: a WHERE condition evaluated by DuckDB over a table's metadata,
sandboxed and limited, because the text may come from an application's users.

* Sandbox: one in-memory DuckDB database per process (each thread its own cursor),
  with file and network access off and the configuration locked.
* Shape: the text is parsed by DuckDB's own parser (``json_serialize_sql``) and must
  be one boolean condition on the row's columns: no second statement, no subquery,
  no table function, and only functions whose work and output stay proportional to
  their input (comparisons, LIKE, regexes (RE2, linear time), string, numeric, date
  and list accessors). ``repeat``, ``range``, ``lpad`` and the like, which turn a
  short text into gigabytes, are refused before anything runs.
* Limits: a time limit per filter evaluation (DuckDB's interrupt) and DuckDB's memory
  limit, both configurable with :func:`set_sql_limits` or ``NESTVEC_SQL_TIMEOUT_S`` /
  ``NESTVEC_SQL_MEMORY_MB``; exceeding one raises :class:`FilterLimitError`.
"""
from __future__ import annotations

import functools
import json
import os
import threading

import pyarrow as pa

from .errors import FilterLimitError

_LIMITS = {"timeout_s": float(os.environ.get("NESTVEC_SQL_TIMEOUT_S", "10")),
           "memory_mb": int(os.environ.get("NESTVEC_SQL_MEMORY_MB", "512"))}
_DB_LOCK = threading.Lock()
_DB = {"pid": None, "db": None, "gen": 0}
_LOCAL = threading.local()


def set_sql_limits(timeout_s: float | None = None, memory_mb: int | None = None) -> dict:
    """Set the limits of SQL filter evaluation for this process; returns the previous ones.

    ``timeout_s``: wall-clock seconds one filter evaluation may take (default 10, or
    ``NESTVEC_SQL_TIMEOUT_S``). ``memory_mb``: DuckDB's memory limit for all filters
    of the process (default 512, or ``NESTVEC_SQL_MEMORY_MB``)."""
    prev = dict(_LIMITS)
    if timeout_s is not None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s: expected a number of seconds > 0, got {timeout_s!r}")
        _LIMITS["timeout_s"] = float(timeout_s)
    if memory_mb is not None:
        if isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 16:
            raise ValueError(f"memory_mb: expected an int >= 16, got {memory_mb!r}")
        with _DB_LOCK:
            if memory_mb != _LIMITS["memory_mb"]:
                _LIMITS["memory_mb"] = memory_mb
                _DB["db"] = None  # the next filter opens a database with the new limit
                _DB["gen"] += 1
    return prev


def sql_limits() -> dict:
    return dict(_LIMITS)


def duckdb_module():
    try:
        import duckdb
    except ImportError:
        raise ImportError("filter: SQL filters need DuckDB (pip install duckdb, or nestvec[sql]); "
                          "or use an expression: nv.field('col') == value") from None
    return duckdb


def cursor(duckdb):
    """This thread's cursor on the process's sandboxed database (a database inherited
    through fork() is not reused)."""
    pid = os.getpid()
    with _DB_LOCK:
        if _DB["db"] is None or _DB["pid"] != pid:
            db = duckdb.connect()
            db.execute(f"SET memory_limit = '{int(_LIMITS['memory_mb'])}MB'")
            # a filter is a condition on the metadata: no reading files or URLs through it
            # (read_csv('/etc/passwd') in a subquery), and no turning that back on
            db.execute("SET enable_external_access = false")
            db.execute("SET lock_configuration = true")
            _DB.update(pid=pid, db=db, gen=_DB["gen"] + 1)
        db, gen = _DB["db"], _DB["gen"]
    cur = getattr(_LOCAL, "cur", None)
    if cur is None or cur[0] != gen:
        cur = (gen, db.cursor())
        _LOCAL.cur = cur
    return cur[1]


# --------------------------------------------------------------------------- shape


_CLASSES = {"COLUMN_REF", "CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR", "CAST", "BETWEEN", "CASE",
            "FUNCTION", "LAMBDA", "LAMBDA_REF", "COLLATE"}
# Functions whose output is bounded by their input and whose work is (near) linear in it.
ALLOWED = frozenset("""
~~ !~~ ~~* !~~* ~~~ !~~~ ^@ + - * / // % ** ^ & | << >> ~ || like_escape ilike_escape not_like_escape
like ilike not_like not_ilike glob
coalesce ifnull nullif greatest least isnan isinf isfinite typeof
lower upper lcase ucase length len strlen char_length character_length octet_length bit_length
substring substr left right trim ltrim rtrim starts_with prefix suffix ends_with contains instr strpos
position regexp_matches regexp_full_match regexp_extract concat concat_ws split_part string_split
str_split string_to_array string_split_regex regexp_split_to_array reverse strip_accents nfc_normalize
ascii unicode md5 hash sha256 array_to_string list_to_string
abs ceil ceiling floor round trunc sign sqrt cbrt ln log log2 log10 exp pow power mod gcd lcm even
radians degrees sin cos tan bit_count
year month day dayofmonth hour minute second millisecond microsecond date_part datepart date_trunc
datetrunc epoch epoch_ms epoch_us epoch_ns dayofweek isodow dayofyear week weekofyear quarter yearweek
era decade century millennium to_timestamp make_date make_time make_timestamp strftime strptime
try_strptime date_diff datediff date_sub datesub age last_day monthname dayname current_date today
now current_timestamp get_current_timestamp to_years to_months to_days to_hours to_minutes to_seconds
list_contains array_contains list_has array_has list_has_any array_has_any list_has_all array_has_all
list_position array_position list_indexof array_indexof array_length list_extract array_extract
list_element list_min list_max list_sum list_avg list_count list_unique list_any_value list_bool_or
list_bool_and list_filter array_filter list_transform array_transform list_sort array_sort
list_reverse_sort struct_extract map_extract element_at cardinality
""".split())


@functools.lru_cache(maxsize=256)
def _reference_node():
    return _strip(_parse("SELECT _row FROM t WHERE (true)")["node"], drop_where=True)


def _parse(query: str) -> dict:
    duckdb = duckdb_module()
    text = cursor(duckdb).execute("SELECT json_serialize_sql(?)", [query]).fetchall()[0][0]
    out = json.loads(text)
    if out.get("error"):
        raise ValueError(f"filter: invalid SQL condition: {out.get('error_message', out)}")
    stmts = out.get("statements", [])
    if len(stmts) != 1:
        raise ValueError("filter: an SQL filter is one WHERE condition, not several statements")
    return stmts[0]


def _strip(node, drop_where=False):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items()
                if not k.startswith("query_location") and not (drop_where and k == "where_clause")}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _walk(node, sql):
    if isinstance(node, list):
        for v in node:
            _walk(v, sql)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class")
    if cls == "SUBQUERY":
        raise ValueError(f"filter: SQL filter {sql!r} has a subquery; a filter is a condition on each "
                         f"row's own metadata")
    if cls is not None and cls not in _CLASSES:
        raise ValueError(f"filter: SQL filter {sql!r} uses {cls.lower()} expressions, which filters do "
                         f"not allow")
    if cls == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if name not in ALLOWED or node.get("schema") or node.get("catalog"):
            raise ValueError(f"filter: function {name!r} is not allowed in SQL filters (only functions "
                             f"whose work stays proportional to the row, e.g. lower, length, "
                             f"regexp_matches, date_part, list_contains)")
    for v in node.values():
        if isinstance(v, (dict, list)):
            _walk(v, sql)


@functools.lru_cache(maxsize=1024)
def check_condition(sql: str) -> None:
    """Refuse anything but one condition on the row's columns (cached per text)."""
    if not sql.strip():
        raise ValueError("filter: empty SQL condition (pass filter=None for no filter)")
    stmt = _parse(f"SELECT _row FROM t WHERE ({sql})")
    node = stmt.get("node", {})
    where = node.get("where_clause")
    if where is None or _strip(node, drop_where=True) != _reference_node():
        raise ValueError(f"filter: {sql!r} is not a plain WHERE condition on the metadata")
    _walk(where, sql)


# --------------------------------------------------------------------------- running


def sql_table(meta: pa.Table) -> pa.Table:
    """DuckDB cannot scan Arrow float16: those columns are handed over as float32."""
    if not any(pa.types.is_float16(f.type) for f in meta.schema):
        return meta
    cols = [c.cast(pa.float32()) if pa.types.is_float16(c.type) else c for c in meta.columns]
    return pa.table(cols, names=meta.column_names)


def run(sql: str, meta: pa.Table, query: str, fetch, columns_msg: str):
    """``fetch`` of the result of ``query`` (formatted with ``{sql}``) over ``meta``
    registered as ``t``, within the limits. DuckDB's errors become ValueError /
    TypeError naming filter; the limits FilterLimitError."""
    duckdb = duckdb_module()
    check_condition(sql)
    cur = cursor(duckdb)
    timeout = _LIMITS["timeout_s"]
    state = {"running": True, "fired": False}
    lock = threading.Lock()

    def interrupt():
        with lock:
            if state["running"]:
                state["fired"] = True
                cur.interrupt()

    timer = threading.Timer(timeout, interrupt)
    timer.daemon = True
    registered = False
    try:
        cur.register("t", sql_table(meta))  # a zero-copy scan of the Arrow buffers
        registered = True
        timer.start()
        return fetch(cur.execute(query.format(sql=sql)))
    except duckdb.InterruptException:
        if state["fired"]:
            raise FilterLimitError(f"filter: SQL condition {sql!r} ran past the time limit of {timeout:g} s "
                                   f"(nestvec.collection.set_sql_limits(timeout_s=...) or "
                                   f"NESTVEC_SQL_TIMEOUT_S)") from None
        raise
    except duckdb.OutOfMemoryException:
        raise FilterLimitError(f"filter: SQL condition {sql!r} needs more than the memory limit of "
                               f"{_LIMITS['memory_mb']} MB (set_sql_limits(memory_mb=...) or "
                               f"NESTVEC_SQL_MEMORY_MB)") from None
    except duckdb.BinderException as e:
        if "not found" in str(e):
            raise ValueError(f"filter: unknown column: {e}; columns are {columns_msg}") from None
        raise TypeError(f"filter: type mismatch in {sql!r}: {e}") from None
    except (duckdb.ConversionException, duckdb.TypeMismatchException) as e:
        raise TypeError(f"filter: type mismatch in {sql!r}: {e}") from None
    except duckdb.NotImplementedException as e:
        raise TypeError(f"filter: SQL filters cannot read a column of this collection ({e}); "
                        f"use an expression filter (nv.field(...)); columns are {columns_msg}") from None
    except duckdb.Error as e:
        raise ValueError(f"filter: invalid SQL condition {sql!r}: {e}") from None
    finally:
        with lock:
            state["running"] = False
        timer.cancel()
        if registered:
            cur.unregister("t")
