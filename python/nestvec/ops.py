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


class CudaRuntime:
    """Where backend ``cuda`` launches: the CUDA launchers of nestvec._C, on tensors of
    ``device`` ("cuda"), each launch on the device's current stream.

    One object the cuda backend asks for all three, so that another runtime can stand
    in for it; the test suite puts the same kernels on a CPU emulator here
    (tests/conftest.py), nothing in the package does."""

    device = "cuda"

    def __init__(self, module):
        self.module = module

    @property
    def compiled(self) -> bool:
        return self.module is not None and bool(self.module.build_info()["cuda_compiled"])

    def accepts(self, x) -> bool:
        return ck.device_of(x) == self.device

    def stream(self, dev):
        """Context: the current stream of ``dev`` (an int), with ``dev`` made current."""
        return ck.launch_scope(dev)


CUDA = CudaRuntime(_C)


def cuda_compiled() -> bool:
    return CUDA.compiled


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def is_auto(backend: str | None) -> bool:
    """True when neither the call nor NESTVEC_BACKEND names a backend."""
    if backend not in (None, "auto"):
        return False
    return (os.environ.get("NESTVEC_BACKEND", "auto") or "auto") == "auto"


def resolve_backend(backend: str | None, x, prefer_triton: bool = False) -> str:
    """The backend an op will run on for input ``x`` (see module docstring).

    ``prefer_triton``: for ops whose Triton kernels measure faster than their CUDA ones,
    ``auto`` sends CUDA tensors to Triton when it is installed."""
    if backend in (None, "auto"):
        backend = os.environ.get("NESTVEC_BACKEND", "auto") or "auto"
    if backend == "auto":
        if ck.device_of(x) == "cuda":
            if prefer_triton and triton_available():
                return "triton"
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
        if not CUDA.compiled:
            raise RuntimeError("backend 'cuda': nestvec was built without CUDA kernels")
        if not CUDA.accepts(x):
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


def _inner_stride_ok(x) -> bool:
    if x.ndim == 2 and x.shape[1] > 1 and x.shape[0] > 0:
        return (x.stride(1) if ck.is_torch(x) else x.strides[1] // x.itemsize) == 1
    return True


def _rows_overlap(x) -> bool:
    return ck.is_torch(x) and x.ndim == 2 and x.shape[0] > 1 and x.stride(0) < x.shape[1]


def rows_usable(x) -> bool:
    """Whether a [N, D] array can go to the kernels as it is: each row contiguous and no
    two rows overlapping (rows may be strided views of a larger table)."""
    return _inner_stride_ok(x) and not _rows_overlap(x)


def _row_contiguous(x, name: str):
    """Rows may be strided (a view of a larger table); each row must be contiguous."""
    if not _inner_stride_ok(x):
        raise ValueError(f"{name}: each row must be contiguous in memory (last-dimension "
                         f"stride 1); pass a contiguous copy (np.ascontiguousarray / .contiguous())")
    if _rows_overlap(x):
        raise ValueError(f"{name}: rows overlap in memory (row stride {x.stride(0)})")
    return x


# --------------------------------------------------------------------------- hamming

HAMMING_MAX_K_GPU = 4096
# The cuda backend runs queries in groups whose uint16 distances and candidate keys fit
# in this many bytes of device memory.
HAMMING_GROUP_BYTES = 512 << 20


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
    _require_gpu_inputs(be, codes=codes, queries=queries, allow=allow)

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
    C = CUDA.module
    group = HAMMING_GROUP_BYTES
    ws_bytes = C.cuda_hamming_workspace_bytes(n, nq, nbytes, k, group)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=dev)
    dist = torch.empty((nq, k), dtype=torch.int32, device=dev)
    idx = torch.empty((nq, k), dtype=torch.int64, device=dev)
    with CUDA.stream(dev) as stream:
        C.cuda_hamming_topk(codes.data_ptr(), n, codes.stride(0), queries.data_ptr(), nq,
                            queries.stride(0), nbytes, k,
                            allow.data_ptr() if allow is not None else 0, dist.data_ptr(),
                            idx.data_ptr(), group, ws.data_ptr(), ws_bytes, stream)
    return dist, idx


# --------------------------------------------------------------------------- dense_topk

DENSE_MAX_K_CPU = 4096
DENSE_MAX_K_GPU = 2048


