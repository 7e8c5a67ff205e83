"""Input validation for collection writes and searches: everything is checked and
converted before a single byte is written, so a bad call leaves the collection as it
was. Errors name the argument (and the row/column) at fault."""
from __future__ import annotations

import numbers

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import _checks as ck

DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
METRICS = ("cosine", "ip", "l2")
# stored columns, then the names search() gives its own result columns
RESERVED = ("_row", "id", "vector", "code", "query", "score")
# The kernels square and sum in float32: a float32 vector's squared norm must stay
# finite with headroom for an l2 distance (|q - x|^2 <= 4e37 < 3.4e38), and under cosine
# normal enough to divide by (rows of 1e-30 would score 0 instead of 1).
_MAX_SQ_NORM = 1e37
_MIN_SQ_NORM_COSINE = 1e-30
_ALIASES = {"str": "string", "text": "string", "int": "int64", "float": "float64",
            "boolean": "bool", "utf8": "string"}


# --------------------------------------------------------------------------- schema


def parse_schema(schema) -> pa.Schema:
    """``{"lang": "string", "year": "int32"}`` (or pyarrow types, or a pa.Schema) ->
    pa.Schema of nullable user columns."""
    if schema is None:
        return pa.schema([])
    if isinstance(schema, pa.Schema):
        items = [(f.name, f.type) for f in schema]
    elif isinstance(schema, dict):
        items = list(schema.items())
    else:
        raise TypeError(f"schema: expected a dict {{column: type}}, got {type(schema).__name__}")
    fields = []
    for name, t in items:
        if not isinstance(name, str) or not name:
            raise TypeError(f"schema: column names must be non-empty str, got {name!r}")
        if name in RESERVED:
            raise ValueError(f"schema: column name {name!r} is reserved ({', '.join(RESERVED)})")
        fields.append(pa.field(name, _parse_type(name, t)))
    return pa.schema(fields)


def _parse_type(name, t) -> pa.DataType:
    if isinstance(t, pa.DataType):
        return t
    if isinstance(t, str):
        text = t.strip()
        if text.startswith("list<") and text.endswith(">"):  # "list<string>", "list<item: int64>"
            inner = text[5:-1].strip()
            if inner.startswith("item:"):
                inner = inner[5:].strip()
            return pa.list_(_parse_type(name, inner))
        try:
            return pa.type_for_alias(_ALIASES.get(text, text))
        except ValueError:
            pass
    raise TypeError(f"schema: column {name!r} has unknown type {t!r} (use a pyarrow type or a name "
                    f"such as 'string', 'int32', 'int64', 'float32', 'float64', 'bool', 'timestamp[ms]', "
                    f"'list<string>')")


# --------------------------------------------------------------------------- vectors


def to_host_float(x, name: str) -> np.ndarray:
    """NumPy / list / torch (any device) -> a float NumPy array (no dim checks)."""
    if ck.is_torch(x):
        import torch

        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        x = t.cpu().numpy()
    elif isinstance(x, (pa.Array, pa.ChunkedArray)):
        raise TypeError(f"{name}: pass vectors as a NumPy array, list or torch tensor")
    else:
        try:
            x = np.asarray(x)
        except ValueError as e:  # ragged lists
            raise ValueError(f"{name}: rows have different lengths ({e})") from None
    if x.dtype == bool or x.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected numbers (a float array), got dtype {x.dtype}")
    return x


_BITS = {np.dtype(np.float16): (np.uint16, 0x7C00, 0x7FFF, 0x8000),
         np.dtype(np.float32): (np.uint32, 0x7F800000, 0x7FFFFFFF, 0x80000000)}


