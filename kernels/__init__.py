"""Triton kernels, one op per file (kernel, launcher, public function), installed as
``nestvec.kernels``.

This folder sits at the top of the source tree, so a Python started there (``python -m
pytest``, ``python -m nestvec``) would find it as a top-level ``kernels`` package: the
name of Hugging Face's ``kernels``, which transformers imports. Imported under that
name, this file hands the import to the next ``kernels`` on ``sys.path`` (or raises
ModuleNotFoundError when there is none), so nestvec's kernels are never ``kernels``.
See docs/ARCHITECTURE.md ("Packaging").
"""
if __name__ == "kernels":
    def _defer_to_the_real_kernels(name):
        import importlib.machinery
        import importlib.util
        import os
        import sys

        here = os.path.dirname(os.path.abspath(__file__))

        def ours(entry):
            try:
                return os.path.samefile(os.path.join(entry or os.getcwd(), "kernels"), here)
            except OSError:
                return False

        path = [p for p in sys.path if isinstance(p, str) and not ours(p)]
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # the import statement returns what sys.modules holds
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise

    _defer_to_the_real_kernels(__name__)
elif __name__ != "nestvec.kernels":
    raise ImportError(f"nestvec's Triton kernels are the package nestvec.kernels, not {__name__!r}")
else:
    def device_guard(dev):
        """Triton launches on the current CUDA device and stream, not on the tensors'
        device: run launches for tensors on cuda:1 under this guard (a no-op off CUDA)."""
        import contextlib

        import torch

        return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