def _dense_db(db, db_dtype):
    """Validate the stored vectors; returns (db, logical dtype name)."""
    db = ck.as_array_like(db, "db")
    ck.check_ndim(db, "db", (2,), "a 2-D array [N, D]")
    dt = ck.float_storage(db, "db", "db_dtype", db_dtype, "[N, D]")
    if db.shape[1] == 0:
        raise ValueError("db: expected at least one column")
    if dt == "bfloat16" and ck.is_torch(db) and ck.dtype_name(db) != "bfloat16":
        import torch

        db = db.view(torch.bfloat16)  # uint16 bit patterns flagged db_dtype="bfloat16"
    return _row_contiguous(db, "db"), dt


def _dense_queries(queries, d_full, dim):
    queries = ck.as_array_like(queries, "queries")
    ck.check_ndim(queries, "queries", (1, 2), "[Q, D] or [D]")
    ck.check_dtype(queries, "queries", ("float32", "float16", "bfloat16", "float64"),
                   "a float type [Q, D]")
    if queries.shape[-1] not in (d_full, dim):
        raise ValueError(f"queries: expected {d_full} (or dim={dim}) values per query, got "
                         f"{queries.shape[-1]}")
    return queries


def _check_dim(dim, d_full):
    if dim is None:
        return d_full
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim: expected an int prefix length, got {type(dim).__name__}")
    if not 1 <= dim <= d_full:
        raise ValueError(f"dim: expected 1 <= dim <= {d_full} (the stored width), got {dim}")
    return int(dim)


def _check_candidates(candidates, nq, ref):
    if candidates is None:
        return None
    candidates = ck.as_array_like(candidates, "candidates")
    ck.check_same_device("db", ref, "candidates", candidates)
    ck.check_dtype(candidates, "candidates", ("int64", "int32"), "int64 [Q, C] row ids")
    ck.check_ndim(candidates, "candidates", (2,), "a 2-D array [Q, C] (-1 = padding)")
    if candidates.shape[0] != nq:
        raise ValueError(f"candidates: expected one row per query ({nq}), got {candidates.shape[0]}")
    if candidates.shape[0] and candidates.shape[1]:
        # an id past N (say, from another segment) is a caller's bug: say so instead
        # of silently scoring fewer rows (one host sync on a device)
        if ck.is_torch(candidates):
            import torch

            lo, hi = (int(v) for v in torch.aminmax(candidates))
        else:
            lo, hi = int(candidates.min()), int(candidates.max())
        n = ref.shape[0]
        if lo < -1 or hi >= n:
            raise ValueError(f"candidates: row ids must lie in [0, N={n}) or be -1 (padding), "
                             f"got range [{lo}, {hi}]")
    return candidates


def require_torch(why: str, **named) -> None:
    """TypeError naming the first non-None input of ``named`` that is not a torch tensor
    (``f"{name}: {why}, got numpy.ndarray"``): the triton and cuda backends launch on
    tensors, and a NumPy input next to a tensor would otherwise fail inside a launcher."""
    for name, t in named.items():
        if t is not None and not ck.is_torch(t):
            raise TypeError(f"{name}: {why}, got {type(t).__module__}.{type(t).__name__}")


def _require_gpu_inputs(backend: str, **named) -> None:
    if backend in ("triton", "cuda"):
        require_torch(f"the {backend} backend takes torch tensors", **named)


def _finite(x, name):
    if ck.is_torch(x):
        import torch

        ok = bool(torch.isfinite(x).all())
    else:
        ok = bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name}: contains NaN or infinity")


