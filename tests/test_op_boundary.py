"""The exception-type contract at every public op: bad input raises TypeError or
ValueError naming the argument, never another exception type and never a crash. The
regressions of a fault probe (mixed NumPy / torch inputs, empty and strided tensors,
unbounded k, zero tokens), then a seeded fuzz over every op's arguments."""
from __future__ import annotations

import re

import numpy as np
import pytest

import nestvec as nv

torch = pytest.importorskip("torch")

ARG = re.compile(r"^[A-Za-z_][\w\[\]]*: ")  # messages start with the argument's name


def test_hamming_mixed_host_containers():
    c = np.random.default_rng(0).integers(0, 256, (50, 8), dtype=np.uint8)
    want = nv.hamming_topk(c, c[:2], 3, backend="reference")
    for codes, q in ((torch.from_numpy(c), c[:2]), (c, torch.from_numpy(c[:2]))):
        for allow in (None, torch.ones(50, dtype=torch.bool), np.ones(50, bool)):
            d, i = nv.hamming_topk(codes, q, 3, allow=allow)
            assert type(d) is type(codes)  # the result follows codes
            np.testing.assert_array_equal(np.asarray(i), want[1])
            np.testing.assert_array_equal(np.asarray(d), want[0])


def test_pool_mixed_host_containers():
    rng = np.random.default_rng(1)
    h = rng.standard_normal((2, 5, 8)).astype(np.float32)
    m = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    want = nv.pool(h, m, backend="reference")
    for hh, mm in ((torch.from_numpy(h), m), (h, torch.from_numpy(m)),
                   (torch.from_numpy(h), torch.from_numpy(m).bool())):
        out = nv.pool(hh, mm)
        assert type(out) is type(hh)
        np.testing.assert_allclose(np.asarray(out), want, atol=1e-6)


def test_binarize_empty_torch_and_numpy():
    assert tuple(nv.binarize(torch.zeros(0, 9)).shape) == (0, 2)
    assert nv.binarize(np.zeros((0, 9), np.float32)).shape == (0, 2)
    assert tuple(nv.binarize(torch.zeros(3, 0, 9)).shape) == (3, 0, 2)


def test_strided_uint64_codes_are_a_clear_error():
    c = torch.from_numpy(np.random.default_rng(0).integers(0, 2**63, (4, 6), dtype=np.uint64)).t()
    with pytest.raises(ValueError, match="^codes: uint64 codes must have contiguous rows"):
        nv.hamming_topk(c, c[:1].contiguous(), 2)
    # strided uint64 queries are small: copied, and the answer is the contiguous one's
    cc = c.contiguous()
    got = nv.hamming_topk(cc, c[:2], 3)
    want = nv.hamming_topk(cc, c[:2].contiguous(), 3)
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("op", ["hamming", "dense"])
def test_k_beyond_the_rows_is_bounded(op):
    c = np.zeros((10, 8), np.uint8)
    x = np.ones((10, 8), np.float32)
    call = (lambda k: nv.hamming_topk(c, c[:1], k)) if op == "hamming" else \
        (lambda k: nv.dense_topk(x, x[:1], k))
    d, i = call(110)  # padding is fine, up to 4096 columns of it
    assert i.shape == (1, 110) and (i[0, 10:] == -1).all()
    if op == "hamming":
        assert call(4106)[1].shape == (1, 4106)
    for k in (4107, 10**8, 2**31, 2**63):
        with pytest.raises(ValueError, match=r"^k: expected k <= N \+ 4096 = 4106"):
            call(k)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("mode", ["mean", "cls", "last", "max", "weighted_mean"])
def test_pool_zero_tokens_gives_zero_vectors(backend, mode):
    for h, m in ((np.zeros((3, 0, 8), np.float32), np.zeros((3, 0), bool)),
                 (torch.zeros(3, 0, 8), torch.zeros(3, 0, dtype=torch.bool))):
        out, codes = nv.pool(h, m, mode=mode, binary=True, backend=backend)
        assert tuple(out.shape) == (3, 8) and not np.asarray(out).any()
        assert tuple(codes.shape) == (3, 1) and not np.asarray(codes).any()
        assert type(out) is type(h)


