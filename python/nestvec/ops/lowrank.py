"""lowrank_sparse_matmul: the LOST layer ``y = x Aᵀ Bᵀ + scatter(x Sᵀ) + bias``, and
its autograd Function (``lowrank_sparse_linear``, what nestvec.nn.LowRankSparseLinear
runs)."""
from __future__ import annotations

import weakref

import numpy as np

from .. import _backend as be
from .. import _checks as ck
from .. import reference

_LRS_CODE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _lrs_validate(x, A, B, S, channels, bias):
    """Shapes, dtypes, devices and channel ids of a lowrank_sparse_matmul call."""
    x = ck.as_array_like(x, "x")
    ck.check_ndim(x, "x", (1, 2), "[M, K] or [K]")
    dt = ck.dtype_name(x)
    ck.check_dtype(x, "x", be.FLOAT_DTYPES + ("float64",), "float32, float16 or bfloat16 (float64 on "
                   "the reference backend)")
    K = x.shape[-1]
    A = ck.as_array_like(A, "A")
    B = ck.as_array_like(B, "B")
    S = ck.as_array_like(S, "S")
    channels = ck.as_array_like(channels, "channels")
    for name, t in (("A", A), ("B", B), ("S", S)):
        ck.check_ndim(t, name, (2,), "a 2-D array")
        if ck.dtype_name(t) != dt:
            raise TypeError(f"{name}: expected dtype {dt} like x, got {ck.dtype_name(t)}")
        ck.check_same_device("x", x, name, t)
    r = A.shape[0]
    if A.shape[1] != K:
        raise ValueError(f"A: expected shape [r, K={K}] (K from x), got {tuple(A.shape)}")
    N = B.shape[0]
    if B.shape[1] != r:
        raise ValueError(f"B: expected shape [N, r={r}] (r from A), got {tuple(B.shape)}")
    if S.shape[1] != K:
        raise ValueError(f"S: expected shape [c, K={K}] (K from x), got {tuple(S.shape)}")
    c = S.shape[0]
    ck.check_same_device("x", x, "channels", channels)
    if channels.ndim != 1 or channels.shape[0] != c:
        raise ValueError(f"channels: expected a 1-D array of {c} output channels (one per row of "
                         f"S), got shape {tuple(channels.shape)}")
    ck.check_dtype(channels, "channels", ("int64", "int32", "int16", "uint8", "uint16", "uint32",
                                          "int8"), "an integer type [c]")
    if c and not _channels_known_valid(channels, N):
        _remember_valid_channels(channels, check_channel_ids(channels, N))
    if bias is not None:
        bias = ck.as_array_like(bias, "bias")
        ck.check_same_device("x", x, "bias", bias)
        if bias.ndim != 1 or bias.shape[0] != N:
            raise ValueError(f"bias: expected shape [N={N}], got {tuple(bias.shape)}")
        if ck.dtype_name(bias) != dt:
            raise TypeError(f"bias: expected dtype {dt} like x, got {ck.dtype_name(bias)}")
    return x, A, B, S, channels, bias


def check_channel_ids(channels, n: int, bound: str = "N") -> int:
    """Non-empty integer ids ``channels`` (tensor or array): each in ``[0, n)``, no two
    alike, else ValueError naming channels (and ``bound``, the name of ``n``). Returns
    the largest id + 1."""
    if ck.is_torch(channels):
        import torch

        # int64 first: torch has no min/max/unique for uint16 / uint32 tensors.
        ch64 = channels.to(torch.int64)
        lo, hi = int(ch64.min()), int(ch64.max())
        uniq = int(torch.unique(ch64).numel())
    else:
        lo, hi = int(channels.min()), int(channels.max())
        uniq = int(np.unique(channels).size)
    if lo < 0 or hi >= n:
        raise ValueError(f"channels: ids must lie in [0, {bound}={n}), got range [{lo}, {hi}]")
    if uniq != len(channels):
        raise ValueError(f"channels: ids must be unique, got {len(channels) - uniq} duplicate(s)")
    return hi + 1


