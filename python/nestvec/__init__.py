"""nestvec: one stored embedding, searched at any width (binary code, short prefix,
full vector), with fused CPU / Triton / CUDA kernels on every hot path."""
__version__ = "0.1.0"

from ._info import info  # noqa: E402
from .ops import dense_topk, funnel_topk, hamming_topk  # noqa: E402
from .quant import binarize  # noqa: E402

__all__ = ["info", "dense_topk", "funnel_topk", "hamming_topk", "binarize", "__version__"]
