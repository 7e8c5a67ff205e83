"""Triton elastic-dimension dense top-k.

Design (exact):
  1. ``_dense_scan_kernel``: one program scores a tile of BLOCK_Q queries x BLOCK_N rows
     over the first ``dim`` values, streaming the rows in BLOCK_D chunks (``tl.dot``
     when BLOCK_Q >= 16, a broadcast multiply-sum for smaller batches) and summing the
     rows' prefix norms in the same pass. Each (query, row) score becomes one int64
     key ``ord(score) << 32 | (2^32 - 1 - row)``: keys compare like (score, -row), so
     the key order *is* the contract order (best first, ties by index) and every key
     is unique. The program sorts its keys per query (``tl.sort`` along the rows) and
     writes only its best KP = min(k, BLOCK_N) keys.
  2. merge: ``torch.topk`` over the [Q, blocks * KP] surviving keys, then decode
     (in chunks of at most 1 GiB of keys: from k = BLOCK_N on, every row keeps a key).
Rows excluded by ``allow`` or past N get INT64_MIN and decode to padding. The keys
need N < 2^32 rows. 16-bit storage enters ``tl.dot`` as is; the float32 query is split
into two numbers of the storage type (hi + lo) so the products keep ~16 mantissa
bits of the query; float32 storage uses ``input_precision="ieee"``. Queries enter
scaled to unit norm (nestvec._dense_gpu.unit_queries), the norm applied to the score.

Candidates: ``_dense_gather_kernel`` scores each query's candidate rows (duplicates
and padding already replaced by -1) and writes one key per candidate; same merge.
"""
import torch
import triton
import triton.language as tl

from . import device_guard

from .._dense_gpu import INT64_MIN as _INT64_MIN
from .._dense_gpu import (dedupe_candidates, gather_in_chunks, scan_in_chunks, split_query,
                           unit_queries)

_KEY_MIN = tl.constexpr(-(1 << 63))  # excluded rows: below every real key
_METRIC = {"cosine": 0, "ip": 1, "l2": 2}


@triton.jit
def _keys(acc, sq, qa, qb, rows, valid, METRIC: tl.constexpr):
    """acc [BQ, BN] dots with unit queries, sq [BN] row prefix norms^2, qa/qb [BQ]
    query factors (see nestvec._dense_gpu.unit_queries)."""
    if METRIC == 0:
        # No clamp: rows with |x|^2 down to the subnormals (e.g. 1e-39) still score
        # exactly. Compiled tl.sqrt flushes subnormal inputs to 0, so tiny sums are
        # scaled by 2^100 first (and the root by 2^-50 after). sq * 0 keeps a NaN row NaN
        # (ineligible below) where a zero row scores 0.
        tiny = sq < 7.888609052210118e-31  # 2^-100
        s = tl.where(tiny, sq * 1.2676506002282294e30, sq)  # * 2^100
        root = tl.sqrt(tl.where(s > 0, s, 1.0))
        inv = tl.where(sq > 0, tl.where(tiny, 1125899906842624.0, 1.0) / root, sq * 0.0)  # 2^50
        key = acc * qa[:, None] * inv[None, :]
    elif METRIC == 1:
        key = acc * qa[:, None]
    else:
        key = 2.0 * acc * qa[:, None] - sq[None, :] - qb[:, None]
    # A non-finite score (NaN or inf in the row, or an overflow) is not eligible, on
    # every backend; -0 -> +0 so that equal scores tie by index.
    valid = valid & (tl.abs(key) <= 3.4028234663852886e38)
    key = key + 0.0
    bits = key.to(tl.int32, bitcast=True)
    ordk = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    comp = (ordk.to(tl.int64) << 32) | (4294967295 - rows.to(tl.int64))[None, :]
    return tl.where(valid, comp, _KEY_MIN)