def dense_topk(db, queries, k: int, dim: int | None = None, metric: str = "cosine", allow=None,
               candidates=None, *, db_dtype: str | None = None, backend: str = "auto"):
    """Exact elastic-dimension top-k (Matryoshka): score the first ``dim`` values only.

    Args:
        db: stored vectors ``[N, D]``, float32 / float16 / bfloat16 (a torch.bfloat16
            tensor, or a NumPy array / torch tensor of uint16 with
            ``db_dtype="bfloat16"``). Rows may be strided; each row must be contiguous.
            Never copied, and not scanned for NaN / inf (that would be a second pass):
            a row whose score is not finite (NaN or inf in its prefix, or an overflow)
            is never returned, on every backend.
        queries: ``[Q, D]`` (or ``[Q, dim]``, or one ``[D]`` query), any float type.
        k: results per query, ``>= 1`` (<= 4096 on CPU, 2048 on GPU); ``k > N`` pads.
        dim: prefix length ``1 <= dim <= D``; default D. The prefix norm of each row is
            computed in the same pass (no stored norms).
        metric: ``cosine`` | ``ip`` (higher is better) | ``l2`` (squared distance,
            lower is better). Zero-norm rows score 0 under cosine; so do rows whose
            squared prefix norm leaves float32's range (float32 / bfloat16 storage with
            a norm above ~1.8e19 or below ~1e-19: the kernels accumulate in float32;
            nestvec.Collection refuses such rows).
        allow: optional bool ``[N]`` mask (or packed uint8 bitset) of eligible rows.
        candidates: optional int ``[Q, C]`` row ids per query in ``[0, N)`` (``-1`` =
            padding, duplicates ignored): top-k among those rows only (rescoring).

    Returns:
        ``(score float32 [Q, k], idx int64 [Q, k])``, best first, ties by index;
        padding ``(-inf, -1)`` (cosine/ip) or ``(+inf, -1)`` (l2).
    """
    db, dt = _dense_db(db, db_dtype)
    n, d_full = db.shape
    dim = _check_dim(dim, d_full)
    queries = _dense_queries(queries, d_full, dim)
    single = queries.ndim == 1
    if single:
        queries = queries[None, :]
    k = ck.check_k(k)
    if metric not in reference.METRICS:
        raise ValueError(f"metric: expected one of {reference.METRICS}, got {metric!r}")
    ck.check_same_device("db", db, "queries", queries)
    _finite(queries, "queries")
    allow = ck.check_allow(allow, n, db, "db")
    candidates = _check_candidates(candidates, queries.shape[0], db)
    be = resolve_backend(backend, db)
    if be != "reference":
        _check_backend_device(be, db, "db")
    _require_gpu_inputs(be, db=db, queries=queries, allow=allow, candidates=candidates)
    max_k = DENSE_MAX_K_GPU if be in ("cuda", "triton") else DENSE_MAX_K_CPU
    if k > max_k:
        raise ValueError(f"k: backend {be!r} supports k <= {max_k}, got {k}")

    if be == "reference" or n == 0 or queries.shape[0] == 0:
        args = (db, queries, allow, candidates)
        if be != "reference":  # empty input: nothing to scan, so any device is fine
            args = tuple(a.detach().cpu() if ck.is_torch(a) else a for a in args)
        s, i = _dense_reference(args[0], dt, args[1], k, dim, metric, args[2], args[3])
        s, i = _like(s, db), _like(i, db)
    else:
        impl = _DENSE_BACKENDS.get(be)
        if impl is None:
            raise RuntimeError(f"dense_topk: backend {be!r} is not implemented yet")
        s, i = impl(db, dt, queries, k, dim, metric, allow, candidates)
    return (s[0], i[0]) if single else (s, i)


def _dense_reference(db, dt, queries, k, dim, metric, allow, candidates):
    if ck.is_torch(db):
        import torch

        x = db.detach()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    else:
        x = reference.bf16_to_f32(db) if dt == "bfloat16" else db
    q = _to_numpy(queries.float() if ck.is_torch(queries) else queries).astype(np.float64)
    return reference.dense_topk(x, q, k, dim, metric, _to_numpy(allow), _to_numpy(candidates))


_DENSE_DTYPE_CODE = {"float32": 0, "float16": 1, "bfloat16": 2}
_DENSE_METRIC_CODE = {"cosine": 0, "ip": 1, "l2": 2}


