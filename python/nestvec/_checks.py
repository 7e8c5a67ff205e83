"""Input validation shared by every public op: one place, one style of message.

Every check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(wrong shape, value, device), naming the argument and what was expected.
"""
from __future__ import annotations

import numbers
import contextlib
import os

import numpy as np


def is_torch(x) -> bool:
    t = type(x)
    if t is np.ndarray:  # the common case first: every op asks several times per call
        return False
    return t.__module__.startswith("torch") and t.__name__ in ("Tensor", "Parameter")


def device_of(x) -> str:
    """'cpu' for NumPy arrays and CPU tensors, else the tensor's device type."""
    return x.device.type if is_torch(x) else "cpu"


_DTYPE_NAMES: dict = {}


def dtype_name(x) -> str:
    # str(numpy dtype) runs Python code inside NumPy; every op asks several
    # times per call, which was most of a small search's time.
    dt = x.dtype
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        name = str(dt).replace("torch.", "") if is_torch(x) else str(dt)
        if len(_DTYPE_NAMES) < 256:
            _DTYPE_NAMES[dt] = name
    return name


def as_array_like(x, name: str):
    """NumPy arrays and torch tensors pass through; lists and scalars become NumPy."""
    if isinstance(x, np.ndarray) or is_torch(x):
        return x
    if isinstance(x, (list, tuple)) or (np.isscalar(x) and not isinstance(x, (str, bytes))):
        return np.asarray(x)
    raise TypeError(f"{name}: expected a NumPy array or torch tensor, got {type(x).__name__}")


def check_ndim(x, name: str, ndims, what: str) -> None:
    if x.ndim not in ndims:
        raise ValueError(f"{name}: expected {what}, got an array of shape {tuple(x.shape)}")


def check_dtype(x, name: str, allowed, what: str) -> None:
    if dtype_name(x) not in allowed:
        raise TypeError(f"{name}: expected dtype {what}, got {dtype_name(x)}")


def float_storage(x, name: str, flag_name: str, flag, what: str) -> str:
    """Logical dtype of stored floats: float32 / float16 / bfloat16, where bfloat16 is a
    torch.bfloat16 tensor or a NumPy uint16 array flagged with ``flag == "bfloat16"``."""
    dt = dtype_name(x)
    if flag is not None:
        if flag != "bfloat16" or dt not in ("uint16", "bfloat16"):
            raise ValueError(f"{flag_name}: only 'bfloat16' is accepted, for a uint16 NumPy array "
                             "holding bfloat16 bit patterns (or a torch.bfloat16 tensor)")
        dt = "bfloat16"
    check_dtype(x, name, ("float32", "float16", "bfloat16") + (("uint16",) if dt == "bfloat16" else ()),
                f"float32, float16 or bfloat16 {what}")
    return dt