# Channel tensors that passed the range / uniqueness check, by identity: a layer's
# channel buffer is validated once, not on every forward (on a GPU the check costs
# three host syncs a call, and a sync cannot run under CUDA-graph capture). The entry
# holds a weak reference (the tensor itself, not a reused id) and the tensor's version
# counter, which any in-place write bumps. NumPy arrays have no version counter and
# are checked every call.
_VALID_CHANNELS: dict = {}


def _channels_known_valid(channels, N: int) -> bool:
    if not ck.is_torch(channels):
        return False
    e = _VALID_CHANNELS.get(id(channels))
    return e is not None and e[0]() is channels and e[1] == channels._version and e[2] <= N


def _remember_valid_channels(channels, n_min: int) -> None:
    """``n_min``: max id + 1, so the ids are valid for any ``N >= n_min``."""
    if not ck.is_torch(channels):
        return
    key = id(channels)
    try:
        ref = weakref.ref(channels, lambda _r, key=key: _VALID_CHANNELS.pop(key, None))
    except TypeError:
        return
    _VALID_CHANNELS[key] = (ref, channels._version, n_min)


def _grad_needed(*ts) -> bool:
    if not any(ck.is_torch(t) for t in ts):
        return False
    import torch

    return torch.is_grad_enabled() and any(ck.is_torch(t) and t.requires_grad for t in ts)


def lowrank_sparse_matmul(x, A, B, S, channels, bias=None, *, out=None, backend: str = "auto"):
    """LOST low-rank + channel-sparse linear map: ``y = x Aᵀ Bᵀ + scatter(x Sᵀ) + bias``.

    The weight is ``W = B·A + S`` with ``S`` non-zero only on the output channels
    ``channels``; ``y = x Wᵀ + bias`` without ever forming ``W``.

    Args:
        x: ``[M, K]`` (or one ``[K]`` row), float32 / float16 / bfloat16 (float64 on the
            reference backend). Rows may be strided; each row must be contiguous.
        A: ``[r, K]``, B: ``[N, r]``, S: ``[c, K]`` (row j of S belongs to output
            column ``channels[j]``), all of x's dtype.
        channels: integer ``[c]``, unique ids in ``[0, N)``; ``c = 0`` is allowed.
        bias: optional ``[N]`` of x's dtype.
        out: optional result buffer: ``[M, N]`` (``[N]`` for a 1-D x) of x's dtype, kind
            and device, each row contiguous, sharing no memory with the inputs. Written
            in place and returned. Reusing one buffer across calls saves the page faults
            of a fresh large output (README, LOST table).
        backend: ``auto`` | ``reference`` | ``cpu`` | ``triton`` | ``cuda``.

    Returns:
        ``y [M, N]`` (``[N]`` for a 1-D x) of x's dtype, same container and device
        (``out`` itself when given).
        Products accumulate in float32 (float64 on the reference backend). With torch
        inputs that require grad (and grad mode on) the result carries a ``grad_fn``
        (through ``nestvec.nn.lowrank_sparse_linear``; ``out=`` is refused then). The cpu
        backend keeps the intermediate ``x·Aᵀ`` in float32; cuda and triton round it to
        x's dtype before the second tensor-core GEMM (like a two-step torch low-rank),
        so 16-bit results there carry about one extra rounding of that dtype.

    Raises:
        TypeError / ValueError naming the argument: dtype, shape, device, channels
        out of range or duplicated.
    """
    x, A, B, S, channels, bias = _lrs_validate(x, A, B, S, channels, bias)
    if _grad_needed(x, A, B, S, bias):
        # Differentiate like a torch op would, through nestvec.nn's autograd Function
        # (its forward calls back in here with grad mode off).
        be.require_torch("gradients need torch tensors throughout", x=x, A=A, B=B, S=S,
                         channels=channels, bias=bias)
        if out is not None:
            raise ValueError("out: not supported when an input requires grad (as in torch); "
                             "call it under torch.no_grad() or drop out=")
        return lowrank_sparse_linear(x, A, B, S, channels, bias, backend=backend)
    single = x.ndim == 1
    if out is not None:
        ck.check_out(out, "out", x, x.shape[:-1] + (B.shape[0],),
                     {"x": x, "A": A, "B": B, "S": S, "channels": channels, "bias": bias})
    if single:
        x = x[None, :]
        out2 = None if out is None else out[None, :]
    else:
        out2 = out
    # auto sends CUDA tensors to the Triton GEMM pair, not the CUDA kernels: on an H200
    # the pair was the faster of the two (README, GPU table).
    name = be.resolve(backend, x, prefer_triton=True)
    if ck.dtype_name(x) == "float64":
        if be.is_auto(backend):
            name = "reference"
        elif name != "reference":
            raise TypeError(f"x: float64 runs on the reference backend only, not {name!r}")
    be.check_inputs(name, x, "x", A=A, B=B, S=S, channels=channels, bias=bias)
    # Empty x on the host goes through the reference; the GPU backends handle M = 0
    # themselves (the reference cannot read device memory).
    if name == "cpu" and x.shape[0] == 0:
        name = "reference"
    y = be.implementation("lowrank_sparse_matmul", name)(x, A, B, S, channels, bias, out2)
    if out is None:
        return y[0] if single else y
    if y is not out2:  # a backend that could not write into out2 directly
        if ck.is_torch(out2):
            out2.copy_(y)
        else:
            np.copyto(out2, y)
    return out


