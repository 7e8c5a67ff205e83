"""Faults and concurrency: a writer SIGKILLed at random moments never loses or half-
commits a batch; a reader process searching while a writer commits (and compacts)
always sees one complete version."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import nestvec as nv

M = 64  # rows per batch
D = 32
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")


def batch(i):
    x = np.random.default_rng(1000 + i).standard_normal((M, D)).astype(np.float32)
    return x, np.arange(i * M, (i + 1) * M)


WRITER = textwrap.dedent(f"""
    import sys
    import numpy as np
    import nestvec as nv
    path, start = sys.argv[1], int(sys.argv[2])
    M, D = {M}, {D}
    col = nv.open(path)
    import pyarrow as pa
    pa.array(np.zeros(1))  # first-use imports (pyarrow loads pandas) before the clock starts
    print("ready", flush=True)
    i = start
    while True:
        x = np.random.default_rng(1000 + i).standard_normal((M, D)).astype(np.float32)
        ids = np.arange(i * M, (i + 1) * M)
        col.add(x, ids=ids, metadata={{"batch": [i] * M}})
        print(i, flush=True)  # the add returned: batch i is committed
        if i % 3 == 2:
            col.upsert(x, ids=ids, metadata={{"batch": [i] * M}})  # same rows: still exactly once
        if i % 5 == 4:
            col.compact(keep_versions=2)
        i += 1
