"""hamming_topk: every backend equals the reference exactly (ties by index)."""
import numpy as np
import pytest

import nestvec
import nestvec.ops as ops
from nestvec import _backend
from nestvec.ops import hamming as hamming_op
from nestvec import reference

from conftest import cpu_isas

NS = [1, 7, 97, 1023, 4099]
BS = [1, 3, 8, 32, 48, 128]
QS = [1, 5, 64]


def make(rng, n, b, q, ties=True):
    codes = rng.integers(0, 256, (n, b), dtype=np.uint8)
    if ties and n > 4:
        # Many equal distances: a third of the rows share a code, a few queries too.
        codes[n // 3: 2 * n // 3] = codes[0]
        codes[-3:] = codes[1]
    queries = rng.integers(0, 256, (q, b), dtype=np.uint8)
    if ties and q > 1:
        queries[0] = codes[0]
    return codes, queries


def ks_for(n):
    return sorted({1, 10, 100, n, n + 5})


def allows_for(rng, n):
    return [None, rng.random(n) < 0.3, np.zeros(n, dtype=bool)]


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("b", BS)
def test_cpu_matches_reference(isa, n, b, restore_isa):
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(n * 1000 + b)
    for q in QS:
        codes, queries = make(rng, n, b, q)
        for allow in allows_for(rng, n):
            for k in ks_for(n):
                d, i = ops.hamming_topk(codes, queries, k, allow=allow, backend="cpu")
                dr, ir = reference.hamming_topk(codes, queries, k, allow)
                np.testing.assert_array_equal(d, dr, err_msg=f"dist q={q} k={k}")
                np.testing.assert_array_equal(i, ir, err_msg=f"idx q={q} k={k}")


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("b", [40, 64, 65, 96, 127, 192, 200, 256])
def test_cpu_odd_widths(isa, b, restore_isa):
    """Widths with a masked tail chunk (one or two chunks), 64 / 192 / 256 bytes (one,
    three, four whole chunks) and beyond (the generic loop)."""
    _backend._C.set_isa(isa)
    rng = np.random.default_rng(b)
    for n, q in ((1023, 5), (4099, 64)):
        codes, queries = make(rng, n, b, q)
        for allow in allows_for(rng, n):
            for k in (1, 10, n + 5):
                d, i = ops.hamming_topk(codes, queries, k, allow=allow, backend="cpu")
                dr, ir = reference.hamming_topk(codes, queries, k, allow)
                np.testing.assert_array_equal(d, dr)
                np.testing.assert_array_equal(i, ir)


def test_reference_semantics():
    codes = np.array([[0b0000], [0b1111], [0b0001], [0b0000]], dtype=np.uint8)
    q = np.array([[0]], dtype=np.uint8)
    d, i = reference.hamming_topk(codes, q, 6)
    assert d.tolist() == [[0, 0, 1, 4, 2**31 - 1, 2**31 - 1]]
    assert i.tolist() == [[0, 3, 2, 1, -1, -1]]
    d, i = reference.hamming_topk(codes, q, 2, allow=np.array([False, True, True, False]))
    assert d.tolist() == [[1, 4]] and i.tolist() == [[2, 1]]


def sweep(backend, rng, n, b, qs, device="cpu"):
    """Every query count, allow mask and k (within the backend's limit) on torch inputs
    on ``device``: exactly the reference."""
    import torch

    kmax = hamming_op.MAX_K_GPU if backend in ("cuda", "triton") else None
    t = lambda a: None if a is None else torch.from_numpy(a).to(device)  # noqa: E731
    for q in qs:
        codes, queries = make(rng, n, b, q)
        for allow in allows_for(rng, n):
            for k in [k for k in ks_for(n) if kmax is None or k <= kmax]:
                d, i = ops.hamming_topk(t(codes), t(queries), k, allow=t(allow), backend=backend)
                dr, ir = reference.hamming_topk(codes, queries, k, allow)
                np.testing.assert_array_equal(d.cpu().numpy(), dr)
                np.testing.assert_array_equal(i.cpu().numpy(), ir)


@pytest.mark.parametrize("n,b", [(1, 1), (7, 3), (97, 32), (1023, 48), (300, 128), (65, 13)])
def test_triton_matches_reference(n, b, triton_interpret):
    sweep("triton", np.random.default_rng(n + b), n, b, (1, 5))


@pytest.mark.parametrize("n,b", [(1, 1), (7, 3), (97, 32), (1023, 48), (4099, 128), (300, 13),
                                 (5000, 8)])
def test_cuda_emulated(n, b, cuda_emu):
    """csrc/cuda/hamming.cu on the CPU through nvemu: histogram (shared and global),
    threshold, count / scan / scatter and sort kernels, every word width."""
    sweep("cuda", np.random.default_rng(n + b + 1), n, b, (1, 5))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("n,b", [(1, 1), (97, 3), (4099, 128), (70001, 32)])
def test_gpu_matches_reference(backend, n, b):
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    sweep(backend, np.random.default_rng(n + b), n, b, QS, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("n", [1, 97, 4099, 70001])
@pytest.mark.parametrize("b", [3, 32, 128])
def test_gpu_rows_by_widths(backend, n, b):
    """Every row count with every width (odd, one word, a 1024-bit code), 17 queries on
    cuda (past one query block), k up to n + 5, with and without allow."""
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    sweep(backend, np.random.default_rng(7 * n + b), n, b, (1, 5, 17) if backend == "cuda" else (1, 5),
          device="cuda")


def test_auto_backend_and_env(monkeypatch, rng):
    codes, queries = make(rng, 50, 8, 3)
    assert _backend.resolve("auto", codes) == "cpu"
    monkeypatch.setenv("NESTVEC_BACKEND", "reference")
    assert _backend.resolve("auto", codes) == "reference"
    d, i = nestvec.hamming_topk(codes, queries, 5)
    dr, ir = reference.hamming_topk(codes, queries, 5)
    np.testing.assert_array_equal(i, ir)


def test_uint64_codes_and_torch_io(rng):
    torch = pytest.importorskip("torch")
    codes, queries = make(rng, 500, 32, 4)
    c64, q64 = codes.view(np.uint64), queries.view(np.uint64)
    d, i = ops.hamming_topk(c64, q64, 20)
    dr, ir = reference.hamming_topk(codes, queries, 20)
    np.testing.assert_array_equal(d, dr)
    np.testing.assert_array_equal(i, ir)
    dt, it = ops.hamming_topk(torch.from_numpy(codes), torch.from_numpy(queries), 20)
    assert isinstance(dt, torch.Tensor) and dt.dtype == torch.int32 and it.dtype == torch.int64
    np.testing.assert_array_equal(it.numpy(), ir)


def test_strided_rows_single_query_and_packed_allow(rng):
    big = rng.integers(0, 256, (400, 40), dtype=np.uint8)
    codes = big[::2, 4:36]  # strided rows, contiguous bytes: no copy needed
    q = rng.integers(0, 256, 32, dtype=np.uint8)
    allow = rng.random(200) < 0.5
    d, i = ops.hamming_topk(codes, q, 7, allow=np.packbits(allow))
    dr, ir = reference.hamming_topk(np.ascontiguousarray(codes), q[None], 7, allow)
    assert d.shape == (7,)
    np.testing.assert_array_equal(d, dr[0])
    np.testing.assert_array_equal(i, ir[0])


def test_large_k_and_empty_codes(rng):
    codes, queries = make(rng, 5000, 16, 2)
    d, i = ops.hamming_topk(codes, queries, 4500)
    dr, ir = reference.hamming_topk(codes, queries, 4500)
    np.testing.assert_array_equal(i, ir)
    d, i = ops.hamming_topk(np.zeros((0, 16), np.uint8), queries, 3)
    assert (i == -1).all() and (d == np.iinfo(np.int32).max).all()


def test_threads_agree(rng):
    codes, queries = make(rng, 300_000, 16, 3)
    prev = _backend._C.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            _backend._C.set_num_threads(t)
            outs.append(ops.hamming_topk(codes, queries, 50))
    finally:
        _backend._C.set_num_threads(prev)
    for d, i in outs[1:]:
        np.testing.assert_array_equal(i, outs[0][1])


def test_query_split_threads_agree(rng):
    # Few rows, many queries: threads split the queries instead of the rows.
    codes, queries = make(rng, 3000, 32, 400)
    d, i = ops.hamming_topk(codes, queries, 25)
    dr, ir = reference.hamming_topk(codes, queries, 25)
    np.testing.assert_array_equal(d, dr)
    np.testing.assert_array_equal(i, ir)


@pytest.mark.skipif(_backend._C is None, reason="native module not built")
def test_cpu_query_slices():
    """More than 4096 queries run in slices (bounded selector memory): still exact."""
    rng = np.random.default_rng(16)
    codes = rng.integers(0, 256, (777, 16), dtype=np.uint8)
    q = rng.integers(0, 256, (4100, 16), dtype=np.uint8)
    allow = rng.random(777) < 0.7
    d, i = ops.hamming_topk(codes, q, 10, allow=allow, backend="cpu")
    dr, ir = ops.hamming_topk(codes, q, 10, allow=allow, backend="reference")
    np.testing.assert_array_equal(d, dr)
    np.testing.assert_array_equal(i, ir)
