"""A writer SIGKILLed while it builds an index or compacts an indexed collection:
after reopening, every committed row is there exactly once, the version is either the
one before or the one after (never half of one), every file it names checks out, and
the next compaction removes what the killed writer left behind (slow suite)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import nestvec as nv
from nestvec.collection import TieredMergePolicy

pytest.importorskip("faiss")
pytest.importorskip("hnswlib")

D = 32
N = 40000
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python")

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import nestvec as nv
    from nestvec.collection import TieredMergePolicy
    path, what = sys.argv[1], sys.argv[2]
    col = nv.open(path, merge_policy=TieredMergePolicy(max_segment_bytes=1 << 20, on_commit=False))
    print("ready", flush=True)
    if what == "ivf":
        col.create_index("ivf", nlist=64, min_rows=1000, replace=True)
    elif what == "hnsw":
        col.create_index("hnsw", M=8, ef_construction=64, min_rows=1000, replace=True)
    else:
        col.delete(ids=np.arange(0, 40000, 11))
        print("deleted", flush=True)
        col.compact()
    print("done", flush=True)
""")


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, D)).astype(np.float32)


def _setup(path):
    col = nv.Collection.create(path, dim=D, merge_policy=TieredMergePolicy(max_segment_bytes=1 << 20,
                                                                            on_commit=False))
    x = _data()
    for a in range(0, N, 5000):
        col.add(x[a:a + 5000], ids=np.arange(a, a + 5000))
    col.create_index("ivf", nlist=32, min_rows=1000, tune=False)
    col.close()


def _check(path, deleted_ok):
    with nv.open(path) as col:
        col.verify()
        ids = np.sort(np.asarray(col.to_table().column("id").to_pylist()))
        every = np.arange(N)
        if len(ids) != N:  # the delete committed (it returns before compaction starts)
            assert deleted_ok
            every = every[every % 11 != 0]
        np.testing.assert_array_equal(ids, every)
        q = _data()[1:4]  # rows 1..3: never deleted, each its own nearest neighbour
        for mode in ["flat"] + list(col.indexes()):
            got = col.search(q, k=10, mode=mode)
            assert got.num_rows == 30
            assert got.column("id").to_pylist()[::10] == [1, 2, 3]
        col.compact()
        names = set()
        m = col._snap.manifest
        for spec in (m.get("indexes") or {}).values():
            if spec.get("centroids"):
                names.add(spec["centroids"]["name"])
            names |= {sp["name"] for sp in spec.get("spans") or ()}
        for e in m["segments"]:
            names |= {e[k]["name"] for k in ("ivf", "hnsw") if e.get(k)}
        assert set(os.listdir(os.path.join(path, "indexes"))) == names  # the killed writer's files: gone


@pytest.mark.slow
@pytest.mark.parametrize("what", ["ivf", "hnsw", "compact"])
def test_sigkill_during_index_build_and_compaction(tmp_path, what):
    rng = np.random.default_rng({"ivf": 1, "hnsw": 2, "compact": 3}[what])
    base = str(tmp_path / "base")
    _setup(base)
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # how long the whole operation takes, to spread the kills over it
    shutil.copytree(base, base + "-full")
    p = subprocess.Popen([sys.executable, "-c", CHILD, base + "-full", what], stdout=subprocess.PIPE, text=True,
                         env=env)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    p.wait(timeout=600)
    span = time.perf_counter() - t0
    assert p.returncode == 0
    for trial in range(6):
        path = str(tmp_path / f"t{trial}")
        shutil.copytree(base, path)
        p = subprocess.Popen([sys.executable, "-c", CHILD, path, what], stdout=subprocess.PIPE, text=True,
                             env=env)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.02, 1.0)) * span)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        _check(path, deleted_ok=(what == "compact"))