# --------------------------------------------------------------------------- fuzz

def _values(rng):
    """A pool of argument values, valid and not, in every container."""
    f32 = rng.standard_normal((7, 16)).astype(np.float32)
    u8 = rng.integers(0, 256, (7, 2), dtype=np.uint8)
    return [
        None, 0, 1, -1, 3, 2**70, 1.5, float("nan"), True, "x", "cosine", b"ab", [], [1, 2],
        [[1.0, 2.0]], object(), np.float32(2), np.int64(3), f32, f32[:2], f32[:, :4], f32.T,
        f32[::2], f32.astype(np.float16), f32.astype(np.float64), f32.astype(np.int32),
        np.zeros((0, 16), np.float32), np.zeros((7, 0), np.float32), np.zeros((2, 3, 16), np.float32),
        u8, u8[:2], u8.view(np.uint16), np.ones(7, bool), np.ones(3, bool), np.zeros(1, np.uint8),
        np.array([[0, 1, -1]]), np.array([[0, 99]]), np.full((7, 16), np.inf, np.float32),
        f32.astype(np.complex64), np.ones((7, 5)), np.ones((2, 3, 4), np.float32),
        torch.from_numpy(f32), torch.from_numpy(f32).t(), torch.from_numpy(f32).half(),
        torch.from_numpy(f32).bfloat16(), torch.from_numpy(u8), torch.zeros(0, 16),
        torch.ones(7, dtype=torch.bool), torch.from_numpy(f32).requires_grad_(),
        torch.tensor([[0, 1, -1]]), torch.zeros(2, 3, 16), torch.ones(7, 3, dtype=torch.int64),
    ]


def _valid(rng):
    """One valid call per op: the fuzz replaces some of its arguments."""
    x = rng.standard_normal((9, 16)).astype(np.float32)
    codes = nv.binarize(x)
    h = rng.standard_normal((2, 5, 16)).astype(np.float32)
    A = rng.standard_normal((4, 16)).astype(np.float32)
    B = rng.standard_normal((6, 4)).astype(np.float32)
    S = rng.standard_normal((2, 16)).astype(np.float32)
    return {
        "hamming_topk": (nv.hamming_topk, [codes, codes[:2], 3, np.ones(9, bool)]),
        "dense_topk": (nv.dense_topk, [x, x[:2], 3, 8, "cosine", np.ones(9, bool), None]),
        "funnel_topk": (nv.funnel_topk, [x, x[:2], 3, (4, 16), (6,), "ip"]),
        "pool": (nv.pool, [h, np.ones((2, 5), np.int64), "mean", True, 8, True]),
        "binarize": (nv.binarize, [x, 8]),
        "lowrank_sparse_matmul": (nv.lowrank_sparse_matmul,
                                  [x, A, B, S, np.array([1, 4]), np.zeros(6, np.float32)]),
    }


def _fuzz(trials: int, seed: int):
    rng = np.random.default_rng(seed)
    pool = _values(rng)
    ops = _valid(rng)
    bad, ran = [], 0
    for t in range(trials):
        name = list(ops)[t % len(ops)]
        fn, args = ops[name]
        args = list(args)
        for j in rng.choice(len(args), size=int(rng.integers(1, 3)), replace=False):
            args[j] = pool[int(rng.integers(0, len(pool)))]
        if rng.random() < 0.2:  # a torch CPU version of every array argument
            args = [torch.from_numpy(a) if isinstance(a, np.ndarray) and a.dtype != np.complex64
                    else a for a in args]
        try:
            fn(*args)
            ran += 1
        except (TypeError, ValueError) as e:
            if not ARG.match(str(e)):
                bad.append((name, t, f"{type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001
            bad.append((name, t, f"{type(e).__name__}: {e}"))
    return bad, ran


def test_fuzz_every_public_op_raises_only_named_value_or_type_errors():
    bad, ran = _fuzz(600, seed=2026)
    assert not bad, bad[:10]
    assert ran > 10  # some calls are valid and run


@pytest.mark.slow
def test_fuzz_every_public_op_long():
    bad, _ = _fuzz(9000, seed=7)
    assert not bad, bad[:10]
