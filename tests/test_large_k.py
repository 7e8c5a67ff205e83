"""Any k >= 1: dense_topk, hamming_topk and funnel_topk beyond the fused passes' usual k
(4096 on the CPU, 2048 / 4096 on the GPU backends) against the reference, on every
backend that runs here (CPU ISAs, Triton under the interpreter, CUDA on nvemu), with
and without allow masks and candidate lists; and the collection's modes at such k."""
import zlib

import numpy as np
import pytest

import nestvec as nv
import nestvec.ops as ops
from nestvec import _backend
from nestvec import _checks as ck
from nestvec import reference as R
from nestvec.ops import hamming as hamming_op

from conftest import cpu_isas, emulated_gpu_backend
from dense_helpers import run_case

# (N, D, Q, k): k past 4096 and past the rows, rows past one row block, odd sizes
DENSE_CASES = [(5000, 16, 3, 4097), (4099, 7, 2, 4102), (6001, 3, 1, 6001), (1025, 33, 2, 5000)]
HAMMING_CASES = [(5000, 8, 3, 4097), (4099, 3, 2, 4104), (9000, 17, 1, 9000), (1023, 32, 2, 5000)]


def _dense_runs(backend, case, to_torch=None, dtypes=("float32", "float16", "bfloat16"),
                max_cand=None):
    n, d, nq, k = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    combos = [(False, False), (True, False), (False, True), (True, True)]
    for j, dtype in enumerate(dtypes):
        for metric in ("cosine", "ip", "l2"):
            ua, uc = combos[(j + len(metric)) % 4]
            run_case(backend, rng, n, d, max(1, d // 2 + j % 2), nq, k, dtype, metric, ua, uc,
                     to_torch=to_torch, max_cand=max_cand or 2 * n)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: "N%d-D%d-Q%d-k%d" % c)
def test_dense_cpu_large_k(isa, case, restore_isa):
    _backend._C.set_isa(isa)
    _dense_runs("cpu", case)


def test_dense_cuda_emulated_large_k(monkeypatch):
    """The GPU scan keeps min(k, block rows) keys per block and merges them with
    torch.topk, so k past 2048 takes the same path (here on nvemu, the 16-bit types)."""
    emulated_gpu_backend("cuda", monkeypatch)
    _dense_runs("cuda", (2100, 16, 1, 2500), to_torch="cpu", dtypes=("bfloat16",), max_cand=2800)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_dense_gpu_backends_large_k_slow(backend, monkeypatch):
    emulated_gpu_backend(backend, monkeypatch)  # the interpreter: ~8 s a run at N = 2100
    for case in [(4099, 7, 2, 4102), (2100, 16, 1, 2500)]:
        _dense_runs(backend, case, to_torch="cpu", dtypes=("float16", "bfloat16"))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_large_k(backend):
    """On a real GPU: k = 10000 (dense past 2048, Hamming past the cuda sort's 4096)."""
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    if backend == "triton":
        pytest.importorskip("triton")
    _dense_runs(backend, (60000, 64, 3, 10000), to_torch="cuda")
    _hamming_case(backend, (60000, 32, 3, 10000), to_torch="cuda")


def test_dense_cpu_query_slices_for_large_k(monkeypatch):
    """Above k = 4096 the CPU kernel runs in query slices (its selectors grow with k):
    a tiny key budget slices every query apart, candidates included; same results."""
    if _backend._C is None:
        pytest.skip("no native module")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4500, 12)).astype(np.float32)
    q = rng.standard_normal((5, 12)).astype(np.float32)
    cand = np.tile(np.arange(0, 4500, 1, dtype=np.int64), (5, 1))
    whole = ops.dense_topk(x, q, 4200, metric="ip", candidates=cand)
    monkeypatch.setattr(ck, "LARGE_K_KEYS", 4200 * 2)
    sliced = ops.dense_topk(x, q, 4200, metric="ip", candidates=cand)
    np.testing.assert_array_equal(whole[1], sliced[1])
    np.testing.assert_array_equal(whole[0], sliced[0])


