"""Which shard holds an id: a stable hash of the id, modulo the shard count.

Stable means part of the format: the same id maps to the same shard on every
machine, Python version and run (Python's ``hash()`` is salted per process, so it is
never used). The cluster manifest names the function (``HASH``); a new one would be
a new name, never a change to this one.

* int64 ids: splitmix64's finaliser of the id's 64-bit two's-complement value.
* string ids: a polynomial hash of the UTF-8 bytes (base ``_P``, modulo 2**64), plus
  the byte length, through the same finaliser.

Both are vectorised in NumPy (a million ids in tens of milliseconds).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

HASH = "splitmix64/1"
_P = np.uint64(0x100000001B3)  # the FNV-1 64-bit prime, as a polynomial base
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function (a bijection of uint64 with full avalanche)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _string_hash(arr: pa.Array) -> np.ndarray:
    arr = arr.cast(pa.large_string()) if pa.types.is_string(arr.type) else arr
    n = len(arr)
    if arr.null_count:
        raise ValueError("ids: null ids cannot be routed to a shard")
    offsets = np.frombuffer(arr.buffers()[1], np.int64, count=arr.offset + n + 1)[arr.offset:]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    h = lengths.astype(np.uint64)
    total = int(lengths.sum())
    if total:
        start, end = int(offsets[0]), int(offsets[-1])
        b = raw[start:end].astype(np.uint64)
        # position from the end of its string: byte j of a length-L string gets P^(L-1-j)
        from_end = (np.repeat(offsets[1:], lengths) - start - 1) - np.arange(total)
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps: modulo 2**64 by design
            powers = np.concatenate([np.ones(1, np.uint64),
                                     np.cumprod(np.full(int(lengths.max()) - 1, _P, np.uint64))])
            contrib = (b + np.uint64(1)) * powers[from_end]
        nz = lengths > 0
        sums = np.add.reduceat(contrib, (offsets[:-1] - start)[nz]) if nz.any() else np.zeros(0, np.uint64)
        with np.errstate(over="ignore"):
            h[nz] += sums * _M1
    return _mix(h)


def id_hash(ids: pa.Array) -> np.ndarray:
    """uint64 hash of each id (int64 or string Arrow array)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return _string_hash(ids)
    if pa.types.is_integer(ids.type):
        if ids.null_count:
            raise ValueError("ids: null ids cannot be routed to a shard")
        v = np.asarray(ids.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)
        return _mix(v.view(np.uint64))
    raise TypeError(f"ids: expected int64 or string ids, got {ids.type}")


def shard_of(ids: pa.Array, shards: int) -> np.ndarray:
    """Shard index (int64 in [0, shards)) of each id."""
    if len(ids) == 0:
        return np.zeros(0, np.int64)
    return (id_hash(ids) % np.uint64(shards)).astype(np.int64)


def split(shard: np.ndarray, shards: int) -> list:
    """Row positions of each shard, ascending (so each part keeps the input's order)."""
    order = np.argsort(shard, kind="stable")
    bounds = np.searchsorted(shard[order], np.arange(shards + 1))
    return [order[bounds[s]:bounds[s + 1]] for s in range(shards)]