@triton.jit
def _dense_scan_kernel(x_ptr, qh_ptr, ql_ptr, qaux_ptr, allow_ptr, out_ptr, N, NQ, DIM, KP,
                       stride_x, stride_q, stride_o, METRIC: tl.constexpr,
                       HAS_ALLOW: tl.constexpr, USE_DOT: tl.constexpr, SPLIT: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    # int64 block index: with int32, N >= 2^31 (allowed up to 2^32 by the key layout)
    # wraps rows negative, reading before db and writing keys at wrong offsets.
    pid_n = tl.program_id(0).to(tl.int64)
    pid_q = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    qi = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = qi < NQ
    acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, DIM, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cmask = cols < DIM
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0)
        xf = x.to(tl.float32)
        sq += tl.sum(xf * xf, axis=1)
        qoff = qi[:, None].to(tl.int64) * stride_q + cols[None, :]
        qm = qmask[:, None] & cmask[None, :]
        if USE_DOT:
            qh = tl.load(qh_ptr + qoff, mask=qm, other=0.0)
            if SPLIT:
                acc = tl.dot(qh, tl.trans(x), acc)
                ql = tl.load(ql_ptr + qoff, mask=qm, other=0.0)
                acc = tl.dot(ql, tl.trans(x), acc)
            else:
                acc = tl.dot(qh, tl.trans(xf), acc, input_precision="ieee")
        else:
            q = tl.load(qh_ptr + qoff, mask=qm, other=0.0).to(tl.float32)
            acc += tl.sum(q[:, None, :] * xf[None, :, :], axis=2)
    qa = tl.load(qaux_ptr + qi * 2, mask=qmask, other=0.0)
    qb = tl.load(qaux_ptr + qi * 2 + 1, mask=qmask, other=0.0)
    valid = qmask[:, None] & rmask[None, :]
    if HAS_ALLOW:
        a = tl.load(allow_ptr + rows, mask=rmask, other=0)
        valid = valid & (a != 0)[None, :]
    comp = _keys(acc, sq, qa, qb, rows, valid, METRIC)
    comp = tl.sort(comp, descending=True)  # along the rows, per query
    pos = tl.arange(0, BLOCK_N)
    dst = out_ptr + qi[:, None].to(tl.int64) * stride_o + pid_n * KP + pos[None, :]
    tl.store(dst, comp, mask=qmask[:, None] & (pos < KP)[None, :])


