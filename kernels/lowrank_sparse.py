"""Triton LOST low-rank + channel-sparse matmul: ``y = x Aᵀ Bᵀ + scatter(x Sᵀ) + bias``.

Two GEMM launches, float32 accumulation:

1. ``_xw_kernel``: one pass over x against the stacked ``[A; S]``. The column tiles
   of A come first, then those of S; a program picks its weight from its tile index,
   so the stack is never materialised. A-tiles store ``t_lr = x Aᵀ`` in x's dtype (it is
   the input of a second tensor-core GEMM, exactly as in a two-step torch low-rank),
   S-tiles store ``t_s = x Sᵀ`` in float32.
2. ``_ty_kernel``: ``y = t_lr Bᵀ``; its epilogue gathers ``t_s[:, col2s[n]]`` into the
   sparse output columns (``col2s[n] = j`` where ``channels[j] = n``, else -1), adds the
   bias and stores y in x's dtype.

float32 inputs use IEEE products (no TF32) so that they meet float32 tolerances.
Compatible with Triton 3.6+ and the interpreter (``TRITON_INTERPRET=1``, small shapes).
The kernels call only ``triton.language`` core builtins, no ``@triton.jit`` helpers of
``triton.language.standard`` (``tl.cdiv``, ``tl.zeros``): those are decorated when
triton is imported, so with Triton 3.9 they fail under an interpreter switched on later
(as the tests' ``triton_interpret`` fixture does).
"""
import os

import torch
import triton
import triton.language as tl

from . import device_guard