def vectors(x, dim: int, dtype: str, metric: str, first_row: int = 0) -> np.ndarray:
    """Validated ``[n, dim]`` array in the storage dtype. ``first_row``: the number of
    ``x``'s first row in the caller's input (error messages; large adds validate in
    chunks)."""
    x = to_host_float(x, "vectors")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"vectors: expected shape [n, {dim}] (or one [{dim}] vector), got "
                         f"{list(x.shape)}")
    dt = np.dtype(dtype)
    if x.dtype.kind == "f" and x.dtype != dt:
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"vectors: row {first_row + int(np.flatnonzero(bad)[0])} contains NaN or infinity")
    with np.errstate(over="ignore"):
        xs = np.ascontiguousarray(x, dtype=dt)
    # checks on the bit patterns: NumPy's float16 arithmetic is emulated and slow
    utype, exp_mask, mag_mask, _ = _BITS[dt]
    u = xs.view(utype)
    bad = ((u & exp_mask) == exp_mask).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if x.dtype == dt or not np.isfinite(x[row]).all():
            raise ValueError(f"vectors: row {first_row + row} contains NaN or infinity")
        raise ValueError(f"vectors: row {first_row + row} overflows {dtype} (|value| > {float(np.finfo(dt).max):g})")
    if metric == "cosine" and len(xs):
        zero = ~((u & mag_mask) != 0).any(axis=1)
        if zero.any():
            raise ValueError(f"vectors: row {first_row + int(np.flatnonzero(zero)[0])} is all zeros; a zero vector "
                             f"has no direction under metric='cosine'")
    if dt == np.float32:  # float16 values cannot reach either limit in float32 sums
        _check_norms(np.einsum("ij,ij->i", xs, xs), metric, "vectors", "row", first_row)
        if metric == "cosine" and len(xs):
            _check_prefixes(u & mag_mask, first_row)
    return xs


# The bit pattern of float32(_MIN_SQ_NORM_COSINE ** 0.5) = 1e-15.
_MIN_FIRST_BITS = int(np.array(_MIN_SQ_NORM_COSINE ** 0.5, np.float32).view(np.uint32))


def _check_prefixes(mag: np.ndarray, first_row: int = 0) -> None:
    """Under cosine any prefix ``dim`` may be searched, and its norm must be scorable
    too: the smallest nonzero prefix norm of a row is its first nonzero value, so that
    value must reach _MIN_SQ_NORM_COSINE ** 0.5 (a row opening with 1e-25 would score
    0 at a short prefix where its cosine is 1). ``mag``: float32 magnitude bits."""
    cand = np.flatnonzero(mag[:, 0] < _MIN_FIRST_BITS)  # only rows that open with a tiny or zero value
    if not len(cand):
        return
    sub = mag[cand]
    first = np.argmax(sub != 0, axis=1)
    bad = sub[np.arange(len(cand)), first] < _MIN_FIRST_BITS
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row, j = first_row + int(cand[i]), int(first[i])
        val = float(sub[i, j:j + 1].view(np.float32)[0])
        raise ValueError(f"vectors: row {row} opens with {val:.3g} (its first nonzero value, at index {j}); "
                         f"under metric='cosine' every prefix norm must reach {_MIN_SQ_NORM_COSINE ** 0.5:g} "
                         f"for the float32 kernels to score it (rescale the vector)")


def _check_norms(sq, metric: str, name: str, what: str, first: int = 0) -> None:
    """Reject vectors whose float32 squared norm (``sq``, NumPy or torch) the kernels
    cannot score: infinite or above _MAX_SQ_NORM, or under cosine below
    _MIN_SQ_NORM_COSINE (all-zero rows have their own message, checked before)."""
    with np.errstate(over="ignore", invalid="ignore"):
        sq = np.asarray(sq.cpu() if ck.is_torch(sq) else sq, dtype=np.float64)
        big = ~(sq <= _MAX_SQ_NORM)
        small = (sq < _MIN_SQ_NORM_COSINE) if metric == "cosine" else np.zeros_like(big)
    if big.any():
        i = first + int(np.flatnonzero(big)[0])
        raise ValueError(f"{name}: {what} {i} has a norm above {_MAX_SQ_NORM ** 0.5:.3g}; scores "
                         f"are computed in float32 and would overflow (rescale the vectors)")
    if small.any():
        i = first + int(np.flatnonzero(small)[0])
        raise ValueError(f"{name}: {what} {i} has a norm below {_MIN_SQ_NORM_COSINE ** 0.5:.3g}; "
                         f"too small to normalise in float32 under metric='cosine' (rescale it)")


