"""The CUDA kernels under AddressSanitizer: nvemu (csrc/cuda_emu) rebuilt with
-fsanitize=address and every emulated-kernel test run against it, so a kernel that
reads or writes outside a tensor (the GPU's "illegal memory access", or silent garbage)
fails here. Slow suite; skipped without g++, pybind11 or the ASan runtime."""
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
    wrappers = []
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        w = tmp_path / f"{cu.stem}.cpp"
        w.write_text(f'#include "{cu}"\n')
        wrappers.append(str(w))
    emu = ROOT / "csrc" / "cuda_emu"
    out = pkg / ("_nvemu" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run(
        [cxx, "-std=c++17", "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer",
         "-fno-strict-aliasing", "-shared", "-fPIC", "-DNESTVEC_CUDA_EMU=1", "-DNESTVEC_WITH_CUDA=1",
         f"-I{emu / 'include'}", f"-I{ROOT / 'csrc' / 'include'}",
         f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}",
         str(emu / "module.cpp"), str(emu / "nvemu.cpp"), str(emu / "selftest.cpp"), *wrappers,
         "-o", str(out)], capture_output=True, text=True)
    if build.returncode != 0:
        if "cannot find" in build.stderr and "asan" in build.stderr:
            pytest.skip("AddressSanitizer runtime unavailable")
        pytest.fail(build.stderr[-4000:])
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
