import os
import sys


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


HAS_CUDA = _cuda_available()
# Without a GPU, Triton kernels can only run through the interpreter; the mode is read
# when triton is first imported and when kernels are decorated, so set it before both.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nestvec.ops as ops  # noqa: E402


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
    """Every ISA of the C++ backend this build compiled and this CPU can run (tests cover
    each path): scalar, avx2, avx512 on x86-64; scalar, neon on aarch64."""
    if ops._C is None:
        return []
    return [i for i in ops._C.build_info()["isas_compiled"] if ops._C.isa_supported(i)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=None)
def isa(request):
    yield request.param


@pytest.fixture
def triton_interpret():
    """Triton kernels on CPU tensors through the interpreter (set at conftest import)."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    if not ops.ck.interpret_mode():
        pytest.skip("TRITON_INTERPRET is off (a GPU is present: the gpu tests cover Triton)")
    yield


def require_nvemu():
    """nestvec._nvemu, the CUDA kernels on the CPU emulator. Its absence skips only where
    it is not built on purpose (no native build, NESTVEC_EMU=OFF, not Linux); anywhere
    else it fails, so that a build or import error cannot hide every emulated test."""
    if ops._nvemu is not None:
        return ops._nvemu
    if ops._C is None or sys.platform != "linux" or os.environ.get("NESTVEC_EMU", "").upper() == "OFF":
        pytest.skip("nestvec._nvemu is not built here (NESTVEC_EMU=OFF, not Linux, or no build)")
    pytest.fail(f"nestvec._nvemu is missing from this build: {ops._NVEMU_ERROR}")


def emulated_gpu_backend(backend: str, monkeypatch) -> None:
    """Run backend "triton" / "cuda" on CPU tensors (interpreter / nvemu), or skip."""
    pytest.importorskip("torch")
    if backend == "triton":
        pytest.importorskip("triton")
        if not ops.ck.interpret_mode():
            pytest.skip("TRITON_INTERPRET is off (a GPU is present: the gpu tests cover Triton)")
    else:
        require_nvemu()
        monkeypatch.setenv("NESTVEC_CUDA_EMU", "1")


@pytest.fixture
def cuda_emu(monkeypatch):
    """backend="cuda" on CPU torch tensors: the CUDA kernels run on nvemu (csrc/cuda_emu)."""
    pytest.importorskip("torch")
    require_nvemu()
    monkeypatch.setenv("NESTVEC_CUDA_EMU", "1")
    yield


@pytest.fixture
def restore_isa():
    if ops._C is None:
        yield
        return
    prev = ops._C.get_isa()
    yield
    ops._C.set_isa(prev)
