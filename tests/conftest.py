import os

import numpy as np
import pytest

import nestvec.ops as ops


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_CUDA = _cuda_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def cpu_backends():
    """Host backends available here: the reference and the C++ one."""
    return ["reference"] + (["cpu"] if ops._C is not None else [])


def cpu_isas():
    """Every ISA of the C++ backend this CPU can run (tests cover each path)."""
    if ops._C is None:
        return []
    return [i for i in ("scalar", "avx2", "avx512") if ops._C.isa_supported(i)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=None)
def isa(request):
    yield request.param


@pytest.fixture
def triton_interpret(monkeypatch):
    """Run Triton kernels on CPU tensors through the interpreter."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


@pytest.fixture
def restore_isa():
    if ops._C is None:
        yield
        return
    prev = ops._C.get_isa()
    yield
    ops._C.set_isa(prev)