def _dense_cpu(db, dt, queries, k, dim, metric, allow, candidates):
    """C++ backend: the stored rows are passed as they are (strided view, no copy)."""
    x = ck.host_view(db) if ck.is_torch(db) else db
    q = queries[:, :dim]
    if ck.is_torch(q):
        import torch

        q = q.detach()
        q = (q if q.dtype == torch.float64 else q.float()).numpy()
    if metric == "cosine":
        # unit queries: the kernel's float32 1/|q| overflows for |q| beyond float32's
        # range (a float64 query of 1e39, a float32 one of 1e-40); scores are unchanged
        q = q.astype(np.float64)  # the one copy, normalised in place
        nrm = np.sqrt(np.einsum("ij,ij->i", q, q))[:, None]
        np.divide(q, nrm, out=q, where=nrm > 0)
    with np.errstate(over="ignore"):
        q = np.ascontiguousarray(q, dtype=np.float32)
    if metric != "cosine" and not np.isfinite(q).all():
        raise ValueError("queries: values beyond float32's range (the cpu backend scores in "
                         "float32); rescale the queries")
    a = None
    if allow is not None:
        a = allow.detach().numpy() if ck.is_torch(allow) else allow
        a = np.ascontiguousarray(a, dtype=bool).view(np.uint8)
    c = None
    if candidates is not None:
        c = candidates.detach().numpy() if ck.is_torch(candidates) else candidates
        c = np.ascontiguousarray(c, dtype=np.int64)
    score = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    _C.dense_topk(x, _DENSE_DTYPE_CODE[dt], dim, q, k, _DENSE_METRIC_CODE[metric], a, c, score, idx)
    return _like(score, db), _like(idx, db)


def _dense_triton(db, dt, queries, k, dim, metric, allow, candidates):
    from .kernels import dense as tk

    return tk.dense_topk(db, queries, k, dim, metric, allow, candidates)


def _dense_cuda(db, dt, queries, k, dim, metric, allow, candidates):
    from . import _dense_gpu

    return _dense_gpu.dense_topk_cuda(CUDA, db, queries, k, dim, metric, allow,
                                      candidates)


# backend name -> fn(db, dtype_name, queries, k, dim, metric, allow, candidates)
_DENSE_BACKENDS: dict = {"cpu": _dense_cpu, "triton": _dense_triton, "cuda": _dense_cuda}


def funnel_topk(db, queries, k: int, dims=(64, 256, None), shortlist=None, metric: str = "cosine",
                allow=None, *, db_dtype: str | None = None, backend: str = "auto"):
    """Matryoshka ladder: an exact scan at a short prefix, then exact rescoring of
    shrinking shortlists at wider prefixes (Matryoshka adaptive retrieval).

    Stage 0 runs ``dense_topk`` over every (allowed) row at ``dims[0]`` and keeps
    ``shortlist[0]`` rows per query; stage i >= 1 rescores the previous survivors at
    ``dims[i]`` through the ``candidates`` path and keeps ``shortlist[i]`` rows (the
    last stage keeps ``k``). The result is exact at ``dims[-1]`` *among the survivors*:
    it equals ``dense_topk(..., dim=dims[-1])`` whenever the true top-k survive every
    cut (always when ``shortlist[0] >= N``); recall otherwise depends on how much the
    embedding front-loads information into its prefix (Matryoshka-trained models do).

    Args:
        db, queries, metric, allow, db_dtype, backend: as in :func:`dense_topk`.
        k: results per query.
        dims: increasing prefix lengths; ``None`` means the stored width D. Values above
            D are clipped to D and repeats dropped.
        shortlist: rows kept after each stage but the last, non-increasing, each
            ``>= k``; one per stage but the last. Default: ``k * 16``, ``k * 4``, ...
            (factor 4 per stage), capped at the backend's largest k.

    Returns:
        ``(score float32 [Q, k], idx int64 [Q, k])`` at ``dims[-1]``, as dense_topk.
    """
    db_checked, _ = _dense_db(db, db_dtype)
    d_full = db_checked.shape[1]
    k = ck.check_k(k)
    if isinstance(dims, (int, np.integer)) or dims is None:
        dims = (dims,)
    if len(dims) == 0:
        raise ValueError("dims: expected at least one prefix length")
    ladder = []
    for d in dims:
        if d is None:
            d = d_full
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool):
            d = min(int(d), d_full)
        d = _check_dim(d, d_full)
        if ladder and d < ladder[-1]:
            raise ValueError(f"dims: expected increasing prefix lengths, got {tuple(dims)}")
        if not ladder or d != ladder[-1]:
            ladder.append(d)
    be = resolve_backend(backend, db_checked)
    max_k = DENSE_MAX_K_GPU if be in ("cuda", "triton") else DENSE_MAX_K_CPU
    stages = len(ladder) - 1
    if shortlist is None:
        shortlist = tuple(min(max_k, k * 4 ** (stages - i)) for i in range(stages))
    elif isinstance(shortlist, (int, np.integer)):
        shortlist = (shortlist,)
    shortlist = tuple(shortlist)
    if len(shortlist) != stages:
        raise ValueError(f"shortlist: expected {stages} sizes (one per stage but the last) for "
                         f"dims {tuple(ladder)}, got {len(shortlist)}")
    prev = None
    for s in shortlist:
        s = ck.check_k(s, "shortlist")
        if s < k or (prev is not None and s > prev):
            raise ValueError(f"shortlist: expected non-increasing sizes >= k={k}, got {shortlist}")
        prev = s
        if s > max_k:
            raise ValueError(f"shortlist: backend {be!r} supports sizes <= {max_k}, got {s}")
    keeps = shortlist + (k,)
    queries = _dense_queries(queries, d_full, ladder[-1])
    single = queries.ndim == 1
    if single:  # the later stages pass [Q, C] candidates, so queries stay 2-D
        queries = queries[None, :]
    # a prefix query (dims[-1] values) feeds each stage its first d values
    at = (lambda d: queries) if queries.shape[1] == d_full else (lambda d: queries[:, :d])
    score, idx = dense_topk(db, at(ladder[0]), keeps[0], dim=ladder[0], metric=metric,
                            allow=allow, db_dtype=db_dtype, backend=backend)
    for d, keep in zip(ladder[1:], keeps[1:]):
        score, idx = dense_topk(db, at(d), keep, dim=d, metric=metric, candidates=idx,
                                db_dtype=db_dtype, backend=backend)
    return (score[0], idx[0]) if single else (score, idx)


