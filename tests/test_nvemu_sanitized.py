"""The CUDA kernels under AddressSanitizer: nvemu (tests/nvemu) rebuilt from its CMake
project with -fsanitize=address and every emulated-kernel test run against it, so a
kernel that reads or writes outside a tensor (the GPU's "illegal memory access", or
silent garbage) fails here. Slow suite; skipped without g++, cmake, pybind11
or the ASan runtime."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nvemu

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _runtime(cxx, name):
    out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_emulated_cuda_kernels_under_asan(tmp_path):
    cxx = shutil.which("g++")
    pytest.importorskip("pybind11")
    asan = _runtime(cxx, "libasan.so") if cxx else None
    stdcxx = _runtime(cxx, "libstdc++.so") if cxx else None
    if not (cxx and asan and stdcxx):
        pytest.skip("needs g++ with the AddressSanitizer runtime")
    # tests/nvemu's own CMake project, built with ASan into a private build tree; the
    # emulated tests then load that module (NVEMU_MODULE) beside the normal nestvec._C.
    try:
        module = nvemu.build(tmp_path / "build",
                             cxx_flags="-fsanitize=address -fno-omit-frame-pointer")
    except RuntimeError as e:
        if "cannot find" in str(e) and "asan" in str(e):
            pytest.skip("AddressSanitizer runtime unavailable")
        raise
    env = dict(os.environ, NVEMU_MODULE=str(module), LD_PRELOAD=f"{asan} {stdcxx}",
               ASAN_OPTIONS="detect_leaks=0")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
         "-k", "emulated or nvemu", str(ROOT / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    log = run.stdout[-3000:] + run.stderr[-6000:]
    assert run.returncode == 0, log
    assert "AddressSanitizer" not in run.stderr.replace("WARNING: ASan doesn't fully support", ""), log
    assert " passed" in run.stdout, log
