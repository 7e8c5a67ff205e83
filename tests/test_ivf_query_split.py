"""A single ivf query splits its Hamming ranges and its per-segment rescoring over the
thread pool (multiseg.cpp, parallel_for_pooled): the same hits, scores and plan as on
one thread, for the searcher and search(), with filters and deletes, and from several
Python threads at once (a caller that finds the pool busy runs its parts itself)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import nestvec as nv
from nestvec.collection import NoMergePolicy

pytest.importorskip("faiss")

D, SEG, NSEG = 48, 3000, 4
N = SEG * NSEG


@pytest.fixture(scope="module")
def col():
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((6, D))
    x = (centers[rng.integers(0, 6, N)] + 0.8 * rng.standard_normal((N, D))).astype(np.float32)
    c = nv.Collection.create(None, dim=D, schema={"cat": "int32"}, merge_policy=NoMergePolicy())
    for a in range(0, N, SEG):
        c.add(x[a:a + SEG], ids=np.arange(a, a + SEG), metadata={"cat": np.arange(a, a + SEG) % 100})
    c.create_index("ivf", nlist=8, min_rows=100, tune=False)
    q = (centers[rng.integers(0, 6, 24)] + 0.8 * rng.standard_normal((24, D))).astype(np.float32)
    q[3] = q[2]  # the same query twice
    yield c, x, q
    c.close()


@pytest.fixture
def threads():
    before = nv.get_num_threads()
    yield
    nv.set_num_threads(before)


def run(c, q, n, flt=None, api="searcher"):
    nv.set_num_threads(n)
    out = []
    if api == "searcher":
        s = c.searcher(k=10, mode="ivf", nprobe=4, rescore=10, filter=flt)
        for j in range(len(q)):
            ids, scores = s.search(q[j:j + 1])[:2]
            out.append((ids[0].tolist(), np.asarray(scores)[0].tolist()))
    else:
        for j in range(len(q)):
            t = c.search(q[j:j + 1], k=10, mode="ivf", nprobe=4, rescore=10, filter=flt)
            out.append((t.column("id").to_pylist(), t.column("score").to_pylist()))
    return out


@pytest.mark.parametrize("api", ["searcher", "search"])
@pytest.mark.parametrize("flt", [None, "half"])
def test_split_query_equals_one_thread(col, threads, api, flt):
    c, _, q = col
    f = None if flt is None else nv.field("cat") < 50
    # the split applies: thousands of rows in the probed ranges, 100 candidates over 4 segments
    plan = c.explain(q[:1], k=10, mode="ivf", nprobe=4, rescore=10)
    assert plan["rows_scanned"] >= 4096 and plan["rows_rescored"] >= 64 and plan["segments"] == NSEG
    one = run(c, q, 1, f, api)
    two = run(c, q, 2, f, api)
    assert two == one
    assert all(len(ids) == 10 for ids, _ in one)


def test_split_query_after_deletes(tmp_path, threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, D)).astype(np.float32)
    c = nv.Collection.create(str(tmp_path / "c.nv"), dim=D, merge_policy=NoMergePolicy())
    for a in range(0, N, SEG):
        c.add(x[a:a + SEG], ids=np.arange(a, a + SEG))
    c.create_index("ivf", nlist=8, min_rows=100, tune=False)
    c.delete(np.arange(0, N, 3))
    q = rng.standard_normal((12, D)).astype(np.float32)
    one, two = run(c, q, 1), run(c, q, 2)
    assert two == one
    assert not any(i % 3 == 0 for ids, _ in two for i in ids)
    c.close()


def test_concurrent_callers_get_what_one_thread_gets(col, threads):
    c, _, q = col
    want = run(c, q, 1)
    nv.set_num_threads(2)
    s = c.searcher(k=10, mode="ivf", nprobe=4, rescore=10)
    got, errors = {}, []

    def worker(w):
        try:
            for rep in range(3):
                for j in range(len(q)):
                    ids, scores = s.search(q[j:j + 1])[:2]
                    got.setdefault(j, []).append((ids[0].tolist(), np.asarray(scores)[0].tolist()))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for j, seen in got.items():
        assert len(seen) == 12 and all(v == want[j] for v in seen)


def test_split_after_a_pause_equals_one_thread(col, threads):
    """Searches after pauses longer than the pool's workers spin: the caller runs the
    parts no worker has started yet (take_unstarted), and the call after one whose parts
    the caller took finds its tickets claimable again; the answers are one thread's."""
    import time

    c, _, q = col
    want = run(c, q, 1)
    nv.set_num_threads(2)
    s = c.searcher(k=10, mode="ivf", nprobe=4, rescore=10)
    got = []
    for rep in range(2):
        for j in range(len(q)):
            if j % 3 == rep:
                time.sleep(0.002)  # > the 200 us spin: the worker is asleep at the next call
            ids, scores = s.search(q[j:j + 1])[:2]
            got.append((ids[0].tolist(), np.asarray(scores)[0].tolist()))
    assert got == want + want
