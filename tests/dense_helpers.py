"""Shared by test_dense.py and test_dense_gpu.py: data makers, the tie-aware
comparison against the float64 reference (check_topk) and the grid of cases."""
import itertools
import random

import numpy as np
import pytest

import nestvec.ops as ops
from nestvec.ops import dense as dense_op
from nestvec import reference as R


try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

METRICS = ("cosine", "ip", "l2")
DTYPES = ("float32", "float16", "bfloat16")
# Relative tolerance (times the query's score scale) per backend family and dtype.
TOL = {"cpu": {"float32": 2e-5, "float16": 2e-5, "bfloat16": 2e-5},
       "gpu": {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1e-3}}


# --------------------------------------------------------------------------- helpers

def make_db(rng, n, d, dtype, zero_rows=True, dup_rows=True):
    """float32 master copy + the stored array (NumPy; bf16 as uint16 bit patterns)."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    if dup_rows and n > 4:
        x[n // 2] = x[1]  # an exact tie
    if zero_rows and n > 2:
        x[2] = 0.0
    if dtype == "float32":
        stored = x
    elif dtype == "float16":
        stored = x.astype(np.float16)
    else:
        stored = R.f32_to_bf16(x)
    return stored


def widened(stored, dtype):
    return R.bf16_to_f32(stored) if dtype == "bfloat16" else stored.astype(np.float32)


def true_scores(xw, q, dim, metric):
    """float64 [Q, N] scores of every row (for checking permuted ties)."""
    return R.dense_scores(xw[:, :dim], q[:, :dim].astype(np.float64), metric)


def score_scale(xw, q, dim, metric):
    qn = np.sqrt((q[:, :dim].astype(np.float64) ** 2).sum(1))
    xn = np.sqrt((xw[:, :dim].astype(np.float64) ** 2).sum(1)).max() if xw.shape[0] else 0.0
    if metric == "cosine":
        return np.ones_like(qn)
    if metric == "ip":
        return qn * xn + 1e-30
    return (qn + xn) ** 2 + 1e-30


def check_topk(s, i, sr, ir, full, scale, rtol, eligible=None, exact_ties=False):
    s, i = np.asarray(s), np.asarray(i)
    assert s.shape == sr.shape and i.shape == ir.shape
    assert s.dtype == np.float32 and i.dtype == np.int64
    pad = ir == -1
    np.testing.assert_array_equal(i == -1, pad, err_msg="padding differs")
    assert np.array_equal(s[pad], sr[pad]), "padding scores differ"
    tol = rtol * scale[:, None] + 1e-6
    diff = np.abs(np.where(pad, 0.0, s.astype(np.float64)) - np.where(pad, 0.0, sr.astype(np.float64)))
    assert (diff[~pad] <= np.broadcast_to(tol, diff.shape)[~pad]).all(), \
        f"scores differ: max {diff[~pad].max()}"
    for qi in range(i.shape[0]):
        row = i[qi][~pad[qi]]
        assert len(set(row.tolist())) == len(row), "duplicate rows in result"
        for p in np.flatnonzero(i[qi] != ir[qi]):
            assert not exact_ties, f"query {qi} pos {p}: {i[qi, p]} != {ir[qi, p]}"
            r = i[qi, p]
            if eligible is not None:
                assert eligible[qi][r], f"query {qi}: row {r} is not eligible"
            assert abs(full[qi, r] - sr[qi, p]) <= tol[qi, 0], \
                f"query {qi} pos {p}: row {r} scores {full[qi, r]}, reference {sr[qi, p]}"


def eligible_mask(n, nq, allow, cand):
    el = np.ones((nq, n), dtype=bool)
    if allow is not None:
        el &= allow[None, :]
    if cand is not None:
        m = np.zeros((nq, n), dtype=bool)
        for qi in range(nq):
            c = cand[qi]
            c = c[(c >= 0) & (c < n)]
            m[qi, c] = True
        el &= m
    return el


def make_candidates(rng, n, nq, c):
    cand = rng.integers(-1, n, size=(nq, c)).astype(np.int64)
    if c > 3:
        cand[:, 1] = cand[:, 0]  # duplicates
        cand[:, -1] = -1         # padding
    return cand


def tie_case(rng, n_base, reps, D, dim, nq, dtype, margin):
    """Rows that tie exactly: row r is base row r % n_base (reps copies each), so copies
    score identically on any backend and only the index orders them. The base rows are
    1 * e0 + t_j * e1 (t_j spread over [-0.5, 0.5], shuffled) plus small noise and the
    queries a * e0 + b * e1 with |a| <= 0.3 < 1 <= |b|, so every metric ranks the base
    rows by t_j, far apart: checked to be > margin (relative to the score scale) for every
    query and metric, so that no other order is legitimate and the result must equal the
    reference's exactly. Returns (stored, widened, queries)."""
    base = 0.02 * rng.standard_normal((n_base, D)).astype(np.float32)
    base[:, 0] = 1.0
    base[:, 1] = rng.permutation(np.linspace(-0.5, 0.5, n_base))
    x = np.tile(base, (reps, 1))
    stored = x if dtype == "float32" else x.astype(np.float16) if dtype == "float16" else \
        R.f32_to_bf16(x)
    xw = widened(stored, dtype)
    q = 0.02 * rng.standard_normal((nq, D)).astype(np.float32)
    q[:, 0] = rng.uniform(-0.3, 0.3, nq)
    q[:, 1] = rng.uniform(1.0, 2.0, nq) * rng.choice([-1.0, 1.0], nq)
    for metric in METRICS:
        sb = np.sort(true_scores(xw[:n_base], q, dim, metric), axis=1)
        gap = np.diff(sb, axis=1).min(1)
        assert (gap > margin * score_scale(xw, q, dim, metric)).all(), \
            f"test data: base rows too close under {metric}"
    return stored, xw, q