@triton.jit
def _dense_gather_kernel(x_ptr, q_ptr, qaux_ptr, cand_ptr, out_ptr, C, DIM, stride_x, stride_q,
                         stride_c, stride_o, METRIC: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    pid_c = tl.program_id(0)  # candidate tiles on axis 0 (2^31 programs), queries on
    qi = tl.program_id(1)     # axis 1 (<= 65535 per launch: gather_in_chunks)
    ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask_c = ci < C
    rows = tl.load(cand_ptr + qi.to(tl.int64) * stride_c + ci, mask=cmask_c, other=-1)
    ok = rows >= 0
    safe = tl.where(ok, rows, 0)
    acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    sq = tl.zeros([BLOCK_C], dtype=tl.float32)
    for d0 in range(0, DIM, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cm = cols < DIM
        x = tl.load(x_ptr + safe[:, None].to(tl.int64) * stride_x + cols[None, :],
                    mask=ok[:, None] & cm[None, :], other=0.0).to(tl.float32)
        q = tl.load(q_ptr + qi.to(tl.int64) * stride_q + cols, mask=cm, other=0.0)
        acc += tl.sum(x * q[None, :], axis=1)
        sq += tl.sum(x * x, axis=1)
    qa = tl.load(qaux_ptr + qi * 2 + tl.arange(0, 1))
    qb = tl.load(qaux_ptr + qi * 2 + 1 + tl.arange(0, 1))
    comp = _keys(acc[None, :], sq, qa, qb, safe, ok[None, :], METRIC)
    tl.store(out_ptr + qi.to(tl.int64) * stride_o + ci[None, :], comp, mask=cmask_c[None, :])


# --------------------------------------------------------------------------- launch

def _interpreting():
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _scan_config(nq, dim):
    if nq >= 16:
        block_q = 16 if nq < 32 else (32 if nq < 64 else 64)
        use_dot = True
    else:
        block_q = triton.next_power_of_2(nq)
        use_dot = False
    block_d = max(16, min(64, triton.next_power_of_2(dim)))
    block_n = 128 if use_dot else 64
    if not use_dot and block_q * block_n * block_d > 16384:  # the 3-D product tile
        block_d = max(16, 16384 // (block_q * block_n))
    return block_n, block_q, block_d, use_dot


def dense_topk(db, queries, k, dim, metric, allow=None, candidates=None, query_chunk=None):
    """Same contract as nestvec.ops.dense_topk; inputs validated there."""
    with device_guard(db.device):
        return _dense_topk(db, queries, k, dim, metric, allow, candidates, query_chunk)


def _dense_topk(db, queries, k, dim, metric, allow, candidates, query_chunk):
    n = db.shape[0]
    nq = queries.shape[0]
    dev = db.device
    if n >= (1 << 32):
        raise ValueError("db: the triton backend supports N < 2^32 rows")
    q32, qaux = unit_queries(queries, dim, metric)
    if allow is not None:
        allow = allow.contiguous()
    allow_u8 = allow.view(torch.uint8) if allow is not None else None
    mcode = _METRIC[metric]

    if candidates is not None:
        cand = dedupe_candidates(candidates.to(dev), n, allow)
        c = cand.shape[1]

        def gather(q0, q1):
            keys = torch.full((q1 - q0, max(c, 1)), _INT64_MIN, dtype=torch.int64, device=dev)
            if c > 0:
                block_d = max(16, min(64, triton.next_power_of_2(dim)))
                grid = (triton.cdiv(c, 64), q1 - q0)
                _dense_gather_kernel[grid](db, q32[q0:q1], qaux[q0:q1], cand[q0:q1], keys, c, dim,
                                           db.stride(0), q32.stride(0), cand.stride(0),
                                           keys.stride(0), METRIC=mcode, BLOCK_C=64,
                                           BLOCK_D=block_d)
            return keys

        return gather_in_chunks(nq, c, k, metric, gather)

    block_n, block_q, block_d, use_dot = _scan_config(nq, dim)
    split = use_dot and db.dtype in (torch.float16, torch.bfloat16)
    if split and db.dtype == torch.bfloat16 and _interpreting():
        split = False  # the interpreter's bf16 tl.dot is wrong: take the float32 path there
    if use_dot and split:
        qh, ql = split_query(q32, db.dtype)
    else:
        qh = ql = q32
    kp = min(k, block_n)

    def scan(q0, q1, r0, r1):
        nblk = triton.cdiv(r1 - r0, block_n)
        keys = torch.empty((q1 - q0, nblk * kp), dtype=torch.int64, device=dev)
        grid = (nblk, triton.cdiv(q1 - q0, block_q))
        _dense_scan_kernel[grid](db[r0:r1], qh[q0:q1], ql[q0:q1], qaux[q0:q1],
                                 allow_u8[r0:r1] if allow is not None else qaux, keys, r1 - r0,
                                 q1 - q0, dim, kp, db.stride(0), qh.stride(0), keys.stride(0),
                                 METRIC=mcode, HAS_ALLOW=allow is not None, USE_DOT=use_dot,
                                 SPLIT=split, BLOCK_N=block_n, BLOCK_Q=block_q, BLOCK_D=block_d,
                                 num_warps=8 if use_dot else 4)
        return keys

    # Query chunks and row slices keep each key buffer within ~1 GiB; grid axis 1 (query
    # blocks) is limited to 65535 programs on CUDA.
    return scan_in_chunks(n, nq, block_n, kp, k, metric, scan, q_align=block_q,
                          q_max=query_chunk or 65535 * block_q)