def sign_codes(xs: np.ndarray) -> np.ndarray:
    """``quant.binarize`` of validated (finite) storage vectors, on the bit patterns:
    ``x > 0`` <=> sign bit clear and not +0."""
    utype, _, _, sign = _BITS[xs.dtype]
    u = xs.view(utype)
    return np.packbits((u < sign) & (u != 0), axis=-1)


# The fast path accepts norms inside the limits with a margin (its squares are summed in
# float64, the kernels' in float32); anything near or past a limit takes the full checks.
_FAST_HI = _MAX_SQ_NORM * 0.999
_FAST_LO = _MIN_SQ_NORM_COSINE * 1.001


def queries(q, dim_full: int, dim: int, metric: str):
    """Search queries -> ([Q, D or dim] float32 NumPy array or float torch tensor, single)."""
    if type(q) is np.ndarray and q.dtype == np.float32 and q.ndim in (1, 2) and q.size \
            and q.shape[-1] in (dim_full, dim):
        # the common case in one pass: a float32 array whose prefix norms are in range
        # (NaN and infinity fail the range test and get the full checks' message)
        x = q[None, :] if q.ndim == 1 else q
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        xd = x[:, :dim] if dim < x.shape[1] else x
        sq = np.einsum("ij,ij->i", xd, xd, dtype=np.float64)
        lo = _FAST_LO if metric == "cosine" else -1.0
        # one query: a Python comparison (NaN fails it too) instead of three ufuncs
        ok = lo <= float(sq[0]) <= _FAST_HI if len(sq) == 1 else ((sq >= lo) & (sq <= _FAST_HI)).all()
        if ok and (xd is x or np.isfinite(x).all()):
            return x, q.ndim == 1
    on_device = ck.is_torch(q) and ck.device_of(q) != "cpu"
    if on_device:
        import torch

        if not torch.is_floating_point(q):
            raise TypeError(f"q: expected a float tensor, got {q.dtype}")
        x = q.detach()
    else:
        x = to_host_float(q, "q")
    single = x.ndim == 1
    if single:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] not in (dim_full, dim):
        want = f"{dim_full}" if dim == dim_full else f"{dim_full} or dim={dim}"
        raise ValueError(f"q: expected [{want}] values per query ([Q, D] or [D]), got shape "
                         f"{list(q.shape) if hasattr(q, 'shape') else list(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("q: expected at least one query")
    if on_device:
        import torch

        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise ValueError("q: contains NaN or infinity")
        if metric == "cosine" and bool((x[:, :dim] == 0).all(dim=1).any()):
            raise ValueError("q: a query is all zeros in its first dim values; no cosine direction")
        _check_norms((x[:, :dim] * x[:, :dim]).sum(dim=1), metric, "q", "query")
        return x.contiguous(), single
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("q: contains NaN or infinity")
    if metric == "cosine" and (~(x[:, :dim] != 0).any(axis=1)).any():
        raise ValueError("q: a query is all zeros in its first dim values; no cosine direction")
    xd = x[:, :dim]
    with np.errstate(over="ignore", under="ignore"):
        _check_norms(np.einsum("ij,ij->i", xd, xd), metric, "q", "query")
    return x, single


# --------------------------------------------------------------------------- ids


def id_type_of(ids) -> str | None:
    """'int64' / 'string' for user ids (None when ids is None)."""
    if ids is None:
        return None
    arr = ids_array(ids, None)
    return "string" if pa.types.is_string(arr.type) else "int64"


def ids_array(ids, id_type: str | None) -> pa.Array:
    """User ids -> pa.Array of int64 or string; TypeError for other types."""
    if ck.is_torch(ids):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, (str, bytes)) or isinstance(ids, numbers.Number):
        raise TypeError(f"ids: expected a sequence of ids, got a single {type(ids).__name__}")
    if isinstance(ids, pa.Array):
        arr = ids
    elif isinstance(ids, np.ndarray):
        if ids.dtype.kind in "iu":
            if ids.dtype == np.uint64 and len(ids) and ids.max() > np.iinfo(np.int64).max:
                raise ValueError("ids: values exceed int64")
            arr = pa.array(ids.astype(np.int64, copy=False))
        elif ids.dtype.kind in "UO":
            arr = _ids_from_list(ids.tolist())
        else:
            raise TypeError(f"ids: expected int64 or str ids, got dtype {ids.dtype}")
    else:
        try:
            values = list(ids)
        except TypeError:
            raise TypeError(f"ids: expected a sequence of int or str, got {type(ids).__name__}") from None
        arr = _ids_from_list(values)
    if pa.types.is_integer(arr.type):
        try:
            arr = pc.cast(arr, pa.int64(), safe=True)
        except pa.ArrowInvalid as e:
            raise ValueError(f"ids: {e}") from None
    elif pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    elif not pa.types.is_string(arr.type) and not pa.types.is_null(arr.type):
        raise TypeError(f"ids: expected int64 or str ids, got {arr.type}")
    if arr.null_count:
        raise ValueError("ids: None is not an id")
    if id_type is not None and len(arr):
        got = "string" if pa.types.is_string(arr.type) else "int64"
        if got != id_type:
            raise TypeError(f"ids: this collection's ids are {id_type}, got {got} ids")
    return arr


