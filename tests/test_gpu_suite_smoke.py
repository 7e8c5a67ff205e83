"""benchmarks/gpu_suite.py --smoke: every section of the GPU suite on the CPU at toy
sizes (CUDA kernels through nvemu, Triton through its interpreter), so the one call a
lent GPU gets never fails on the suite's own code. Slow suite (about 3 minutes)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_nvemu

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_smoke():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    require_nvemu()
    before = {p: p.stat().st_mtime for p in (ROOT / "benchmarks" / "results").glob("gpu_suite*")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--smoke"],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    log = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, log
    for section in ("hamming", "pooling", "lowrank", "dense"):
        assert f"== {section} done" in run.stdout, log
    assert " FAIL" not in run.stdout and "section crashed" not in run.stdout, log
    after = {p: p.stat().st_mtime for p in (ROOT / "benchmarks" / "results").glob("gpu_suite*")}
    assert after == before, "a smoke run must not write benchmark results"
