"""dense_topk / funnel_topk against the float64 reference (nestvec.reference).

Comparison is tie-aware (check_topk): scores allclose per position with a per-dtype
tolerance, padding identical, and wherever an index differs from the reference the
returned row must be eligible and score, in float64, within tolerance of the
reference score at that position (a legitimate permutation among near-ties).
"""
import itertools
import os
import random
import zlib

import numpy as np
import pytest

import nestvec.ops as ops
from nestvec import _backend
from nestvec import _checks as ck
from nestvec.ops import dense as dense_op
from nestvec import reference as R

import nvemu
from conftest import cpu_isas, require_nvemu

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


# --------------------------------------------------------------------------- CPU

CPU_CASES = grid_cases(30, seed=3)


def test_cpu_grid_sample_covers():
    """The CPU grid's sample (no backend runs here): every case runs the four allow /
    candidates combinations, every dtype x metric meets each of them somewhere, and the
    corners (largest D, N, Q, k with every dtype x metric) are in."""
    all_runs = set()
    for j, case in enumerate(CPU_CASES):
        runs = grid_runs(j % 4)
        assert {(ua, uc) for _, _, ua, uc in runs} == set(FILTERS), case
        assert {(dt, m) for dt, m, _, _ in runs} == set(DTYPE_METRICS), case
        all_runs |= set(runs)
    assert all_runs == {dm + f for dm in DTYPE_METRICS for f in FILTERS}
    kmax = dense_op.MAX_K_CPU
    assert CPU_CASES[0] == (768, 768, 5000, 64, kmax)
    for D, N, Q in itertools.product((1, 768), (1, 5000), (1, 64)):
        for k in (1, min(N + 3, kmax)):
            assert any(c[0] == D and c[2] == N and c[3] == Q and c[4] == k for c in CPU_CASES)
    assert {d_kind(c[0], c[1]) for c in CPU_CASES if c[0] == 768 and c[2] == 5000} == \
        {"1", "D//2", "D"}
    assert_covers_grid(CPU_CASES, kmax)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_long_candidate_lists(isa, restore_isa):
    """Candidate lists long enough that one query's rows are split over the threads
    (forced to 4, whatever the machine), ascending and unique (a filter's rows: no
    sort) or random with duplicates and padding, with and without allow."""
    import nestvec as nv

    _backend._C.set_isa(isa)
    threads = nv.get_num_threads()
    nv.set_num_threads(4)
    try:
        rng = np.random.default_rng(7)
        n, D, dim, k = 20000, 97, 64, 50
        for dtype in DTYPES:
            stored = make_db(rng, n, D, dtype)
            xw = widened(stored, dtype)
            for nq, kind, use_allow in [(1, "sorted", False), (1, "random", True), (2, "sorted", True),
                                        (5, "random", False)]:
                if kind == "sorted":
                    rows = np.flatnonzero(rng.random(n) < 0.5)
                    cand = np.ascontiguousarray(np.broadcast_to(rows, (nq, len(rows))))
                else:
                    cand = make_candidates(rng, n, nq, 9000)
                allow = (rng.random(n) < 0.7) if use_allow else None
                for metric in METRICS:
                    q = rng.standard_normal((nq, D)).astype(np.float32)
                    sr, ir = R.dense_topk(xw, q.astype(np.float64), k, dim, metric, allow, cand)
                    s, i = ops.dense_topk(stored, q, k, dim=dim, metric=metric, allow=allow,
                                          candidates=cand, backend="cpu",
                                          db_dtype="bfloat16" if dtype == "bfloat16" else None)
                    check_topk(s, i, sr, ir, true_scores(xw, q, dim, metric),
                               score_scale(xw, q, dim, metric), TOL["cpu"][dtype],
                               eligible_mask(n, nq, allow, cand))
    finally:
        nv.set_num_threads(threads)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("case,offset", grid_params(CPU_CASES))
def test_cpu_grid(isa, case, offset, restore_isa):
    _backend._C.set_isa(isa)
    D, d, N, Q, k = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    # every dtype x metric; allow / candidates rotate so each case covers all four
    for dtype, metric, use_allow, use_cand in grid_runs(offset):
        run_case("cpu", rng, N, D, d, Q, k, dtype, metric, use_allow, use_cand)


@pytest.mark.slow
@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_full_grid(isa, restore_isa):
    """The issue's whole grid (every combination, ~1 h on 2 cores): opt in with
    NESTVEC_FULL_GRID=1."""
    if not os.environ.get("NESTVEC_FULL_GRID"):
        pytest.skip("set NESTVEC_FULL_GRID=1 to run the full grid")
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(11)
    for case in grid_cases(1152, seed=0):
        D, d, N, Q, k = case
        for dtype, metric, ua, uc in itertools.product(DTYPES, METRICS, (False, True), (False, True)):
            run_case("cpu", rng, N, D, d, Q, k, dtype, metric, ua, uc)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_exact_ties_by_index(isa, restore_isa):
    """Identical rows score identically, so the order must be exactly the reference's."""
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 97)).astype(np.float32)
    x = np.concatenate([base] * 30)  # 1200 rows, each repeated 30 times
    q = rng.standard_normal((5, 97)).astype(np.float32)
    for dtype in DTYPES:
        stored = x if dtype == "float32" else x.astype(np.float16) if dtype == "float16" else R.f32_to_bf16(x)
        xw = widened(stored, dtype)
        for metric in METRICS:
            for k in (1, 31, 100):
                sr, ir = R.dense_topk(xw, q.astype(np.float64), k, 50, metric)
                s, i = ops.dense_topk(stored, q, k, dim=50, metric=metric, backend="cpu",
                                      db_dtype="bfloat16" if dtype == "bfloat16" else None)
                # equal float32 keys -> index order; compare the tie structure exactly
                np.testing.assert_array_equal(i, ir)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
