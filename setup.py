"""setuptools build that drives CMake for the one native module ``nestvec._C``.

python/nestvec -> nestvec, kernels/ -> nestvec.kernels.  The CMake build tree lives in
build/cmake-<tag> so that repeated ``pip install -e .`` runs are incremental.
"""
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


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
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        if os.environ.get("NESTVEC_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['NESTVEC_CUDA_ARCHS']}")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(max(1, os.cpu_count() or 1)))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--config", cfg, "-j", jobs], check=True)


setup(
    package_dir={"nestvec": "python/nestvec", "nestvec.kernels": "kernels"},
    packages=["nestvec", "nestvec.kernels", "nestvec.collection"],
    ext_modules=[CMakeExtension("nestvec._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
