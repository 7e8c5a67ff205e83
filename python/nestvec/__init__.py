"""nestvec: one stored embedding, searched at any width (binary code, short prefix,
full vector), with fused CPU / Triton / CUDA kernels on every hot path."""
from ._version import __version__
from ._info import get_num_threads, info, set_num_threads  # noqa: E402
from .ops import dense_topk, funnel_topk, hamming_topk, lowrank_sparse_matmul, pool  # noqa: E402
from .quant import binarize  # noqa: E402

__all__ = ["info", "get_num_threads", "set_num_threads", "dense_topk", "funnel_topk", "hamming_topk", "lowrank_sparse_matmul", "pool",
           "binarize", "Encoder", "__version__"]

_COLLECTION_API = ("Collection", "open", "field", "Embedding", "LockError", "CollectionNotFound",
                   "CorruptionError")
__all__ += list(_COLLECTION_API)


def __getattr__(name):
    # Heavy imports on first use: the collection API pulls in pyarrow, the Encoder
    # torch + transformers.
    if name in _COLLECTION_API:
        from . import collection

        return getattr(collection, name)
    if name == "Encoder":
        from .embed import Encoder

        return Encoder
    if name == "train":  # nv.train.distill_2d / recover (torch + transformers on use)
        import importlib

        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'nestvec' has no attribute {name!r}")
