"""Triton kernels, one op per file (kernel, launcher, public function)."""


def device_guard(dev):
    """Triton launches on the current CUDA device and stream, not on the tensors' device:
    run launches for tensors on cuda:1 under this guard (a no-op off CUDA)."""
    import contextlib

    import torch

    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
