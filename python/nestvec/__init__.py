"""nestvec: one stored embedding, searched at any width (binary code, short prefix,
full vector), with fused CPU / Triton / CUDA kernels on every hot path."""
__version__ = "0.1.0"

from ._info import info  # noqa: E402
from .ops import hamming_topk  # noqa: E402
from .quant import binarize  # noqa: E402

__all__ = ["info", "hamming_topk", "binarize", "__version__"]

from .collection import Collection, CollectionNotFound, LockError, field, open  # noqa: E402,A004

__all__ += ["Collection", "open", "field", "LockError", "CollectionNotFound"]
