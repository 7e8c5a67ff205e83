"""pool: every backend against the NumPy reference (reference.pool)."""
import itertools

import numpy as np
import pytest

import nestvec.ops as ops
from nestvec import _backend
from nestvec import reference

from conftest import cpu_isas

MODES = ops.POOL_MODES
DTYPES = ("float32", "float16", "bfloat16")
SHAPES = list(itertools.product((1, 3, 64), (1, 7, 128, 257), (32, 97, 384, 1024)))


def make_mask(rng, B, T, side, mask_dtype=np.int64):
    """Random lengths in [0, T]; with B > 1 one row is empty and one full."""
    lens = rng.integers(0, T + 1, size=B)
    if B > 1:
        lens[0], lens[-1] = 0, T
    m = np.zeros((B, T), dtype=mask_dtype)
    for b, n in enumerate(lens):
        if side == "right":
            m[b, :n] = 1
        else:
            m[b, T - n:] = 1
    return m


def make_hidden(rng, B, T, H, dtype):
    """(array for the op, float32 copy holding exactly the same values)."""
    h = rng.standard_normal((B, T, H)).astype(np.float32) + 0.1
    if dtype == "float16":
        h = h.astype(np.float16)
        return h, h.astype(np.float32)
    if dtype == "bfloat16":
        u = reference.f32_to_bf16(h)
        return u, reference.bf16_to_f32(u)
    return h, h


def check(got, ref, binary):
    if binary:
        (e, c), (re, rc) = got, ref
    else:
        e, re = got, ref
    e = e.numpy() if hasattr(e, "numpy") else e
    np.testing.assert_allclose(e, re, rtol=2e-4, atol=2e-5)
    if binary:
        c = c.numpy() if hasattr(c, "numpy") else c
        # bits may only differ where the reference value is ~0
        bits, rbits = np.unpackbits(c, axis=1), np.unpackbits(rc, axis=1)
        assert c.shape == rc.shape
        d = re.shape[1]
        diff = bits[:, :d] != rbits[:, :d]
        assert not (diff & (np.abs(re) > 1e-5)).any()
        assert not bits[:, d:].any()


