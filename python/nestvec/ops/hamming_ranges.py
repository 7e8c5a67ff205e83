"""hamming_topk_ranges: exact Hamming top-k over per-query ranges of rows.

The probe of an inverted-file index: codes are stored grouped by list, and each query
scans only the ranges (lists) it probes, in one call for the whole batch. ``ids``
maps each stored position back to a row id, which orders ties, filters through
``allow`` and is what the call returns (collection/indexes/ivf.py).
"""
from __future__ import annotations

import numpy as np

from .. import _backend as be
from .. import _checks as ck
from .. import reference
from .hamming import PAD_K


def hamming_topk_ranges(codes, queries, k: int, ranges, ids=None, allow=None, *, backend: str = "auto"):
    """Exact Hamming top-k among the rows of each query's ranges.

    Args:
        codes: packed codes, uint8 ``[N, B]`` (``numpy.packbits`` order); rows may be
            strided, each row must be contiguous. Host memory (NumPy).
        queries: uint8 ``[Q, B]`` (or one ``[B]`` query).
        k: results per query, ``>= 1``.
        ranges: int ``[Q, P, 2]`` (or ``[P, 2]`` for one query) of ``(start, stop)``
            positions into ``codes``; a query's ranges must not overlap; ``stop <=
            start`` is an empty range.
        ids: optional int32 / int64 ``[N]``, unique, ``>= 0``: the row id of each
            position (returned, used for ties and to index ``allow``). Default: the
            position itself.
        allow: optional bool ``[M]`` indexed by id (every id in a probed range must be
            ``< M``).

    Returns:
        ``(dist int32 [Q, k], id int64 [Q, k])``: distance ascending, ties by id;
        missing entries ``(INT32_MAX, -1)``.
    """
    codes = ck.as_array_like(codes, "codes")
    queries = ck.as_array_like(queries, "queries")
    ck.check_ndim(codes, "codes", (2,), "a 2-D array [N, B]")
    ck.check_dtype(codes, "codes", ("uint8",), "uint8 [N, B]")
    ck.check_ndim(queries, "queries", (1, 2), "[Q, B] or [B]")
    ck.check_dtype(queries, "queries", ("uint8",), "uint8 like codes")
    single = queries.ndim == 1
    if single:
        queries = queries[None, :]
    if queries.shape[1] != codes.shape[1]:
        raise ValueError(f"queries: expected {codes.shape[1]} bytes per code like codes, got "
                         f"{queries.shape[1]}")
    if codes.shape[1] == 0:
        raise ValueError("codes: expected at least one byte per code")
    k = ck.check_k(k)
    ck.check_k_rows(k, codes.shape[0], PAD_K)
    n, nq = codes.shape[0], queries.shape[0]
    ranges = _check_ranges(ranges, nq, single)
    if ids is not None:
        ids = ck.as_array_like(ids, "ids")
        ck.check_dtype(ids, "ids", ("int32", "int64"), "int32 / int64 [N] row ids")
        if ids.ndim != 1 or ids.shape[0] != n:
            raise ValueError(f"ids: expected one id per code, shape [{n}], got {list(ids.shape)}")
    if allow is not None:
        allow = ck.as_array_like(allow, "allow")
        ck.check_dtype(allow, "allow", ("bool",), "bool [M] indexed by id")
        ck.check_ndim(allow, "allow", (1,), "a 1-D bool mask")
        if ids is None and allow.shape[0] < n:
            raise ValueError(f"allow: expected at least {n} entries (one per position), got {allow.shape[0]}")
    name = be.resolve(backend, codes)
    if name not in ("cpu", "reference"):
        if backend not in (None, "auto"):
            raise ValueError(f"backend: hamming_topk_ranges runs on the host (cpu or reference), got {name!r}")
        name = "cpu" if be._C is not None else "reference"  # NESTVEC_BACKEND names a GPU backend
    be.check_inputs(name, codes, "codes", queries=queries)
    codes = ck.row_contiguous(codes, "codes")
    d, i = be.implementation("hamming_topk_ranges", name)(codes, queries, k, ranges, ids, allow)
    return (d[0], i[0]) if single else (d, i)


def _check_ranges(ranges, nq: int, single: bool) -> np.ndarray:
    r = np.asarray(ranges)
    if r.dtype.kind not in "iu":
        raise TypeError(f"ranges: expected integer (start, stop) pairs, got dtype {r.dtype}")
    if single and r.ndim == 2:
        r = r[None]
    if r.ndim != 3 or r.shape[0] != nq or r.shape[2] != 2:
        raise ValueError(f"ranges: expected shape [Q={nq}, P, 2] of (start, stop), got {list(r.shape)}")
    r = np.ascontiguousarray(r, dtype=np.int64)
    if r.shape[1] > 1:
        start, stop = r[..., 0], r[..., 1]
        live = stop > start
        s = np.where(live, start, np.iinfo(np.int64).max)
        order = np.argsort(s, axis=1, kind="stable")
        s_sorted = np.take_along_axis(s, order, 1)
        e_sorted = np.take_along_axis(np.where(live, stop, np.iinfo(np.int64).max), order, 1)
        if (e_sorted[:, :-1] > s_sorted[:, 1:]).any():
            raise ValueError("ranges: the ranges of a query overlap (each row may be probed once)")
    return r


@be.register("hamming_topk_ranges", "reference")
def _reference(codes, queries, k, ranges, ids, allow):
    return reference.hamming_topk_ranges(np.asarray(codes), np.ascontiguousarray(queries), k, ranges,
                                         ids, allow)


@be.register("hamming_topk_ranges", "cpu")
def _cpu(codes, queries, k, ranges, ids, allow):
    q = np.ascontiguousarray(ck.to_numpy(queries))
    a = None if allow is None else np.ascontiguousarray(allow).view(np.uint8)
    i = None if ids is None else np.ascontiguousarray(ids)
    dist = np.empty((q.shape[0], k), dtype=np.int32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    be._C.hamming_topk_ranges(ck.to_numpy(codes), q, ranges, i, a, k, dist, idx)
    return dist, idx
