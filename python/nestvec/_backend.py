"""The op framework: the native module, the backends and how one is chosen, device
checks, the backend registry, and the one dtype vocabulary.

Every op (nestvec/ops/*.py) validates its inputs, asks ``resolve`` for a backend,
``check_inputs`` that the inputs can go there, and calls ``implementation(op, be)``.
Backends: ``reference`` (NumPy, the spec), ``cpu`` (C++ via ``nestvec._C``), ``triton``
and ``cuda``. ``auto`` picks by where the data lives: a CUDA tensor goes to ``cuda`` when
it is compiled in, else ``triton``; a NumPy array or CPU tensor goes to ``cpu``. The
``NESTVEC_BACKEND`` environment variable forces one. Inputs are never moved between
devices. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

from . import _checks as ck

BACKENDS = ("reference", "cpu", "triton", "cuda")

try:
    from . import _C
except ImportError as _e:  # a source checkout without a build: reference only
    _C = None
    _C_ERROR = _e
else:
    _C_ERROR = None


# --------------------------------------------------------------------------- dtypes
# The one Python spelling of the storage dtypes and metrics the kernels take, as the
# integer codes of csrc/include/nestvec/dtype.h (every binding and launcher reads them).
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
DTYPE_CODE = {"float32": 0, "float16": 1, "bfloat16": 2}
METRICS = ("cosine", "ip", "l2")
METRIC_CODE = {"cosine": 0, "ip": 1, "l2": 2}


# --------------------------------------------------------------------------- CUDA runtime

class CudaRuntime:
    """Where backend ``cuda`` launches: the CUDA launchers of nestvec._C, on tensors of
    ``device`` ("cuda"), each launch on the device's current stream.

    One object the cuda backend asks for all three, so that another runtime can stand
    in for it; the test suite puts the same kernels on a CPU emulator here
    (tests/conftest.py), nothing in the package does."""

    device = "cuda"

    def __init__(self, module):
        self.module = module

    @property
    def compiled(self) -> bool:
        return self.module is not None and bool(self.module.build_info()["cuda_compiled"])

    def accepts(self, x) -> bool:
        return ck.device_of(x) == self.device

    def stream(self, dev):
        """Context: the current stream of ``dev`` (an int), with ``dev`` made current."""
        return ck.launch_scope(dev)


CUDA = CudaRuntime(_C)


def cuda_compiled() -> bool:
    return CUDA.compiled


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


# --------------------------------------------------------------------------- resolution

def is_auto(backend: str | None) -> bool:
    """True when neither the call nor NESTVEC_BACKEND names a backend."""
    if backend not in (None, "auto"):
        return False
    return (os.environ.get("NESTVEC_BACKEND", "auto") or "auto") == "auto"


def resolve(backend: str | None, x, prefer_triton: bool = False) -> str:
    """The backend an op will run on for input ``x`` (see the module docstring).

    ``prefer_triton``: for ops whose Triton kernels measure faster than their CUDA ones,
    ``auto`` sends CUDA tensors to Triton when it is installed."""
    if backend in (None, "auto"):
        backend = os.environ.get("NESTVEC_BACKEND", "auto") or "auto"
    if backend == "auto":
        if ck.device_of(x) == "cuda":
            if prefer_triton and triton_available():
                return "triton"
            return "cuda" if CUDA.compiled else "triton"
        return "cpu" if _C is not None else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {('auto',) + BACKENDS}, got {backend!r}")
    return backend


def check_device(backend: str, x, name: str) -> None:
    """``x`` (the op's main input, called ``name``) can run on ``backend`` here."""
    if backend == "reference":
        return
    dev = ck.device_of(x)
    if backend == "cpu":
        if _C is None:
            raise RuntimeError(f"backend 'cpu' needs the native module nestvec._C: {_C_ERROR}")
        if dev != "cpu":
            raise ValueError(f"{name}: backend 'cpu' needs host memory, got a tensor on {dev}")
    elif backend == "cuda":
        if not CUDA.compiled:
            raise RuntimeError("backend 'cuda': nestvec was built without CUDA kernels")
        if not CUDA.accepts(x):
            raise ValueError(f"{name}: backend 'cuda' needs a CUDA tensor, got {type(x).__name__} on {dev}")
    elif backend == "triton":
        if not ck.is_torch(x):
            raise TypeError(f"{name}: backend 'triton' needs a torch tensor, got {type(x).__name__}")
        if dev != "cuda" and not ck.interpret_mode():
            raise ValueError(f"{name}: backend 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1), "
                             f"got one on {dev}")


def require_torch(why: str, **named) -> None:
    """TypeError naming the first non-None input of ``named`` that is not a torch tensor
    (``f"{name}: {why}, got numpy.ndarray"``): the triton and cuda backends launch on
    tensors, and a NumPy input next to a tensor would otherwise fail inside a launcher."""
    for name, t in named.items():
        if t is not None and not ck.is_torch(t):
            raise TypeError(f"{name}: {why}, got {type(t).__module__}.{type(t).__name__}")


def check_inputs(backend: str, x, name: str, **others) -> None:
    """``check_device`` for the main input, and on the GPU backends every other input
    (``others``: name -> array or None) a torch tensor like it."""
    check_device(backend, x, name)
    if backend in ("triton", "cuda"):
        require_torch(f"the {backend} backend takes torch tensors", **others)


# --------------------------------------------------------------------------- registry
# op name -> backend name -> implementation. Each op module registers its backends with
# @register at import; the planner, tests and benchmarks ask here, never into a table.
_REGISTRY: dict[str, dict[str, Callable]] = {}


def register(op: str, backend: str):
    """Decorator: ``fn`` implements ``op`` on ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")

    def deco(fn):
        _REGISTRY.setdefault(op, {})[backend] = fn
        return fn

    return deco


def implementation(op: str, backend: str) -> Callable:
    try:
        return _REGISTRY[op][backend]
    except KeyError:
        raise RuntimeError(f"{op}: backend {backend!r} is not implemented") from None


def registered(op: str) -> tuple:
    """Backends that implement ``op`` (whether or not they can run here)."""
    return tuple(b for b in BACKENDS if b in _REGISTRY.get(op, {}))


def runnable(op: str) -> tuple:
    """Backends of ``op`` that can run on this machine now: ``reference``; ``cpu`` with
    the native module; ``cuda`` when compiled and a GPU is visible (or a stand-in
    runtime is installed); ``triton`` when it imports and a GPU is visible (or the
    interpreter is on)."""
    out = []
    gpu = _gpu_visible()
    for b in registered(op):
        if b == "cpu" and _C is None:
            continue
        if b == "cuda" and not (CUDA.compiled and (gpu or CUDA.device != "cuda")):
            continue
        if b == "triton" and not (triton_available() and (gpu or ck.interpret_mode())):
            continue
        out.append(b)
    return tuple(out)


def _gpu_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@contextlib.contextmanager
def override(op: str, backend: str, fn: Callable):
    """Context: ``fn`` implements ``op`` on ``backend`` until it exits (tests)."""
    table = _REGISTRY.setdefault(op, {})
    prev = table.get(backend)
    table[backend] = fn
    try:
        yield
    finally:
        if prev is None:
            table.pop(backend, None)
        else:
            table[backend] = prev