# --------------------------------------------------------------------------- pool

POOL_MODES = reference.POOL_MODES
_POOL_MODE_ID = {"mean": 0, "cls": 1, "last": 2, "max": 3, "weighted_mean": 4}
_POOL_DTYPE_ID = {"float32": 0, "float16": 1, "bfloat16": 2}
_MASK_DTYPES = ("bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                "float16", "bfloat16", "float32", "float64")


def pool(hidden, mask, mode: str = "mean", normalize: bool = True, dim: int | None = None,
         binary: bool = False, *, hidden_dtype: str | None = None, backend: str = "auto"):
    """Pool token states into one embedding per row, fused with norm, truncation and bits.

    Args:
        hidden: token states ``[B, T, H]``, float32 / float16 / bfloat16 (a torch
            tensor, or a NumPy uint16 array with ``hidden_dtype="bfloat16"``). The last
            dimension must be contiguous; batch and token strides are free. Read once.
        mask: ``[B, T]`` attention mask, any integer / bool / float dtype; nonzero means
            the token is present. Left or right padding (or holes) are all fine.
        mode: ``mean`` | ``weighted_mean`` (token i of the n present ones weighs i,
            i = 1..n) | ``cls`` (first present token) | ``last`` (last present token)
            | ``max`` (element-wise max over present tokens).
        normalize: divide by the L2 norm of the (truncated) result.
        dim: keep the first ``dim`` values (Matryoshka), ``1 <= dim <= H``; the norm is
            that of the prefix. Only the prefix of each token row is read.
        binary: also return packed sign bits (``numpy.packbits(emb > 0)`` order).
        backend: ``auto`` | ``reference`` | ``cpu`` | ``triton`` | ``cuda``.

    Returns:
        ``emb`` float32 ``[B, d]``, or ``(emb, codes uint8 [B, ceil(d/8)])`` when
        ``binary``. Same container and device as ``hidden``. Accumulation is float32.
        A row whose mask is all zero gives a zero vector and zero bits.

    Raises:
        TypeError / ValueError naming the argument (dtype, shape, device, mode, dim).
    """
    hidden = ck.as_array_like(hidden, "hidden")
    mask = ck.as_array_like(mask, "mask")
    ck.check_ndim(hidden, "hidden", (3,), "a 3-D array [B, T, H]")
    dt = ck.float_storage(hidden, "hidden", "hidden_dtype", hidden_dtype, "[B, T, H]")
    B, T, H = hidden.shape
    if H == 0:
        raise ValueError("hidden: expected at least one feature (H >= 1)")
    ck.check_ndim(mask, "mask", (2,), f"a 2-D array [B, T] = [{B}, {T}]")
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"mask: expected shape [B, T] = [{B}, {T}] like hidden, got {tuple(mask.shape)}")
    ck.check_dtype(mask, "mask", _MASK_DTYPES, "bool, an integer or a float type")
    ck.check_same_device("hidden", hidden, "mask", mask)
    if mode not in POOL_MODES:
        raise ValueError(f"mode: expected one of {POOL_MODES}, got {mode!r}")
    d = _check_dim(dim, H)
    normalize, binary = bool(normalize), bool(binary)
    be = resolve_backend(backend, hidden)
    if be != "reference":
        _check_backend_device(be, hidden, "hidden")
    if ck.dtype_name(mask).startswith(("float", "bfloat")):
        mask = mask != 0  # read as bytes below; -0.0 must count as absent

    if be == "reference" or B == 0:
        h = _to_numpy(hidden.float() if ck.is_torch(hidden) and dt == "bfloat16" else hidden)
        if not ck.is_torch(hidden) and dt == "bfloat16":
            h = reference.bf16_to_f32(h)
        res = reference.pool(h, _to_numpy(mask), mode, normalize, d, binary)
        if binary:
            return _like(res[0], hidden), _like(res[1], hidden)
        return _like(res, hidden)
    if be == "cpu":
        return _pool_cpu(hidden, dt, mask, mode, normalize, d, binary)
    if be == "cuda":
        return _pool_cuda(hidden, dt, mask, mode, normalize, d, binary)
    from .kernels import pooling as tk
    import torch

    if hidden.stride(2) != 1:
        hidden = hidden.contiguous()
    if dt == "bfloat16" and hidden.dtype != torch.bfloat16:
        # uint16 bit patterns (hidden_dtype="bfloat16"): Triton would convert the
        # integers to float, so reinterpret the bits first.
        hidden = hidden.view(torch.bfloat16)
    return tk.pool(hidden, mask, mode, normalize, d, binary)


