"""Bad input: a clear TypeError / ValueError naming the argument, never a crash."""
import numpy as np
import pytest

import nestvec.ops as ops
from nestvec import _backend
from nestvec import _checks as ck

from conftest import emulated_gpu_backend

C = np.zeros((10, 4), dtype=np.uint8)
Q = np.zeros((2, 4), dtype=np.uint8)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(codes=np.zeros(10, np.uint8)), ValueError, "codes"),
    (dict(codes=np.zeros((10, 4, 1), np.uint8)), ValueError, "codes"),
    (dict(codes=np.zeros((10, 4), np.float32)), TypeError, "codes"),
    (dict(queries=np.zeros((2, 4), np.int8)), TypeError, "queries"),
    (dict(queries=np.zeros((2, 5), np.uint8)), ValueError, "queries"),
    (dict(queries=np.zeros((2, 2, 4), np.uint8)), ValueError, "queries"),
    (dict(k=0), ValueError, "k"),
    (dict(k=-3), ValueError, "k"),
    (dict(k=2.5), TypeError, "k"),
    (dict(k=True), TypeError, "k"),
    (dict(allow=np.ones(9, bool)), ValueError, "allow"),
    (dict(allow=np.ones((10, 1), bool)), ValueError, "allow"),
    (dict(allow=np.ones(10, np.float32)), TypeError, "allow"),
    (dict(allow=np.ones(3, np.uint8)), ValueError, "allow"),
    (dict(codes=np.zeros((10, 0), np.uint8), queries=np.zeros((2, 0), np.uint8)), ValueError, "codes"),
    (dict(codes=np.zeros((4, 10), np.uint8).T), ValueError, "codes"),  # non-contiguous rows
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(codes="abc"), TypeError, "codes"),
])
def test_hamming_bad_input(kwargs, exc, match):
    args = dict(codes=C, queries=Q, k=3)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ops.hamming_topk(**args)


def test_wrong_device_never_copies():
    if not _backend.cuda_compiled():
        pytest.skip("CUDA not compiled")
    with pytest.raises(ValueError, match="codes"):
        ops.hamming_topk(C, Q, 3, backend="cuda")


def test_triton_needs_tensor(monkeypatch):
    with pytest.raises(TypeError, match="codes"):
        ops.hamming_topk(C, Q, 3, backend="triton")
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="codes"):
        ops.hamming_topk(torch.from_numpy(C), torch.from_numpy(Q), 3, backend="triton")


def test_mixed_containers_device_check():
    torch = pytest.importorskip("torch")
    # NumPy codes with torch CPU queries is fine (both on host).
    ops.hamming_topk(C, torch.from_numpy(Q), 3)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends_name_a_numpy_input(backend, monkeypatch):
    """A tensor db / codes next to a NumPy queries / allow / candidates: a TypeError
    naming it, not an AttributeError from inside the launcher (reachable on the CPU
    through the Triton interpreter and nvemu)."""
    torch = pytest.importorskip("torch")
    emulated_gpu_backend(backend, monkeypatch)
    x = torch.randn(20, 8)
    q = x[:2].clone()
    for kw, name in ((dict(queries=q.numpy()), "queries"), (dict(allow=np.ones(20, bool)), "allow"),
                     (dict(candidates=np.zeros((2, 3), np.int64)), "candidates")):
        args = dict(db=x, queries=q, k=3, backend=backend)
        args.update(kw)
        with pytest.raises(TypeError, match=rf"^{name}: the {backend} backend takes torch"):
            ops.dense_topk(**args)
    with pytest.raises(TypeError, match=rf"^queries: the {backend} backend takes torch"):
        ops.hamming_topk(torch.from_numpy(C), Q, 3, backend=backend)


@pytest.mark.parametrize("bad", [[[0, 20], [1, 2]], [[0, -2], [1, 2]], [[2**62, 1], [0, -1]]])
def test_dense_candidates_out_of_range(bad):
    x = np.random.default_rng(0).random((20, 8), dtype=np.float32)
    backends = ["reference"] + (["cpu"] if _backend._C is not None else [])
    for be in backends:
        with pytest.raises(ValueError, match=r"^candidates: row ids must lie in \[0, N=20\)"):
            ops.dense_topk(x, x[:2], 3, candidates=np.array(bad), backend=be)


