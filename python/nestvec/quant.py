"""Binary (sign-bit) quantisation, compatible with numpy.packbits, sentence-transformers
``ubinary`` and FAISS binary indexes."""
from __future__ import annotations

import numpy as np

from . import _checks as ck

_FLOATS = ("float16", "float32", "float64", "bfloat16")


def binarize(x, dim: int | None = None):
    """Packed sign bits of the first ``dim`` values of each row.

    Args:
        x: float array ``[..., D]`` (NumPy, or a torch tensor on any device).
        dim: prefix length ``1 <= dim <= D`` (Matryoshka truncation); default D.

    Returns:
        uint8 ``[..., ceil(dim/8)]``: bit j of a row is ``x[..., j] > 0``, most
        significant bit first (``numpy.packbits(x > 0, axis=-1)``); pad bits are 0.
        Same container and device as ``x``.
    """
    x = ck.as_array_like(x, "x")
    ck.check_dtype(x, "x", _FLOATS, "a float type (" + ", ".join(_FLOATS) + ")")
    if x.ndim < 1:
        raise ValueError("x: expected at least one dimension [..., D]")
    dim = ck.check_dim(dim, x.shape[-1])
    return sign_bits(x[..., :dim])


def sign_bits(x):
    """:func:`binarize` of every value, without its checks: for callers whose float
    array (NumPy or torch) is already validated, on a per-query path."""
    if ck.is_torch(x):
        return _binarize_torch(x)
    return np.packbits(x > 0, axis=-1)


def _binarize_torch(x):
    import torch

    if x.numel() == 0:
        return torch.zeros(*x.shape[:-1], (x.shape[-1] + 7) // 8, dtype=torch.uint8,
                           device=x.device)
    bits = (x > 0).to(torch.uint8)
    d = bits.shape[-1]
    pad = (-d) % 8
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*bits.shape[:-1], -1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=x.device)
    return (bits * weights).sum(-1, dtype=torch.uint8)