""")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Lines:
    """A child's stdout lines, read by a thread (a pipe read can't time out)."""

    def __init__(self, p):
        self.p, self.q = p, queue.Queue()
        self.t = threading.Thread(target=self._pump, daemon=True)
        self.t.start()

    def _pump(self):
        for line in self.p.stdout:
            self.q.put(line.strip())
        self.q.put(None)

    def next(self, timeout=60.0) -> str:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            self.p.kill()
            raise AssertionError(f"child said nothing for {timeout} s") from None
        assert line is not None, f"child exited: {self.p.stderr.read()}"
        return line

    def rest(self) -> list:
        self.t.join(timeout=30)
        out = []
        while True:
            line = self.q.get_nowait() if not self.q.empty() else None
            if line is None:
                return out
            out.append(line)


def check_batches(col, contiguous=True):
    """Every visible batch is complete, exactly once, with the right vectors.
    Returns the sorted list of visible batch numbers (0..P-1 when contiguous)."""
    t = col.to_table(columns=["id", "batch", "vector"])
    ids = t.column("id").to_numpy()
    assert len(np.unique(ids)) == len(ids), "an id is visible twice"
    b = ids // M
    np.testing.assert_array_equal(t.column("batch").to_numpy(), b)
    present, counts = np.unique(b, return_counts=True)
    assert (counts == M).all(), f"partial batch visible: {dict(zip(present, counts))}"
    if contiguous:
        assert present.tolist() == list(range(len(present)))
    vec = np.asarray(t.column("vector").to_pylist(), np.float32).reshape(-1, D)
    order = np.argsort(ids)
    want = np.concatenate([batch(i)[0] for i in present]) if len(present) else np.zeros((0, D))
    np.testing.assert_array_equal(vec[order], want.astype(np.float16).astype(np.float32))
    return present.tolist()


def crash_trials(path, trials, seed):
    rng = np.random.default_rng(seed)
    nv.Collection.create(path, dim=D, schema={"batch": "int64"}).close()
    committed = 0
    for trial in range(trials):
        p = subprocess.Popen([sys.executable, "-c", WRITER, path, str(committed)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env())
        lines = Lines(p)
        assert lines.next() == "ready"
        first = []
        if rng.random() < 0.7:  # mostly let one batch land first, so the log keeps growing
            first.append(lines.next())
        time.sleep(rng.uniform(0.0, 0.25))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        acked = [int(s) for s in first + lines.rest()]
        err = p.stderr.read()
        p.stdout.close(), p.stderr.close()
        assert p.returncode == -signal.SIGKILL, err
        with nv.open(path) as col:  # the dead writer's lock is gone
            present = check_batches(col)
            assert set(acked) <= set(present), (acked, present)
            # at most the one batch whose commit landed before it printed
            last = max(acked, default=committed - 1)
            assert len(present) in (last + 1, last + 2), (trial, acked, present)
            n = col.count()
            assert col.search(np.ones(D), k=5).num_rows == min(5, n)
            for v in col.versions():
                old = nv.open(path, version=v["version"])
                assert old.count() % M == 0 and old.count() == v["rows"]
                old.close()
            print(f"trial {trial}: {len(acked)} acked, {len(present) - committed} new batches visible")
            committed = len(present)
    return committed


def test_crash_a_few(tmp_path):
    assert crash_trials(str(tmp_path / "crash"), trials=3, seed=1) >= 0


@pytest.mark.slow
def test_crash_many(tmp_path):
    committed = crash_trials(str(tmp_path / "crash"), trials=25, seed=2)
    assert committed > 5


READER = textwrap.dedent(f"""
    import os, sys, time
    import numpy as np
    import nestvec as nv
    sys.path.insert(0, sys.argv[3])
    from test_collection_crash import check_batches
    path, stop = sys.argv[1], sys.argv[2]
    M, D = {M}, {D}
    q = np.random.default_rng(5).standard_normal((3, D))
    iters, seen, col = 0, set(), None
    while not os.path.exists(stop) or iters < 3:
        if col is None or iters % 2:
            if col is not None:
                col.close()
            col = nv.open(path, read_only=True)
        else:
            col.refresh()
        n = col.count()
        present = check_batches(col, contiguous=False)
        assert n == M * len(present)
        assert col.count() == n
        for mode in ("flat", "funnel", "binary"):
            r = col.search(q, k=7, mode=mode)
            assert r.num_rows == 3 * min(7, n), (mode, r.num_rows, n)
        if present:
            j = present[0]
            r = col.search(q, k=7, filter=nv.field("batch") == j)
            assert r.num_rows == 3 * min(7, M) and set(r.column("id").to_numpy() // M) == {{j}}
        seen.add(col.version)
        iters += 1
    print(iters, len(seen), flush=True)
""")


def test_reader_during_writes(tmp_path):
    path, stop = str(tmp_path / "conc"), str(tmp_path / "stop")
    col = nv.Collection.create(path, dim=D, schema={"batch": "int64"})
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.Popen([sys.executable, "-c", READER, path, stop, tests_dir], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    try:
        t0 = time.time()
        i = 0
        while time.time() - t0 < 4.0 or i < 12:
            x, ids = batch(i)
            # a batch is live in full or not at all: added, later deleted as a whole
            col.add(x, ids=ids, metadata={"batch": [i] * M})
            if i % 4 == 3:
                col.delete(filter=nv.field("batch") == i - 2)
            if i % 6 == 5:
                col.compact(keep_versions=1)  # GC under the reader's feet
            i += 1
            if p.poll() is not None:
                break
    finally:
        open(stop, "w").close()
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    iters, versions = map(int, out.split())
    assert iters >= 3 and versions >= 2, out
    col.close()


INJECT = textwrap.dedent(f"""
    import os, sys
    import numpy as np
    import nestvec as nv
    from nestvec.collection import storage
    path, point = sys.argv[1], sys.argv[2]
    M, D = {M}, {D}
    col = nv.open(path)
    real_manifest, real_latest = storage.DirStore.write_manifest, storage.DirStore.set_latest

    def write_manifest(self, m):
        if point == "before_manifest":
            os._exit(9)
        real_manifest(self, m)

    def set_latest(self, v):
        if point == "before_latest":
            os._exit(9)
        real_latest(self, v)
        if point == "after_latest":
            os._exit(9)

    storage.DirStore.write_manifest, storage.DirStore.set_latest = write_manifest, set_latest
    x = np.random.default_rng(1001).standard_normal((M, D)).astype(np.float32)
    col.add(x, ids=np.arange(M, 2 * M), metadata={{"batch": [1] * M}})
""")


@pytest.mark.parametrize("point, visible", [("before_manifest", 1), ("before_latest", 1), ("after_latest", 2)])
def test_crash_at_each_commit_step(tmp_path, point, visible):
    path = str(tmp_path / "inj")
    with nv.Collection.create(path, dim=D, schema={"batch": "int64"}) as col:
        x, ids = batch(0)
        col.add(x, ids=ids, metadata={"batch": [0] * M})
    p = subprocess.run([sys.executable, "-c", INJECT, path, point], capture_output=True, text=True, env=_env(),
                       timeout=60)
    assert p.returncode == 9, p.stderr
    with nv.open(path) as col:
        assert check_batches(col) == list(range(visible))
        col.add(*batch(visible)[:1], ids=batch(visible)[1], metadata={"batch": [visible] * M})
        assert check_batches(col) == list(range(visible + 1))
        col.compact()
        assert len(os.listdir(os.path.join(path, "segments"))) == 1
