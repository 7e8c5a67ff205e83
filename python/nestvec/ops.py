"""Public ops: validate, pick a backend, call it.

Every op has one contract (see DESIGN.md) on four backends:
``reference`` (NumPy, the spec), ``cpu`` (C++ via ``nestvec._C``), ``triton`` and
``cuda``. ``backend="auto"`` picks by where the data lives: a CUDA tensor goes to
``cuda`` when it is compiled in, else ``triton``; a NumPy array or CPU tensor goes to
``cpu``. The ``NESTVEC_BACKEND`` environment variable forces one (tests use it).
Inputs are never silently moved between devices.

Outputs follow the inputs: NumPy in, NumPy out; a torch tensor in, a torch tensor
out on the same device.
"""
from __future__ import annotations

import os

import numpy as np

from . import _checks as ck
from . import reference

BACKENDS = ("reference", "cpu", "triton", "cuda")

try:
    from . import _C
except ImportError as _e:  # a source checkout without a build: reference only
    _C = None
    _C_ERROR = _e
else:
    _C_ERROR = None


def cuda_compiled() -> bool:
    return _C is not None and bool(_C.build_info()["cuda_compiled"])


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str | None, x) -> str:
    """The backend an op will run on for input ``x`` (see module docstring)."""
    if backend in (None, "auto"):
        backend = os.environ.get("NESTVEC_BACKEND", "auto") or "auto"
    if backend == "auto":
        if ck.device_of(x) == "cuda":
            return "cuda" if cuda_compiled() else "triton"
        return "cpu" if _C is not None else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {('auto',) + BACKENDS}, got {backend!r}")
    return backend


def _check_backend_device(backend: str, x, name: str) -> None:
    dev = ck.device_of(x)
    if backend == "cpu":
        if _C is None:
            raise RuntimeError(f"backend 'cpu' needs the native module nestvec._C: {_C_ERROR}")
        if dev != "cpu":
            raise ValueError(f"{name}: backend 'cpu' needs host memory, got a tensor on {dev}")
    elif backend == "cuda":
        if not cuda_compiled():
            raise RuntimeError("backend 'cuda': nestvec was built without CUDA kernels")
        if dev != "cuda":
            raise ValueError(f"{name}: backend 'cuda' needs a CUDA tensor, got {type(x).__name__} on {dev}")
    elif backend == "triton":
        if not ck.is_torch(x):
            raise TypeError(f"{name}: backend 'triton' needs a torch tensor, got {type(x).__name__}")
        if dev != "cuda" and not ck.interpret_mode():
            raise ValueError(f"{name}: backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1), "
                             f"got one on {dev}")


def _to_numpy(x):
    if x is None or isinstance(x, np.ndarray):
        return x
    if ck.is_torch(x):
        if ck.device_of(x) != "cpu":
            raise ValueError("reference backend runs on host memory; got a tensor on "
                             f"{ck.device_of(x)}")
        return x.detach().numpy()
    return np.asarray(x)


def _like(out: np.ndarray, template):
    """NumPy result -> the container type of the input."""
    if ck.is_torch(template):
        import torch

        return torch.from_numpy(out).to(template.device)
    return out


def _row_contiguous(x, name: str):
    """Rows may be strided (a view of a larger table); each row must be contiguous."""
    if x.ndim == 2 and x.shape[1] > 1:
        inner = x.stride(1) if ck.is_torch(x) else x.strides[1] // x.itemsize
        if inner != 1:
            raise ValueError(f"{name}: each row must be contiguous in memory (last-dimension "
                             f"stride 1); pass a contiguous copy (np.ascontiguousarray / .contiguous())")
    if ck.is_torch(x):
        if x.ndim == 2 and x.shape[0] > 1 and x.stride(0) < x.shape[1]:
            raise ValueError(f"{name}: rows overlap in memory (row stride {x.stride(0)})")
    return x


# --------------------------------------------------------------------------- hamming

HAMMING_MAX_K_GPU = 4096


def _as_bytes(x, name: str):
    """uint8 [*, B] or uint64 [*, W] -> a uint8 [*, B] view (no copy)."""
    ck.check_dtype(x, name, ("uint8", "uint64"), "uint8 [*, B] or uint64 [*, W]")
    if ck.dtype_name(x) == "uint8":
        return x
    if ck.is_torch(x):
        import torch

        return x.view(torch.uint8)
    if not x.flags.c_contiguous and x.ndim == 2 and x.strides[1] != 8:
        raise ValueError(f"{name}: uint64 codes must have contiguous rows")
    return x.view(np.uint8)


