"""dense_topk on the GPU backends against the float64 reference: Triton under its
interpreter, the CUDA kernels on nvemu, every backend on non-finite rows, and the
same grids on a real GPU (``-m gpu``). Comparison as in test_dense.py (check_topk)."""
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
from dense_helpers import (
    DTYPES, DTYPE_METRICS, FILTERS, METRICS, TOL, assert_covers_grid, check_tie_case,
    check_topk, eligible_mask, grid_cases, grid_params, grid_runs, make_candidates,
    make_db, run_case, score_scale, tie_case, true_scores, widened,
)

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


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


