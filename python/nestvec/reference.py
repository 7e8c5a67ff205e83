"""NumPy reference of every op: the executable specification the kernels are tested
against. Readable first; fast enough for tests. Inputs are NumPy arrays (ops.py
converts torch tensors before calling in here)."""
from __future__ import annotations

import numpy as np

INT32_MAX = np.iinfo(np.int32).max


def _popcount_u8(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x[..., None], axis=-1).sum(-1).astype(np.uint8)


def hamming_distances(codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances, int64 [Q, N]; codes/queries uint8 [*, B]."""
    out = np.empty((queries.shape[0], codes.shape[0]), dtype=np.int64)
    for i, q in enumerate(queries):
        out[i] = _popcount_u8(np.bitwise_xor(codes, q)).sum(axis=1, dtype=np.int64)
    return out


def hamming_topk(codes, queries, k, allow=None):
    """Exact top-k smallest Hamming distances.

    codes uint8 [N, B], queries uint8 [Q, B], allow bool [N] or None.
    Returns (dist int32 [Q, k], idx int64 [Q, k]) ordered by distance, then index;
    fewer than k eligible rows are padded with (INT32_MAX, -1)."""
    n, q = codes.shape[0], queries.shape[0]
    dist = np.full((q, k), INT32_MAX, dtype=np.int32)
    idx = np.full((q, k), -1, dtype=np.int64)
    if n == 0 or q == 0:
        return dist, idx
    d = hamming_distances(codes, queries)
    rows = np.arange(n) if allow is None else np.flatnonzero(allow)
    for i in range(q):
        di = d[i, rows]
        order = np.argsort(di, kind="stable")[:k]  # stable: ties keep index order
        m = order.shape[0]
        dist[i, :m] = di[order]
        idx[i, :m] = rows[order]
    return dist, idx


def hamming_topk_ranges(codes, queries, k, ranges, ids=None, allow=None):
    """Top-k smallest Hamming distances among the positions of each query's ranges.

    codes uint8 [N, B], queries uint8 [Q, B], ranges int64 [Q, P, 2] of (start, stop)
    positions (disjoint within a query; stop <= start is empty; clipped to [0, N]),
    ids int [N] (the row id of each position; None: the position), allow bool [M]
    indexed by id. Returns (dist int32 [Q, k], id int64 [Q, k]) ordered by distance,
    then id; padding (INT32_MAX, -1)."""
    n, q = codes.shape[0], queries.shape[0]
    dist = np.full((q, k), INT32_MAX, dtype=np.int32)
    out = np.full((q, k), -1, dtype=np.int64)
    for i in range(q):
        pos = [np.arange(max(0, a), min(n, b)) for a, b in ranges[i] if min(n, b) > max(0, a)]
        pos = np.concatenate(pos) if pos else np.zeros(0, np.int64)
        rid = pos if ids is None else np.asarray(ids, np.int64)[pos]
        if allow is not None:
            keep = np.asarray(allow, bool)[rid]
            pos, rid = pos[keep], rid[keep]
        if not len(pos):
            continue
        d = hamming_distances(codes[pos], queries[i:i + 1])[0]
        order = np.lexsort((rid, d))[:k]
        dist[i, :len(order)] = d[order]
        out[i, :len(order)] = rid[order]
    return dist, out


# --------------------------------------------------------------------------- dense_topk

METRICS = ("cosine", "ip", "l2")


def bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        r[nan] = 0x7FC0
    return r


def dense_scores(db: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """float64 [Q, N] scores on full rows of db (already sliced to the prefix).

    cosine: q.x / (|q| |x|), 0 where either norm is 0; ip: q.x; l2: |q - x|^2."""
    x = db.astype(np.float64)
    q = queries.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf rows score NaN / inf
        if metric == "ip":
            return q @ x.T
        if metric == "l2":
            return (q * q).sum(1)[:, None] - 2.0 * (q @ x.T) + (x * x).sum(1)[None, :]
    xn = np.sqrt((x * x).sum(1))
    qn = np.sqrt((q * q).sum(1))
    denom = qn[:, None] * xn[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(denom > 0, (q @ x.T) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.where(np.isnan(xn)[None, :], np.nan, s)  # a NaN row is not a zero row


def dense_topk(db, queries, k, dim=None, metric="cosine", allow=None, candidates=None):
    """Exact top-k over the first ``dim`` values of each row (Matryoshka prefix).

    db float [N, D] (float32 / float16, or bf16 already widened to float32), queries
    float [Q, >= dim]. cosine / ip: best = highest score; l2: best = smallest squared
    distance. Ties by index ascending. candidates: optional int64 [Q, C] row ids
    (-1 = padding, duplicates allowed): only those rows are eligible for a query. Rows
    whose score is not finite (NaN or inf in the prefix) are not eligible. Returns (score float32 [Q, k], idx int64 [Q, k]); padding is (-inf, -1) for
    cosine / ip and (+inf, -1) for l2."""
    n, d_full = db.shape
    dim = d_full if dim is None else dim
    nq = queries.shape[0]
    worst = np.inf if metric == "l2" else -np.inf
    score = np.full((nq, k), worst, dtype=np.float32)
    idx = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or nq == 0:
        return score, idx
    s = dense_scores(db[:, :dim], queries[:, :dim], metric)
    eligible = np.ones(n, dtype=bool) if allow is None else np.asarray(allow, dtype=bool)
    for i in range(nq):
        if candidates is None:
            rows = np.flatnonzero(eligible)
        else:
            c = candidates[i]
            c = np.unique(c[(c >= 0) & (c < n)])
            rows = c[eligible[c]]
        si = s[i, rows]
        finite = np.isfinite(si)  # NaN / inf in the prefix (or overflow): never returned
        rows, si = rows[finite], si[finite]
        key = si if metric == "l2" else -si
        order = np.lexsort((rows, key))[:k]
        m = order.shape[0]
        score[i, :m] = si[order]
        idx[i, :m] = rows[order]
    return score, idx


# --------------------------------------------------------------------------- pool


POOL_MODES = ("mean", "cls", "last", "max", "weighted_mean")


def pool_weights(mask: np.ndarray, mode: str) -> np.ndarray:
    """float64 [B, T] token weights of a pooling mode (0 on padding).

    mean: 1 per unmasked token. weighted_mean: the token's 1-based rank among the
    unmasked tokens of its row (1, 2, ..., n; SGPT-style position weighting that
    does not depend on the padding side). cls: 1 on the first unmasked token;
    last: 1 on the last unmasked token. Rows with an all-zero mask get no weight."""
    m = (np.asarray(mask) != 0)
    if mode == "mean":
        return m.astype(np.float64)
    if mode == "weighted_mean":
        return (np.cumsum(m, axis=1) * m).astype(np.float64)
    w = np.zeros(m.shape, dtype=np.float64)
    rows = np.flatnonzero(m.any(axis=1))
    if mode == "cls":
        w[rows, m[rows].argmax(axis=1)] = 1.0
    elif mode == "last":
        w[rows, m.shape[1] - 1 - m[rows, ::-1].argmax(axis=1)] = 1.0
    else:
        raise ValueError(f"no weights for mode {mode!r}")
    return w


def pool(hidden, mask, mode="mean", normalize=True, dim=None, binary=False):
    """Pool token states into one vector per row (the spec of ops.pool).

    hidden float [B, T, H] (float32 / float16, or bf16 widened to float32), mask [B, T]
    (nonzero = token present; left or right padding). Modes: ``mean`` (average of the
    unmasked tokens), ``weighted_mean`` (weights from :func:`pool_weights`), ``cls``
    (first unmasked token), ``last`` (last unmasked token), ``max`` (element-wise max
    over the unmasked tokens). The result is truncated to its first ``dim`` values and
    then, with ``normalize``, divided by its L2 norm (Matryoshka: truncate, then
    normalize). A row whose mask is all zero gives a zero vector (and zero code bits).
    Returns float32 [B, d], plus uint8 [B, ceil(d/8)] sign bits
    (``numpy.packbits(emb > 0)``) when ``binary``."""
    h = np.asarray(hidden)
    d = h.shape[2] if dim is None else dim
    h = h[:, :, :d].astype(np.float64)
    m = np.asarray(mask) != 0
    n = m.sum(axis=1)
    if mode == "max":
        x = np.where(m[:, :, None], h, -np.inf).max(axis=1) if h.shape[1] else np.zeros((h.shape[0], d))
        x[n == 0] = 0.0
    else:
        w = pool_weights(m, mode)
        x = np.einsum("bt,btd->bd", w, h)
        tot = w.sum(axis=1)
        x = x / np.where(tot > 0, tot, 1.0)[:, None]
    if normalize:
        norm = np.sqrt((x * x).sum(axis=1))
        x = x / np.where(norm > 0, norm, 1.0)[:, None]
    emb = x.astype(np.float32)
    if binary:
        return emb, np.packbits(x > 0, axis=-1)
    return emb


# --------------------------------------------------------------------------- lowrank_sparse_matmul

def lowrank_sparse_matmul(x, A, B, S, channels, bias=None):
    """y = x Aᵀ Bᵀ + scatter_cols(x Sᵀ, channels) + bias, computed in float64.

    x [M, K], A [r, K], B [N, r], S [c, K] (rows of the sparse part), channels int [c]
    (unique output columns), bias [N] or None. Any float dtype (bfloat16 already
    widened). Returns float64 [M, N]."""
    x = np.asarray(x, dtype=np.float64)
    y = (x @ np.asarray(A, dtype=np.float64).T) @ np.asarray(B, dtype=np.float64).T
    ch = np.asarray(channels, dtype=np.int64)
    if ch.size:
        y[:, ch] += x @ np.asarray(S, dtype=np.float64).T
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :]
    return y


def lowrank_sparse_dense_weight(A, B, S, channels, n_out=None):
    """The dense weight W = B·A + S (S scattered to rows ``channels``), float64 [N, K]."""
    W = np.asarray(B, dtype=np.float64) @ np.asarray(A, dtype=np.float64)
    ch = np.asarray(channels, dtype=np.int64)
    if ch.size:
        W[ch] += np.asarray(S, dtype=np.float64)
    return W


def hamming_topk_segments(queries, k, segs, lists=None):
    """Hamming top-k over several segments (the host planner's one-call stage).

    ``segs[i]``: None or (codes, allow, position, k_i, ranges, ids): each segment's
    own top ``k_i`` (``hamming_topk``, or ``hamming_topk_ranges`` over ``ranges``
    [Q, P, 2], or with ``lists`` [Q, P] over the lists of offsets ``ranges``
    [nlist + 1]), merged by (distance, global position); position is the first row's
    global position, or an int64 array of each local row's (increasing within a
    segment). Returns (dist int32, seg, local int64) [Q, min(k, sum of k_i)] (as wide as
    a merge of the segments' lists); missing (INT32_MAX, -1, -1).
    """
    nq = queries.shape[0]
    k = min(k, sum(g[3] for g in segs if g is not None and len(g[0])))
    rows = []
    for s, g in enumerate(segs):
        if g is None or g[3] <= 0 or len(g[0]) == 0:
            continue
        codes, allow, pos, kk, ranges, ids = g
        codes = codes[:, :queries.shape[1]]
        if lists is not None and ranges is not None:
            ranges = np.stack([ranges[lists], ranges[lists + 1]], axis=-1)
        if ranges is None:
            d, x = hamming_topk(codes, queries, kk, allow)
        else:
            d, x = hamming_topk_ranges(codes, queries, kk, ranges, ids, allow)
        gp = np.where(x >= 0, (pos[np.maximum(x, 0)] if isinstance(pos, np.ndarray) else x + pos), -1)
        rows.append((d.astype(np.int64), gp, np.full(x.shape, s), x))
    dist = np.full((nq, k), np.iinfo(np.int32).max, np.int32)
    seg = np.full((nq, k), -1, np.int64)
    local = np.full((nq, k), -1, np.int64)
    for q in range(nq):
        hits = [(int(d[q, j]), int(gp[q, j]), int(s[q, j]), int(x[q, j]))
                for d, gp, s, x in rows for j in range(x.shape[1]) if x[q, j] >= 0]
        hits.sort(key=lambda h: (h[0], h[1]))
        for j, h in enumerate(hits[:k]):
            dist[q, j], seg[q, j], local[q, j] = h[0], h[2], h[3]
    return dist, seg, local