def check_tie_case(s, i, sr, ir, xw, q, dim, metric, rtol, n_base, eligible=None, exact=True):
    """check_topk on a tie_case; exact: the indices equal the reference's (ties by index)
    and copies of one base row score bit-equal."""
    s, i = np.asarray(s), np.asarray(i)
    check_topk(s, i, sr, ir, true_scores(xw, q, dim, metric), score_scale(xw, q, dim, metric),
               rtol, eligible, exact_ties=exact)
    if exact:
        same = (i[:, 1:] >= 0) & (i[:, 1:] % n_base == i[:, :-1] % n_base)
        assert (s[:, 1:][same] == s[:, :-1][same]).all(), "identical rows score differently"


def run_case(backend, rng, n, d_full, dim, nq, k, dtype, metric, use_allow, use_cand,
             to_torch=None, rtol=None, max_cand=None):
    """max_cand caps the candidate list length (min(3k, 2N) by default): the emulated
    CUDA gather costs per (query, candidate) pair."""
    stored = make_db(rng, n, d_full, dtype)
    xw = widened(stored, dtype)
    q = rng.standard_normal((nq, d_full)).astype(np.float32)
    if nq > 1:
        q[-1] = 0.0 if metric == "cosine" and nq > 2 else q[-1]  # a zero query
    allow = (rng.random(n) < 0.6) if use_allow else None
    n_cand = max(1, min(3 * k, 2 * n, max_cand or 3 * k))
    cand = make_candidates(rng, n, nq, n_cand) if use_cand else None
    sr, ir = R.dense_topk(xw, q.astype(np.float64), k, dim, metric, allow, cand)
    kw = dict(dim=dim, metric=metric, allow=allow, candidates=cand, backend=backend)
    if to_torch is None:
        s, i = ops.dense_topk(stored, q, k, db_dtype="bfloat16" if dtype == "bfloat16" else None,
                              **kw)
    else:
        db_t = torch.from_numpy(xw).to(getattr(torch, dtype)).to(to_torch)
        kw["allow"] = None if allow is None else torch.from_numpy(allow).to(to_torch)
        kw["candidates"] = None if cand is None else torch.from_numpy(cand).to(to_torch)
        s, i = ops.dense_topk(db_t, torch.from_numpy(q).to(to_torch), k, **kw)
        s, i = s.cpu().numpy(), i.cpu().numpy()
    full = true_scores(xw, q, dim, metric)
    fam = "cpu" if backend == "cpu" else "gpu"
    check_topk(s, i, sr, ir, full, score_scale(xw, q, dim, metric),
               rtol if rtol is not None else TOL[fam][dtype],
               eligible_mask(n, nq, allow, cand))


