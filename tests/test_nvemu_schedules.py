"""Every emulated-kernel test rerun with the threads of each block run in reverse and
in random order between barriers (NVEMU_SCHEDULE): a kernel whose result depends on
that order has a race a GPU could show. Slow suite (about 2 minutes)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_nvemu

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("schedule", ["reverse", "random:1"])
def test_emulated_kernels_under_schedule(schedule, tmp_path):
    require_nvemu()
    env = dict(os.environ, NVEMU_SCHEDULE=schedule)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
         "-k", "emulated and not schedule", str(ROOT / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert " passed" in run.stdout, run.stdout[-2000:]
