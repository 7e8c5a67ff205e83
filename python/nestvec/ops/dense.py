"""dense_topk and funnel_topk: exact elastic-dimension (Matryoshka) top-k."""
from __future__ import annotations

import numpy as np

from .. import _backend as be
from .. import _checks as ck
from .. import reference

# The k of one fused pass as the kernels were sized and benchmarked. Larger k works on
# every backend (see dense_topk); funnel_topk caps its default shortlists here.
MAX_K_CPU = 4096
MAX_K_GPU = 2048


def max_k(backend: str) -> int:
    """The k of ``backend``'s fused pass (any k runs; this is where defaults stop)."""
    return MAX_K_GPU if backend in ("cuda", "triton") else MAX_K_CPU


def _dense_db(db, db_dtype):
    """Validate the stored vectors; returns (db, logical dtype name)."""
    db = ck.as_array_like(db, "db")
    ck.check_ndim(db, "db", (2,), "a 2-D array [N, D]")
    dt = ck.float_storage(db, "db", "db_dtype", db_dtype, "[N, D]")
    if db.shape[1] == 0:
        raise ValueError("db: expected at least one column")
    if dt == "bfloat16" and ck.is_torch(db) and ck.dtype_name(db) != "bfloat16":
        import torch

        db = db.view(torch.bfloat16)  # uint16 bit patterns flagged db_dtype="bfloat16"
    return ck.row_contiguous(db, "db"), dt


def _dense_queries(queries, d_full, dim):
    queries = ck.as_array_like(queries, "queries")
    ck.check_ndim(queries, "queries", (1, 2), "[Q, D] or [D]")
    ck.check_dtype(queries, "queries", ("float32", "float16", "bfloat16", "float64"),
                   "a float type [Q, D]")
    if queries.shape[-1] not in (d_full, dim):
        raise ValueError(f"queries: expected {d_full} (or dim={dim}) values per query, got "
                         f"{queries.shape[-1]}")
    return queries


def _check_candidates(candidates, nq, ref):
    if candidates is None:
        return None
    candidates = ck.as_array_like(candidates, "candidates")
    ck.check_same_device("db", ref, "candidates", candidates)
    ck.check_dtype(candidates, "candidates", ("int64", "int32"), "int64 [Q, C] row ids")
    ck.check_ndim(candidates, "candidates", (2,), "a 2-D array [Q, C] (-1 = padding)")
    if candidates.shape[0] != nq:
        raise ValueError(f"candidates: expected one row per query ({nq}), got {candidates.shape[0]}")
    if candidates.shape[0] and candidates.shape[1]:
        # an id past N (say, from another segment) is a caller's bug: say so instead
        # of silently scoring fewer rows (one host sync on a device)
        if ck.is_torch(candidates):
            import torch

            lo, hi = (int(v) for v in torch.aminmax(candidates))
        else:
            lo, hi = int(candidates.min()), int(candidates.max())
        n = ref.shape[0]
        if lo < -1 or hi >= n:
            raise ValueError(f"candidates: row ids must lie in [0, N={n}) or be -1 (padding), "
                             f"got range [{lo}, {hi}]")
    return candidates


