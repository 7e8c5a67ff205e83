"""The worker pool under ThreadSanitizer and AddressSanitizer: tests/cpp/pool_stress.cpp
(concurrent, nested and throwing parallel_for and parallel_for_pooled calls, with
pauses that find the workers asleep) built against
csrc/cpu/thread_pool.cpp. Slow suite; skipped without g++ or sanitizer runtimes."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_pool_under_sanitizer(sanitizer, tmp_path):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("needs g++")
    exe = tmp_path / f"pool_{sanitizer}"
    build = subprocess.run(
        [cxx, "-std=c++17", "-O1", "-g", f"-fsanitize={sanitizer}", "-pthread",
         f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "tests" / "cpp" / "pool_stress.cpp"),
         str(ROOT / "csrc" / "cpu" / "thread_pool.cpp"), "-o", str(exe)],
        capture_output=True, text=True)
    if build.returncode != 0:
        if "sanitize" in build.stderr and ("cannot find" in build.stderr or "unrecognized" in build.stderr):
            pytest.skip(f"{sanitizer} sanitizer runtime unavailable")
        pytest.fail(build.stderr[-4000:])
    for spin in ("200", "0"):  # the default spin, and workers asleep after every call
        run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "NESTVEC_SPIN_US": spin})
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
        assert run.stdout.startswith("ok"), run.stdout
        assert "WARNING: ThreadSanitizer" not in run.stderr, run.stderr[-4000:]
