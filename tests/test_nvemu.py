"""nvemu (tests/nvemu), the CPU emulator the CUDA kernels run on in these tests: it must
compute what the hardware computes where our kernels rely on it, and report the
mistakes it claims to catch. The kernels themselves are checked in each op's tests
(test_cuda_emulated*)."""
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nvemu
from conftest import require_nvemu


@pytest.fixture(scope="module")
def E():
    return require_nvemu()


def test_barriers_and_warp_collectives(E):
    out = np.array(E.selftest_shuffles()).reshape(64, 6)
    t = np.arange(64)
    lane = t % 32
    np.testing.assert_array_equal(out[:, 0], 63 - t)
    np.testing.assert_array_equal(out[:, 1], t ^ 5)
    np.testing.assert_array_equal(out[:, 2], np.where(lane >= 3, t - 3, t))
    np.testing.assert_array_equal(out[:, 3], np.where(lane % 16 + 3 < 16, t + 3, t))
    np.testing.assert_array_equal(out[:, 4], (t & ~31) + 7)
    assert (out[:, 5] == sum(1 << i for i in range(0, 32, 3))).all()


def test_barrier_divergence_is_reported(E):
    assert E.selftest_barrier(mode=0) == 32  # exited threads count as arrived
    with pytest.raises(RuntimeError, match="different __syncthreads"):
        E.selftest_barrier(mode=1)
    with pytest.raises(RuntimeError, match="deadlock"):
        E.selftest_barrier(mode=2)


def test_schedules_expose_races(E, monkeypatch):
    """Between barriers, threads run one after another in the NVEMU_SCHEDULE order (the
    last to reach a barrier goes first after it): a racy result changes with the order,
    which is how the slow suite's reruns under other schedules find races."""
    seen = {}
    for sched in ("forward", "reverse", "random:1", "random:2"):
        monkeypatch.setenv("NVEMU_SCHEDULE", sched)
        seen[sched] = E.selftest_race()
    assert seen["forward"] == 64 and seen["reverse"] == 63, seen
    assert len(set(seen.values())) > 1
    monkeypatch.setenv("NVEMU_SCHEDULE", "sideways")
    with pytest.raises(RuntimeError, match="NVEMU_SCHEDULE"):
        E.selftest_race()


def test_wmma_product_and_alignment(E):
    a = (np.arange(256) % 7 - 3).astype(np.float32).reshape(16, 16)
    c = np.array(E.selftest_wmma(0)).reshape(16, 16)
    np.testing.assert_array_equal(c, a @ a.T + 1.0)  # col-major B over the same tile = Aᵀ
    with pytest.raises(RuntimeError, match="32-byte aligned"):
        E.selftest_wmma(8)  # 16 bytes off: legal for uint4, not for WMMA


def test_cp_async_lands_at_the_wait(E):
    assert E.selftest_cp_async(wait_first=False) == (-1.0, 5.0)
    assert E.selftest_cp_async(wait_first=True) == (5.0, 5.0)


def test_dynamic_shared_memory_limits_and_poison(E):
    assert E.selftest_dynamic_smem(1024) == 1              # starts as 0xFF bytes
    assert E.selftest_dynamic_smem(64 * 1024) == -1         # > 48 KB needs the attribute
    assert E.selftest_dynamic_smem(64 * 1024, raise_limit_to=100_000) == 1
    assert E.selftest_dynamic_smem(1024, raise_limit_to=200_000) == -1  # > sm_80's 163 KB


def test_dynamic_shared_memory_overrun_faults(E):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import nvemu; "
            "nvemu.load().selftest_dynamic_smem(4096, at=4096)")
    tests_dir = str(Path(nvemu.__file__).parents[1])
    r = subprocess.run([sys.executable, "-c", code, tests_dir], capture_output=True, timeout=120)
    asan = b"AddressSanitizer: SEGV" in r.stderr  # the sanitized build (slow suite) reports it
    assert r.returncode == -signal.SIGSEGV or asan, r.stderr.decode()[-2000:]


def test_launch_config_errors_are_cuda_errors(E):
    """A bad launch shape comes back as the CUDA error the hardware would give."""
    torch = pytest.importorskip("torch")
    from nestvec._dense_gpu import dense_topk_cuda

    db = torch.zeros((4, 8), dtype=torch.float16)
    q = torch.ones((1, 8))
    with pytest.raises(RuntimeError, match="invalid argument"):
        E.cuda_dense_scan(db.data_ptr(), 1, 4, 8, 8, q.data_ptr(), 1, 8, q.data_ptr(), 0, 0,
                          200, q.data_ptr(), 1000, 0)  # kp > block rows
    s, i = dense_topk_cuda(nvemu.EmulatedCuda(E), db, q, 2, 8, "ip")
    assert i.tolist() == [[0, 1]]
