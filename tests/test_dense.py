"""dense_topk / funnel_topk against the float64 reference (nestvec.reference).

Comparison is tie-aware (check_topk): scores allclose per position with a per-dtype
tolerance, padding identical, and wherever an index differs from the reference the
returned row must be eligible and score, in float64, within tolerance of the
reference score at that position (a legitimate permutation among near-ties).
"""
import itertools
import os
import zlib

import numpy as np
import pytest

import nestvec.ops as ops
from nestvec import _backend
from nestvec.ops import dense as dense_op
from nestvec import reference as R

from conftest import cpu_isas
from dense_helpers import (
    DTYPES, DTYPE_METRICS, FILTERS, METRICS, TOL, assert_covers_grid, check_topk,
    d_kind, eligible_mask, grid_cases, grid_params, grid_runs, make_candidates, make_db,
    run_case, score_scale, true_scores, widened,
)

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


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
@pytest.mark.parametrize("isa", cpu_isas())
def test_cpu_tables_past_the_tile_route_stream(isa, restore_isa):
    """Whole contiguous rows of a table above the register-tile route's size (16 MiB:
    dense.cpp kTilesMaxBytes) take the one-row stream; smaller ones the tiles. Both
    against the reference, for each query-block width the stream has."""
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(16)
    for n, D, dtype in ((11000, 768, "float16"), (300, 768, "float16"), (5500, 768, "float32")):
        stored = make_db(rng, n, D, dtype)
        xw = widened(stored, dtype)
        for nq, metric in ((1, "cosine"), (2, "l2"), (3, "ip")):
            q = rng.standard_normal((nq, D)).astype(np.float32)
            sr, ir = R.dense_topk(xw, q.astype(np.float64), 10, D, metric, None, None)
            s, i = ops.dense_topk(stored, q, 10, metric=metric, backend="cpu")
            check_topk(s, i, sr, ir, true_scores(xw, q, D, metric), score_scale(xw, q, D, metric),
                       TOL["cpu"][dtype])


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
def test_cpu_query_slices():
    """More than 4096 queries are processed in slices (bounded selector memory)."""
    rng = np.random.default_rng(15)
    for n, d in ((1023, 8), (5000, 64)):
        run_case("cpu", rng, n, d, d, 4100, 10, "float16", "cosine", True, False)


# Two-pass route (csrc/cpu/dense_bf16.cpp): an approximate scan (bfloat16 on AVX-512,
# int16 with a scale per row on AVX2), exact rescoring of a shortlist, a certificate per
# query, float32 scan for the rest. Taken for Q * dim >= 8192, N >= 4096 and Q at least
# the ISA's minimum (dense_two_pass_min_batch: 16 with bf16, 32 with int16).
TWO_PASS_ISAS = ("avx512", "avx2")
BF16_CASES = [  # (D, d, N, Q, k)
    (768, 768, 5000, 33, 10), (768, 384, 4099, 64, 1), (384, 384, 5000, 32, 100),
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
        least = _backend._C.dense_two_pass_min_batch()
        if _backend._C.get_isa() in TWO_PASS_ISAS and Q >= least:
            assert least > 0 and routed == Q, "the two-pass route was not taken"
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
