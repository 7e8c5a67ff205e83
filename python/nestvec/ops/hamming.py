"""hamming_topk: exact Hamming top-k over packed binary codes."""
from __future__ import annotations

import numpy as np

from .. import _backend as be
from .. import _checks as ck
from .. import reference

MAX_K_GPU = 4096
# k beyond the N rows only pads the result; more than this many columns of padding is an
# error rather than gigabytes of -1 (the caller asked for more rows than there are)
PAD_K = 4096
# The cuda backend runs queries in groups whose uint16 distances and candidate keys fit
# in this many bytes of device memory.
GROUP_BYTES = 512 << 20


def _as_bytes(x, name: str):
    """uint8 [*, B] or uint64 [*, W] -> a uint8 [*, B] view (no copy)."""
    ck.check_dtype(x, name, ("uint8", "uint64"), "uint8 [*, B] or uint64 [*, W]")
    if ck.dtype_name(x) == "uint8":
        return x
    if ck.is_torch(x):
        import torch

        if x.stride(-1) != 1:  # a view as bytes needs unit-stride words
            if name != "codes":
                return x.contiguous().view(torch.uint8)
            raise ValueError(f"{name}: uint64 codes must have contiguous rows (last-dimension "
                             f"stride 1, got {x.stride(-1)}); pass codes.contiguous()")
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
    codes = ck.row_contiguous(_as_bytes(codes, "codes"), "codes")
    queries = _as_bytes(queries, "queries")
    if queries.shape[1] != codes.shape[1]:
        raise ValueError(f"queries: expected {codes.shape[1]} bytes per code like codes, got "
                         f"{queries.shape[1]}")
    if codes.shape[1] == 0:
        raise ValueError("codes: expected at least one byte per code")
    n = codes.shape[0]
    ck.check_k_rows(k, n, PAD_K)
    allow = ck.check_allow(allow, n, codes)
    name = be.resolve(backend, codes)
    be.check_inputs(name, codes, "codes", queries=queries, allow=allow)
    if n == 0 or queries.shape[0] == 0:
        name = "reference"
    d, i = be.implementation("hamming_topk", name)(codes, queries, k, allow)
    return (d[0], i[0]) if single else (d, i)


@be.register("hamming_topk", "reference")
def _reference(codes, queries, k, allow):
    d, i = reference.hamming_topk(ck.to_numpy(codes), np.ascontiguousarray(ck.to_numpy(queries)), k,
                                  ck.to_numpy(allow))
    return ck.like(d, codes), ck.like(i, codes)


@be.register("hamming_topk", "cpu")
def _cpu(codes, queries, k, allow):
    # host memory, each input a NumPy array or a CPU tensor of its own (viewed, not copied)
    c = ck.to_numpy(codes)
    q = np.ascontiguousarray(ck.to_numpy(queries))
    a = None
    if allow is not None:
        a = np.ascontiguousarray(ck.to_numpy(allow), dtype=bool).view(np.uint8)
    dist = np.empty((q.shape[0], k), dtype=np.int32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    be._C.hamming_topk(c, q, k, a, dist, idx)
    return ck.like(dist, codes), ck.like(idx, codes)


@be.register("hamming_topk", "cuda")
def _cuda(codes, queries, k, allow):
    import torch

    if k > MAX_K_GPU:
        raise ValueError(f"k: the cuda backend supports k <= {MAX_K_GPU}, got {k}")
    n, nbytes = codes.shape
    if 8 * nbytes >= 0xFFFF:
        raise ValueError(f"codes: the cuda backend supports up to 8190 bytes per code, got {nbytes}")
    queries = queries.contiguous()
    if allow is not None:
        allow = allow.contiguous().view(torch.uint8)
    dev = codes.device
    nq = queries.shape[0]
    rt = be.CUDA
    group = GROUP_BYTES
    ws_bytes = rt.module.cuda_hamming_workspace_bytes(n, nq, nbytes, k, group)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
    dist = torch.empty((nq, k), dtype=torch.int32, device=dev)
    idx = torch.empty((nq, k), dtype=torch.int64, device=dev)
    with rt.stream(dev) as stream:
        rt.module.cuda_hamming_topk(codes.data_ptr(), n, codes.stride(0), queries.data_ptr(), nq,
                                    queries.stride(0), nbytes, k,
                                    allow.data_ptr() if allow is not None else 0, dist.data_ptr(),
                                    idx.data_ptr(), group, ws.data_ptr(), ws_bytes, stream)
    return dist, idx


@be.register("hamming_topk", "triton")
def _triton(codes, queries, k, allow):
    from ..kernels import hamming as tk

    return tk.hamming_topk(codes, queries.contiguous(), k, allow)
