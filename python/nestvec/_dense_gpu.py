"""Torch-side pieces shared by the GPU backends of dense_topk (Triton and CUDA):
query factors, candidate clean-up, the final merge of per-block keys, and the
CUDA launcher glue (workspace allocated here, raw pointers to _C)."""
from __future__ import annotations

import torch

INT64_MIN = -(1 << 63)
_METRIC = {"cosine": 0, "ip": 1, "l2": 2}
_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_KEY_BUDGET = 1 << 27  # int64 keys per merge chunk (1 GiB)


def unit_queries(queries, dim, metric):
    """Prefix queries scaled to unit norm (so 16-bit kernels neither overflow nor lose
    small queries to subnormals) and float32 [Q, 2] factors (a, b) such that
    a * (unit query . x) is the real dot product: cosine uses a = 1 (0 for a zero
    query) and divides by |x|; ip uses a = |q|; l2 = 2 a dot - |x|^2 - b with b = |q|^2."""
    q = queries[:, :dim].double()
    s = (q * q).sum(1)
    norm = s.sqrt()
    inv = torch.where(s > 0, 1.0 / norm.clamp_min(1e-300), torch.zeros_like(s))
    unit = (q * inv[:, None]).float().contiguous()
    a = (s > 0).double() if metric == "cosine" else norm
    return unit, torch.stack([a, s], 1).float().contiguous()


def split_query(q32, dtype):
    """q ~= hi + lo with hi, lo in ``dtype`` (16-bit storage types for tl.dot)."""
    hi = q32.to(dtype)
    lo = (q32 - hi.float()).to(dtype)
    return hi.contiguous(), lo.contiguous()


def dedupe_candidates(candidates, n, allow):
    """int64 [Q, C] row ids sorted per query, with duplicates, padding, ids outside
    [0, n) and rows excluded by ``allow`` replaced by -1 (index order is kept, which
    harmless: the keys already carry the index)."""
    c = candidates.to(torch.int64)
    c = torch.where((c >= 0) & (c < n), c, torch.full_like(c, -1))
    c, _ = torch.sort(c, dim=1)
    if c.shape[1] > 1:
        dup = torch.zeros_like(c, dtype=torch.bool)
        dup[:, 1:] = c[:, 1:] == c[:, :-1]
        c = torch.where(dup, torch.full_like(c, -1), c)
    if allow is not None:
        ok = allow[c.clamp_min(0)] & (c >= 0)
        c = torch.where(ok, c, torch.full_like(c, -1))
    return c.contiguous()


def merge_keys(keys, k, metric):
    """keys int64 [Q, M] -> (score f32 [Q, k], idx int64 [Q, k]) in contract order."""
    nq, m = keys.shape
    dev = keys.device
    worst = float("inf") if metric == "l2" else float("-inf")
    score = torch.full((nq, k), worst, dtype=torch.float32, device=dev)
    idx = torch.full((nq, k), -1, dtype=torch.int64, device=dev)
    kk = min(k, m)
    if kk == 0:
        return score, idx
    top = torch.topk(keys, kk, dim=1, largest=True, sorted=True).values
    valid = top != INT64_MIN
    ordk = (top >> 32).to(torch.int32)
    bits = ordk ^ ((ordk >> 31) & 0x7FFFFFFF)
    key = bits.view(torch.float32)
    if metric == "l2":
        key = -key
    row = 4294967295 - (top & 4294967295)
    score[:, :kk] = torch.where(valid, key, torch.full_like(key, worst))
    idx[:, :kk] = torch.where(valid, row, torch.full_like(row, -1))
    return score, idx



def _stride_rows(db):
    return db.stride(0) if db.shape[0] > 1 else max(db.stride(0), db.shape[1])


def dense_topk_cuda(C, db, queries, k, dim, metric, allow=None, candidates=None):
    """CUDA backend: scan (or gather) kernels from _C, merge with torch.topk."""
    n = db.shape[0]
    nq = queries.shape[0]
    dev = db.device
    if n >= (1 << 32):
        raise ValueError("db: the cuda backend supports N < 2^32 rows")
    q32, qaux = unit_queries(queries, dim, metric)
    mcode = _METRIC[metric]
    dcode = _DTYPE[db.dtype]
    stride = _stride_rows(db)
    results = []
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        if candidates is not None:
            cand = dedupe_candidates(candidates, n, allow)
            c = cand.shape[1]
            for q0 in range(0, nq, 65535):
                q1 = min(nq, q0 + 65535)
                keys = torch.full((q1 - q0, max(c, 1)), INT64_MIN, dtype=torch.int64, device=dev)
                if c > 0:
                    C.cuda_dense_gather(db.data_ptr(), dcode, n, stride, dim, q32[q0:q1].data_ptr(),
                                        q1 - q0, q32.stride(0), qaux[q0:q1].data_ptr(), mcode,
                                        cand[q0:q1].data_ptr(), c, cand.stride(0), keys.data_ptr(),
                                        keys.stride(0), stream)
                results.append(merge_keys(keys, k, metric))
        else:
            allow_u8 = allow.contiguous().view(torch.uint8) if allow is not None else None
            bn = C.cuda_dense_block_rows()
            kp = min(k, bn)
            m = (n + bn - 1) // bn * kp
            chunk = max(1, min(nq, _KEY_BUDGET // max(m, 1)))
            if chunk > 64:
                chunk = chunk // 64 * 64
            for q0 in range(0, nq, chunk):
                q1 = min(nq, q0 + chunk)
                keys = torch.empty((q1 - q0, m), dtype=torch.int64, device=dev)
                C.cuda_dense_scan(db.data_ptr(), dcode, n, stride, dim, q32[q0:q1].data_ptr(), q1 - q0,
                                  q32.stride(0), qaux[q0:q1].data_ptr(), mcode,
                                  allow_u8.data_ptr() if allow_u8 is not None else 0, kp,
                                  keys.data_ptr(), keys.stride(0), stream)
                results.append(merge_keys(keys, k, metric))
                del keys
    if len(results) == 1:
        return results[0]
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