def test_dense_cpu_cosine_queries_beyond_float32():
    """The cpu kernel takes float32 queries; a cosine query is scale-free, so one beyond
    float32's range is normalised first (1/|q| used to overflow: every row dropped)."""
    if _backend._C is None:
        pytest.skip("native module not built")
    x = np.random.default_rng(1).random((30, 8), dtype=np.float32)
    for q in (x[:3].astype(np.float64) * 1e39, x[:3] * np.float32(1e-40)):
        s, i = ops.dense_topk(x, q, 4, backend="cpu")
        rs, ri = ops.dense_topk(x, q, 4, backend="reference")
        np.testing.assert_array_equal(i, ri)
        np.testing.assert_allclose(s, rs, rtol=1e-5)
    with pytest.raises(ValueError, match="^queries: values beyond float32"):
        ops.dense_topk(x, x[:3].astype(np.float64) * 1e39, 4, metric="ip", backend="cpu")


def test_funnel_single_and_prefix_queries():
    x = np.random.default_rng(2).random((60, 16), dtype=np.float32)
    backends = ["reference"] + (["cpu"] if _backend._C is not None else [])
    for be in backends:
        s1, i1 = ops.funnel_topk(x, x[3], 4, dims=(4, None), backend=be)
        s2, i2 = ops.funnel_topk(x, x[3:4], 4, dims=(4, None), backend=be)
        assert i1.shape == (4,) and (i1 == i2[0]).all() and (s1 == s2[0]).all()
        _, ip = ops.funnel_topk(x, x[3:5, :8], 4, dims=(4, 8), backend=be)  # [Q, dims[-1]]
        _, iw = ops.funnel_topk(x, x[3:5], 4, dims=(4, 8), backend=be)
        assert (ip == iw).all()
        with pytest.raises(ValueError, match="^shortlist: backend"):
            ops.funnel_topk(x, x[:2], 3, dims=(4, None), shortlist=5000, backend=be)


def test_native_binding_rejects_bad_buffers():
    if _backend._C is None:
        pytest.skip("no native module")
    out_d = np.empty((2, 3), np.int32)
    out_i = np.empty((2, 3), np.int64)
    with pytest.raises(ValueError):
        _backend._C.hamming_topk(C, np.zeros((2, 5), np.uint8), 3, None, out_d, out_i)
    with pytest.raises(ValueError):
        _backend._C.hamming_topk(C, Q, 3, np.ones(4, np.uint8), out_d, out_i)
    with pytest.raises(ValueError):
        _backend._C.hamming_topk(C, Q, 4, None, out_d, out_i)


def test_shares_memory_row_blocks():
    """out= aliasing: exact on the host, and the device rule (byte ranges refined for
    column blocks of one row-strided buffer) agrees with it on these views."""
    torch = pytest.importorskip("torch")

    big = torch.zeros(6, 20, dtype=torch.bfloat16)
    cases = [
        ((slice(None), slice(0, 10)), (slice(None), slice(10, 20)), False),
        ((slice(None), slice(0, 10)), (slice(None), slice(5, 15)), True),
        ((slice(None), slice(0, 10)), (slice(None), slice(9, 10)), True),
        ((slice(1, None), slice(10, 20)), (slice(None), slice(0, 10)), False),
        ((slice(0, 3), slice(None)), (slice(3, 6), slice(None)), False),
        ((slice(0, 4), slice(None)), (slice(3, 6), slice(None)), True),
    ]
    for ia, ib, want in cases:
        a, b = big[ia], big[ib]
        assert ck.shares_memory(a, b) is want, (ia, ib)
        assert ck._device_overlap(a, b) is want, (ia, ib)
    # rows of b that wrap into a's next row
    wrap = torch.as_strided(big, (5, 10), (20, 1), storage_offset=15)
    assert ck.shares_memory(big[:, :10], wrap) is True
    assert ck._device_overlap(big[:, :10], wrap) is True
    assert ck.shares_memory(big.float(), big) is False
    assert ck.shares_memory(np.zeros(3), big) is False


def test_native_module_is_built():
    """Tests of the C++ backend skip where nestvec._C is missing; a build or import error
    must fail the suite here instead of turning those into skips."""
    assert _backend._C is not None, f"nestvec._C failed to import: {_backend._C_ERROR}"