# (use_allow, use_cand): the four filter combinations of the grid.
FILTERS = ((False, False), (True, False), (False, True), (True, True))
DTYPE_METRICS = list(itertools.product(DTYPES, METRICS))


def grid_runs(offset):
    """(dtype, metric, use_allow, use_cand) for one grid case: every dtype x metric once,
    the four filter combinations rotating from ``offset``, so one case runs all four and
    cases with different offsets (offset = case number % 4) pair each dtype x metric
    with every combination."""
    return [(dtype, metric) + FILTERS[(j + offset) % 4]
            for j, (dtype, metric) in enumerate(DTYPE_METRICS)]


def grid_params(cases):
    """pytest params (case, offset) for a list of (D, d, N, Q, k) cases."""
    return [pytest.param(c, j % 4, id="D%d-d%d-N%d-Q%d-k%d" % c) for j, c in enumerate(cases)]


def grid_corners(max_k=dense_op.MAX_K_CPU, max_n=None):
    """The grid's extremes: smallest and largest D, N, Q and k (1 and N+3, capped at max_k)
    in every combination, d rotating over its three kinds. The first is the largest
    corner (768, 768, 5000, 64, N+3)."""
    out = []
    for j, (D, N, Q, ksel) in enumerate(itertools.product((768, 1), (5000, 1), (64, 1),
                                                           ("N+3", 1))):
        if max_n and N > max_n:
            continue
        d = (D, max(1, D // 2), 1)[j % 3]
        out.append((D, d, N, Q, min(N + 3, max_k) if ksel == "N+3" else ksel))
    return out


def grid_cases(count, seed, max_n=None):
    """A fixed sample of the issue's grid (D, d, N, Q, k) after all of its corners."""
    cases = []
    for D, dsel, N, Q, ksel in itertools.product((1, 3, 64, 97, 384, 768), (0, 1, 2),
                                                  (1, 7, 1023, 5000), (1, 3, 17, 64),
                                                  (1, 10, 100, "N+3")):
        if max_n and N > max_n:
            continue
        d = (1, max(1, D // 2), D)[dsel]
        k = min(N + 3, dense_op.MAX_K_CPU) if ksel == "N+3" else ksel
        cases.append((D, d, N, Q, k))
    rnd = random.Random(seed)
    picked = rnd.sample(cases, min(count, len(cases)))
    out = []
    for c in grid_corners(max_n=max_n) + picked:
        if c not in out:
            out.append(c)
    return out


def d_kind(D, d):
    return "1" if d == 1 else "D//2" if d == max(1, D // 2) else "D" if d == D else "other"


def assert_covers_grid(cases, max_k):
    """Every value of every axis of the issue's grid occurs in cases (D, d, N, Q, k, ...):
    each d kind (where D >= 4 tells them apart), and k = N+3 (capped at max_k) with
    N >= 1023 as well as with a small N."""
    assert {c[0] for c in cases} >= {1, 3, 64, 97, 384, 768}
    assert {d_kind(c[0], c[1]) for c in cases if c[0] >= 4} >= {"1", "D//2", "D"}
    assert {c[2] for c in cases} >= {1, 7, 1023, 5000}
    assert {c[3] for c in cases} >= {1, 3, 17, 64}
    assert {c[4] for c in cases} >= {1, 10, 100}
    assert any(c[4] == min(c[2] + 3, max_k) and c[2] >= 1023 for c in cases)
    assert any(c[4] == c[2] + 3 and c[2] < 1023 for c in cases)


