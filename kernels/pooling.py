"""Triton fused pooling.

``_pool_kernel`` runs one program per (batch row, column block): it walks the tokens
in tiles of ``BLOCK_T``, loads only the present rows of the tile (masked loads skip
padding), and accumulates in float32 — a running count gives the weighted_mean
ranks across tiles. When one column block covers the whole output row the L2 norm
and sign bits are fused into the same program (``_finish``); otherwise
``_finish_kernel`` applies them to the float32 ``[B, d]`` result.
Portable across Triton 3.x and ``TRITON_INTERPRET=1`` (no libdevice calls).
"""
import torch
import triton
import triton.language as tl

from . import device_guard

MODES = {"mean": 0, "cls": 1, "last": 2, "max": 3, "weighted_mean": 4}


@triton.jit
def _finish(x, cols, D, out_row, code_row, NB, NORMALIZE: tl.constexpr, BINARY: tl.constexpr,
            BLOCK_D: tl.constexpr):
    """Normalise one whole row ``x`` (padding lanes hold 0), store it and its bits."""
    if NORMALIZE:
        ss = tl.sum(x * x, axis=0)
        x = x / tl.where(ss > 0, tl.sqrt(ss), 1.0)
    tl.store(out_row + cols, x, mask=cols < D)
    if BINARY:
        bits = tl.reshape((x > 0).to(tl.int32), [BLOCK_D // 8, 8])
        weights = 128 >> tl.arange(0, 8)
        byte = tl.sum(bits * weights[None, :], axis=1)
        nb = tl.arange(0, BLOCK_D // 8)
        tl.store(code_row + nb, byte.to(tl.uint8), mask=nb < NB)


# Token count, code bytes and mask stride vary call to call: not worth a recompile each.
@triton.jit(do_not_specialize=["T", "NB", "s_mb"])
def _pool_kernel(h_ptr, m_ptr, out_ptr, code_ptr, T, D, NB, s_hb, s_ht, s_mb,
                 MODE: tl.constexpr, FUSED: tl.constexpr, NORMALIZE: tl.constexpr,
                 BINARY: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    h_row = h_ptr + b * s_hb
    m_row = m_ptr + b * s_mb
    zero_i = tl.sum(tl.zeros([BLOCK_T], dtype=tl.int32), axis=0)
    if MODE == 1 or MODE == 2:  # cls / last: find the token, copy its row
        if MODE == 1:
            best = zero_i + T
        else:
            best = zero_i - 1
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            m = tl.load(m_row + ts, mask=ts < T, other=0) != 0
            if MODE == 1:
                best = tl.minimum(best, tl.min(tl.where(m, ts, T), axis=0))
            else:
                best = tl.maximum(best, tl.max(tl.where(m, ts, -1), axis=0))
        sel = cols * 0 + best  # the row index broadcast over the block (one mask dtype)
        found = (sel >= 0) & (sel < T)
        acc = tl.load(h_row + tl.where(found, sel, 0).to(tl.int64) * s_ht + cols,
                      mask=cmask & found, other=0.0).to(tl.float32)
    else:
        if MODE == 3:
            acc = tl.full([BLOCK_D], float("-inf"), dtype=tl.float32)
        else:
            acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        n = zero_i
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            m = tl.load(m_row + ts, mask=ts < T, other=0) != 0
            x = tl.load(h_row + ts[:, None].to(tl.int64) * s_ht + cols[None, :],
                        mask=m[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            mi = m.to(tl.int32)
            if MODE == 0:
                acc += tl.sum(x, axis=0)
            elif MODE == 4:
                w = tl.where(m, tl.cumsum(mi, axis=0) + n, 0).to(tl.float32)
                acc += tl.sum(x * w[:, None], axis=0)
            else:
                acc = tl.maximum(acc, tl.max(tl.where(m[:, None], x, float("-inf")), axis=0))
            n += tl.sum(mi, axis=0)
        nf = n.to(tl.float32)
        if MODE == 0:
            acc = acc / tl.maximum(nf, 1.0)
        elif MODE == 4:
            acc = acc / tl.maximum(nf * (nf + 1.0) * 0.5, 1.0)
        found = n > 0
        acc = tl.where(found & cmask, acc, 0.0)
    acc = tl.where(cmask, acc, 0.0)
    if FUSED:
        _finish(acc, cols, D, out_ptr + b * D, code_ptr + b * NB, NB, NORMALIZE, BINARY, BLOCK_D)
    else:
        tl.store(out_ptr + b * D + cols, acc, mask=cmask)


@triton.jit(do_not_specialize=["NB"])
def _finish_kernel(out_ptr, code_ptr, D, NB, NORMALIZE: tl.constexpr, BINARY: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    x = tl.load(out_ptr + b * D + cols, mask=cols < D, other=0.0)
    _finish(x, cols, D, out_ptr + b * D, code_ptr + b * NB, NB, NORMALIZE, BINARY, BLOCK_D)


def _blocks(d, elem_bytes):
    """(BLOCK_T, BLOCK_D, num_warps), from a sweep on an H200 (README, GPU table): 16-bit
    inputs take 64 tokens x 512 features a tile; float32 keeps the same bytes per tile
    with half the tokens."""
    block_d = min(max(8, triton.next_power_of_2(d)), 512)
    block_t = 64 if elem_bytes == 2 else 32
    return block_t, block_d, 4


def pool(hidden, mask, mode="mean", normalize=True, dim=None, binary=False):
    """Same contract as nestvec.ops.pool; inputs validated there.

    hidden [B, T, H] (last dimension contiguous), mask [B, T] (any integer / bool
    dtype; nonzero = present). Returns float32 [B, d] (and uint8 [B, ceil(d/8)])."""
    B, T, H = hidden.shape
    d = H if dim is None else dim
    nb = (d + 7) // 8
    dev = hidden.device
    out = torch.empty((B, d), dtype=torch.float32, device=dev)
    codes = torch.empty((B, nb), dtype=torch.uint8, device=dev) if binary else out
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    if B == 0:
        return (out, codes) if binary else out
    if mask.shape[1] > 1 and mask.stride(1) != 1:
        mask = mask.contiguous()
    block_t, block_d, warps = _blocks(d, hidden.element_size())
    nblk = triton.cdiv(d, block_d)
    fused = nblk == 1
    # Triton launches on the current CUDA device and its stream, not the tensors' one.
    with device_guard(dev):
        _pool_kernel[(B, nblk)](hidden, mask, out, codes, T, d, nb, hidden.stride(0),
                                hidden.stride(1), mask.stride(0), MODE=MODES[mode], FUSED=fused,
                                NORMALIZE=bool(normalize), BINARY=bool(binary), BLOCK_T=block_t,
                                BLOCK_D=block_d, num_warps=warps)
        if not fused and (normalize or binary):
            _finish_kernel[(B,)](out, codes, d, nb, NORMALIZE=bool(normalize),
                                 BINARY=bool(binary), BLOCK_D=max(8, triton.next_power_of_2(d)),
                                 num_warps=8)
    return (out, codes) if binary else out
