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
    return t.__module__.startswith("torch") and t.__name__ in ("Tensor", "Parameter")


def device_of(x) -> str:
    """'cpu' for NumPy arrays and CPU tensors, else the tensor's device type."""
    return x.device.type if is_torch(x) else "cpu"


_DTYPE_NAMES: dict = {}


def dtype_name(x) -> str:
    # str(numpy dtype) runs Python code inside NumPy (~5 us); every op asks several
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


def check_k(k, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(k).__name__}")
    k = int(k)
    if k <= 0:
        raise ValueError(f"{name}: must be >= 1, got {k}")
    return k


def check_same_device(name_a: str, a, name_b: str, b) -> None:
    if b is None:
        return
    da, db = _dev_str(a), _dev_str(b)
    if da != db:
        raise ValueError(f"{name_b}: is on {db} but {name_a} is on {da}; nestvec never copies "
                         "inputs between devices, move them first")


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
    stream, with ``dev`` made current; 0 for the CPU, where only the kernels' emulator
    (nestvec._nvemu, see ops.cuda_emulated) runs them."""
    if dev.type != "cuda":
        yield 0
        return
    import torch

    with torch.cuda.device(dev):
        yield torch.cuda.current_stream(dev).cuda_stream