def test_cpu_strided_prefix_view_and_torch_inputs():
    rng = np.random.default_rng(8)
    wide = rng.standard_normal((3000, 200)).astype(np.float16)
    view = wide[:, :150]  # rows 200 apart: read in place
    q = rng.standard_normal((4, 150)).astype(np.float32)
    for metric in METRICS:
        s, i = ops.dense_topk(view, q, 25, dim=70, metric=metric, backend="cpu")
        sr, ir = ops.dense_topk(view, q, 25, dim=70, metric=metric, backend="reference")
        full = true_scores(view.astype(np.float32), q, 70, metric)
        check_topk(s, i, sr, ir, full, score_scale(view.astype(np.float32), q, 70, metric), 2e-5)
    if torch is None:
        return
    t = torch.from_numpy(view.astype(np.float32)).to(torch.bfloat16)
    s, i = ops.dense_topk(t, torch.from_numpy(q), 7, dim=33)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and i.dtype == torch.int64
    sr, ir = ops.dense_topk(t, torch.from_numpy(q), 7, dim=33, backend="reference")
    assert torch.allclose(s, sr, atol=1e-4) and (i == ir).float().mean() > 0.95
    # a query of width dim is accepted as well as width D
    s2, i2 = ops.dense_topk(t, torch.from_numpy(q[:, :33]).contiguous(), 7, dim=33)
    assert torch.equal(i2, i)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
def test_cpu_large_k_and_threads():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((20000, 64)).astype(np.float16)
    q = rng.standard_normal((3, 64)).astype(np.float32)
    for k in (4096, 1000):
        s, i = ops.dense_topk(x, q, k, metric="ip", backend="cpu")
        sr, ir = ops.dense_topk(x, q, k, metric="ip", backend="reference")
        full = true_scores(x.astype(np.float32), q, 64, "ip")
        check_topk(s, i, sr, ir, full, score_scale(x.astype(np.float32), q, 64, "ip"), 2e-5)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_query_block_shapes(isa, restore_isa):
    """Every query-block width of the CPU kernels (1, 2, 4, 8, 12 and their sums) on
    whole contiguous rows (the streaming kernel) and on strided prefixes, and batches
    of 32+ queries (the packed GEMM route where the ISA has one: full blocks of 6 and a
    short last block, panels of rows past the tile's end)."""
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(14)
    for D, d, nq in ((97, 97, 8), (33, 33, 11), (1, 1, 9), (768, 768, 15), (97, 50, 8),
                     (64, 64, 2), (64, 32, 1), (40, 40, 5), (97, 97, 37), (70, 33, 40),
                     (5, 5, 32)):
        for dtype, metric in (("float16", "cosine"), ("float32", "l2"), ("bfloat16", "ip")):
            run_case("cpu", rng, 1023, D, d, nq, 10, dtype, metric, False, False)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
def test_cpu_query_slices():
    """More than 4096 queries are processed in slices (bounded selector memory)."""
    rng = np.random.default_rng(15)
    for n, d in ((1023, 8), (5000, 64)):
        run_case("cpu", rng, n, d, d, 4100, 10, "float16", "cosine", True, False)


# Two-pass route (csrc/cpu/dense_bf16.cpp): an approximate scan (bfloat16 on AVX-512,
# int16 with a scale per row on AVX2), exact rescoring of a shortlist, a certificate per
# query, float32 scan for the rest. Taken for Q >= 16, Q * dim >= 8192 and N >= 4096.
TWO_PASS_ISAS = ("avx512", "avx2")
BF16_CASES = [  # (D, d, N, Q, k)
    (768, 768, 5000, 17, 10), (768, 384, 4099, 64, 1), (384, 384, 5000, 32, 100),
    (97, 97, 4099, 100, 10), (1025, 1023, 4099, 16, 7), (64, 64, 4099, 130, 4096),
    (768, 33, 4099, 300, 10),
]