def hamming_topk(codes, queries, k: int, allow=None, *, backend: str = "auto"):
    """Exact Hamming top-k.

    Args:
        codes: packed codes, uint8 ``[N, B]`` (``numpy.packbits`` order) or uint64
            ``[N, W]``; rows may be strided, each row must be contiguous.
        queries: same dtype and width as ``codes``, ``[Q, B]`` (or one ``[B]`` query).
        k: number of neighbours, ``>= 1``; ``k > N`` pads.
        allow: optional bool ``[N]`` mask (or packed uint8 bitset) of eligible rows.
        backend: ``auto`` | ``reference`` | ``cpu`` | ``triton`` | ``cuda``.

    Returns:
        ``(dist int32 [Q, k], idx int64 [Q, k])``: distance ascending, ties by index
        ascending; missing entries are ``(INT32_MAX, -1)``. A 1-D query gives ``[k]``.

    Raises:
        TypeError / ValueError naming the argument for a wrong dtype, ndim, width,
        device, k, or allow mask.
    """
    codes = ck.as_array_like(codes, "codes")
    queries = ck.as_array_like(queries, "queries")
    ck.check_ndim(codes, "codes", (2,), "a 2-D array [N, B]")
    ck.check_ndim(queries, "queries", (1, 2), "[Q, B] or [B]")
    if ck.dtype_name(codes) != ck.dtype_name(queries):
        ck.check_dtype(queries, "queries", (ck.dtype_name(codes),), ck.dtype_name(codes) + " like codes")
    single = queries.ndim == 1
    if single:
        queries = queries[None, :]
    k = ck.check_k(k)
    ck.check_same_device("codes", codes, "queries", queries)
    codes = _row_contiguous(_as_bytes(codes, "codes"), "codes")
    queries = _as_bytes(queries, "queries")
    if queries.shape[1] != codes.shape[1]:
        raise ValueError(f"queries: expected {codes.shape[1]} bytes per code like codes, got "
                         f"{queries.shape[1]}")
    if codes.shape[1] == 0:
        raise ValueError("codes: expected at least one byte per code")
    n = codes.shape[0]
    allow = ck.check_allow(allow, n, codes)
    be = resolve_backend(backend, codes)
    if be != "reference":
        _check_backend_device(be, codes, "codes")

    if be == "reference" or n == 0 or queries.shape[0] == 0:
        d, i = reference.hamming_topk(_to_numpy(codes), np.ascontiguousarray(_to_numpy(queries)), k,
                                      _to_numpy(allow))
        d, i = _like(d, codes), _like(i, codes)
    elif be == "cpu":
        d, i = _hamming_cpu(codes, queries, k, allow)
    elif be == "cuda":
        d, i = _hamming_cuda(codes, queries, k, allow)
    else:
        from .kernels import hamming as tk

        d, i = tk.hamming_topk(codes, queries.contiguous(), k, allow)
    return (d[0], i[0]) if single else (d, i)


def _hamming_cpu(codes, queries, k, allow):
    torch_in = ck.is_torch(codes)
    c = codes.detach().numpy() if torch_in else codes
    q = np.ascontiguousarray(queries.detach().numpy() if torch_in else queries)
    a = None
    if allow is not None:
        a = allow.detach().numpy() if ck.is_torch(allow) else allow
        a = np.ascontiguousarray(a, dtype=bool).view(np.uint8)
    dist = np.empty((q.shape[0], k), dtype=np.int32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    _C.hamming_topk(c, q, k, a, dist, idx)
    return _like(dist, codes), _like(idx, codes)


def _hamming_cuda(codes, queries, k, allow):
    import torch

    if k > HAMMING_MAX_K_GPU:
        raise ValueError(f"k: the cuda backend supports k <= {HAMMING_MAX_K_GPU}, got {k}")
    n, nbytes = codes.shape
    if 8 * nbytes >= 0xFFFF:
        raise ValueError(f"codes: the cuda backend supports up to 8190 bytes per code, got {nbytes}")
    queries = queries.contiguous()
    if allow is not None:
        allow = allow.contiguous().view(torch.uint8)
    dev = codes.device
    nq = queries.shape[0]
    ws_bytes = _C.cuda_hamming_workspace_bytes(n, nq, nbytes, k)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
    dist = torch.empty((nq, k), dtype=torch.int32, device=dev)
    idx = torch.empty((nq, k), dtype=torch.int64, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        _C.cuda_hamming_topk(codes.data_ptr(), n, codes.stride(0), queries.data_ptr(), nq,
                             queries.stride(0), nbytes, k,
                             allow.data_ptr() if allow is not None else 0, dist.data_ptr(),
                             idx.data_ptr(), ws.data_ptr(), ws_bytes, stream)
    return dist, idx


# --------------------------------------------------------------------------- dense_topk


# --------------------------------------------------------------------------- pool


# --------------------------------------------------------------------------- lowrank_sparse_matmul
