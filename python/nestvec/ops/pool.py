"""pool: token states + mask -> sentence embeddings, fused with norm, truncation and
sign bits."""
from __future__ import annotations

import numpy as np

from .. import _backend as be
from .. import _checks as ck
from .. import reference

MODES = reference.POOL_MODES
_MODE_ID = {"mean": 0, "cls": 1, "last": 2, "max": 3, "weighted_mean": 4}
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
    ck.check_choice(mode, "mode", MODES)
    d = ck.check_dim(dim, H)
    normalize, binary = ck.check_bool(normalize, "normalize"), ck.check_bool(binary, "binary")
    name = be.resolve(backend, hidden)
    be.check_inputs(name, hidden, "hidden", mask=mask)
    if ck.dtype_name(mask).startswith(("float", "bfloat")):
        mask = mask != 0  # read as bytes below; -0.0 must count as absent
    if B == 0 or T == 0:  # nothing to read: zero vectors (and zero bits), as documented
        return _zeros(hidden, B, d, binary)
    return be.implementation("pool", name)(hidden, dt, mask, mode, normalize, d, binary)


def _zeros(hidden, B, d, binary):
    emb = np.zeros((B, d), np.float32)
    if not binary:
        return ck.like(emb, hidden)
    return ck.like(emb, hidden), ck.like(np.zeros((B, (d + 7) // 8), np.uint8), hidden)


# Backends: fn(hidden, dtype name, mask, mode, normalize, d, binary).

@be.register("pool", "reference")
def _reference(hidden, dt, mask, mode, normalize, d, binary):
    h = ck.to_numpy(hidden.float() if ck.is_torch(hidden) and dt == "bfloat16" else hidden)
    if not ck.is_torch(hidden) and dt == "bfloat16":
        h = reference.bf16_to_f32(h)
    res = reference.pool(h, ck.to_numpy(mask), mode, normalize, d, binary)
    if binary:
        return ck.like(res[0], hidden), ck.like(res[1], hidden)
    return ck.like(res, hidden)


@be.register("pool", "cpu")
def _cpu(hidden, dt, mask, mode, normalize, d, binary):
    # host memory, hidden and mask each a NumPy array or a CPU tensor (viewed, not copied)
    if ck.is_torch(hidden):
        h = hidden.detach()
        if h.stride(2) != 1 and h.shape[2] > 1:
            h = h.contiguous()
        h = ck.host_view(h)
    else:
        h = hidden
        if h.shape[2] > 1 and h.strides[2] != h.itemsize:
            h = np.ascontiguousarray(h)
    m = ck.host_view(mask) if ck.is_torch(mask) else mask
    if m.ndim == 2 and m.shape[1] > 1 and m.strides[1] != m.itemsize:
        m = np.ascontiguousarray(m)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    B = h.shape[0]
    out = np.empty((B, d), dtype=np.float32)
    codes = np.empty((B, (d + 7) // 8), dtype=np.uint8) if binary else None
    be._C.pool(h, be.DTYPE_CODE[dt], m, _MODE_ID[mode], d, normalize, out, codes)
    if binary:
        return ck.like(out, hidden), ck.like(codes, hidden)
    return ck.like(out, hidden)


@be.register("pool", "cuda")
def _cuda(hidden, dt, mask, mode, normalize, d, binary):
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
    rt = be.CUDA
    with rt.stream(dev) as stream:
        rt.module.cuda_pool(
            hidden.data_ptr(), be.DTYPE_CODE[dt], B, T, d, hidden.stride(0), hidden.stride(1),
            mask.data_ptr(), mask.element_size(), mask.stride(0), _MODE_ID[mode], normalize,
            out.data_ptr(), codes.data_ptr() if binary else 0, stream)
    return (out, codes) if binary else out


@be.register("pool", "triton")
def _triton(hidden, dt, mask, mode, normalize, d, binary):
    import torch

    from ..kernels import pooling as tk

    if hidden.stride(2) != 1:
        hidden = hidden.contiguous()
    if dt == "bfloat16" and hidden.dtype != torch.bfloat16:
        # uint16 bit patterns (hidden_dtype="bfloat16"): Triton would convert the
        # integers to float, so reinterpret the bits first.
        hidden = hidden.view(torch.bfloat16)
    return tk.pool(hidden, mask, mode, normalize, d, binary)
