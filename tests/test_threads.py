"""The CPU ops' worker threads: one persistent pool serves one call at a time; calls
made at the same time from several Python threads (the GIL is released in C++) fall
back to their own threads and must return exactly what a lone call returns; a forked
child, which inherits no worker threads, must not hang."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import nestvec.ops as ops
from nestvec import _backend

pytestmark = pytest.mark.skipif(_backend._C is None, reason="needs the C++ extension")


@pytest.fixture
def two_threads():
    before = _backend._C.get_num_threads()
    _backend._C.set_num_threads(2)
    yield
    _backend._C.set_num_threads(before)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((20000, 64), dtype=np.float32).astype(np.float16)
    q = rng.standard_normal((5, 64), dtype=np.float32)
    codes = rng.integers(0, 256, (200000, 16), dtype=np.uint8)
    qc = rng.integers(0, 256, (5, 16), dtype=np.uint8)
    x = rng.standard_normal((64, 96), dtype=np.float32)
    A = rng.standard_normal((8, 96), dtype=np.float32)
    B = rng.standard_normal((80, 8), dtype=np.float32)
    S = rng.standard_normal((3, 96), dtype=np.float32)
    ch = np.array([1, 40, 79])
    hidden = rng.standard_normal((16, 64, 384), dtype=np.float32)
    mask = rng.random((16, 64)) < 0.7
    return db, q, codes, qc, (x, A, B, S, ch), (hidden, mask)


def _calls(data):
    db, q, codes, qc, lrs, (hidden, mask) = data
    return {
        "dense": lambda: ops.dense_topk(db, q, 10, dim=48, backend="cpu"),
        "hamming": lambda: ops.hamming_topk(codes, qc, 10, backend="cpu"),
        "lowrank": lambda: (ops.lowrank_sparse_matmul(*lrs, backend="cpu"),),
        "pool": lambda: (ops.pool(hidden, mask, backend="cpu"),),
    }


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_concurrent_calls_match_serial(two_threads):
    calls = _calls(_data())
    want = {name: f() for name, f in calls.items()}
    errors, mismatches = [], []

    def hammer(name):
        try:
            for _ in range(30):
                if not _same(calls[name](), want[name]):
                    mismatches.append(name)
        except Exception as e:  # surfaced below: a thread's exception is otherwise lost
            errors.append(repr(e))

    threads = [threading.Thread(target=hammer, args=(name,)) for name in list(calls) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a concurrent call hung"
    assert not errors and not mismatches, (errors, mismatches)


def test_repeated_calls_reuse_pool_and_agree(two_threads):
    calls = _calls(_data(1))
    for name, f in calls.items():
        first = f()
        for _ in range(50):
            assert _same(f(), first), name


def test_thread_count_change_between_calls():
    calls = _calls(_data(2))
    before = _backend._C.get_num_threads()
    try:
        _backend._C.set_num_threads(1)
        want = {name: f() for name, f in calls.items()}
        for n in (2, 4, 3, 1, 7):
            _backend._C.set_num_threads(n)
            for name, f in calls.items():
                assert _same(f(), want[name]), (name, n)
    finally:
        _backend._C.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: forking with threads
def test_forked_child_does_not_hang(two_threads):
    calls = _calls(_data(3))
    want = {name: f() for name, f in calls.items()}  # the parent's pool is now running
    pid = os.fork()
    if pid == 0:  # child: no worker threads were inherited
        code = 1
        try:
            code = 0 if all(_same(f(), want[name]) for name, f in calls.items()) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in a pooled call")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


def test_public_thread_count_api():
    import nestvec as nv

    before = nv.get_num_threads()
    try:
        nv.set_num_threads(np.int64(1))
        assert nv.get_num_threads() == 1 == _backend._C.get_num_threads()
        nv.set_num_threads(3)
        assert nv.get_num_threads() == 3
        for bad, exc in ((0, ValueError), (-2, ValueError), (10**6, ValueError), (1.5, TypeError),
                         (True, TypeError), ("2", TypeError), (None, TypeError)):
            with pytest.raises(exc, match="n: expected"):
                nv.set_num_threads(bad)
        assert nv.get_num_threads() == 3  # a refused value changes nothing
    finally:
        nv.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_full_scans_in_blocks_match_reference(threads):
    """Full scans share their rows out in blocks at run time (a thread takes the next
    free block): with many blocks a thread and any thread count, the answer is the
    reference's, ties (repeated rows) included."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((997, 8), dtype=np.float32)
    db = np.concatenate([base] * 301)[:300_007]  # every row repeated: ties in every list
    q = rng.standard_normal((3, 8), dtype=np.float32)
    cbase = rng.integers(0, 256, (1013, 8), dtype=np.uint8)
    codes = np.concatenate([cbase] * 400)[:400_009]
    qc = rng.integers(0, 256, (3, 8), dtype=np.uint8)
    before = _backend._C.get_num_threads()
    _backend._C.set_num_threads(threads)
    try:
        for nq in (1, 3):
            got = ops.dense_topk(db, q[:nq], 10, backend="cpu")
            want = ops.dense_topk(db, q[:nq], 10, backend="reference")
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
            assert np.array_equal(got[1], want[1]), (threads, nq)
            got = ops.hamming_topk(codes, qc[:nq], 10, backend="cpu")
            want = ops.hamming_topk(codes, qc[:nq], 10, backend="reference")
            assert _same(got, want), (threads, nq)
    finally:
        _backend._C.set_num_threads(before)