def cases(n, seed):
    """A fixed sample of the cross product shapes x modes x dtypes x sides: every
    value of each axis appears, the default run stays short."""
    r = np.random.default_rng(seed)
    shapes = [SHAPES[i] for i in r.permutation(len(SHAPES))]
    out = []
    for i in range(n):
        B, T, H = shapes[i % len(shapes)]
        dim = None if i % 3 else int(r.integers(1, H + 1))
        out.append((B, T, H, MODES[i % 5], DTYPES[(i // 5) % 3], ("right", "left")[(i // 15) % 2],
                    dim, bool(i % 2), bool((i // 2) % 4)))
    return out


@pytest.mark.parametrize("B,T,H,mode,dtype,side,dim,binary,normalize", cases(240, 5))
def test_cpu_matches_reference(B, T, H, mode, dtype, side, dim, binary, normalize, restore_isa):
    if _backend._C is None:
        pytest.skip("native module not built")
    rng = np.random.default_rng(hash((B, T, H, mode, dtype, side)) % 2**32)
    h, h32 = make_hidden(rng, B, T, H, dtype)
    m = make_mask(rng, B, T, side)
    ref = reference.pool(h32, m, mode, normalize, dim, binary)
    kw = dict(hidden_dtype="bfloat16") if dtype == "bfloat16" else {}
    for isa in cpu_isas():
        _backend._C.set_isa(isa)
        got = ops.pool(h, m, mode, normalize, dim, binary, backend="cpu", **kw)
        check(got, ref, binary)


@pytest.mark.slow
@pytest.mark.parametrize("B,T,H", SHAPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ("right", "left"))
def test_cpu_full_grid(B, T, H, mode, dtype, side, restore_isa):
    if _backend._C is None:
        pytest.skip("native module not built")
    rng = np.random.default_rng(7)
    h, h32 = make_hidden(rng, B, T, H, dtype)
    m = make_mask(rng, B, T, side)
    kw = dict(hidden_dtype="bfloat16") if dtype == "bfloat16" else {}
    ref = reference.pool(h32, m, mode, True, None, True)
    for isa in cpu_isas():
        _backend._C.set_isa(isa)
        check(ops.pool(h, m, mode, binary=True, backend="cpu", **kw), ref, True)


def test_reference_semantics():
    h = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    m = np.array([[0, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(reference.pool(h, m, "mean", False)[0], (h[0, 1] + h[0, 2]) / 2)
    np.testing.assert_allclose(reference.pool(h, m, "cls", False)[0], h[0, 1])
    np.testing.assert_allclose(reference.pool(h, m, "last", False)[0], h[0, 2])
    np.testing.assert_allclose(reference.pool(h, m, "max", False)[0], h[0, 2])
    np.testing.assert_allclose(reference.pool(h, m, "weighted_mean", False)[0],
                               (1 * h[0, 1] + 2 * h[0, 2]) / 3, rtol=1e-6)
    for mode in MODES:
        e, c = reference.pool(h, m, mode, True, 2, True)
        assert e.shape == (2, 2) and c.shape == (2, 1)
        assert not e[1].any() and not c[1].any()
        np.testing.assert_allclose(np.linalg.norm(e[0]), 1.0, rtol=1e-6)


def test_padding_side_invariant():
    """The same tokens pooled under left and right padding give the same vector."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    right = np.zeros((1, 8, 16), np.float32)
    left = np.zeros((1, 8, 16), np.float32)
    right[0, :5], left[0, 3:] = x, x
    mr, ml = np.zeros((1, 8), np.int64), np.zeros((1, 8), np.int64)
    mr[0, :5], ml[0, 3:] = 1, 1
    for be in ["reference"] + (["cpu"] if _backend._C is not None else []):
        for mode in MODES:
            np.testing.assert_allclose(ops.pool(right, mr, mode, backend=be),
                                       ops.pool(left, ml, mode, backend=be), rtol=1e-6, atol=1e-7)


def test_torch_inputs_strided_and_mask_dtypes():
    torch = pytest.importorskip("torch")
    if _backend._C is None:
        pytest.skip("native module not built")
    g = torch.Generator().manual_seed(0)
    big = torch.randn(4, 20, 64, generator=g).to(torch.bfloat16)
    h = big[:, 3:15]  # strided over batch and tokens
    m = torch.ones(4, 12, dtype=torch.long)
    m[1, 7:] = 0
    m[2] = 0
    ref = reference.pool(h.float().numpy(), m.numpy(), "mean", True, 40, True)
    for mask in (m, m.bool(), m.to(torch.int32), m.float(), m.to(torch.uint8)):
        e, c = ops.pool(h, mask, dim=40, binary=True)
        assert isinstance(e, torch.Tensor) and e.dtype == torch.float32 and c.dtype == torch.uint8
        check((e, c), ref, True)


def test_errors():
    h = np.zeros((2, 3, 8), np.float32)
    m = np.ones((2, 3), np.int64)
    with pytest.raises(ValueError, match="hidden"):
        ops.pool(h[0], m)
    with pytest.raises(TypeError, match="hidden"):
        ops.pool(h.astype(np.int32), m)
    with pytest.raises(ValueError, match="mask"):
        ops.pool(h, m[:, :2])
    with pytest.raises(TypeError, match="mask"):
        ops.pool(h, m.astype(object))
    with pytest.raises(ValueError, match="mode"):
        ops.pool(h, m, mode="median")
    with pytest.raises(ValueError, match="dim"):
        ops.pool(h, m, dim=9)
    with pytest.raises(TypeError, match="dim"):
        ops.pool(h, m, dim=2.0)
    with pytest.raises(ValueError, match="backend"):
        ops.pool(h, m, backend="tpu")


TRITON_CASES = [(B, T, H, MODES[i % 5], DTYPES[i % 3], ("right", "left")[i % 2], dim, bool(i % 2))
                for i, (B, T, H, dim) in enumerate(
                    [(1, 1, 32, None), (3, 7, 97, None), (3, 7, 97, 50), (2, 40, 300, None),
                     (3, 33, 32, 9), (1, 7, 97, None), (3, 1, 97, None), (2, 20, 300, 260),
                     (3, 9, 64, None), (3, 7, 32, 17)])]
TRITON_CASES += [(3, 7, 97, mode, "float32", "left", None, True) for mode in MODES]


@pytest.mark.parametrize("B,T,H,mode,dtype,side,dim,binary", TRITON_CASES)
def test_triton_interpret(B, T, H, mode, dtype, side, dim, binary, triton_interpret):
    import torch

    rng = np.random.default_rng(11)
    h, h32 = make_hidden(rng, B, T, H, "float32")
    ht = torch.from_numpy(h).to(getattr(torch, dtype))
    m = make_mask(rng, B, T, side)
    ref = reference.pool(ht.float().numpy(), m, mode, True, dim, binary)
    check(ops.pool(ht, torch.from_numpy(m), mode, True, dim, binary, backend="triton"), ref, binary)


def test_triton_interpret_bf16_bits_as_uint16(triton_interpret):
    """A torch uint16 tensor flagged hidden_dtype="bfloat16" is read as bf16 bit patterns
    (Triton used to convert the integers to float)."""
    import torch

    rng = np.random.default_rng(12)
    h = torch.from_numpy(rng.standard_normal((3, 7, 40)).astype(np.float32)).to(torch.bfloat16)
    m = torch.from_numpy(make_mask(rng, 3, 7, "left"))
    ref = reference.pool(h.float().numpy(), m.numpy(), "mean", True, 20, True)
    got = ops.pool(h.view(torch.uint16), m, "mean", True, 20, True, hidden_dtype="bfloat16",
                   backend="triton")
    check(got, ref, True)


@pytest.mark.parametrize("B,T,H,mode,dtype,side,dim,binary,normalize", cases(60, 13))
def test_cuda_emulated(B, T, H, mode, dtype, side, dim, binary, normalize, cuda_emu):
    """csrc/cuda/pooling.cu on the CPU through nvemu (fused and two-kernel paths)."""
    import torch

    rng = np.random.default_rng(B * 1000 + T + H)
    h, h32 = make_hidden(rng, B, T, H, "float32")
    ht = torch.from_numpy(h).to(getattr(torch, dtype))
    m = make_mask(rng, B, T, side)
    ref = reference.pool(ht.float().numpy(), m, mode, normalize, dim, binary)
    check(ops.pool(ht, torch.from_numpy(m), mode, normalize, dim, binary, backend="cuda"), ref,
          binary)


def test_cuda_emulated_strided_and_unaligned(cuda_emu):
    """Token rows that are not 16-byte aligned (scalar loads) and a strided hidden view."""
    import torch

    rng = np.random.default_rng(14)
    h = torch.from_numpy(rng.standard_normal((3, 9, 101)).astype(np.float32))
    m = torch.from_numpy(make_mask(rng, 3, 9, "right"))
    for dtype in DTYPES:
        ht = h.to(getattr(torch, dtype))
        for view in (ht[:, :, 1:], ht[:, :, :64], ht[:, ::2]):
            mm = m[:, ::2] if view.shape[1] != m.shape[1] else m
            for mode in MODES:
                ref = reference.pool(view.float().numpy(), mm.numpy(), mode, True, None, True)
                check(ops.pool(view, mm, mode, True, None, True, backend="cuda"), ref, True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_matches_reference(backend):
    import torch

    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    rng = np.random.default_rng(2)
    # Triton compiles a kernel per (mode, dtype, flags): fewer cases, all outputs on.
    for B, T, H, mode, dtype, side, dim, binary, normalize in cases(120 if backend == "cuda" else 24, 9):
        if backend == "triton":
            binary = normalize = True
        h, h32 = make_hidden(rng, B, T, H, "float32")
        ht = torch.from_numpy(h).to(getattr(torch, dtype)).cuda()
        m = make_mask(rng, B, T, side)
        ref = reference.pool(ht.float().cpu().numpy(), m, mode, normalize, dim, binary)
        got = ops.pool(ht, torch.from_numpy(m).cuda(), mode, normalize, dim, binary, backend=backend)
        got = tuple(x.cpu() for x in got) if binary else got.cpu()
        check(got, ref, binary)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_strided_view_bool_mask(backend):
    """Hidden states as a token slice of a larger bf16 tensor (strided rows) and a bool
    mask, prefix 100 with bits: the shape of an encoder's output cut for pooling."""
    import torch

    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    g = torch.Generator(device="cpu").manual_seed(3)
    big = torch.randn(8, 140, 384, generator=g).to(torch.bfloat16).cuda()
    h, m = big[:, 3:131], (torch.rand(8, 128, generator=g) < 0.7).cuda()
    ref = reference.pool(h.float().cpu().numpy(), m.cpu().numpy(), "mean", True, 100, True)
    e, c = ops.pool(h, m, "mean", True, 100, True, backend=backend)
    check((e.cpu(), c.cpu()), ref, True)
