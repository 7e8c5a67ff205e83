import os


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

import nvemu  # noqa: E402  (tests/nvemu: the CUDA kernels on a CPU emulator)
from nestvec import _backend  # noqa: E402
from nestvec import _checks as ck  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def cpu_backends():
    """Host backends available here: the reference and the C++ one."""
    return ["reference"] + (["cpu"] if _backend._C is not None else [])


def cpu_isas():
    """Every ISA of the C++ backend this build compiled and this CPU can run (tests cover
    each path): scalar, avx2, avx512 on x86-64; scalar, neon on aarch64."""
    if _backend._C is None:
        return []
    return [i for i in _backend._C.build_info()["isas_compiled"] if _backend._C.isa_supported(i)]


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
    if not ck.interpret_mode():
        pytest.skip("TRITON_INTERPRET is off (a GPU is present: the gpu tests cover Triton)")
    yield


def require_nvemu():
    """The emulator module (tests/nvemu: the CUDA kernels on the CPU), built on first use.
    It skips only where the emulator is off on purpose (NESTVEC_EMU=OFF, not Linux);
    anywhere else a build or import error fails, so it cannot hide every emulated test."""
    if not nvemu.supported():
        pytest.skip("nvemu is off here (NESTVEC_EMU=OFF, or not Linux)")
    try:
        return nvemu.load()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"nvemu could not be built or loaded: {type(e).__name__}: {e}")


def emulated_gpu_backend(backend: str, monkeypatch) -> None:
    """Run backend "triton" / "cuda" on CPU tensors (interpreter / nvemu), or skip."""
    pytest.importorskip("torch")
    if backend == "triton":
        pytest.importorskip("triton")
        if not ck.interpret_mode():
            pytest.skip("TRITON_INTERPRET is off (a GPU is present: the gpu tests cover Triton)")
    else:
        nvemu.use(monkeypatch, require_nvemu())


@pytest.fixture
def cuda_emu(monkeypatch):
    """backend="cuda" on CPU torch tensors: the CUDA kernels run on nvemu (tests/nvemu)."""
    pytest.importorskip("torch")
    nvemu.use(monkeypatch, require_nvemu())
    yield


@pytest.fixture
def restore_isa():
    if _backend._C is None:
        yield
        return
    prev = _backend._C.get_isa()
    yield
    _backend._C.set_isa(prev)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) shared by the Ray test modules: starting one costs seconds."""
    ray = pytest.importorskip("ray")
    from ray_helpers import start_ray

    start_ray(ray)
    yield ray
    ray.shutdown()
