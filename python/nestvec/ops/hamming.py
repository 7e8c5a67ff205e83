"""hamming_topk: exact Hamming top-k over packed binary codes."""
from __future__ import annotations

import numpy as np

from .. import _backend as be
from .. import _checks as ck
from .. import reference

# The cuda backend sorts each query's k candidates in one block's shared memory up to
# this k; beyond it, the large-k path below (any k).
MAX_K_GPU = 4096
# k beyond the N rows only pads the result; more than this many columns of padding is an
# error rather than gigabytes of -1 (the caller asked for more rows than there are)
PAD_K = 4096
# Temporaries of one block of the cuda large-k path (XORed words, distances, keys).
LARGE_K_BYTES = 256 << 20
_IDX_BITS = 40
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
        k: number of neighbours, ``>= 1``, any size (``k > N`` pads, by up to 4096
            columns). Beyond 4096 the CPU backend runs its queries in slices (its
            selection buffers grow with k) and the cuda backend takes a large-k path
            (block distances merged exactly); the results are the same.
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
    fn = be.implementation("hamming_topk", name)
    if name == "cpu" and k > ck.LARGE_K_MIN:
        d, i = ck.by_query_slices(lambda q0, q1: fn(codes, queries[q0:q1], k, allow),
                                  queries.shape[0], k)
    else:
        d, i = fn(codes, queries, k, allow)
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
        return _large_k_torch(codes, queries, k, allow)
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


def _popcount32(x):
    """Per-element popcount of int32 words (SWAR; torch has no popcount). The arithmetic
    right shifts are harmless: every mask clears the bits they fill."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


def _large_k_torch(codes, queries, k, allow):
    """Exact top-k of any size on a device (the cuda backend beyond its in-block sort).

    Blocks of rows: distances from 32-bit words (codes zero-padded to whole words, which
    adds nothing to a distance), keys ``dist << 40 | row`` (unique, and ordered exactly
    like the contract: distance, then index), each block's keys merged into the running
    best k per query with ``torch.topk``; one sort at the end. Query chunks and row
    blocks keep the temporaries within LARGE_K_BYTES."""
    import torch
    import torch.nn.functional as F

    n, nbytes = codes.shape
    nq = queries.shape[0]
    dev = codes.device
    pad = (-nbytes) % 4
    words = (nbytes + pad) // 4
    qw = (F.pad(queries, (0, pad)) if pad else queries).contiguous().view(torch.int32)
    key_max = torch.iinfo(torch.int64).max
    dist = torch.full((nq, k), torch.iinfo(torch.int32).max, dtype=torch.int32, device=dev)
    idx = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    allow_b = None if allow is None else allow.bool()
    # per (query, row): ~3 int32 temporaries per word and a few int64 keys
    per_pair = 12 * words + 32
    q_chunk = max(1, min(nq, LARGE_K_BYTES // (per_pair * max(1, min(n, 4 * k)))))
    rows = max(1024, LARGE_K_BYTES // (per_pair * q_chunk))
    arange = torch.arange(n, dtype=torch.int64, device=dev)
    for q0 in range(0, nq, q_chunk):
        q1 = min(nq, q0 + q_chunk)
        q = qw[q0:q1]
        best = None
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            c = codes[r0:r1]
            cw = (F.pad(c, (0, pad)) if pad else c).contiguous().view(torch.int32)
            d = _popcount32(cw[None, :, :] ^ q[:, None, :]).sum(-1, dtype=torch.int64)
            keys = (d << _IDX_BITS) | arange[r0:r1][None, :]
            if allow_b is not None:
                keys.masked_fill_(~allow_b[r0:r1][None, :], key_max)
            if best is not None:
                keys = torch.cat([best, keys], 1)
            best = torch.topk(keys, min(k, keys.shape[1]), dim=1, largest=False, sorted=False).values
        top = torch.sort(best, dim=1).values
        m = top.shape[1]
        valid = top != key_max
        dist[q0:q1, :m] = torch.where(valid, top >> _IDX_BITS, torch.iinfo(torch.int32).max).to(torch.int32)
        idx[q0:q1, :m] = torch.where(valid, top & ((1 << _IDX_BITS) - 1), -1)
    return dist, idx