def _ids_from_list(values: list) -> pa.Array:
    if not values:
        return pa.array([], pa.int64())
    if all(isinstance(v, str) for v in values):
        return pa.array(values, pa.string())
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
        try:
            return pa.array([int(v) for v in values], pa.int64())
        except OverflowError:
            raise ValueError("ids: values exceed int64") from None
    kinds = sorted({type(v).__name__ for v in values})
    bad = [v for v in values if not isinstance(v, (str, int, np.integer)) or isinstance(v, bool)]
    if not bad:
        raise TypeError(f"ids: all ids must be int or all str, got a mix of {kinds}")
    raise TypeError(f"ids: expected int or str ids, got {type(bad[0]).__name__} ({bad[0]!r})")


def unique_ids(arr: pa.Array) -> None:
    if len(arr) and pc.count_distinct(arr).as_py() != len(arr):
        vc = pc.value_counts(arr)
        dup = [v["values"] for v in vc.to_pylist() if v["counts"] > 1][:5]
        raise ValueError(f"ids: duplicate ids within one call: {dup}")


# --------------------------------------------------------------------------- metadata


def meta_columns(meta) -> dict:
    """User metadata (dict of columns, pyarrow Table / RecordBatch, pandas or polars
    DataFrame) -> {column name: values}."""
    if meta is None:
        return {}
    if isinstance(meta, pa.RecordBatch):
        return {c: meta.column(c) for c in meta.schema.names}
    if isinstance(meta, pa.Table):
        return {c: meta.column(c) for c in meta.column_names}
    if isinstance(meta, dict):
        return dict(meta)
    if type(meta).__name__ == "DataFrame" and hasattr(meta, "columns"):
        if type(meta).__module__.startswith("polars"):
            t = meta.to_arrow()
        else:
            t = pa.Table.from_pandas(meta, preserve_index=False)
        return {c: t.column(c) for c in t.column_names}
    raise TypeError("metadata: expected a dict of columns, a pyarrow Table/RecordBatch or a "
                    f"pandas / polars DataFrame, got {type(meta).__name__}")


def metadata(meta, schema: pa.Schema, n: int) -> dict:
    """User metadata -> {column: pa.Array of the schema type, length n}; missing
    columns are filled with nulls."""
    cols = meta_columns(meta)
    unknown = [c for c in cols if c not in schema.names]
    if unknown:
        raise ValueError(f"metadata: unknown columns {unknown}; the schema has {schema.names or 'no columns'}"
                         + (" (id goes in ids=)" if "id" in unknown else ""))
    out = {}
    for f in schema:
        if f.name not in cols:
            out[f.name] = pa.nulls(n, f.type)
            continue
        arr = _coerce(cols[f.name], f.type, f.name)
        if len(arr) != n:
            raise ValueError(f"metadata: column {f.name!r} has {len(arr)} values for {n} vectors")
        out[f.name] = arr
    return out