@triton.jit
def _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Grouped launch order: GROUP_M row tiles share their column tiles in L2."""
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _xw_kernel(x_ptr, a_ptr, s_ptr, tlr_ptr, ts_ptr, M, K, R, C, stride_x, stride_a, stride_s,
               stride_tlr, stride_ts, TILES_A, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, IEEE: tl.constexpr,
               EVEN_K: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M  # no tl.cdiv: see below
    num_pid_n = TILES_A + (C + BLOCK_N - 1) // BLOCK_N
    pid_m, pid_n = _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M)
    is_a = pid_n < TILES_A
    if is_a:
        w_ptr = a_ptr
        n0 = pid_n * BLOCK_N
        n_lim = R
        stride_w = stride_a
    else:
        w_ptr = s_ptr
        n0 = (pid_n - TILES_A) * BLOCK_N
        n_lim = C
        stride_w = stride_s
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Out-of-range rows/columns read row 0 / column 0 (valid memory) and are never stored.
    rows = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
    cols = tl.where(offs_n < n_lim, offs_n, 0).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_x + offs_k[None, :]
    w_ptrs = w_ptr + cols[None, :] * stride_w + offs_k[:, None]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # (tl.zeros: see num_pid_m)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            xa = tl.load(x_ptrs)
            wb = tl.load(w_ptrs)
        else:
            kmask = offs_k < K - k0
            xa = tl.load(x_ptrs, mask=kmask[None, :], other=0.0)
            wb = tl.load(w_ptrs, mask=kmask[:, None], other=0.0)
        if UPCAST:  # the interpreter's bfloat16 dot is wrong (Triton 3.9): go through f32
            xa = xa.to(tl.float32)
            wb = wb.to(tl.float32)
        if IEEE:
            acc = tl.dot(xa, wb, acc, input_precision="ieee")
        else:
            acc = tl.dot(xa, wb, acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < n_lim)
    om = offs_m[:, None].to(tl.int64)
    if is_a:
        tl.store(tlr_ptr + om * stride_tlr + offs_n[None, :],
                 acc.to(tlr_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ts_ptr + om * stride_ts + offs_n[None, :], acc, mask=mask)


@triton.jit
def _ty_kernel(t_ptr, b_ptr, ts_ptr, col2s_ptr, bias_ptr, y_ptr, M, N, R, stride_t, stride_b,
               stride_ts, stride_y, HAS_SPARSE: tl.constexpr, HAS_BIAS: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUP_M: tl.constexpr, IEEE: tl.constexpr, EVEN_K: tl.constexpr,
               UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M  # no tl.cdiv: see below
    num_pid_n = (N + BLOCK_N - 1) // BLOCK_N
    pid_m, pid_n = _tile_ids(pid, num_pid_m, num_pid_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = tl.where(offs_m < M, offs_m, 0).to(tl.int64)
    cols = tl.where(offs_n < N, offs_n, 0).to(tl.int64)
    t_ptrs = t_ptr + rows[:, None] * stride_t + offs_k[None, :]
    b_ptrs = b_ptr + cols[None, :] * stride_b + offs_k[:, None]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # (tl.zeros: see num_pid_m)
    for k0 in range(0, R, BLOCK_K):
        if EVEN_K:
            ta = tl.load(t_ptrs)
            bb = tl.load(b_ptrs)
        else:
            kmask = offs_k < R - k0
            ta = tl.load(t_ptrs, mask=kmask[None, :], other=0.0)
            bb = tl.load(b_ptrs, mask=kmask[:, None], other=0.0)
        if UPCAST:  # the interpreter's bfloat16 dot is wrong (Triton 3.9): go through f32
            ta = ta.to(tl.float32)
            bb = bb.to(tl.float32)
        if IEEE:
            acc = tl.dot(ta, bb, acc, input_precision="ieee")
        else:
            acc = tl.dot(ta, bb, acc)
        t_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    # Epilogue: sparse columns (gathered from t_s), bias, store.
    nmask = offs_n < N
    mmask = offs_m < M
    om = offs_m[:, None].to(tl.int64)
    if HAS_SPARSE:
        j = tl.load(col2s_ptr + offs_n, mask=nmask, other=-1)
        smask = mmask[:, None] & (j[None, :] >= 0)
        jj = tl.where(j >= 0, j, 0)
        acc += tl.load(ts_ptr + om * stride_ts + jj[None, :], mask=smask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + om * stride_y + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


# ------------------------------------------------------------------------------ launcher

def _configs(dtype, interpret):
    """(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) of GEMM 1 and GEMM 2.

    GEMM 1 has few output columns (r + c), so its tiles are narrower: more tiles, less
    wave quantisation; GEMM 2 prefers wide 128 x 256 tiles. Both chosen from a sweep on
    an H200 (benchmarks/results/lowrank_gpu_h200.json)."""
    env = os.environ.get("NESTVEC_LRS_TRITON_CONFIG")  # "BM,BN,BK,G,warps,stages" (tuning)
    if env:
        cfg = tuple(int(v) for v in env.split(","))
        return cfg, cfg
    if interpret:
        return (32, 32, 32, 4, 4, 1), (32, 32, 32, 4, 4, 1)
    if dtype == torch.float32:
        return (64, 64, 32, 8, 4, 3), (64, 64, 32, 8, 4, 3)
    return (128, 128, 64, 8, 4, 4), (128, 256, 64, 8, 8, 3)


def _launch(x, A, B, S, col2s, ts_buf, bias, y, config=None):
    M, K = x.shape
    R, N, C = A.shape[0], B.shape[0], S.shape[0]
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    cfg1, cfg2 = (config, config) if config else _configs(x.dtype, interpret)
    ieee = x.dtype == torch.float32
    tlr = torch.empty((M, R), dtype=x.dtype, device=x.device)
    ts = ts_buf
    upcast = interpret and x.dtype == torch.bfloat16
    bm, bn, bk, gm, warps, stages = cfg1
    kw = dict(num_warps=warps, num_stages=stages, UPCAST=upcast)
    tiles_a = triton.cdiv(R, bn)
    grid1 = (triton.cdiv(M, bm) * (tiles_a + triton.cdiv(C, bn)),)
    if grid1[0] > 0 and K > 0:
        _xw_kernel[grid1](x, A, S if C else A, tlr, ts if C else tlr, M, K, R, C, x.stride(0),
                          A.stride(0), S.stride(0) if C else 0, tlr.stride(0),
                          ts.stride(0) if C else 0, tiles_a, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                          GROUP_M=gm, IEEE=ieee, EVEN_K=K % bk == 0, **kw)
    elif K == 0:
        tlr.zero_()
        if C:
            ts.zero_()
    bm, bn, bk, gm, warps, stages = cfg2
    kw = dict(num_warps=warps, num_stages=stages, UPCAST=upcast)
    grid2 = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
    _ty_kernel[grid2](tlr, B, ts if C else tlr, col2s if C else tlr, bias if bias is not None else y,
                      y, M, N, R, tlr.stride(0), B.stride(0), ts.stride(0) if C else 0, y.stride(0),
                      HAS_SPARSE=C > 0, HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn,
                      BLOCK_K=bk, GROUP_M=gm, IEEE=ieee, EVEN_K=R % bk == 0, **kw)
    return y


# ------------------------------------------------------------------------------ public

def lowrank_sparse_matmul(x, A, B, S, channels, bias=None, config=None, out=None):
    """Same contract as nestvec.ops.lowrank_sparse_matmul; inputs (and ``out``, written
    in place: any row stride) validated by ops.py.

    ``config`` = (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages) overrides
    the block sizes (benchmarks)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    A, B, S = A.contiguous(), B.contiguous(), S.contiguous()
    M = x.shape[0]
    N, C = B.shape[0], S.shape[0]
    dev = x.device
    y = out if out is not None else torch.empty((M, N), dtype=x.dtype, device=dev)
    if M == 0 or N == 0:
        return y
    ts = torch.empty((M, C), dtype=torch.float32, device=dev) if C else None
    col2s = None
    if C:
        col2s = torch.full((N,), -1, dtype=torch.int32, device=dev)
        col2s[channels.to(device=dev, dtype=torch.int64)] = torch.arange(C, dtype=torch.int32,
                                                                         device=dev)
    if bias is not None:
        bias = bias.contiguous()
    # Triton launches on the current CUDA device and its stream, not the tensors' one.
    with device_guard(dev):
        return _launch(x, A, B, S, col2s, ts, bias, y, config)
