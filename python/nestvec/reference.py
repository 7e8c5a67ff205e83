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