def _kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_temporal(t):
        return "time"
    return str(t)


def _coerce(values, t: pa.DataType, name: str) -> pa.Array:
    if ck.is_torch(values):
        values = values.detach().cpu().numpy()
    try:
        if isinstance(values, pa.ChunkedArray):
            arr = values.combine_chunks()
        elif isinstance(values, pa.Array):
            arr = values
        else:
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                raise TypeError(f"metadata: column {name!r} must be a list of values, got "
                                f"{type(values).__name__}")
            arr = pa.array(values)
    except OverflowError:
        raise ValueError(f"metadata: column {name!r} is {t}; a value is too large for it") from None
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        kind = getattr(values, "dtype", None)
        what = f"values of dtype {kind}" if kind is not None else "its values"
        raise TypeError(f"metadata: column {name!r} is {t}; cannot store {what} ({e})") from None
    if arr.type == t:
        return arr
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), t)
    src, dst = _kind(arr.type), _kind(t)
    if not (src == dst or (src == "int" and dst == "float")):
        raise TypeError(f"metadata: column {name!r} is {t}, got {arr.type} values")
    try:
        out = pc.cast(arr, t, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TypeError(f"metadata: column {name!r} is {t}; values do not fit: {e}") from None
    if src == "float" and dst == "float" and \
            pc.any(pc.and_(pc.is_inf(out), pc.invert(pc.is_inf(arr)))).as_py():
        # a safe cast still narrows 1e300 to float32 inf
        raise TypeError(f"metadata: column {name!r} is {t}; a finite value overflows it")
    return out


# --------------------------------------------------------------------------- search args


def positive_int(v, name: str, hi: int | None = None) -> int:
    return ck.check_int(v, name, lo=1, hi=hi)


def ladder(v, dim: int) -> tuple:
    """Funnel ladder: strictly increasing prefix dims, each in [1, dim)."""
    if v is None:
        return ()
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v,)
    if not isinstance(v, (tuple, list)):
        raise TypeError(f"ladder: expected a tuple of prefix dims, got {type(v).__name__}")
    out = tuple(positive_int(d, "ladder") for d in v)
    if any(d >= dim for d in out) or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"ladder: expected strictly increasing prefix dims below dim={dim}, got {out}")
    return out


def cutoff(min_score, max_distance, metric: str, mode: str):
    """The search cut: ``(">=", value)`` for ``min_score``, ``("<=", value)`` for
    ``max_distance`` or None. min_score applies where higher scores are better
    (cosine / ip, not mode="binary"); max_distance where lower is better (l2, whose
    score is the squared distance, and Hamming distances in mode="binary")."""
    if min_score is None and max_distance is None:
        return None
    if min_score is not None and max_distance is not None:
        raise ValueError("min_score / max_distance: pass one of them, not both")
    lower_better = metric == "l2" or mode == "binary"
    name, value = ("min_score", min_score) if min_score is not None else ("max_distance", max_distance)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if value != value:
        raise ValueError(f"{name}: expected a number, got NaN")
    what = "Hamming distances (mode='binary')" if mode == "binary" else f"metric={metric!r}"
    if name == "min_score" and lower_better:
        raise ValueError(f"min_score: scores of {what} are distances (lower is better); use max_distance")
    if name == "max_distance" and not lower_better:
        raise ValueError(f"max_distance: {what} scores similarity (higher is better); use min_score")
    return (">=", value) if name == "min_score" else ("<=", value)


def apply_cutoff(cut, score, local):
    """``local`` with -1 where ``score`` fails the cut from :func:`cutoff` (None: as is)."""
    if cut is None:
        return local
    with np.errstate(invalid="ignore"):
        keep = score >= cut[1] if cut[0] == ">=" else score <= cut[1]
    return np.where(keep, local, -1)
