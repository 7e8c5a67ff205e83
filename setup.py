"""setuptools build that drives CMake for the one native module ``nestvec._C``.

python/nestvec -> nestvec, kernels/ -> nestvec.kernels.  The CMake build tree lives in
build/cmake-<tag> so that repeated ``pip install -e .`` runs are incremental.  The CUDA
emulator the tests use is not part of the package (tests/nvemu builds it).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


def _find_ninja():
    """The ninja of this build: on PATH (pip's isolated build env puts it there), beside
    the interpreter (a venv without it on PATH), or where the ninja package says."""
    found = shutil.which("ninja") or (Path(sys.executable).parent / "ninja")
    if found and os.access(found, os.X_OK):
        return str(found)
    try:
        import ninja

        path = Path(getattr(ninja, "BIN_DIR", "") or "") / "ninja"
        return str(path) if path.is_absolute() and os.access(path, os.X_OK) else None
    except ImportError:
        return None


def _drop_stale_cache(build_dir: Path, generator: str) -> None:
    """pip builds in a fresh isolated environment each time, so a CMake cache can name a
    cmake or ninja binary that no longer exists (e.g. `make demo` after `make test`);
    such a cache, or one for another generator, is dropped. The objects stay, and ninja
    recompiles only what changed."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.exists():
        return
    text = cache.read_text(errors="ignore")
    gen = re.search(r"^CMAKE_GENERATOR:INTERNAL=(.*)$", text, re.M)
    stale = gen is not None and gen.group(1).strip() != generator
    for key in ("CMAKE_COMMAND", "CMAKE_MAKE_PROGRAM"):
        m = re.search(rf"^{key}:[A-Z]+=(.*)$", text, re.M)
        if m and m.group(1).strip() and not os.path.exists(m.group(1).strip()):
            stale = True
    if stale:
        cache.unlink()


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import pybind11

        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
        build_dir = ROOT / "build" / f"cmake-{tag}"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = os.environ.get("NESTVEC_BUILD_TYPE", "Release")
        args = [
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DNESTVEC_OUTPUT_DIR={out.parent}",
            f"-DNESTVEC_OUTPUT_NAME={out.name}",
            f"-DNESTVEC_CUDA={os.environ.get('NESTVEC_CUDA', 'AUTO')}",
        ]
        ninja_bin = _find_ninja()
        generator = "Ninja" if ninja_bin else "Unix Makefiles"
        args.append(f"-G{generator}")
        if ninja_bin:
            args.append(f"-DCMAKE_MAKE_PROGRAM:FILEPATH={ninja_bin}")
        _drop_stale_cache(build_dir, generator)
        if os.environ.get("NESTVEC_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['NESTVEC_CUDA_ARCHS']}")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(max(1, os.cpu_count() or 1)))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", cfg, "-j", jobs], check=True)


setup(
    package_dir={"nestvec": "python/nestvec", "nestvec.kernels": "kernels"},
    packages=["nestvec", "nestvec.kernels"]
    + [f"nestvec.{p}" for p in find_packages(str(ROOT / "python" / "nestvec"))],
    ext_modules=[CMakeExtension("nestvec._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
