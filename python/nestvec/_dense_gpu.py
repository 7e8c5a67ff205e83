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


def _cat(results):
    """Per-chunk (score, idx) pairs -> one pair, stacked along the queries."""
    if len(results) == 1:
        return results[0]
    return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])


def _stride_rows(db):
    return db.stride(0) if db.shape[0] > 1 else max(db.stride(0), db.shape[1])


def scan_in_chunks(n, nq, bn, kp, k, metric, launch, q_align=1, q_max=None, budget=None):
    """Runs a block-key scan in query chunks and row slices so that no [chunk, keys]
    buffer exceeds ``budget`` int64 keys, and merges the result.

    ``launch(q0, q1, r0, r1)`` scans queries [q0, q1) over rows [r0, r1) (r0 a multiple
    of ``bn``) and returns int64 keys [q1 - q0, ceil((r1 - r0) / bn) * kp] whose rows are
    numbered from r0. Row slices are reduced to their best k keys and renumbered (the
    key's low half is 2^32 - 1 - row, so subtracting r0 adds r0 to the row) before the
    next one, so a huge N costs one slice of keys at a time."""
    budget = budget or _KEY_BUDGET
    m = (n + bn - 1) // bn * kp
    chunk = max(1, min(nq, budget // max(m, 1)))
    if chunk > q_align:
        chunk = chunk // q_align * q_align
    if q_max:
        chunk = min(chunk, q_max)
    rows = n
    if chunk * m > budget:
        rows = max(1, budget // (chunk * kp)) * bn
    results = []
    for q0 in range(0, nq, chunk):
        q1 = min(nq, q0 + chunk)
        best = None
        for r0 in range(0, n, rows):
            keys = launch(q0, q1, r0, min(n, r0 + rows))
            if rows < n:
                keys = torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=False).values
                if r0:
                    keys = torch.where(keys != INT64_MIN, keys - r0, keys)
                if best is not None:
                    keys = torch.cat([best, keys], 1)
                    keys = torch.topk(keys, min(k, keys.shape[1]), dim=1, sorted=False).values
            best = keys
        results.append(merge_keys(best, k, metric))
    return _cat(results)


def gather_in_chunks(nq, c, k, metric, launch, q_max=65535, budget=None):
    """Candidate path: ``launch(q0, q1)`` returns keys [q1 - q0, c]; query chunks keep
    each buffer within ``budget`` keys (and grid.y within ``q_max``)."""
    budget = budget or _KEY_BUDGET
    chunk = max(1, min(nq, q_max, budget // max(c, 1)))
    return _cat([merge_keys(launch(q0, min(nq, q0 + chunk)), k, metric)
                 for q0 in range(0, nq, chunk)])


def dense_topk_cuda(runtime, db, queries, k, dim, metric, allow=None, candidates=None):
    """CUDA backend: scan (or gather) kernels launched through ``runtime``
    (ops.CudaRuntime), merge with torch.topk."""
    C = runtime.module
    n = db.shape[0]
    dev = db.device
    if n >= (1 << 32):
        raise ValueError("db: the cuda backend supports N < 2^32 rows")
    q32, qaux = unit_queries(queries, dim, metric)
    mcode = _METRIC[metric]
    dcode = _DTYPE[db.dtype]
    stride = _stride_rows(db)
    esize = db.element_size()
    with runtime.stream(dev) as stream:
        if candidates is not None:
            cand = dedupe_candidates(candidates, n, allow)
            c = cand.shape[1]

            def gather(q0, q1):
                keys = torch.full((q1 - q0, max(c, 1)), INT64_MIN, dtype=torch.int64, device=dev)
                if c > 0:
                    C.cuda_dense_gather(db.data_ptr(), dcode, n, stride, dim, q32[q0:q1].data_ptr(),
                                        q1 - q0, q32.stride(0), qaux[q0:q1].data_ptr(), mcode,
                                        cand[q0:q1].data_ptr(), c, cand.stride(0), keys.data_ptr(),
                                        keys.stride(0), stream)
                return keys

            return gather_in_chunks(queries.shape[0], c, k, metric, gather)
        allow_u8 = allow.contiguous().view(torch.uint8) if allow is not None else None
        bn = C.cuda_dense_block_rows()
        kp = min(k, bn)

        def scan(q0, q1, r0, r1):
            m = (r1 - r0 + bn - 1) // bn * kp
            keys = torch.empty((q1 - q0, m), dtype=torch.int64, device=dev)
            C.cuda_dense_scan(db.data_ptr() + r0 * stride * esize, dcode, r1 - r0, stride, dim,
                              q32[q0:q1].data_ptr(), q1 - q0, q32.stride(0),
                              qaux[q0:q1].data_ptr(), mcode,
                              allow_u8.data_ptr() + r0 if allow_u8 is not None else 0, kp,
                              keys.data_ptr(), keys.stride(0), stream)
            return keys

        return scan_in_chunks(n, queries.shape[0], bn, kp, k, metric, scan, q_align=64)
