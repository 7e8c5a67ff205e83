"""The C++ ISA self-test (tests/cpp/isa_selftest.cpp): every CPU ISA a build compiles,
op by op, against float64 / brute-force references, built with CMake from the module's
own sources and per-ISA flags (csrc/cpu/sources.cmake).

- natively: the x86 paths this CPU runs (AVX-512 is compiled, and reported as skipped
  where the CPU lacks it);
- for aarch64: cross-compiled with Debian's g++-aarch64-linux-gnu and run under
  qemu-aarch64 (qemu-user), which checks the NEON kernels and the HWCAP detection.
  Speed under qemu means nothing; only correctness is checked.

Slow suite (a build of every kernel, then minutes under qemu). Build trees are kept in
build/selftest-<arch> so that reruns are incremental.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "tests" / "cpp"
OPS = ("hamming", "dense", "pool", "lowrank_sparse")


def _build(build_dir: Path, *extra: str) -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(["cmake", "-S", str(SRC), "-B", str(build_dir), *gen, *extra],
                         capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout[-3000:] + cfg.stderr[-3000:]
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    out = subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    return build_dir / "isa_selftest"


def _check(run: subprocess.CompletedProcess, isas: list[str]) -> None:
    text = run.stdout + run.stderr
    assert run.returncode == 0 and "ALL OK" in run.stdout, text[-6000:]
    for isa in isas:
        for op in OPS:
            assert f"ok {isa} {op} " in run.stdout, f"{isa} {op} did not run:\n{text[-3000:]}"


def test_native_isas():
    exe = _build(ROOT / "build" / f"selftest-{platform.machine()}")
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=1200)
    ran = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("ok ")]
    _check(run, sorted(set(ran)))
    assert "scalar" in ran


def test_aarch64_neon_under_qemu():
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    sysroot = Path("/usr/aarch64-linux-gnu")
    if cxx is None or qemu is None or not sysroot.is_dir():
        pytest.skip("needs the aarch64 cross toolchain and qemu-user: "
                    "apt-get install g++-aarch64-linux-gnu qemu-user")
    exe = _build(ROOT / "build" / "selftest-aarch64",
                 f"-DCMAKE_TOOLCHAIN_FILE={SRC / 'aarch64-linux-gnu.cmake'}")
    # --quick: the smaller grid (every op, dtype, metric and path; fewer sizes), since
    # qemu runs the kernels ~50x slower than the hardware would.
    run = subprocess.run([qemu, "-L", str(sysroot), str(exe), "--quick"], capture_output=True,
                         text=True, timeout=1800)
    _check(run, ["scalar", "neon"])
    # qemu's "max" CPU reports these through HWCAP: the detection reads them.
    assert "cpu features: asimd" in run.stdout, run.stdout[:500]
