"""Shared data and brute-force oracles for the collection tests (fixed seeds)."""
from __future__ import annotations

import numpy as np

from nestvec import reference


def clustered(n, d, seed=0, clusters=8):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))
    return x.astype(np.float32)


def oracle(vectors, ids, queries, k, dim=None, metric="cosine", allow=None):
    """Exact top-k ids/scores over ``vectors`` (row order = tie order)."""
    s, i = reference.dense_topk(np.asarray(vectors, np.float32), np.asarray(queries, np.float64), k,
                                dim, metric, allow)
    out = []
    for qs, qi in zip(s, i):
        keep = qi >= 0
        out.append((np.asarray(ids)[qi[keep]], qs[keep]))
    return out


def hamming_oracle(codes, ids, qcodes, k, allow=None):
    d, i = reference.hamming_topk(codes, qcodes, k, allow)
    return [(np.asarray(ids)[qi[qi >= 0]], qd[qi >= 0]) for qd, qi in zip(d, i)]


def per_query(table):
    """pa.Table of search results -> list of (ids, scores) per query index."""
    q = table.column("query").to_numpy()
    ids = np.asarray(table.column("id").to_pylist())
    sc = table.column("score").to_numpy()
    nq = int(q.max()) + 1 if len(q) else 0
    return [(ids[q == j], sc[q == j]) for j in range(nq)]


def assert_same_hits(got, want, atol=1e-4):
    """Tie-aware: scores close; ids equal except among scores within atol of each other."""
    assert len(got) == len(want)
    for (gi, gs), (wi, ws) in zip(got, want):
        assert len(gi) == len(wi)
        np.testing.assert_allclose(gs, ws, atol=atol, rtol=1e-4)
        for j in range(len(gi)):
            if gi[j] != wi[j]:
                near = np.abs(ws - ws[j]) <= atol
                assert gi[j] in set(wi[near].tolist()), (j, gi, wi)
