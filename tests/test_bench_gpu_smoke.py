"""Each per-op benchmark's GPU path (`--device cuda --quick --emulate`) on the CPU: the
CUDA kernels through nvemu, Triton through its interpreter, toy sizes. The one call a
lent GPU gets (benchmarks/gpu_check.sh) then never fails on the benchmarks' own code.
Slow suite (a few minutes)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_nvemu

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("op", ["hamming", "dense", "pool", "lowrank"])
def test_bench_gpu_path_emulated(op):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    require_nvemu()
    results = ROOT / "benchmarks" / "results"
    before = {p: p.stat().st_mtime for p in results.glob("*.json")}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"bench_{op}.py"), "--device", "cuda",
                          "--quick", "--emulate"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    log = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, log
    for impl in ("nestvec cuda", "nestvec triton"):
        assert f"| {impl} |" in run.stdout, log
    assert "FAIL" not in run.stdout and "Traceback" not in run.stderr, log
    assert "(emulated run: nothing saved)" in run.stdout, log
    after = {p: p.stat().st_mtime for p in results.glob("*.json")}
    assert after == before, "an emulated run must not write benchmark results"