def _lrs_np(t):
    if t is None:
        return None
    if ck.is_torch(t):
        import torch

        t = t.detach()
        if ck.device_of(t) != "cpu":
            raise ValueError(f"reference backend runs on host memory; got a tensor on {ck.device_of(t)}")
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return t


# Backends: fn(x [M, K], A, B, S, channels, bias, out [M, N] or None) -> y; a backend
# may ignore out (the caller copies into it).

@be.register("lowrank_sparse_matmul", "reference")
def _reference(x, A, B, S, channels, bias, out=None):
    y = reference.lowrank_sparse_matmul(*(_lrs_np(t) for t in (x, A, B, S, channels, bias)))
    if ck.is_torch(x):
        import torch

        return torch.from_numpy(y).to(device=x.device, dtype=x.dtype)
    return y.astype(x.dtype)


def _lrs_host(t, contiguous=True):
    """A host tensor/array -> NumPy (bfloat16 as its uint16 bit pattern), no copy when
    already contiguous."""
    if t is None:
        return None
    a = ck.host_view(t) if ck.is_torch(t) else t
    return np.ascontiguousarray(a) if contiguous else a


def _aligned_empty(shape, dtype, align=64):
    """np.empty with a cache-line aligned base (large NumPy buffers start 16 bytes into
    a page); lets the kernel use non-temporal stores for the output rows."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buf = np.empty(n * dtype.itemsize + align, dtype=np.uint8)
    off = (-buf.ctypes.data) % align
    return buf[off:off + n * dtype.itemsize].view(dtype).reshape(shape)


@be.register("lowrank_sparse_matmul", "cpu")
def _cpu(x, A, B, S, channels, bias, out=None):
    dt = ck.dtype_name(x)
    xa = ck.row_contiguous(_lrs_host(x, contiguous=False), "x")
    if xa.ndim == 2 and xa.strides[0] < 0:
        xa = np.ascontiguousarray(xa)
    ch = np.ascontiguousarray(_lrs_host(channels), dtype=np.int64)
    if out is not None:  # a view of out (checked by ck.check_out), written in place
        be._C.lowrank_sparse_matmul(_LRS_CODE[dt], xa, _lrs_host(A), _lrs_host(B), _lrs_host(S), ch,
                                 _lrs_host(bias), _lrs_host(out, contiguous=False))
        return out
    y = _aligned_empty((xa.shape[0], B.shape[0]), xa.dtype)
    be._C.lowrank_sparse_matmul(_LRS_CODE[dt], xa, _lrs_host(A), _lrs_host(B), _lrs_host(S), ch,
                             _lrs_host(bias), y)
    if ck.is_torch(x):
        import torch

        out = torch.from_numpy(y)
        return out.view(torch.bfloat16) if dt == "bfloat16" else out
    return y


@be.register("lowrank_sparse_matmul", "cuda")
def _cuda(x, A, B, S, channels, bias, out=None):
    import torch

    rt = be.CUDA
    C = rt.module

    dt = ck.dtype_name(x)
    if x.stride(-1) != 1 or (x.shape[0] > 1 and x.stride(0) < x.shape[1]):
        x = x.contiguous()
    A, B, S = A.contiguous(), B.contiguous(), S.contiguous()
    ch = channels.to(torch.int64).contiguous()
    # Bound to a name: a temporary copy from an inline .contiguous() would be freed (and
    # its block reusable) before the kernel that reads it is queued.
    bias_c = bias.contiguous() if bias is not None else None
    M, K = x.shape
    r, N, c = A.shape[0], B.shape[0], S.shape[0]
    dev = x.device
    # the kernel writes rows of N values back to back
    y = out if out is not None and out.is_contiguous() else torch.empty((M, N), dtype=x.dtype,
                                                                        device=dev)
    ws_bytes = C.cuda_lowrank_sparse_workspace_bytes(_LRS_CODE[dt], M, N, r, c)
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=dev)
    with rt.stream(dev) as stream:
        C.cuda_lowrank_sparse_matmul(
            _LRS_CODE[dt], x.data_ptr(), M, K, x.stride(0), A.data_ptr(), r, B.data_ptr(), N,
            S.data_ptr(), c, ch.data_ptr(), bias_c.data_ptr() if bias_c is not None else 0,
            y.data_ptr(), ws.data_ptr(), ws_bytes, stream)
    return y


@be.register("lowrank_sparse_matmul", "triton")
def _triton(x, A, B, S, channels, bias, out=None):
    from ..kernels import lowrank_sparse as tk

    return tk.lowrank_sparse_matmul(x, A, B, S, channels, bias, out=out)

# --------------------------------------------------------------------------- autograd
# The op's torch.autograd.Function, created on first use so that importing the op never
# imports torch.
_FUNCTION = None


def _autograd_function():
    global _FUNCTION
    if _FUNCTION is None:
        import torch

        class LowRankSparseFunction(torch.autograd.Function):
            """y = x Aᵀ Bᵀ + scatter(x Sᵀ, channels) + bias for 2-D x; gradients for x, A, B,
            S and bias (never for the integer channels)."""

            @staticmethod
            def forward(ctx, x, A, B, S, channels, bias, backend):
                y = lowrank_sparse_matmul(x, A, B, S, channels, bias, backend=backend)
                # After the op has validated them: index_select in backward takes only int32 /
                # int64 ids, and the op also accepts (u)int8/16 and uint32.
                ch = torch.as_tensor(channels, device=x.device).to(torch.int64)
                ctx.save_for_backward(x, A, B, S, ch)
                ctx.has_bias = bias is not None
                return y

            @staticmethod
            def backward(ctx, gy):
                x, A, B, S, ch = ctx.saved_tensors
                need_x, need_a, need_b, need_s, _, need_bias, _ = ctx.needs_input_grad
                gx = gA = gB = gS = gbias = None
                gy = gy.contiguous()
                u = gy @ B if (need_x or need_a) else None          # [M, r]  = dL/d(x Aᵀ)
                gs = gy.index_select(1, ch) if (need_x or need_s) else None  # [M, c]
                if need_x:
                    gx = u @ A
                    if S.shape[0]:
                        gx = gx + gs @ S
                if need_a:
                    gA = u.t() @ x
                if need_b:
                    gB = gy.t() @ (x @ A.t())
                if need_s:
                    gS = gs.t() @ x
                if need_bias and ctx.has_bias:
                    gbias = gy.sum(0)
                return gx, gA, gB, gS, None, gbias, None

        _FUNCTION = LowRankSparseFunction
    return _FUNCTION


def lowrank_sparse_linear(x, A, B, S, channels, bias=None, backend: str = "auto"):
    """Differentiable ``lowrank_sparse_matmul`` on torch tensors; x may be ``[..., K]``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    # The op wants contiguous, non-overlapping rows (the cpu backend raises otherwise);
    # a drop-in nn.Linear must take any layout (a transposed or expanded input).
    if not ck.rows_usable(x2):
        x2 = x2.contiguous()
    y = _autograd_function().apply(x2, A, B, S, channels, bias, backend)
    return y.reshape(*lead, B.shape[0])
