"""nvemu for the tests: the CUDA kernels of csrc/cuda on a CPU emulator.

``load()`` builds the emulator module from tests/nvemu/CMakeLists.txt (once per build
tree, incrementally after that) and imports it; ``use(monkeypatch)`` puts it behind
nestvec's ``cuda`` backend for one test, so that backend takes CPU torch tensors and runs
the real kernel sources on them. Nothing of this ships in the nestvec package.

NESTVEC_EMU=OFF turns the emulated tests off (they skip); NVEMU_MODULE=<path> loads an
already built module instead of building one (the sanitizer test does).
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GROUP_BYTES = 16 << 10  # hamming query groups this small, so small tests span several

_module = None


def supported() -> bool:
    """Whether the emulator is meant to run here (Linux: ucontext fibers)."""
    return sys.platform == "linux" and os.environ.get("NESTVEC_EMU", "").upper() != "OFF"


def _tool(name: str) -> str | None:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    try:  # the PyPI packages cmake / ninja (the test extra installs both)
        mod = __import__(name)
    except ImportError:
        return None
    path = Path(getattr(mod, "CMAKE_BIN_DIR", "") or getattr(mod, "BIN_DIR", "")) / name
    return str(path) if path.is_file() else None


def build(build_dir: Path | None = None, cxx_flags: str = "", quiet: bool = True) -> Path:
    """Configure (first time) and build the module; returns the path of the built file."""
    import pybind11

    tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    build_dir = Path(build_dir or ROOT / "build" / f"nvemu-{tag}")
    out_dir = build_dir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    cmake = _tool("cmake")
    if cmake is None:
        raise RuntimeError("nvemu: needs cmake (pip install cmake)")
    ninja = _tool("ninja")
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per tree (parallel runs)
        if not (build_dir / "CMakeCache.txt").exists():
            cfg = [cmake, "-S", str(HERE), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                   f"-DPython_EXECUTABLE={sys.executable}",
                   f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DNVEMU_OUTPUT_DIR={out_dir}",
                   f"-DCMAKE_CXX_FLAGS={cxx_flags}"]
            if ninja:
                cfg += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
            _run(cfg, quiet)
        _run([cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 1)], quiet)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return out_dir / f"_nvemu{suffix}"


def _run(cmd, quiet):
    run = subprocess.run(cmd, capture_output=quiet, text=True)
    if run.returncode != 0:
        log = (run.stdout or "")[-3000:] + (run.stderr or "")[-6000:]
        raise RuntimeError(f"nvemu build failed: {' '.join(cmd[:3])} ...\n{log}")


def load():
    """The emulator module (built on first use), imported from its build tree."""
    global _module
    if _module is None:
        path = Path(os.environ["NVEMU_MODULE"]) if os.environ.get("NVEMU_MODULE") else build()
        spec = importlib.util.spec_from_file_location("_nvemu", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _module = mod
    return _module


class EmulatedCuda:
    """A stand-in for nestvec._backend.CudaRuntime: the same launchers, compiled against nvemu,
    on CPU torch tensors; every launch is synchronous (stream 0)."""

    device = "cpu"
    compiled = True

    def __init__(self, module):
        self.module = module

    def accepts(self, x) -> bool:
        from nestvec import _checks as ck

        return ck.is_torch(x) and ck.device_of(x) == "cpu"

    @contextlib.contextmanager
    def stream(self, dev):
        yield 0


def install(module=None) -> None:
    """Put the emulator behind the cuda backend for the rest of the process (scripts:
    benchmarks/bench_*.py --device cuda --emulate). Tests use ``use(monkeypatch)``."""
    from nestvec import _backend
    from nestvec.ops import hamming

    _backend.CUDA = EmulatedCuda(module or load())
    hamming.GROUP_BYTES = GROUP_BYTES


def use(monkeypatch, module=None) -> None:
    """Put the emulator behind the cuda backend until the test ends."""
    from nestvec import _backend
    from nestvec.ops import hamming

    monkeypatch.setattr(_backend, "CUDA", EmulatedCuda(module or load()))
    monkeypatch.setattr(hamming, "GROUP_BYTES", GROUP_BYTES)