def dense_topk(db, queries, k: int, dim: int | None = None, metric: str = "cosine", allow=None,
               candidates=None, *, db_dtype: str | None = None, backend: str = "auto"):
    """Exact elastic-dimension top-k (Matryoshka): score the first ``dim`` values only.

    Args:
        db: stored vectors ``[N, D]``, float32 / float16 / bfloat16 (a torch.bfloat16
            tensor, or a NumPy array / torch tensor of uint16 with
            ``db_dtype="bfloat16"``). Rows may be strided; each row must be contiguous.
            Never copied, and not scanned for NaN / inf (that would be a second pass):
            a row whose score is not finite (NaN or inf in its prefix, or an overflow)
            is never returned, on every backend.
        queries: ``[Q, D]`` (or ``[Q, dim]``, or one ``[D]`` query), any float type.
        k: results per query, ``>= 1``, any size (``k > N`` pads, by up to 4096
            columns). The GPU backends keep min(k, block rows) keys per block of rows
            and merge them with ``torch.topk`` in bounded chunks, so any k is one scan;
            the CPU kernel's selection buffers grow with k, so above 4096 its queries
            go in slices (``_checks.LARGE_K_KEYS``).
        dim: prefix length ``1 <= dim <= D``; default D. The prefix norm of each row is
            computed in the same pass (no stored norms).
        metric: ``cosine`` | ``ip`` (higher is better) | ``l2`` (squared distance,
            lower is better). Zero-norm rows score 0 under cosine; so do rows whose
            squared prefix norm leaves float32's range (float32 / bfloat16 storage with
            a norm above ~1.8e19 or below ~1e-19: the kernels accumulate in float32;
            nestvec.Collection refuses such rows).
        allow: optional bool ``[N]`` mask (or packed uint8 bitset) of eligible rows.
        candidates: optional int ``[Q, C]`` row ids per query in ``[0, N)`` (``-1`` =
            padding, duplicates ignored): top-k among those rows only (rescoring).

    Returns:
        ``(score float32 [Q, k], idx int64 [Q, k])``, best first, ties by index;
        padding ``(-inf, -1)`` (cosine/ip) or ``(+inf, -1)`` (l2).
    """
    db, dt = _dense_db(db, db_dtype)
    n, d_full = db.shape
    dim = ck.check_dim(dim, d_full)
    queries = _dense_queries(queries, d_full, dim)
    single = queries.ndim == 1
    if single:
        queries = queries[None, :]
    k = ck.check_k(k)
    ck.check_choice(metric, "metric", reference.METRICS)
    ck.check_same_device("db", db, "queries", queries)
    ck.check_finite(queries, "queries")
    allow = ck.check_allow(allow, n, db, "db")
    candidates = _check_candidates(candidates, queries.shape[0], db)
    name = be.resolve(backend, db)
    be.check_inputs(name, db, "db", queries=queries, allow=allow, candidates=candidates)
    ck.check_k_rows(k, n, MAX_K_CPU)
    if n == 0 or queries.shape[0] == 0:  # nothing to scan, so any device is fine
        if name != "reference":
            db, queries, allow, candidates = (a.detach().cpu() if ck.is_torch(a) else a
                                              for a in (db, queries, allow, candidates))
        name = "reference"
    fn = be.implementation("dense_topk", name)
    if name == "cpu" and k > ck.LARGE_K_MIN:
        s, i = ck.by_query_slices(
            lambda q0, q1: fn(db, dt, queries[q0:q1], k, dim, metric, allow,
                              None if candidates is None else candidates[q0:q1]),
            queries.shape[0], k)
    else:
        s, i = fn(db, dt, queries, k, dim, metric, allow, candidates)
    return (s[0], i[0]) if single else (s, i)


# Backends: fn(db, dtype name, queries [Q, >= dim], k, dim, metric, allow, candidates).

@be.register("dense_topk", "reference")
def _reference(db, dt, queries, k, dim, metric, allow, candidates):
    s, i = _reference_numpy(db, dt, queries, k, dim, metric, allow, candidates)
    return ck.like(s, db), ck.like(i, db)


def _reference_numpy(db, dt, queries, k, dim, metric, allow, candidates):
    if ck.is_torch(db):
        import torch

        x = db.detach()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    else:
        x = reference.bf16_to_f32(db) if dt == "bfloat16" else db
    q = ck.to_numpy(queries.float() if ck.is_torch(queries) else queries).astype(np.float64)
    return reference.dense_topk(x, q, k, dim, metric, ck.to_numpy(allow), ck.to_numpy(candidates))


@be.register("dense_topk", "cpu")
def _cpu(db, dt, queries, k, dim, metric, allow, candidates):
    """C++ backend: the stored rows are passed as they are (strided view, no copy)."""
    x = ck.host_view(db) if ck.is_torch(db) else db
    q = queries[:, :dim]
    if ck.is_torch(q):
        import torch

        q = q.detach()
        q = (q if q.dtype == torch.float64 else q.float()).numpy()
    if metric == "cosine":
        # unit queries: the kernel's float32 1/|q| overflows for |q| beyond float32's
        # range (a float64 query of 1e39, a float32 one of 1e-40); scores are unchanged
        q = q.astype(np.float64)  # the one copy, normalised in place
        nrm = np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]
        np.divide(q, nrm, out=q, where=nrm > 0)
    with np.errstate(over="ignore"):
        q = np.ascontiguousarray(q, dtype=np.float32)
    if metric != "cosine" and not np.isfinite(q).all():
        raise ValueError("queries: values beyond float32's range (the cpu backend scores in "
                         "float32); rescale the queries")
    a = None
    if allow is not None:
        a = allow.detach().numpy() if ck.is_torch(allow) else allow
        a = np.ascontiguousarray(a, dtype=bool).view(np.uint8)
    c = None
    if candidates is not None:
        c = candidates.detach().numpy() if ck.is_torch(candidates) else candidates
        c = np.ascontiguousarray(c, dtype=np.int64)
    score = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    be._C.dense_topk(x, be.DTYPE_CODE[dt], dim, q, k, be.METRIC_CODE[metric], a, c, score, idx)
    return ck.like(score, db), ck.like(idx, db)