def _pool_cpu(hidden, dt, mask, mode, normalize, d, binary):
    if ck.is_torch(hidden):
        import torch

        h = hidden.detach()
        if h.stride(2) != 1 and h.shape[2] > 1:
            h = h.contiguous()
        h = ck.host_view(h)
        m = mask.detach()
        m = (m.view(torch.uint8) if m.dtype == torch.bool else m).numpy()
    else:
        h, m = hidden, mask
        if h.shape[2] > 1 and h.strides[2] != h.itemsize:
            h = np.ascontiguousarray(h)
    if m.ndim == 2 and m.shape[1] > 1 and m.strides[1] != m.itemsize:
        m = np.ascontiguousarray(m)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    B = h.shape[0]
    out = np.empty((B, d), dtype=np.float32)
    codes = np.empty((B, (d + 7) // 8), dtype=np.uint8) if binary else None
    _C.pool(h, _POOL_DTYPE_ID[dt], m, _POOL_MODE_ID[mode], d, normalize, out, codes)
    if binary:
        return _like(out, hidden), _like(codes, hidden)
    return _like(out, hidden)


def _pool_cuda(hidden, dt, mask, mode, normalize, d, binary):
    import torch

    if hidden.shape[2] > 1 and hidden.stride(2) != 1:
        hidden = hidden.contiguous()
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    if mask.shape[1] > 1 and mask.stride(1) != 1:
        mask = mask.contiguous()
    B, T, _ = hidden.shape
    dev = hidden.device
    out = torch.empty((B, d), dtype=torch.float32, device=dev)
    codes = torch.empty((B, (d + 7) // 8), dtype=torch.uint8, device=dev) if binary else None
    with CUDA.stream(dev) as stream:
        CUDA.module.cuda_pool(
            hidden.data_ptr(), _POOL_DTYPE_ID[dt], B, T, d, hidden.stride(0), hidden.stride(1),
            mask.data_ptr(), mask.element_size(), mask.stride(0), _POOL_MODE_ID[mode], normalize,
            out.data_ptr(), codes.data_ptr() if binary else 0, stream)
    return (out, codes) if binary else out



# --------------------------------------------------------------------------- lowrank_sparse_matmul
# In its own module (validation, CPU/CUDA/Triton plumbing); the public function lives here.
from ._lowrank_ops import lowrank_sparse_matmul  # noqa: E402,F401
