"""The CUDA kernels under AddressSanitizer: nvemu (csrc/cuda_emu) rebuilt from the
project's CMake target with -fsanitize=address and every emulated-kernel test run
against it, so a kernel that reads or writes outside a tensor (the GPU's "illegal memory
access", or silent garbage) fails here. Slow suite; skipped without g++, cmake, pybind11
or the ASan runtime."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import nestvec

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _runtime(cxx, name):
    out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_emulated_cuda_kernels_under_asan(tmp_path):
    cxx = shutil.which("g++")
    pybind11 = pytest.importorskip("pybind11")
    asan = _runtime(cxx, "libasan.so") if cxx else None
    stdcxx = _runtime(cxx, "libstdc++.so") if cxx else None
    if not (cxx and asan and stdcxx):
        pytest.skip("needs g++ with the AddressSanitizer runtime")
    # A private copy of the package with the sanitized _nvemu beside the normal _C.
    pkg = tmp_path / "pkg" / "nestvec"
    shutil.copytree(Path(nestvec.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("_nvemu*", "__pycache__"))
    if not (pkg / "kernels").exists():
        shutil.copytree(ROOT / "kernels", pkg / "kernels")
    # The project's own CMake target, built with ASan into the private copy.
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("needs cmake")
    out = pkg / ("_nvemu" + sysconfig.get_config_var("EXT_SUFFIX"))
    build_dir = tmp_path / "build"
    steps = [
        [cmake, "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
         "-DNESTVEC_CUDA=OFF", f"-DPython_EXECUTABLE={sys.executable}",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DNESTVEC_OUTPUT_DIR={pkg}",
         f"-DNESTVEC_EMU_OUTPUT_NAME={out.name}",
         "-DCMAKE_CXX_FLAGS=-fsanitize=address -fno-omit-frame-pointer"],
        [cmake, "--build", str(build_dir), "--target", "_nvemu", "-j", str(os.cpu_count() or 1)],
    ]
    for cmd in steps:
        build = subprocess.run(cmd, capture_output=True, text=True)
        if build.returncode != 0:
            if "cannot find" in build.stderr and "asan" in build.stderr:
                pytest.skip("AddressSanitizer runtime unavailable")
            pytest.fail(build.stdout[-2000:] + build.stderr[-4000:])
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "pkg"), LD_PRELOAD=f"{asan} {stdcxx}",
               ASAN_OPTIONS="detect_leaks=0")
    where = subprocess.run([sys.executable, "-c", "import nestvec._nvemu as e; print(e.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.stdout.strip() == str(out), where.stdout + where.stderr[-3000:]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
         "-k", "emulated or nvemu", str(ROOT / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    log = run.stdout[-3000:] + run.stderr[-6000:]
    assert run.returncode == 0, log
    assert "AddressSanitizer" not in run.stderr.replace("WARNING: ASan doesn't fully support", ""), log
    assert " passed" in run.stdout, log