def _hamming_case(backend, case, to_torch=None):
    n, nbytes, nq, k = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    codes[n // 3: n // 2] = codes[0]  # many exact ties
    queries = rng.integers(0, 256, (nq, nbytes), dtype=np.uint8)
    queries[0] = codes[0]
    for allow in (None, rng.random(n) < 0.4):
        dr, ir = R.hamming_topk(codes, queries, k, allow)
        if to_torch:
            import torch

            t = lambda a: None if a is None else torch.from_numpy(a).to(to_torch)  # noqa: E731
            d, i = ops.hamming_topk(t(codes), t(queries), k, allow=t(allow), backend=backend)
            d, i = d.cpu().numpy(), i.cpu().numpy()
        else:
            d, i = ops.hamming_topk(codes, queries, k, allow=allow, backend=backend)
        np.testing.assert_array_equal(d, dr)
        np.testing.assert_array_equal(i, ir)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("case", HAMMING_CASES, ids=lambda c: "N%d-B%d-Q%d-k%d" % c)
def test_hamming_cpu_large_k(isa, case, restore_isa, monkeypatch):
    _backend._C.set_isa(isa)
    _hamming_case("cpu", case)
    monkeypatch.setattr(ck, "LARGE_K_KEYS", case[3])  # one query per slice
    _hamming_case("cpu", case)


@pytest.mark.parametrize("case", HAMMING_CASES, ids=lambda c: "N%d-B%d-Q%d-k%d" % c)
def test_hamming_cuda_large_k_path(case, monkeypatch):
    """cuda beyond its in-block sort (k > 4096): the block-distance path, exactly the
    reference; tiny blocks force many row blocks and query chunks."""
    emulated_gpu_backend("cuda", monkeypatch)
    _hamming_case("cuda", case, to_torch="cpu")
    monkeypatch.setattr(hamming_op, "LARGE_K_BYTES", 1 << 16)
    _hamming_case("cuda", case, to_torch="cpu")


def test_hamming_triton_large_k(monkeypatch):
    emulated_gpu_backend("triton", monkeypatch)
    _hamming_case("triton", (4099, 5, 2, 4102), to_torch="cpu")


def test_funnel_topk_any_shortlist():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6000, 32)).astype(np.float32)
    q = rng.standard_normal((2, 32)).astype(np.float32)
    for be in ["reference"] + (["cpu"] if _backend._C is not None else []):
        s, i = ops.funnel_topk(x, q, 4500, dims=(8, None), shortlist=5000, backend=be)
        sr, ir = R.dense_topk(x, q.astype(np.float64), 4500)
        # exact among the survivors: the rows kept are the shortlist's best at full width
        s8, i8 = R.dense_topk(x[:, :8], q.astype(np.float64), 5000)
        for qi in range(2):
            exp = R.dense_topk(x, q[qi:qi + 1].astype(np.float64), 4500, candidates=i8[qi:qi + 1])
            assert (np.sort(i[qi]) == np.sort(exp[1][0])).mean() > 0.999
        # k above the fused limit with the default shortlists
        s, i = ops.funnel_topk(x, q, 4200, dims=(16, None), backend=be)
        assert i.shape == (2, 4200) and (i >= 0).all()


# --------------------------------------------------------------------------- collection

@pytest.fixture(scope="module")
def big_collection():
    rng = np.random.default_rng(21)
    x = rng.standard_normal((12000, 32)).astype(np.float32)
    col = nv.Collection.create(None, dim=32, dtype="float32", schema={"part": "int32"},
                               merge_policy=nv.collection.NoMergePolicy())
    for s in range(0, 12000, 4000):  # three segments
        col.add(x[s:s + 4000], metadata={"part": (np.arange(s, s + 4000) % 3).astype(np.int32)})
    return col, x


@pytest.mark.parametrize("mode", ["flat", "binary", "funnel", "auto"])
def test_collection_any_k_every_mode(big_collection, mode):
    """k = 1047 with rescore 10 (a shortlist of 10470: the issue's case) and k = 5000,
    filtered and not: exactly min(k, matches) rows, equal to exact search where exact."""
    col, x = big_collection
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 32)).astype(np.float32)
    flt = nv.field("part") != 1
    allow = (np.arange(12000) % 3) != 1
    for k, filt in [(1047, flt), (5000, None)]:
        t = col.search(q, k=k, mode=mode, rescore=10, filter=filt)
        n_match = int(allow.sum()) if filt is not None else 12000
        assert t.num_rows == 2 * min(k, n_match)
        if mode == "binary":
            codes = np.packbits(x > 0, axis=1)
            dr, ir = R.hamming_topk(codes, np.packbits(q > 0, axis=1), k,
                                    allow if filt is not None else None)
            got = t.column("id").to_numpy().reshape(2, -1)
            np.testing.assert_array_equal(got, ir)
        elif mode == "flat":
            sr, ir = R.dense_topk(x, q.astype(np.float64), k, allow=allow if filt is not None else None)
            sc = t.column("score").to_numpy().reshape(2, -1)
            np.testing.assert_allclose(sc, sr, atol=2e-5)
        else:
            sc = t.column("score").to_numpy().reshape(2, -1)
            assert (np.diff(sc, axis=1) <= 1e-6).all()  # best first


def test_collection_funnel_shortlist_covers_all(big_collection):
    """A shortlist larger than the rows: the funnel then equals exact search."""
    col, x = big_collection
    q = x[:1] + 0.01
    t = col.search(q, k=2000, mode="funnel", rescore=7)
    sr, ir = R.dense_topk(x, q.astype(np.float64), 2000)
    np.testing.assert_allclose(t.column("score").to_numpy(), sr[0], atol=2e-5)
