"""Zero-copy NumPy views of the Arrow columns a collection maps (segments, index files)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def fixed_list_view(col, width: int, np_dtype) -> np.ndarray:
    """Zero-copy ``[n, width]`` NumPy view of a fixed_size_list / fixed_size_binary column."""
    arr = col.chunk(0) if isinstance(col, pa.ChunkedArray) and col.num_chunks == 1 else None
    if arr is None:  # not one chunk (only for foreign files): one copy
        arr = pa.concat_arrays(col.chunks) if isinstance(col, pa.ChunkedArray) and col.num_chunks \
            else pa.array([], col.type)
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type):
        buf = arr.buffers()[1]
        if buf is None or n == 0:
            return np.zeros((0, width), dtype=np_dtype)
        flat = np.frombuffer(buf, dtype=np_dtype, count=(arr.offset + n) * width)
        return flat.reshape(-1, width)[arr.offset:]
    values = arr.values  # the whole child array; slice by the list offset ourselves
    flat = primitive_view(values, np_dtype)
    return flat.reshape(-1, width)[arr.offset:arr.offset + n]


def primitive_view(arr, np_dtype) -> np.ndarray:
    """Zero-copy NumPy view of a null-free primitive Arrow array (straight from its
    buffer: ``to_numpy`` would import pandas, ~0.4 s and ~40 MB, on first use)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.chunk(0) if arr.num_chunks == 1 else pa.concat_arrays(arr.chunks) if arr.num_chunks \
            else pa.array([], arr.type)
    if arr.null_count:
        raise ValueError("unexpected nulls in a storage column")
    np_dtype = np.dtype(np_dtype)
    buf = arr.buffers()[1]
    if buf is None or len(arr) == 0:
        return np.zeros(0, dtype=np_dtype)
    return np.frombuffer(buf, dtype=np_dtype, count=arr.offset + len(arr))[arr.offset:]
