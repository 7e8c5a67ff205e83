"""lowrank_sparse_matmul against the float64 reference on every backend and CPU ISA."""
import itertools

import numpy as np
import pytest

import nestvec.ops as ops
from nestvec import _backend
from nestvec import reference

from conftest import cpu_isas, emulated_gpu_backend

torch = pytest.importorskip("torch")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Error of the largest entry, relative to the largest |y|: f32 accumulation, output (and
# on GPU the intermediate x·Aᵀ) rounded to the dtype.
TOL = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}


def n_channels(kind, N):
    return {"none": 0, "one": 1, "5%": max(1, round(0.05 * N)), "all": N}[kind]


def make(M, K, N, r, c, dtype, bias, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    t = DTYPES[dtype]
    x = torch.randn(M, K, generator=g)
    A = torch.randn(r, K, generator=g) / K ** 0.5
    B = torch.randn(N, r, generator=g) / max(r, 1) ** 0.5
    S = torch.randn(c, K, generator=g) / K ** 0.5
    ch = torch.randperm(N, generator=g)[:c]
    b = torch.randn(N, generator=g) if bias else None
    cast = lambda v: None if v is None else v.to(device=device, dtype=t)  # noqa: E731
    return cast(x), cast(A), cast(B), cast(S), ch.to(device), cast(b)


def expected(x, A, B, S, ch, b):
    f = lambda v: None if v is None else v.detach().float().cpu().numpy()  # noqa: E731
    return reference.lowrank_sparse_matmul(f(x), f(A), f(B), f(S), ch.cpu().numpy(), f(b))


def magnitude(x, A, B, S, ch, b):
    """max of |x|·|A|ᵀ·|B|ᵀ + scatter(|x|·|S|ᵀ) + |b|: the scale rounding errors live on
    (y itself may cancel to ~0)."""
    f = lambda v: None if v is None else np.abs(v.detach().float().cpu().numpy())  # noqa: E731
    m = reference.lowrank_sparse_matmul(f(x), f(A), f(B), f(S), ch.cpu().numpy(), f(b))
    return max(float(m.max()) if m.size else 0.0, 1e-6)


def check(y, want, dtype, what, scale=None):
    y = y.detach().float().cpu().numpy() if hasattr(y, "detach") else np.asarray(y, np.float64)
    assert y.shape == want.shape, what
    if scale is None:
        scale = max(float(np.abs(want).max()) if want.size else 0.0, 1e-3)
    err = float(np.abs(y - want).max()) / scale if want.size else 0.0
    assert err <= TOL[dtype], f"{what}: max error {err:.3g} (relative to {scale:.3g})"


def check_args(y, args, dtype, what):
    check(y, expected(*args), dtype, what, scale=magnitude(*args))


# (M, K, N) cases: every awkward size in every position at least once.
SHAPES = [(1, 7, 97), (7, 97, 1025), (97, 1025, 7), (1025, 1, 1), (97, 97, 97), (7, 1025, 1)]
RANKS = [1, 16, 128]
CHANNELS = ["none", "one", "5%", "all"]


def cpu_cases():
    """A covering subset of the grid: every shape x rank x channel kind, dtypes and bias
    rotating, so that each value of each axis meets each other axis's values."""
    out = []
    for i, (shape, r, ck) in enumerate(itertools.product(SHAPES, RANKS, CHANNELS)):
        dtype = list(DTYPES)[i % 3]
        # bias from i // 4, not i: i % 2 would tie it to the channel kind (i % 4)
        out.append((shape, r, ck, dtype, bool((i // 4) % 2)))
    return out


@pytest.mark.parametrize("isa", cpu_isas() or ["none"])
def test_cpu_grid(isa, restore_isa):
    if _backend._C is None:
        pytest.skip("native module not built")
    _backend._C.set_isa(isa)
    for (M, K, N), r, ck, dtype, bias in cpu_cases():
        c = n_channels(ck, N)
        args = make(M, K, N, r, c, dtype, bias, seed=M + K + N + r + c)
        y = ops.lowrank_sparse_matmul(*args, backend="cpu")
        assert y.dtype == DTYPES[dtype]
        check_args(y, args, dtype, f"{isa} M={M} K={K} N={N} r={r} c={c} {dtype} bias={bias}")


@pytest.mark.parametrize("isa", cpu_isas() or ["none"])
def test_cpu_few_rows(isa, restore_isa):
    """7 to 2 NR rows of x (64 on AVX-512, 32 below) take the transposed path (weights
    read row-major, only x packed, in NR-column panels); 6 is the last dot-product
    size, 2 NR + 1 the first blocked one. Every rank, channel kind and dtype."""
    if _backend._C is None:
        pytest.skip("native module not built")
    _backend._C.set_isa(isa)
    shapes = [(6, 40, 30), (8, 7, 97), (16, 64, 33), (17, 7, 97), (20, 384, 13), (31, 1, 40),
              (32, 97, 1), (33, 50, 25), (24, 0, 9), (12, 33, 5), (48, 20, 7), (64, 9, 30),
              (65, 30, 9)]
    for i, ((M, K, N), r, ck) in enumerate(itertools.product(shapes, RANKS + [0], CHANNELS)):
        # bias untied from the channel kind (i % 4) and the rank ((i // 4) % 4)
        dtype, bias = list(DTYPES)[i % 3], bool((i // 4 + i // 16) % 2)
        c = n_channels(ck, N)
        args = make(M, K, N, r, c, dtype, bias, seed=i)
        check_args(ops.lowrank_sparse_matmul(*args, backend="cpu"), args, dtype,
                   f"{isa} M={M} K={K} N={N} r={r} c={c} {dtype} bias={bias}")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cpu_numpy_io(dtype, rng):
    """NumPy in, NumPy out (bfloat16 is torch-only)."""
    if _backend._C is None:
        pytest.skip("native module not built")
    M, K, N, r, c = 33, 70, 50, 16, 5
    x = rng.standard_normal((M, K)).astype(dtype)
    A = (rng.standard_normal((r, K)) / K ** 0.5).astype(dtype)
    B = (rng.standard_normal((N, r)) / r ** 0.5).astype(dtype)
    S = (rng.standard_normal((c, K)) / K ** 0.5).astype(dtype)
    ch = rng.permutation(N)[:c].astype(np.int32)
    bias = rng.standard_normal(N).astype(dtype)
    y = ops.lowrank_sparse_matmul(x, A, B, S, ch, bias)
    assert isinstance(y, np.ndarray) and y.dtype == np.dtype(dtype)
    want = reference.lowrank_sparse_matmul(x, A, B, S, ch, bias)
    check(y, want, dtype, "numpy")
    # strided rows of x (a view), and one 1-D row
    big = np.zeros((M, K + 9), dtype=dtype)
    big[:, :K] = x
    check(ops.lowrank_sparse_matmul(big[:, :K], A, B, S, ch, bias), want, dtype, "strided x")
    y1 = ops.lowrank_sparse_matmul(x[3], A, B, S, ch, bias)
    assert y1.shape == (N,)
    check(y1[None], want[3:4], dtype, "1-D x")


def test_reference_float64():
    x, A, B, S, ch, b = make(9, 13, 11, 3, 2, "float32", True)
    x64, A64, B64, S64, b64 = (v.double() for v in (x, A, B, S, b))
    y = ops.lowrank_sparse_matmul(x64, A64, B64, S64, ch, b64)
    assert y.dtype == torch.float64
    W = reference.lowrank_sparse_dense_weight(A64.numpy(), B64.numpy(), S64.numpy(), ch.numpy())
    np.testing.assert_allclose(y.numpy(), x64.numpy() @ W.T + b64.numpy(), rtol=1e-12, atol=1e-12)


TRITON_CASES = [
    ((1, 7, 97), 1, "one", "float32", True),
    ((7, 97, 70), 16, "5%", "float16", False),
    ((97, 33, 7), 16, "all", "bfloat16", True),
    ((33, 64, 64), 128, "none", "float32", False),
    ((20, 40, 130), 16, "5%", "bfloat16", False),
    ((5, 1, 9), 1, "all", "float16", True),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: f"{c[0]}-r{c[1]}-{c[2]}-{c[3]}")
def test_triton_interpreter(case, triton_interpret):
    (M, K, N), r, ck, dtype, bias = case
    c = n_channels(ck, N)
    args = make(M, K, N, r, c, dtype, bias, seed=3)
    y = ops.lowrank_sparse_matmul(*args, backend="triton")
    assert y.dtype == DTYPES[dtype]
    check_args(y, args, dtype, f"triton {case}")


def test_triton_interpreter_grid(triton_interpret):
    """kernels/lowrank_sparse.py over the same covering grid as the cpu and emulated
    cuda backends (sizes 1 / 7 / 97 / 1025 in every position; ~15 s interpreted)."""
    for (M, K, N), r, ck, dtype, bias in cpu_cases():
        c = n_channels(ck, N)
        args = make(M, K, N, r, c, dtype, bias, seed=7)
        check_args(ops.lowrank_sparse_matmul(*args, backend="triton"), args, dtype,
                   f"triton M={M} K={K} N={N} r={r} c={c} {dtype} bias={bias}")


def test_grid_axes_meet():
    """The covering grid's claim: every pair of axes meets in all value combinations."""
    cases = [(shape, r, ck, dt, b) for shape, r, ck, dt, b in cpu_cases()]
    for a, b in itertools.combinations(range(5), 2):
        seen = {(c[a], c[b]) for c in cases}
        assert len(seen) == len({c[a] for c in cases}) * len({c[b] for c in cases}), (a, b)


@pytest.mark.slow
@pytest.mark.parametrize("isa", cpu_isas() or ["none"])
def test_cpu_full_grid(isa, restore_isa):
    if _backend._C is None:
        pytest.skip("native module not built")
    _backend._C.set_isa(isa)
    sizes = (1, 7, 97, 1025)
    for (M, K, N), r, ck, dtype, bias in itertools.product(
            itertools.product(sizes, sizes, sizes), RANKS, CHANNELS, DTYPES, (False, True)):
        c = n_channels(ck, N)
        args = make(M, K, N, r, c, dtype, bias, seed=1)
        check_args(ops.lowrank_sparse_matmul(*args, backend="cpu"), args, dtype,
                   f"{isa} M={M} K={K} N={N} r={r} c={c} {dtype} bias={bias}")


def test_cuda_emulated_grid(cuda_emu):
    """csrc/cuda/lowrank_sparse.cu itself on the CPU through nvemu (WMMA, the cp.async
    double buffer, the SIMT float32 kernel, the sparse epilogue)."""
    for (M, K, N), r, ck, dtype, bias in cpu_cases():
        c = n_channels(ck, N)
        args = make(M, K, N, r, c, dtype, bias, seed=5)
        check_args(ops.lowrank_sparse_matmul(*args, backend="cuda"), args, dtype,
                   f"emulated cuda M={M} K={K} N={N} r={r} c={c} {dtype} bias={bias}")


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_cuda_emulated_strided_x_and_tiles(dtype, cuda_emu):
    """x rows with a stride (a column slice), K a multiple of 8 (the cp.async path) and
    not, several row and column tiles, r and c crossing tile boundaries."""
    for M, K, N, r, c, sl in [(260, 64, 300, 136, 130, False), (130, 72, 129, 8, 0, True),
                              (65, 40, 257, 0, 20, False), (200, 33, 140, 17, 7, True)]:
        x, A, B, S, ch, b = make(M, K + 8 if sl else K, N, r, c, dtype, True, seed=9)
        if sl:
            x = x[:, 8:]
            A, S = A[:, 8:].contiguous(), S[:, 8:].contiguous()
        args = (x, A, B, S, ch, b)
        check_args(ops.lowrank_sparse_matmul(*args, backend="cuda"), args, dtype,
                   f"emulated cuda M={M} K={K} N={N} r={r} c={c} sliced={sl}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_grid(backend):
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    for (M, K, N), r, ck, dtype, bias in cpu_cases():
        c = n_channels(ck, N)
        args = make(M, K, N, r, c, dtype, bias, seed=5, device="cuda")
        check_args(ops.lowrank_sparse_matmul(*args, backend=backend), args, dtype,
                   f"{backend} M={M} K={K} N={N} r={r} c={c} {dtype} bias={bias}")


# Larger than the covering grid: K = 1025 with M = 1025, K = 4096 (a 7B-model layer's
# width) with 5% channels, no channels, all channels at r = 128.
GPU_SHAPES = [  # (M, K, N, r, c, dtype, bias)
    (97, 1025, 7, 16, 7, "float32", True),
    (1, 7, 97, 1, 1, "bfloat16", False),
    (7, 97, 1025, 128, 51, "float16", True),
    (1025, 1025, 97, 128, 0, "bfloat16", True),
    (1025, 64, 1025, 16, 51, "bfloat16", False),
    (97, 128, 256, 128, 256, "float16", False),
    (300, 4096, 512, 64, 26, "bfloat16", False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", GPU_SHAPES, ids=lambda c: "-".join(map(str, c)))
def test_gpu_shapes(backend, case):
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    M, K, N, r, c, dtype, bias = case
    args = make(M, K, N, r, c, dtype, bias, seed=M + K, device="cuda")
    check_args(ops.lowrank_sparse_matmul(*args, backend=backend), args, dtype, f"{backend} {case}")


# ------------------------------------------------------------------------------ validation

def _ok(dtype="float32"):
    return make(6, 8, 10, 3, 2, dtype, True)


@pytest.mark.parametrize("mutate, exc, name", [
    (lambda a: (a[0].double(),) + a[1:], TypeError, "A"),          # x f64, A f32
    (lambda a: (a[0], a[1].half()) + a[2:], TypeError, "A"),
    (lambda a: (a[0], a[1][:, :5]) + a[2:], ValueError, "A"),
    (lambda a: a[:2] + (a[2][:, :2],) + a[3:], ValueError, "B"),
    (lambda a: a[:3] + (a[3][:, :4],) + a[4:], ValueError, "S"),
    (lambda a: a[:4] + (torch.tensor([1, 1]),) + a[5:], ValueError, "channels"),
    (lambda a: a[:4] + (torch.tensor([1, 10]),) + a[5:], ValueError, "channels"),
    (lambda a: a[:4] + (torch.tensor([-1, 2]),) + a[5:], ValueError, "channels"),
    (lambda a: a[:4] + (torch.tensor([1, 2, 3]),) + a[5:], ValueError, "channels"),
    (lambda a: a[:4] + (torch.tensor([1.0, 2.0]),) + a[5:], TypeError, "channels"),
    (lambda a: a[:5] + (a[5][:4],), ValueError, "bias"),
    (lambda a: a[:5] + (a[5].half(),), TypeError, "bias"),
    (lambda a: (a[0].int(),) + a[1:], TypeError, "x"),
    (lambda a: (a[0][None],) + a[1:], ValueError, "x"),
    (lambda a: (a[0].to("meta"),) + a[1:], ValueError, "A"),
])
def test_validation(mutate, exc, name):
    args = mutate(_ok())
    with pytest.raises(exc, match=rf"^{name}:"):
        ops.lowrank_sparse_matmul(*args, backend="reference")


def test_validation_backend():
    args = _ok()
    if _backend._C is not None:
        with pytest.raises(TypeError, match="^x:"):
            ops.lowrank_sparse_matmul(*(v.double() if v.is_floating_point() else v for v in args),
                                      backend="cpu")
    with pytest.raises(ValueError, match="^backend:"):
        ops.lowrank_sparse_matmul(*args, backend="nope")
    with pytest.raises(TypeError, match="^x:"):
        ops.lowrank_sparse_matmul(*(v.numpy() for v in args), backend="triton")


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("which", [1, 4, 5])  # A, channels, bias as NumPy
def test_gpu_backends_want_torch_throughout(backend, which, monkeypatch):
    """x a tensor, another input a NumPy array: a named TypeError, not an AttributeError
    from inside the launcher."""
    emulated_gpu_backend(backend, monkeypatch)
    args = list(_ok())
    args[which] = args[which].numpy()
    name = ["x", "A", "B", "S", "channels", "bias"][which]
    with pytest.raises(TypeError, match=rf"^{name}: the {backend} backend takes torch tensors"):
        ops.lowrank_sparse_matmul(*args, backend=backend)


def test_autograd_through_the_op():
    """Inputs that require grad give a result with a grad_fn (as a torch op would), the
    same gradients as the dense formula; out= is refused then, NumPy mixing is named."""
    x, A, B, S, ch, b = make(5, 8, 10, 3, 2, "float32", True)
    leaves = [t.clone().requires_grad_() for t in (x, A, B, S, b)]
    xg, Ag, Bg, Sg, bg = leaves
    y = ops.lowrank_sparse_matmul(xg, Ag, Bg, Sg, ch, bg, backend="reference")
    assert y.grad_fn is not None
    y.square().sum().backward()
    dense = [t.clone().requires_grad_() for t in (x, A, B, S, b)]
    W = (dense[2] @ dense[1]).index_add(0, ch, dense[3])
    (dense[0] @ W.T + dense[4]).square().sum().backward()
    for got, want in zip(leaves, dense):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="^out: not supported when an input requires grad"):
        ops.lowrank_sparse_matmul(xg, A, B, S, ch, b, out=torch.empty(5, 10))
    with pytest.raises(TypeError, match="^A: gradients need torch tensors"):
        ops.lowrank_sparse_matmul(xg, A.numpy(), B, S, ch, b)
    with torch.no_grad():
        assert ops.lowrank_sparse_matmul(xg, A, B, S, ch, b).grad_fn is None


def test_channels_validated_once_per_tensor_version(monkeypatch):
    """A channel tensor is range/uniqueness-checked once (on a GPU each check is three
    host syncs); an in-place write makes the next call check it again."""
    x, A, B, S, ch, b = make(5, 8, 10, 3, 2, "float32", True)
    calls = []
    real = torch.unique
    monkeypatch.setattr(torch, "unique", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(3):
        ops.lowrank_sparse_matmul(x, A, B, S, ch, b, backend="reference")
    assert len(calls) == 1
    ch[0] = 10  # out of range for N = 10, written in place
    with pytest.raises(ValueError, match="^channels: ids must lie in"):
        ops.lowrank_sparse_matmul(x, A, B, S, ch, b, backend="reference")
    ch[0] = ch[1]  # a duplicate
    with pytest.raises(ValueError, match="^channels: ids must be unique"):
        ops.lowrank_sparse_matmul(x, A, B, S, ch, b, backend="reference")
    # valid for N = 10 does not make it valid for a smaller N
    ch2 = torch.tensor([1, 9])
    ops.lowrank_sparse_matmul(x, A, B, S, ch2, b, backend="reference")
    with pytest.raises(ValueError, match="^channels: ids must lie in"):
        ops.lowrank_sparse_matmul(x, A, B[:9], S, ch2, b[:9], backend="reference")


@pytest.mark.parametrize("M,K,N,r,c", [(3, 0, 5, 2, 1), (0, 4, 5, 2, 1), (3, 4, 0, 2, 0),
                                       (3, 4, 5, 0, 2), (3, 4, 5, 0, 0)])
def test_degenerate_shapes(M, K, N, r, c, monkeypatch):
    """Empty x, K = 0, N = 0 and rank 0 follow the dense formula on every host backend."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(0)
    x, A, B = torch.randn(M, K, generator=g), torch.randn(r, K, generator=g), torch.randn(N, r, generator=g)
    S, ch, b = torch.randn(c, K, generator=g), torch.arange(c), torch.randn(N, generator=g)
    want = x @ (B @ A).index_add(0, ch, S).T + b
    backends = ["reference"] + (["cpu"] if _backend._C is not None else [])
    if _backend.triton_available():
        backends.append("triton")
    for be in backends:
        y = ops.lowrank_sparse_matmul(x, A, B, S, ch, b, backend=be)
        assert y.shape == (M, N), be
        np.testing.assert_allclose(y.numpy(), want.numpy(), atol=1e-5, err_msg=be)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint8, torch.int32])
def test_channels_integer_dtypes(dtype):
    """Every accepted channel dtype validates (torch has no min/unique for uint16/32)."""
    x, A, B, S, ch, b = make(5, 8, 10, 3, 2, "float32", True)
    want = expected(x, A, B, S, ch, b)
    backends = ["reference"] + (["cpu"] if _backend._C is not None else [])
    for be in backends:
        check(ops.lowrank_sparse_matmul(x, A, B, S, ch.to(dtype), b, backend=be), want, "float32", be)
    with pytest.raises(ValueError, match="^channels:"):
        ops.lowrank_sparse_matmul(x, A, B, S, torch.tensor([3, 3]).to(dtype), b, backend="reference")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_glue_edges(backend):
    """Empty x (used to reach the host-only reference), a strided bias (the cuda path
    passed a freed temporary's pointer), and, on cuda, more row tiles than grid.y's 65535."""
    if backend == "cuda" and not _backend.cuda_compiled():
        pytest.skip("built without CUDA")
    x, A, B, S, ch, b = make(6, 8, 10, 3, 2, "float16", True, device="cuda")
    y = ops.lowrank_sparse_matmul(x[:0], A, B, S, ch, b, backend=backend)
    assert y.shape == (0, 10) and y.device == x.device and y.dtype == x.dtype
    b2 = torch.randn(20, device="cuda").half()[::2]
    check_args(ops.lowrank_sparse_matmul(x, A, B, S, ch, b2, backend=backend),
               (x, A, B, S, ch, b2), "float16", f"{backend} strided bias")
    if backend != "cuda":
        return
    for dtype, rows_per_tile in (("float16", 128), ("float32", 64)):
        M = 65535 * rows_per_tile + 5
        x, A, B, S, ch, b = make(1, 8, 8, 8, 1, dtype, True, device="cuda")
        x = torch.randn(M, 8, device="cuda").to(DTYPES[dtype])
        y = ops.lowrank_sparse_matmul(x, A, B, S, ch, b, backend="cuda")
        W = (B.double() @ A.double()).index_add(0, ch, S.double())
        want = x.double() @ W.T + b.double()
        mag = x.double().abs() @ (B.double().abs() @ A.double().abs()).index_add(
            0, ch, S.double().abs()).T + b.double().abs()
        err = float(((y.double() - want).abs().max(1).values / mag.max(1).values).max())
        assert err <= TOL[dtype], f"M={M} {dtype}: {err:.3g}"


# ------------------------------------------------------------------------------ out=

def _out_backends():
    return ["reference"] + (["cpu"] if _backend._C is not None else [])


def _wide_out(M, N, dtype, pad=5):
    """An out with padded rows: a column slice of a wider buffer (row stride != N)."""
    big = torch.full((M, N + pad), 7.0, dtype=DTYPES[dtype])
    return big, big[:, 2:2 + N]


@pytest.mark.parametrize("backend", _out_backends())
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_out_written_in_place(backend, dtype):
    if backend == "reference" and dtype == "bfloat16":
        dtype = "float32"
    args = make(33, 40, 70, 8, 4, dtype, True, seed=21)
    want = ops.lowrank_sparse_matmul(*args, backend=backend)
    out = torch.empty(33, 70, dtype=DTYPES[dtype])
    got = ops.lowrank_sparse_matmul(*args, out=out, backend=backend)
    assert got is out
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    big, view = _wide_out(33, 70, dtype)
    assert ops.lowrank_sparse_matmul(*args, out=view, backend=backend) is view
    torch.testing.assert_close(view, want, rtol=0, atol=0)
    # the padding around the rows is untouched
    assert bool((big[:, :2] == 7).all()) and bool((big[:, 72:] == 7).all())
    # one row: x [K] -> out [N]
    out1 = torch.empty(70, dtype=DTYPES[dtype])
    assert ops.lowrank_sparse_matmul(args[0][3], *args[1:], out=out1, backend=backend) is out1
    want1 = ops.lowrank_sparse_matmul(args[0][3], *args[1:], backend=backend)  # few-rows path
    torch.testing.assert_close(out1, want1, rtol=0, atol=0)


def test_out_numpy_cpu():
    if _backend._C is None:
        pytest.skip("no native build")
    x, A, B, S, ch, b = (None if v is None else v.numpy() for v in make(9, 16, 20, 4, 3, "float32",
                                                                       True, seed=2))
    want = ops.lowrank_sparse_matmul(x, A, B, S, ch, b, backend="cpu")
    out = np.zeros((9, 20), np.float32)
    assert ops.lowrank_sparse_matmul(x, A, B, S, ch, b, out=out, backend="cpu") is out
    np.testing.assert_array_equal(out, want)


def test_out_triton(triton_interpret):
    args = make(20, 40, 130, 16, 7, "float16", True, seed=4)
    want = ops.lowrank_sparse_matmul(*args, backend="triton")
    big, view = _wide_out(20, 130, "float16")
    assert ops.lowrank_sparse_matmul(*args, out=view, backend="triton") is view
    torch.testing.assert_close(view, want, rtol=0, atol=0)
    assert bool((big[:, :2] == 7).all())


def test_out_cuda_emulated(cuda_emu):
    """The CUDA kernel writes a contiguous out directly, a padded one through a copy."""
    args = make(20, 40, 130, 16, 7, "bfloat16", True, seed=4)
    want = ops.lowrank_sparse_matmul(*args, backend="cuda")
    out = torch.empty(20, 130, dtype=torch.bfloat16)
    assert ops.lowrank_sparse_matmul(*args, out=out, backend="cuda") is out
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    big, view = _wide_out(20, 130, "bfloat16")
    assert ops.lowrank_sparse_matmul(*args, out=view, backend="cuda") is view
    torch.testing.assert_close(view, want, rtol=0, atol=0)
    assert bool((big[:, :2] == 7).all())


def _bad_outs(args):
    x, A, B, S, ch, b = args
    M, N = x.shape[0], B.shape[0]
    ro = np.zeros((M, N), np.float32)
    ro.flags.writeable = False
    grad = torch.zeros(M, N, requires_grad=True)
    return [
        (torch.empty(M, N + 1), ValueError, "shape"),
        (torch.empty(N, M), ValueError, "shape"),
        (torch.empty(M, N, dtype=torch.float64), TypeError, "dtype"),
        (np.zeros((M, N), np.float32), TypeError, "torch tensor"),
        (torch.empty(M, 2 * N)[:, ::2], ValueError, "contiguous"),
        (torch.empty(N).expand(M, N), ValueError, "overlap"),
        (torch.empty(M, N, device="meta"), ValueError, "meta"),
        (grad, TypeError, "requires grad"),
        (ro, TypeError, "torch tensor"),
    ]


@pytest.mark.parametrize("backend", _out_backends())
def test_out_validation(backend):
    args = make(6, 8, 10, 3, 2, "float32", True)
    for bad, exc, what in _bad_outs(args):
        with pytest.raises(exc, match=rf"^out:.*{what}"):
            ops.lowrank_sparse_matmul(*args, out=bad, backend=backend)
    # numpy x: a read-only numpy out
    npargs = tuple(None if v is None else v.numpy() for v in args)
    ro = np.zeros((6, 10), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="^out:.*read-only"):
        ops.lowrank_sparse_matmul(*npargs, out=ro, backend=backend)


@pytest.mark.parametrize("backend", _out_backends())
def test_out_must_not_alias_inputs(backend):
    """x [M, K] with K == N: out = x, a view into x, or into bias / B is refused, and
    nothing is written."""
    x, A, B, S, ch, b = make(6, 10, 10, 3, 2, "float32", True)
    x0, b0 = x.clone(), b.clone()
    for out, name in [(x, "x"), (x[:, :], "x"), (b.expand(6, 10), None), (B[:6, :1], None)]:
        if name is None:
            continue  # (overlapping rows / wrong shape are caught before aliasing)
        with pytest.raises(ValueError, match=rf"^out: shares memory with {name}"):
            ops.lowrank_sparse_matmul(x, A, B, S, ch, b, out=out, backend=backend)
    big = torch.zeros(6, 20)
    xs, ys = big[:, :10], big[:, 10:]  # disjoint halves of one buffer are fine
    xs.copy_(x)
    ops.lowrank_sparse_matmul(xs, A, B, S, ch, b, out=ys, backend=backend)
    torch.testing.assert_close(ys, ops.lowrank_sparse_matmul(x, A, B, S, ch, b, backend=backend))
    with pytest.raises(ValueError, match="^out: shares memory with x"):
        ops.lowrank_sparse_matmul(big[:, :10], A, B, S, ch, b, out=big[:, 5:15], backend=backend)
    torch.testing.assert_close(x, x0)
    torch.testing.assert_close(b, b0)
