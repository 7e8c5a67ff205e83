"""Triton Hamming top-k.

A streaming kernel computes, for a tile of rows and one query per program, the
Hamming distance with a SWAR popcount (portable: no libdevice, so it also runs under
TRITON_INTERPRET=1) and writes a packed key ``dist << 40 | row``; disallowed rows get
INT64_MAX. Because keys are unique and ordered by (distance, index), a plain
``torch.topk`` over them gives the exact contract order.
"""
import torch
import triton
import triton.language as tl

from . import device_guard

_IDX_BITS = 40
_KEY_MAX = torch.iinfo(torch.int64).max
_INT32_MAX = torch.iinfo(torch.int32).max


@triton.jit
def _popcount32(x):
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def _hamming_keys_kernel(codes_ptr, q_ptr, allow_ptr, out_ptr, N, NW, stride_c, stride_q,
                         stride_o, HAS_ALLOW: tl.constexpr, WORD32: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    pid_n = tl.program_id(0)
    qi = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    acc = tl.zeros([BLOCK_N], dtype=tl.uint32)
    for w0 in range(0, NW, BLOCK_W):
        cols = w0 + tl.arange(0, BLOCK_W)
        cmask = cols < NW
        c = tl.load(codes_ptr + rows[:, None].to(tl.int64) * stride_c + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0)
        q = tl.load(q_ptr + qi * stride_q + cols, mask=cmask, other=0)
        x = (c ^ q[None, :]).to(tl.uint32, bitcast=WORD32)
        acc += tl.sum(_popcount32(x), axis=1).to(tl.uint32)
    key = (acc.to(tl.int64) << 40) | rows.to(tl.int64)
    if HAS_ALLOW:
        a = tl.load(allow_ptr + rows, mask=rmask, other=0)
        key = tl.where(a != 0, key, 0x7FFFFFFFFFFFFFFF)
    tl.store(out_ptr + qi * stride_o + rows, key, mask=rmask)


def _words(codes, queries):
    """View rows as int32 words when the layout allows (4x fewer loads), else bytes."""
    nbytes = codes.shape[1]
    if (nbytes % 4 == 0 and codes.stride(0) % 4 == 0 and codes.data_ptr() % 4 == 0
            and queries.data_ptr() % 4 == 0 and codes.stride(1) == 1):
        return codes.view(torch.int32), queries.view(torch.int32)
    return codes, queries


def _launch_keys(codes, queries, allow, out):
    n = codes.shape[0]
    cw, qw = _words(codes, queries)
    nw = cw.shape[1]
    block_w = min(triton.next_power_of_2(nw), 64)
    block_n = 128 if nw <= 32 else 64
    grid = (triton.cdiv(n, block_n), queries.shape[0])
    _hamming_keys_kernel[grid](cw, qw, allow if allow is not None else cw, out, n, nw,
                               cw.stride(0), qw.stride(0), out.stride(0),
                               HAS_ALLOW=allow is not None, WORD32=cw.dtype == torch.int32,
                               BLOCK_N=block_n, BLOCK_W=block_w)


def hamming_topk(codes, queries, k, allow=None, query_chunk=None):
    """Same contract as nestvec.ops.hamming_topk; inputs validated by ops.py."""
    with device_guard(codes.device):
        return _hamming_topk(codes, queries, k, allow, query_chunk)


def _hamming_topk(codes, queries, k, allow, query_chunk):
    n = codes.shape[0]
    nq = queries.shape[0]
    dev = codes.device
    dist = torch.full((nq, k), _INT32_MAX, dtype=torch.int32, device=dev)
    idx = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    if allow is not None:
        allow = allow.contiguous().view(torch.uint8)
    # Bound the [chunk, N] int64 key buffer to ~1 GiB.
    chunk = query_chunk or max(1, min(nq, (1 << 27) // max(n, 1)))
    chunk = min(chunk, 65535)  # grid axis 1 (one program per query) is capped on CUDA
    kk = min(k, n)
    for q0 in range(0, nq, chunk):
        q1 = min(nq, q0 + chunk)
        keys = torch.empty((q1 - q0, n), dtype=torch.int64, device=dev)
        _launch_keys(codes, queries[q0:q1], allow, keys)
        top = torch.topk(keys, kk, dim=1, largest=False, sorted=True).values
        valid = top != _KEY_MAX
        dist[q0:q1, :kk] = torch.where(valid, top >> _IDX_BITS, _INT32_MAX).to(torch.int32)
        idx[q0:q1, :kk] = torch.where(valid, top & ((1 << _IDX_BITS) - 1), -1)
    return dist, idx