@be.register("dense_topk", "triton")
def _triton(db, dt, queries, k, dim, metric, allow, candidates):
    from ..kernels import dense as tk

    return tk.dense_topk(db, queries, k, dim, metric, allow, candidates)


@be.register("dense_topk", "cuda")
def _cuda(db, dt, queries, k, dim, metric, allow, candidates):
    from .. import _dense_gpu

    return _dense_gpu.dense_topk_cuda(be.CUDA, db, queries, k, dim, metric, allow, candidates)


def funnel_topk(db, queries, k: int, dims=(64, 256, None), shortlist=None, metric: str = "cosine",
                allow=None, *, db_dtype: str | None = None, backend: str = "auto"):
    """Matryoshka ladder: an exact scan at a short prefix, then exact rescoring of
    shrinking shortlists at wider prefixes (Matryoshka adaptive retrieval).

    Stage 0 runs ``dense_topk`` over every (allowed) row at ``dims[0]`` and keeps
    ``shortlist[0]`` rows per query; stage i >= 1 rescores the previous survivors at
    ``dims[i]`` through the ``candidates`` path and keeps ``shortlist[i]`` rows (the
    last stage keeps ``k``). The result is exact at ``dims[-1]`` *among the survivors*:
    it equals ``dense_topk(..., dim=dims[-1])`` whenever the true top-k survive every
    cut (always when ``shortlist[0] >= N``); recall otherwise depends on how much the
    embedding front-loads information into its prefix (Matryoshka-trained models do).

    Args:
        db, queries, metric, allow, db_dtype, backend: as in :func:`dense_topk`.
        k: results per query.
        dims: increasing prefix lengths; ``None`` means the stored width D. Values above
            D are clipped to D and repeats dropped.
        shortlist: rows kept after each stage but the last, non-increasing, each
            ``>= k``, any size; one per stage but the last. Default: ``k * 16``,
            ``k * 4``, ... (factor 4 per stage), capped at the backend's fused-pass k
            (:func:`max_k`) but never below k.

    Returns:
        ``(score float32 [Q, k], idx int64 [Q, k])`` at ``dims[-1]``, as dense_topk.
    """
    db_checked, _ = _dense_db(db, db_dtype)
    d_full = db_checked.shape[1]
    k = ck.check_k(k)
    ck.check_choice(metric, "metric", reference.METRICS)
    dims = ck.int_sequence(dims, "dims", allow_none=True)
    if len(dims) == 0:
        raise ValueError("dims: expected at least one prefix length")
    ladder = []
    for d in dims:
        if d is None:
            d = d_full
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            d = min(int(d), d_full)
        d = ck.check_dim(d, d_full)
        if ladder and d < ladder[-1]:
            raise ValueError(f"dims: expected increasing prefix lengths, got {tuple(dims)}")
        if not ladder or d != ladder[-1]:
            ladder.append(d)
    name = be.resolve(backend, db_checked)
    limit = max_k(name)
    stages = len(ladder) - 1
    if shortlist is None:
        shortlist = tuple(max(k, min(limit, k * 4 ** (stages - i))) for i in range(stages))
    shortlist = ck.int_sequence(shortlist, "shortlist")
    if len(shortlist) != stages:
        raise ValueError(f"shortlist: expected {stages} sizes (one per stage but the last) for "
                         f"dims {tuple(ladder)}, got {len(shortlist)}")
    prev = None
    for s in shortlist:
        s = ck.check_k(s, "shortlist")
        if s < k or (prev is not None and s > prev):
            raise ValueError(f"shortlist: expected non-increasing sizes >= k={k}, got {shortlist}")
        prev = s
    # a shortlist beyond the N rows keeps them all (and only padding beyond)
    n = db_checked.shape[0]
    keeps = tuple(min(s, max(n, 1)) for s in shortlist) + (k,)
    queries = _dense_queries(queries, d_full, ladder[-1])
    single = queries.ndim == 1
    if single:  # the later stages pass [Q, C] candidates, so queries stay 2-D
        queries = queries[None, :]
    # a prefix query (dims[-1] values) feeds each stage its first d values
    at = (lambda d: queries) if queries.shape[1] == d_full else (lambda d: queries[:, :d])
    score, idx = dense_topk(db, at(ladder[0]), keeps[0], dim=ladder[0], metric=metric,
                            allow=allow, db_dtype=db_dtype, backend=backend)
    for d, keep in zip(ladder[1:], keeps[1:]):
        score, idx = dense_topk(db, at(d), keep, dim=d, metric=metric, candidates=idx,
                                db_dtype=db_dtype, backend=backend)
    return (score[0], idx[0]) if single else (score, idx)