def check_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as a Python int (any integral type, never bool), within ``[lo, hi]``
    where given; else TypeError / ValueError naming ``name``. The one integer check."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if hi is None:
            raise ValueError(f"{name}: expected {name} >= {lo}, got {value}")
        if lo is None:
            raise ValueError(f"{name}: expected {name} <= {hi}, got {value}")
        raise ValueError(f"{name}: expected {lo} <= {name} <= {hi}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    """One of the strings ``choices``, else TypeError / ValueError naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {tuple(choices)}, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(value, name: str) -> bool:
    """A flag: bool (or NumPy bool, or the ints 0 / 1)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name}: expected True or False, got {type(value).__name__}")


def int_sequence(value, name: str, allow_none: bool = False) -> tuple:
    """An int (or None where allowed), or a tuple / list of them, as a tuple."""
    if value is None and allow_none:
        return (None,)
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name}: expected an int or a tuple of ints, got {type(value).__name__}")
    for v in value:
        if not (v is None and allow_none):
            check_int(v, name)
    return tuple(value)


def check_k(k, name: str = "k") -> int:
    """A result count: an int >= 1."""
    return check_int(k, name, lo=1)


def check_k_rows(k: int, n: int, pad_limit: int, name: str = "k") -> None:
    """k beyond the ``n`` rows only pads the result (-1 ids): up to ``pad_limit``
    columns of padding are fine, more is an error, raised before anything is allocated."""
    if k > n + pad_limit:
        raise ValueError(f"{name}: expected {name} <= N + {pad_limit} = {n + pad_limit} "
                         f"(there are N = {n} rows; a larger {name} only pads), got {k}")


def check_dim(dim, d_full: int, name: str = "dim") -> int:
    """A prefix length ``1 <= dim <= d_full`` (None means ``d_full``)."""
    if dim is None:
        return d_full
    return check_int(dim, name, lo=1, hi=d_full)


def check_same_device(name_a: str, a, name_b: str, b) -> None:
    if b is None or (type(a) is np.ndarray and type(b) is np.ndarray):
        return
    da, db = _dev_str(a), _dev_str(b)
    if da != db:
        raise ValueError(f"{name_b}: is on {db} but {name_a} is on {da}; nestvec never copies "
                         "inputs between devices, move them first")


def host_view(t):
    """A CPU tensor as a NumPy view of the same memory, bfloat16 as its uint16 bit
    pattern (NumPy has no bfloat16)."""
    import torch

    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


def _rows_extent(t):
    """(first byte, row stride, row width, rows) of a 1-D / 2-D tensor whose rows have a
    unit element stride."""
    es = t.element_size()
    if t.ndim == 1:
        return t.data_ptr(), t.shape[0] * es, t.shape[0] * es, 1
    return t.data_ptr(), t.stride(0) * es, t.shape[1] * es, t.shape[0]


def _device_overlap(a, b) -> bool:
    """Whether two device tensors may share memory: their byte ranges, refined for
    row-strided 2-D views of one buffer (column blocks of one matrix do not overlap)."""
    def span(t):
        lo = t.data_ptr()
        ext = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
        return lo, lo + (ext + 1) * t.element_size()

    if a.numel() == 0 or b.numel() == 0:
        return False
    (alo, ahi), (blo, bhi) = span(a), span(b)
    if not (alo < bhi and blo < ahi):
        return False
    if a.ndim in (1, 2) and b.ndim in (1, 2) and a.stride(-1) == 1 and b.stride(-1) == 1:
        a0, sa, wa, _ = _rows_extent(a)
        b0, sb, wb, _ = _rows_extent(b)
        if sa == sb and wa <= sa and wb <= sb:
            d = (b0 - a0) % sa  # b's rows start d bytes into a's row period
            return d < wa or d + wb > sa
    return True


def shares_memory(a, b) -> bool:
    """Exact for host arrays and CPU tensors (np.shares_memory), conservative on devices."""
    if is_torch(a) and is_torch(b) and (a.device.type != "cpu" or b.device.type != "cpu"):
        return a.device == b.device and _device_overlap(a, b)
    if is_torch(a) != is_torch(b) and device_of(a) != device_of(b):
        return False
    na = host_view(a) if is_torch(a) else a
    nb = host_view(b) if is_torch(b) else b
    return bool(np.shares_memory(na, nb))


def check_out(out, name: str, like, shape, inputs: dict):
    """An ``out=`` buffer: the container kind, device and dtype of ``like``, exactly
    ``shape``, rows with unit element stride that do not overlap each other, writable,
    and sharing no memory with any of ``inputs`` (name -> array or None): a kernel
    reads the inputs while it writes ``out``."""
    if is_torch(out) != is_torch(like):
        kind = "a torch tensor" if is_torch(like) else "a NumPy array"
        raise TypeError(f"{name}: expected {kind} like x, got {type(out).__name__}")
    check_same_device("x", like, name, out)
    if dtype_name(out) != dtype_name(like):
        raise TypeError(f"{name}: expected dtype {dtype_name(like)} like x, got {dtype_name(out)}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(out.shape)}")
    if is_torch(out):
        import torch

        if out.requires_grad and torch.is_grad_enabled():
            raise TypeError(f"{name}: a tensor that requires grad cannot be written in place")
        strides = tuple(out.stride())
        esz = 1
    else:
        if not out.flags.writeable:
            raise ValueError(f"{name}: the array is read-only")
        strides, esz = out.strides, out.itemsize
    if len(shape) and shape[-1] > 1 and strides[-1] != esz:
        raise ValueError(f"{name}: each row must be contiguous (unit stride along its last "
                         f"axis), got strides {strides}")
    if len(shape) == 2 and shape[0] > 1 and shape[1] > 0 and not \
            (strides[0] > 0 and strides[0] >= shape[1] * esz):
        raise ValueError(f"{name}: rows must not overlap (row stride >= row length), got "
                         f"strides {strides}")
    for in_name, t in inputs.items():
        if t is not None and shares_memory(out, t):
            raise ValueError(f"{name}: shares memory with {in_name}; the kernel reads "
                             f"{in_name} while it writes {name}")


def to_numpy(x):
    """A host array or CPU tensor as NumPy (no copy); other devices are refused."""
    if x is None or isinstance(x, np.ndarray):
        return x
    if is_torch(x):
        if device_of(x) != "cpu":
            raise ValueError(f"reference backend runs on host memory; got a tensor on {device_of(x)}")
        return x.detach().numpy()
    return np.asarray(x)


def like(out: np.ndarray, template):
    """A NumPy result in the container of ``template`` (a tensor on its device)."""
    if is_torch(template):
        import torch

        return torch.from_numpy(out).to(template.device)
    return out


def concat(parts):
    """Concatenate NumPy arrays or tensors along the first axis."""
    if is_torch(parts[0]):
        import torch

        return torch.cat(parts)
    return np.concatenate(parts)


# The CPU kernels' selectors hold ~2k keys per (thread, query), and their drivers run at
# most 4096 queries at a time; for k above 4096 the ops pass at most this many keys'
# worth of queries per call (4096 queries at k = 4096), so memory stays where it was.
LARGE_K_KEYS = 1 << 24
LARGE_K_MIN = 4096  # up to this k, one call whatever the batch


def by_query_slices(fn, nq: int, k: int):
    """``fn(q0, q1)`` -> (a, b) for queries [q0, q1), in slices bounded by LARGE_K_KEYS
    when k > 4096; the results concatenated along the queries."""
    step = nq if k <= LARGE_K_MIN else max(1, LARGE_K_KEYS // k)
    if step >= nq:
        return fn(0, nq)
    parts = [fn(q0, min(nq, q0 + step)) for q0 in range(0, nq, step)]
    return concat([p[0] for p in parts]), concat([p[1] for p in parts])


def _inner_stride_ok(x) -> bool:
    if x.ndim == 2 and x.shape[1] > 1 and x.shape[0] > 0:
        return (x.stride(1) if is_torch(x) else x.strides[1] // x.itemsize) == 1
    return True


def _rows_overlap(x) -> bool:
    return is_torch(x) and x.ndim == 2 and x.shape[0] > 1 and x.stride(0) < x.shape[1]


def rows_usable(x) -> bool:
    """Whether a [N, D] array can go to the kernels as it is: each row contiguous and no
    two rows overlapping (rows may be strided views of a larger table)."""
    return _inner_stride_ok(x) and not _rows_overlap(x)


def row_contiguous(x, name: str):
    """Rows may be strided (a view of a larger table); each row must be contiguous."""
    if not _inner_stride_ok(x):
        raise ValueError(f"{name}: each row must be contiguous in memory (last-dimension "
                         f"stride 1); pass a contiguous copy (np.ascontiguousarray / .contiguous())")
    if _rows_overlap(x):
        raise ValueError(f"{name}: rows overlap in memory (row stride {x.stride(0)})")
    return x


def check_finite(x, name: str) -> None:
    if is_torch(x):
        import torch

        ok = bool(torch.isfinite(x).all())
    else:
        ok = bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name}: contains NaN or infinity")


def _dev_str(x) -> str:
    return str(x.device) if is_torch(x) else "cpu"


def check_allow(allow, n: int, ref, ref_name: str = "codes"):
    """bool [n] mask, or a packed bitset uint8 [ceil(n/8)] (numpy.packbits order).

    Returns a bool mask on the same device as ``ref`` (a packed bitset is unpacked:
    n bytes, negligible next to the codes)."""
    if allow is None:
        return None
    allow = as_array_like(allow, "allow")
    check_same_device(ref_name, ref, "allow", allow)
    if allow.ndim != 1:
        raise ValueError(f"allow: expected a 1-D bool mask of length {n} or a packed uint8 "
                         f"bitset of length {(n + 7) // 8}, got shape {tuple(allow.shape)}")
    dt = dtype_name(allow)
    if dt == "bool":
        if allow.shape[0] != n:
            raise ValueError(f"allow: expected length {n} (one flag per row), got {allow.shape[0]}")
        return allow
    if dt == "uint8":
        if allow.shape[0] != (n + 7) // 8:
            raise ValueError(f"allow: a packed uint8 bitset must have length ceil(N/8) = "
                             f"{(n + 7) // 8}, got {allow.shape[0]}")
        return unpack_bits(allow, n)
    raise TypeError(f"allow: expected dtype bool (or a packed uint8 bitset), got {dt}")


def unpack_bits(packed, n: int):
    if is_torch(packed):
        import torch

        shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
        bits = (packed.unsqueeze(-1) >> shifts) & 1
        return bits.reshape(-1)[:n].bool()
    return np.unpackbits(packed)[:n].astype(bool)


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@contextlib.contextmanager
def launch_scope(dev):
    """Yields the stream (an int) for CUDA launches on torch device ``dev``: the current
    stream, with ``dev`` made current."""
    import torch

    with torch.cuda.device(dev):
        yield torch.cuda.current_stream(dev).cuda_stream