def _bf16_stats():
    return _backend._C.dense_bf16_stats()


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("case", BF16_CASES, ids=lambda c: "D%d-d%d-N%d-Q%d-k%d" % c)
def test_cpu_bf16_two_pass(case, isa, restore_isa):
    _backend._C.set_isa(isa)
    D, d, N, Q, k = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    for j, (dtype, metric) in enumerate(itertools.product(DTYPES, METRICS)):
        before = _bf16_stats()
        run_case("cpu", rng, N, D, d, Q, k, dtype, metric, use_allow=j % 2 == 1, use_cand=False)
        after = _bf16_stats()
        routed = (after[0] - before[0]) + (after[1] - before[1])
        if _backend._C.get_isa() in TWO_PASS_ISAS:
            assert routed == Q, "the two-pass route was not taken"
        else:
            assert routed == 0


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
def test_cpu_bf16_switch():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5000, 128)).astype(np.float16)
    q = rng.standard_normal((64, 128)).astype(np.float32)
    _backend._C.set_dense_bf16(False)
    try:
        before = _bf16_stats()
        s0, i0 = ops.dense_topk(x, q, 10, backend="cpu")
        assert _bf16_stats() == before
    finally:
        _backend._C.set_dense_bf16(True)
    s1, i1 = ops.dense_topk(x, q, 10, backend="cpu")
    np.testing.assert_array_equal(i0, i1)
    np.testing.assert_allclose(s0, s1, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", [i for i in TWO_PASS_ISAS if i in cpu_isas()] or ["none"])
def test_cpu_bf16_falls_back_on_near_ties(isa, restore_isa):
    """Rows closer than the approximate pass can resolve: no certificate, the float32
    scan answers."""
    if isa == "none":
        pytest.skip("the two-pass route needs AVX-512 or AVX2")
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(11)
    base = rng.standard_normal(384).astype(np.float32)
    x = (base + 1e-3 * rng.standard_normal((8192, 384))).astype(np.float32)
    q = (base + 0.5 * rng.standard_normal((32, 384))).astype(np.float32)
    for metric in METRICS:
        before = _bf16_stats()
        s, i = ops.dense_topk(x, q, 10, metric=metric, backend="cpu")
        after = _bf16_stats()
        assert after[1] - before[1] > 0, "expected uncertified queries"
        sr, ir = R.dense_topk(x, q.astype(np.float64), 10, None, metric)
        check_topk(s, i, sr, ir, true_scores(x, q, 384, metric), score_scale(x, q, 384, metric), 2e-5)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", [i for i in TWO_PASS_ISAS if i in cpu_isas()] or ["none"])
def test_cpu_bf16_nonfinite_rows(isa, restore_isa):
    """The two-pass route skips rows with a non-finite score like the float32 scan."""
    if isa == "none":
        pytest.skip("the two-pass route needs AVX-512 or AVX2")
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(28)
    x = rng.standard_normal((6000, 128)).astype(np.float16)
    x[10, 3], x[20, 4], x[30] = np.inf, -np.inf, np.nan
    q = rng.standard_normal((64, 128)).astype(np.float32)
    xw = x.astype(np.float32)
    clean = np.nan_to_num(xw, posinf=0.0, neginf=0.0)
    for metric in METRICS:
        before = _bf16_stats()
        s, i = ops.dense_topk(x, q, 10, metric=metric, backend="cpu")
        assert sum(_bf16_stats()) > sum(before), "the two-pass route was not taken"
        sr, ir = R.dense_topk(xw, q.astype(np.float64), 10, None, metric)
        assert not np.isin(i, [10, 20, 30]).any()
        check_topk(s, i, sr, ir, true_scores(clean, q, 128, metric),
                   score_scale(clean, q, 128, metric), 2e-5)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_bf16_query_scales(isa, restore_isa):
    """The error bound scales with |q| and max |x|: tiny and huge inputs stay exact."""
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((5000, 128)).astype(np.float32)
    x[:100] *= 1e3  # a few long rows (ip / l2 bounds use max |x|)
    for qscale in (1e-6, 1e5):
        q = (qscale * rng.standard_normal((64, 128))).astype(np.float32)
        for metric in METRICS:
            s, i = ops.dense_topk(x, q, 10, metric=metric, backend="cpu")
            sr, ir = R.dense_topk(x, q.astype(np.float64), 10, None, metric)
            check_topk(s, i, sr, ir, true_scores(x, q, 128, metric), score_scale(x, q, 128, metric),
                       2e-5)


# --------------------------------------------------------------------------- Triton (interpreter)

TRITON_CASES = [  # (D, d, N, Q, k, dtype, metric, allow, candidates)
    (97, 48, 300, 3, 10, "float16", "cosine", True, False),
    (64, 64, 130, 17, 5, "bfloat16", "l2", False, False),
    (3, 1, 7, 2, 10, "float32", "ip", False, True),
    (33, 20, 200, 1, 201, "float32", "cosine", True, True),
    (64, 32, 150, 16, 3, "float32", "ip", True, False),
    (20, 20, 90, 4, 7, "bfloat16", "cosine", False, True),
]

# A covering sample of the grid for the interpreter, sized by its cost here: a
# scan program (BLOCK_N rows x BLOCK_Q queries) costs ~0.05 s with Q < 16 (broadcast
# path) but ~1 s at Q = 17 and ~4 s at Q = 64 (tl.dot path, BLOCK_N = 128: its per-query
# tl.sort of 128 keys dominates); gather programs (candidates) are cheap. So the tl.dot
# cases keep N <= 128 (one row block; test_triton_interpreter's N = 130 / 150 cases and
# TRITON_GRID_SLOW span several), and N = 1023 / 5000 go through the broadcast path or
# the candidates. k = N+3 is capped at DENSE_MAX_K_GPU (2048).
TRITON_GRID = [  # (D, d, N, Q, k, dtype, metric, allow, candidates)
    # scan, broadcast path (Q < 16)
    (768, 768, 5000, 1, 2048, "float16", "cosine", True, False),
    (384, 192, 1023, 3, 100, "bfloat16", "ip", False, False),
    (97, 1, 1023, 1, 1026, "float32", "l2", True, False),
    (3, 1, 7, 3, 10, "float16", "l2", False, False),
    (1, 1, 1, 1, 1, "bfloat16", "cosine", True, False),
    (64, 32, 7, 3, 1, "float32", "ip", False, False),
    # scan, tl.dot path (Q >= 16), one block of rows, every dtype
    (768, 768, 7, 64, 10, "float16", "ip", True, False),
    (384, 384, 1, 17, 4, "bfloat16", "l2", False, False),
    (97, 48, 7, 17, 1, "float32", "cosine", True, False),
    # candidates (duplicates and -1 padding), gather kernel
    (768, 384, 1023, 64, 100, "float16", "cosine", False, True),
    (3, 3, 1023, 3, 1026, "float16", "ip", True, True),
    (1, 1, 5000, 17, 10, "bfloat16", "l2", True, True),
    (97, 97, 7, 64, 10, "float32", "ip", False, True),
    (64, 1, 1023, 1, 10, "float16", "l2", True, True),
    (384, 1, 1023, 17, 1, "float32", "cosine", False, True),
    (64, 64, 5000, 3, 2048, "bfloat16", "ip", False, True),
]

# Heavier interpreter cases (tl.dot over many row blocks, Q = 64 at N = 1023): -m slow.
TRITON_GRID_SLOW = [
    (64, 64, 1023, 17, 1026, "float16", "l2", True, False),
    (768, 384, 1023, 64, 100, "bfloat16", "cosine", False, False),
    (97, 97, 5000, 3, 10, "float32", "ip", True, False),
    (384, 192, 1023, 64, 1026, "float32", "l2", True, True),
]


def test_triton_grid_sample_covers():
    """TRITON_GRID covers every axis value of the issue's grid, every dtype x metric and
    filter combination, candidates on float16, and the tl.dot path with each dtype."""
    g = TRITON_GRID
    assert_covers_grid(g, dense_op.MAX_K_GPU)
    assert {(c[5], c[6]) for c in g} == set(DTYPE_METRICS)
    assert {(c[7], c[8]) for c in g} == set(FILTERS)
    assert any(c[5] == "float16" and c[8] for c in g)
    assert {c[5] for c in g if c[3] >= 16 and not c[8]} == set(DTYPES)
    assert any(c[3] == 64 and not c[8] for c in g)


@pytest.mark.parametrize("case", TRITON_CASES + TRITON_GRID,
                         ids=lambda c: "-".join(map(str, c)))
def test_triton_interpreter(case, triton_interpret):
    D, d, N, Q, k, dtype, metric, ua, uc = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    run_case("triton", rng, N, D, d, Q, k, dtype, metric, ua, uc, to_torch="cpu",
             rtol=TOL["gpu"][dtype])


@pytest.mark.slow
@pytest.mark.parametrize("case", TRITON_GRID_SLOW, ids=lambda c: "-".join(map(str, c)))
def test_triton_interpreter_slow(case, triton_interpret):
    test_triton_interpreter(case, None)


def test_triton_strided_prefix_view(triton_interpret):
    """A prefix view of a wider stored matrix (row stride 101 != dim) and a view that
    starts one value in: read in place, scan (both paths) and candidates."""
    rng = np.random.default_rng(29)
    for j, dtype in enumerate(DTYPES):
        stored = make_db(rng, 300, 101, dtype)
        xw = widened(stored, dtype)
        full = torch.from_numpy(xw).to(getattr(torch, dtype))
        for db, dim, nq, use_cand in ((full[:, :64], 40, 3, False), (full[:, 1:], 100, 2, True),
                                      (full[:120, :64], 64, 16, False)):
            if nq >= 16 and j != 1:
                continue  # the tl.dot path (~1 s a run here): once, on float16
            metric = METRICS[(j + nq) % 3]
            assert db.stride(0) == 101 and db.stride(0) != db.shape[1]
            xs = db.float().numpy()
            q = rng.standard_normal((nq, xs.shape[1])).astype(np.float32)
            cand = make_candidates(rng, xs.shape[0], nq, 90) if use_cand else None
            sr, ir = R.dense_topk(xs, q.astype(np.float64), 7, dim, metric, None, cand)
            s, i = ops.dense_topk(db, torch.from_numpy(q), 7, dim=dim, metric=metric,
                                  candidates=None if cand is None else torch.from_numpy(cand),
                                  backend="triton")
            check_topk(s.numpy(), i.numpy(), sr, ir, true_scores(xs, q, dim, metric),
                       score_scale(xs, q, dim, metric), TOL["gpu"][dtype],
                       eligible_mask(xs.shape[0], nq, None, cand))


@pytest.mark.parametrize("qscale", [1e-6, 1e5])
def test_triton_query_scale(qscale, triton_interpret):
    """16-bit kernels take unit-norm queries: tiny or huge queries keep their precision."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((150, 40)).astype(np.float16)
    q = (rng.standard_normal((17, 40)) * qscale).astype(np.float32)
    xw = x.astype(np.float32)
    for metric in ("ip", "cosine"):
        sr, ir = R.dense_topk(xw, q.astype(np.float64), 5, 40, metric)
        s, i = ops.dense_topk(torch.from_numpy(x), torch.from_numpy(q), 5, metric=metric,
                              backend="triton")
        check_topk(s.numpy(), i.numpy(), sr, ir, true_scores(xw, q, 40, metric),
                   score_scale(xw, q, 40, metric), TOL["gpu"]["float16"])


def test_triton_tiny_rows_cosine(triton_interpret):
    """Rows with |x|^2 ~ 1e-40 (float32 storage) are not zero rows: cosine stays exact."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((120, 24)).astype(np.float32)
    x[:40] *= 1e-20
    q = rng.standard_normal((16, 24)).astype(np.float32)
    sr, ir = R.dense_topk(x, q.astype(np.float64), 5, 24, "cosine")
    s, i = ops.dense_topk(torch.from_numpy(x), torch.from_numpy(q), 5, metric="cosine",
                          backend="triton")
    check_topk(s.numpy(), i.numpy(), sr, ir, true_scores(x, q, 24, "cosine"),
               score_scale(x, q, 24, "cosine"), TOL["gpu"]["float32"])


def _tie_candidates(rng, n, nq, c):
    """A random subset of the rows per query, with a duplicate and -1 padding."""
    cand = np.stack([rng.permutation(n)[:c] for _ in range(nq)]).astype(np.int64)
    cand[:, 1] = cand[:, 0]
    cand[:, -3:] = -1
    return cand


@pytest.mark.parametrize("use_cand", [False, True], ids=["scan", "candidates"])
def test_triton_exact_ties_by_index(use_cand, triton_interpret):
    """Q < 16 (broadcast scan, or the gather kernel): identical rows score identically,
    so the order is exactly the reference's (ties by index)."""
    rng = np.random.default_rng(32)
    n_base, reps, D, dim, nq = 12, 16, 97, 50, 3  # 192 rows: 3 blocks of BLOCK_N = 64
    n = n_base * reps
    for j, dtype in enumerate(DTYPES):
        _, xw, q = tie_case(rng, n_base, reps, D, dim, nq, dtype, 3 * TOL["gpu"][dtype])
        db = torch.from_numpy(xw).to(getattr(torch, dtype))
        for m, metric in enumerate(METRICS):
            k = (1, 31, 80)[(j + m) % 3]  # within 1, 2 and 5 groups of copies
            cand = _tie_candidates(rng, n, nq, 120) if use_cand else None
            sr, ir = R.dense_topk(xw, q.astype(np.float64), k, dim, metric, None, cand)
            s, i = ops.dense_topk(db, torch.from_numpy(q), k, dim=dim, metric=metric,
                                  candidates=None if cand is None else torch.from_numpy(cand),
                                  backend="triton")
            check_tie_case(s, i, sr, ir, xw, q, dim, metric, TOL["gpu"][dtype], n_base,
                           eligible_mask(n, nq, None, cand))


def test_triton_ties_dot_path(triton_interpret):
    """Q >= 16 (tl.dot): the interpreter runs tl.dot as a NumPy (OpenBLAS sgemm) matmul,
    whose result for a row depends on where the row falls in the tile (edge vs blocked
    micro-kernels sum in different orders), so identical rows score a few ulps (~1e-7
    absolute) apart and their order is not exactly by index: a quirk of the interpreter,
    not of the kernel. Here ties are asserted within tolerance only (exact-by-index is
    asserted for Q < 16 above and for the CUDA kernels' WMMA path on the emulator)."""
    rng = np.random.default_rng(33)
    n_base, reps, D, dim, nq = 12, 10, 97, 50, 16
    n = n_base * reps  # one block of rows (BLOCK_N = 128): ~1 s a run
    for j, dtype in enumerate(DTYPES):
        metric = METRICS[j]
        _, xw, q = tie_case(rng, n_base, reps, D, dim, nq, dtype, 3 * TOL["gpu"][dtype])
        sr, ir = R.dense_topk(xw, q.astype(np.float64), 40, dim, metric)
        db = torch.from_numpy(xw).to(getattr(torch, dtype))
        s, i = ops.dense_topk(db, torch.from_numpy(q), 40, dim=dim, metric=metric,
                              backend="triton")
        check_tie_case(s, i, sr, ir, xw, q, dim, metric, TOL["gpu"][dtype], n_base, exact=False)
        # the copies of each base row in the result are still the right ones, up to order
        for qi in range(nq):
            np.testing.assert_array_equal(np.sort(i[qi].numpy() % n_base),
                                          np.sort(ir[qi] % n_base))


# --------------------------------------------------------------------------- CUDA (emulated)
# The CUDA kernels themselves (csrc/cuda/dense.cu) on the CPU through nvemu: the same
# source nvcc builds, with its barriers, shuffles, WMMA alignment and shared-memory
# bounds checked (see tests/nvemu/include/nvemu.h).

# A covering sample of the grid (each case runs every dtype x metric, the allow /
# candidates combinations rotating: grid_runs), sized by the emulator's cost: the scan
# is cheap (~2 s a run at D = 768, N = 5000, Q = 64), the gather kernel costs per
# (query, candidate) pair, so candidate lists are capped at EMU_CAND_PAIRS // Q.
# Queries: Q <= 16 takes the BQ = 16 scan kernel, Q >= 17 the BQ = 64 one.
EMU_CASES = [  # (D, d, N, Q, k); k = N+3 capped at DENSE_MAX_K_GPU
    (768, 768, 5000, 64, 2048),   # the largest corner
    (97, 48, 5000, 17, 10),
    (3, 3, 5000, 3, 2048),
    (1, 1, 5000, 1, 100),
    (384, 192, 1023, 64, 1026),
    (768, 1, 1023, 3, 100),
    (64, 64, 1023, 17, 1026),
    (3, 1, 1023, 1, 1026),
    (97, 97, 1023, 3, 1),
    (768, 384, 1023, 1, 10),
    (1, 1, 1023, 64, 100),
    (384, 384, 7, 17, 10),
    (64, 32, 7, 64, 1),
    (97, 1, 7, 1, 10),
    (384, 1, 1, 3, 4),
    (768, 768, 1, 64, 1),
    (1, 1, 1, 1, 1),
]
EMU_CAND_PAIRS = 4096


def test_cuda_emulated_grid_sample_covers():
    assert_covers_grid(EMU_CASES, dense_op.MAX_K_GPU)
    assert all(c[4] <= dense_op.MAX_K_GPU for c in EMU_CASES)
    for j, case in enumerate(EMU_CASES):
        assert {(ua, uc) for _, _, ua, uc in grid_runs(j % 4)} == set(FILTERS), case


@pytest.mark.parametrize("case,offset", grid_params(EMU_CASES))
def test_cuda_emulated_grid(case, offset, cuda_emu):
    D, d, N, Q, k = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    for dtype, metric, ua, uc in grid_runs(offset):
        run_case("cuda", rng, N, D, d, Q, k, dtype, metric, ua, uc, to_torch="cpu",
                 max_cand=max(4, EMU_CAND_PAIRS // Q))


@pytest.mark.parametrize("path", ["scan-bq16", "scan-bq64", "candidates"])
def test_cuda_emulated_exact_ties_by_index(path, cuda_emu):
    """Identical rows score bit-identically (f32 FMA and f16 / bf16 WMMA alike), so the
    order is exactly the reference's: ties by index, across 10 blocks of rows."""
    rng = np.random.default_rng(34)
    n_base, reps, D, dim = 12, 100, 97, 50
    n = n_base * reps
    nq = 17 if path == "scan-bq64" else 5
    for j, dtype in enumerate(DTYPES):
        _, xw, q = tie_case(rng, n_base, reps, D, dim, nq, dtype, 3 * TOL["gpu"][dtype])
        db = torch.from_numpy(xw).to(getattr(torch, dtype))
        for m, metric in enumerate(METRICS):
            k = (1, 31, 250)[(j + m) % 3]  # within 1, 1 and 3 groups of copies
            cand = _tie_candidates(rng, n, nq, 400) if path == "candidates" else None
            sr, ir = R.dense_topk(xw, q.astype(np.float64), k, dim, metric, None, cand)
            s, i = ops.dense_topk(db, torch.from_numpy(q), k, dim=dim, metric=metric,
                                  candidates=None if cand is None else torch.from_numpy(cand),
                                  backend="cuda")
            check_tie_case(s, i, sr, ir, xw, q, dim, metric, TOL["gpu"][dtype], n_base,
                           eligible_mask(n, nq, None, cand))


@pytest.mark.parametrize("qscale", [1e-6, 1e5])
def test_cuda_emulated_query_scale(qscale, cuda_emu):
    rng = np.random.default_rng(23)
    for dtype in ("float16", "bfloat16"):
        stored = make_db(rng, 150, 40, dtype)
        xw = widened(stored, dtype)
        q = (rng.standard_normal((17, 40)) * qscale).astype(np.float32)
        db = torch.from_numpy(xw).to(getattr(torch, dtype))
        for metric in ("ip", "cosine"):
            sr, ir = R.dense_topk(xw, q.astype(np.float64), 5, 40, metric)
            s, i = ops.dense_topk(db, torch.from_numpy(q), 5, metric=metric, backend="cuda")
            check_topk(s.numpy(), i.numpy(), sr, ir, true_scores(xw, q, 40, metric),
                       score_scale(xw, q, 40, metric), TOL["gpu"][dtype])


def test_cuda_emulated_strided_and_unaligned(cuda_emu):
    """A prefix view of wider rows (stride != dim) and rows that are not 16-byte aligned
    (the kernels' element-load path)."""
    rng = np.random.default_rng(24)
    for dtype in DTYPES:
        stored = make_db(rng, 300, 101, dtype)
        xw = widened(stored, dtype)
        full = torch.from_numpy(xw).to(getattr(torch, dtype))
        q = rng.standard_normal((5, 101)).astype(np.float32)
        for db, dim in ((full[:, :64], 64), (full[:, 1:], 100), (full[1:], 101)):
            xs = db.float().numpy()
            sr, ir = R.dense_topk(xs, q[:, :xs.shape[1]].astype(np.float64), 7, dim, "cosine")
            s, i = ops.dense_topk(db, torch.from_numpy(q[:, :xs.shape[1]]), 7, dim=dim,
                                  metric="cosine", backend="cuda")
            check_topk(s.numpy(), i.numpy(), sr, ir,
                       true_scores(xs, q[:, :xs.shape[1]], dim, "cosine"),
                       score_scale(xs, q, dim, "cosine"), TOL["gpu"][dtype])


def _backends_here(monkeypatch):
    """Every backend that runs on this machine's CPU (GPU kernels through TRITON_INTERPRET
    and nvemu, which this puts behind the cuda backend for the test)."""
    out = ["reference"] + (["cpu"] if _backend._C is not None else [])
    if torch is not None and ck.interpret_mode() and _backend.triton_available():
        out.append("triton")
    if torch is not None and nvemu.supported():
        nvemu.use(monkeypatch, require_nvemu())
        out.append("cuda")
    return out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the Triton interpreter's NumPy on inf
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_rows_never_returned(metric, dtype, monkeypatch, restore_isa):
    """A NaN or inf in a row's prefix makes its score NaN or +-inf; such rows are not
    eligible, identically on every backend (db is not scanned for them up front; the
    16-bit GPU kernels' split queries turn inf * 0 into NaN where others get inf, so the
    rule is on the score, not on its sign)."""
    rng = np.random.default_rng(25)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    x[0, 0] = np.nan
    x[3, 5] = np.inf
    x[4, 6] = -np.inf
    x[7, 39] = np.nan   # outside the prefix: an ordinary row
    x[9] = 0.0          # a zero row stays eligible (scores 0 under cosine)
    stored = x.astype(np.float16) if dtype == "float16" else (
        R.f32_to_bf16(x) if dtype == "bfloat16" else x)
    xw = widened(stored, dtype)
    nq = 17 if dtype == "float16" else 5  # 17: the GPU kernels' tensor-core (split) paths
    q = rng.standard_normal((nq, 40)).astype(np.float32)
    sr, ir = R.dense_topk(xw, q.astype(np.float64), 300, 32, metric)
    assert not np.isin(ir, [0, 3, 4]).any() and ((ir == 7).any(1) & (ir == 9).any(1)).all()
    cand = np.tile(np.arange(300), (nq, 1))
    runs = [(be, None, c) for be in _backends_here(monkeypatch) for c in (None, cand)]
    runs += [("cpu", isa, None) for isa in cpu_isas()]
    for be, isa, c in runs:
        if isa is not None:
            _backend._C.set_isa(isa)
        if be in ("triton", "cuda"):
            db = torch.from_numpy(xw).to(getattr(torch, dtype))
            s, i = ops.dense_topk(db, torch.from_numpy(q), 300, dim=32, metric=metric, backend=be,
                                  candidates=None if c is None else torch.from_numpy(c))
            s, i = s.numpy(), i.numpy()
        else:
            s, i = ops.dense_topk(stored, q, 300, dim=32, metric=metric, backend=be, candidates=c,
                                  db_dtype="bfloat16" if dtype == "bfloat16" else None)
        fam = "cpu" if be in ("cpu", "reference") else "gpu"
        clean = np.nan_to_num(xw, posinf=0.0, neginf=0.0)
        check_topk(s, i, sr, ir, true_scores(clean, q, 32, metric),
                   score_scale(clean, q, 32, metric), TOL[fam][dtype],
                   np.isin(np.arange(300), [0, 3, 4], invert=True)[None, :].repeat(nq, 0))


def test_torch_uint16_as_bf16_every_backend(monkeypatch):
    """A torch uint16 tensor flagged db_dtype="bfloat16" holds bf16 bit patterns on every
    backend (the GPU glue used to look its dtype up as-is)."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(26)
    bits = R.f32_to_bf16(rng.standard_normal((200, 24)).astype(np.float32))
    xw = R.bf16_to_f32(bits)
    q = rng.standard_normal((3, 24)).astype(np.float32)
    sr, ir = R.dense_topk(xw, q.astype(np.float64), 9, 24, "ip")
    for be in _backends_here(monkeypatch):
        s, i = ops.dense_topk(torch.from_numpy(bits.view(np.int16)).view(torch.uint16),
                              torch.from_numpy(q), 9, metric="ip", db_dtype="bfloat16",
                              backend=be)
        check_topk(s.numpy(), i.numpy(), sr, ir, true_scores(xw, q, 24, "ip"),
                   score_scale(xw, q, 24, "ip"), TOL["gpu"]["bfloat16"])


@pytest.mark.parametrize("use_cand", [False, True])
def test_gpu_glue_key_budget_slices(use_cand, monkeypatch):
    """With a tiny key budget the GPU glue scans in query chunks and row slices (merging
    the slices' best keys with their rows renumbered) and gathers in query chunks: same
    result as one pass."""
    pytest.importorskip("torch")
    from nestvec import _dense_gpu

    backends = [b for b in _backends_here(monkeypatch) if b in ("triton", "cuda")]
    if not backends:
        pytest.skip("no GPU backend runs here")
    monkeypatch.setattr(_dense_gpu, "_KEY_BUDGET", 100)
    rng = np.random.default_rng(27)
    for be in backends:
        run_case(be, rng, 1100, 48, 40, 3, 10, "float16", "cosine", True, use_cand,
                 to_torch="cpu")
        run_case(be, rng, 300, 16, 16, 2, 130, "float32", "l2", False, use_cand,
                 to_torch="cpu")


# --------------------------------------------------------------------------- GPU

GPU_CASES = grid_cases(12, seed=4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case,offset", grid_params(GPU_CASES))
def test_gpu_grid(backend, case, offset):
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    D, d, N, Q, k = case
    if k > dense_op.MAX_K_GPU:
        k = dense_op.MAX_K_GPU
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    for dtype, metric, ua, uc in grid_runs(offset):
        run_case(backend, rng, N, D, d, Q, k, dtype, metric, ua, uc, to_torch="cuda")


# Shapes the random grid may miss: a 768-wide store at 5000 rows, k = 2048 over 4099
# rows, 130 and 70 queries (several query blocks), a 1-wide prefix, candidates on
# every dtype.
GPU_SHAPES = [  # (N, D, d, Q, k, dtype, metric, allow, candidates)
    (1, 3, 3, 1, 5, "float16", "cosine", False, False),
    (7, 97, 48, 3, 10, "bfloat16", "l2", True, False),
    (1023, 64, 1, 17, 100, "float32", "ip", False, False),
    (5000, 384, 192, 64, 10, "float16", "cosine", True, False),
    (5000, 768, 768, 1, 100, "bfloat16", "cosine", False, False),
    (4099, 97, 97, 20, 2048, "float16", "l2", False, False),
    (3000, 768, 256, 130, 10, "float16", "ip", False, False),
    (3000, 768, 256, 70, 10, "bfloat16", "cosine", True, False),
    (2000, 100, 50, 5, 7, "float32", "l2", True, False),
    (777, 64, 64, 9, 12, "float16", "cosine", True, True),
    (777, 97, 33, 40, 50, "bfloat16", "l2", False, True),
    (500, 768, 768, 3, 10, "float32", "ip", True, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", GPU_SHAPES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_shapes(backend, case):
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    N, D, d, Q, k, dtype, metric, ua, uc = case
    run_case(backend, np.random.default_rng(zlib.crc32(repr(case).encode())), N, D, d, Q, k, dtype,
             metric, ua, uc, to_torch="cuda")


# --------------------------------------------------------------------------- funnel

def test_funnel_exact_when_shortlist_covers_all():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((500, 96)).astype(np.float16)
    q = rng.standard_normal((4, 96)).astype(np.float32)
    backend = "cpu" if _backend._C is not None else "reference"
    for metric in METRICS:
        s, i = ops.funnel_topk(x, q, 10, dims=(16, 48, None), shortlist=(500, 500), metric=metric,
                               backend=backend)
        se, ie = ops.dense_topk(x, q, 10, metric=metric, backend=backend)
        np.testing.assert_array_equal(i, ie)
        np.testing.assert_allclose(s, se, rtol=1e-6, atol=1e-6)


def test_funnel_recall_on_matryoshka_like_data():
    rng = np.random.default_rng(13)
    decay = np.exp(-np.arange(256) / 40.0)  # information front-loaded into the prefix
    x = (rng.standard_normal((5000, 256)) * decay).astype(np.float16)
    q = (x[:20].astype(np.float32) + 0.3 * rng.standard_normal((20, 256)) * decay).astype(np.float32)
    allow = rng.random(5000) < 0.8
    backend = "cpu" if _backend._C is not None else "reference"
    s, i = ops.funnel_topk(x, q, 10, allow=allow, backend=backend)  # dims (64, 256, None)
    se, ie = ops.dense_topk(x, q, 10, allow=allow, backend=backend)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ie)])
    assert recall >= 0.99
    assert allow[i[i >= 0]].all()


def test_funnel_bad_inputs():
    x = np.zeros((10, 8), dtype=np.float32)
    q = np.ones((1, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="dims"):
        ops.funnel_topk(x, q, 2, dims=(8, 4))
    with pytest.raises(ValueError, match="shortlist"):
        ops.funnel_topk(x, q, 5, dims=(2, 8), shortlist=(3,))
    with pytest.raises(ValueError, match="shortlist"):
        ops.funnel_topk(x, q, 2, dims=(2, 4, 8), shortlist=(5,))
    with pytest.raises(ValueError, match="shortlist"):
        ops.funnel_topk(x, q, 2, dims=(2, 4, 8), shortlist=(5, 6))
    with pytest.raises(ValueError, match="dims"):
        ops.funnel_topk(x, q, 2, dims=())
    with pytest.raises(ValueError, match="dim"):
        ops.funnel_topk(x, q, 2, dims=(0, 8))


# --------------------------------------------------------------------------- validation

def test_bad_inputs():
    x = np.zeros((10, 8), dtype=np.float32)
    q = np.ones((2, 8), dtype=np.float32)
    cases = [
        (dict(db=np.zeros(8, np.float32)), ValueError, "db"),
        (dict(db=np.zeros((10, 8), np.int32)), TypeError, "db"),
        (dict(db=np.zeros((10, 0), np.float32)), ValueError, "db"),
        (dict(db=np.zeros((10, 8), np.uint16)), TypeError, "db"),
        (dict(db=np.zeros((10, 8), np.float32), db_dtype="bfloat16"), ValueError, "db_dtype"),
        (dict(queries=np.ones((2, 5), np.float32)), ValueError, "queries"),
        (dict(queries=np.ones((2, 2, 8), np.float32)), ValueError, "queries"),
        (dict(queries=np.ones((2, 8), np.int64)), TypeError, "queries"),
        (dict(queries=np.full((2, 8), np.nan, np.float32)), ValueError, "queries"),
        (dict(k=0), ValueError, "k"),
        (dict(k=2.0), TypeError, "k"),
        (dict(k=5000), ValueError, "k"),
        (dict(dim=0), ValueError, "dim"),
        (dict(dim=9), ValueError, "dim"),
        (dict(dim=4.0), TypeError, "dim"),
        (dict(metric="dot"), ValueError, "metric"),
        (dict(allow=np.ones(9, bool)), ValueError, "allow"),
        (dict(allow=np.ones(10, np.int32)), TypeError, "allow"),
        (dict(candidates=np.zeros((3, 4), np.int64)), ValueError, "candidates"),
        (dict(candidates=np.zeros((2, 4), np.float32)), TypeError, "candidates"),
        (dict(candidates=np.zeros(4, np.int64)), ValueError, "candidates"),
        (dict(backend="gpu"), ValueError, "backend"),
    ]
    for over, exc, name in cases:
        kw = dict(db=x, queries=q, k=3)
        kw.update(over)
        with pytest.raises(exc, match=name):
            ops.dense_topk(**kw)


def test_triton_backend_needs_torch():
    x = np.zeros((10, 8), dtype=np.float32)
    with pytest.raises((TypeError, ValueError), match="db"):
        ops.dense_topk(x, np.ones((1, 8), np.float32), 3, backend="triton")


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
def test_cpu_padding_and_single_query():
    x = np.eye(4, 6, dtype=np.float32)
    q = np.ones(6, dtype=np.float32)
    s, i = ops.dense_topk(x, q, 7, metric="l2", backend="cpu")
    assert s.shape == (7,) and i.shape == (7,)
    assert (i[4:] == -1).all() and np.isposinf(s[4:]).all()
    s, i = ops.dense_topk(x, q, 7, allow=np.array([0, 1, 0, 1], bool), backend="cpu")
    assert i.tolist()[:2] == [1, 3] and (i[2:] == -1).all() and np.isneginf(s[2:]).all()
