"""Public ops, one module each: validate the inputs, resolve a backend, call its
implementation from the registry (nestvec._backend).

Every op has one contract on four backends, ``reference`` (NumPy, the spec),
``cpu``, ``triton`` and ``cuda``; outputs follow the inputs (NumPy in, NumPy out; a
torch tensor in, a torch tensor out on the same device). See docs/ARCHITECTURE.md.
"""
from .dense import dense_topk, funnel_topk
from .hamming import hamming_topk
from .lowrank import lowrank_sparse_matmul
from .pool import MODES as POOL_MODES
from .pool import pool

__all__ = ["dense_topk", "funnel_topk", "hamming_topk", "lowrank_sparse_matmul", "pool", "POOL_MODES"]
