"""One handle shared by threads under concurrent writes, SQL filter limits, and the
argument errors of the fault probe (issue 20): float16 columns in SQL, ';' in
literals, metadata pyarrow cannot convert, device strings, float32 cosine prefixes."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import nestvec as nv
from nestvec.collection import sql as sqlf

D, M = 16, 64


def _vec(b):
    return np.random.default_rng(b).standard_normal((M, D)).astype(np.float32)


def _true_scores(ids, q):
    v = np.stack([_vec(i // M)[i % M] for i in ids]).astype(np.float16).astype(np.float32)
    return v @ q / np.linalg.norm(v, axis=1) / np.linalg.norm(q)


def shared_handle_under_writes(path, seconds, searchers=3):
    """Searchers check every hit's score against the vector its id names; a writer
    adds, upserts, deletes, compacts and merges; a read-only handle is refreshed by
    another thread while searched. Returns (searches, errors, wrong)."""
    col = nv.Collection.create(path, dim=D, schema={"b": "int64"},
                               merge_policy=nv.collection.TieredMergePolicy(merge_factor=4, floor_rows=64))
    for b in range(12):
        col.add(_vec(b), ids=np.arange(b * M, (b + 1) * M), metadata={"b": [b] * M})
    ro = nv.open(path, read_only=True)
    stop = threading.Event()
    errors, wrong, calls = [], [0], [0]
    lock = threading.Lock()

    def searcher(seed, handle):
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            q = rng.standard_normal(D)
            mode = ("flat", "funnel", "binary")[int(rng.integers(3))]
            flt = None if rng.random() < 0.7 else nv.field("b") >= int(rng.integers(12))
            try:
                r = handle.search(q, k=10, mode=mode, filter=flt, columns=["b"])
                ids, b = r.column("id").to_numpy(), r.column("b").to_numpy()
                ok = r.num_rows == 10 and (ids // M == b).all()
                if ok and mode != "binary":
                    ok = np.abs(_true_scores(ids, q) - r.column("score").to_numpy()).max() < 1e-2
                with lock:
                    calls[0] += 1
                    wrong[0] += not ok
            except Exception as e:  # noqa: BLE001 - every error is a failure here
                with lock:
                    errors.append(repr(e))

    def writer():
        b = 12
        try:
            while not stop.is_set():
                col.add(_vec(b), ids=np.arange(b * M, (b + 1) * M), metadata={"b": [b] * M})
                col.delete(ids=np.arange(b * M, b * M + 3))
                u = b % 12
                col.upsert(_vec(u), ids=np.arange(u * M, (u + 1) * M), metadata={"b": [u] * M})
                if b % 7 == 0:
                    col.compact(keep_versions=3)
                elif b % 5 == 0:
                    col.optimize()
                b += 1
        except Exception as e:  # noqa: BLE001
            errors.append("writer: " + repr(e))

    def refresher():
        while not stop.is_set():
            try:
                ro.refresh()
            except Exception as e:  # noqa: BLE001
                errors.append("refresh: " + repr(e))
            time.sleep(0.005)

    ts = [threading.Thread(target=searcher, args=(s, col if s % 2 else ro)) for s in range(searchers)]
    ts += [threading.Thread(target=writer), threading.Thread(target=refresher)]
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    col.close()
    ro.close()
    return calls[0], errors, wrong[0]


def test_threads_share_one_handle(tmp_path):
    calls, errors, wrong = shared_handle_under_writes(str(tmp_path / "t"), seconds=3.0)
    assert not errors, errors[:5]
    assert wrong == 0 and calls > 20


@pytest.mark.slow
def test_threads_share_one_handle_minutes(tmp_path):
    seconds = float(os.environ.get("NESTVEC_THREAD_SOAK_S", "120"))
    calls, errors, wrong = shared_handle_under_writes(str(tmp_path / "t"), seconds=seconds, searchers=4)
    assert not errors, errors[:5]
    assert wrong == 0 and calls > 1000


def test_snapshot_outlives_close():
    """A search holds its snapshot: close() from another thread cannot pull the rows
    out from under it; a search started after close() is refused."""
    col = nv.Collection.create(None, dim=D)
    col.add(_vec(0))
    snap = col._snapshot()
    col.close()
    assert snap.segments[0].vectors.shape == (M, D)
    with pytest.raises(ValueError, match="closed"):
        col.search(np.ones(D))


# --------------------------------------------------------------------------- SQL filters


@pytest.fixture
def sqlcol():
    pytest.importorskip("duckdb")
    col = nv.Collection.create(None, dim=4, schema={"year": "int32", "lang": "string", "h": "float16"})
    col.add(np.ones((3, 4)), metadata={"year": [1, 2, 3], "lang": ["a;b", "c", "it's"], "h": [0.5, 1.5, None]})
    return col


@pytest.mark.parametrize("sql, what", [
    ("(SELECT count(*) FROM range(10000000000000)) > 0", "subquery"),
    ("(WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r) > 0",
     "subquery"),
    ("length(repeat('x', 1000000000)) > 0", "repeat"),
    ("len(range(1000000000)) > 0", "range"),
    ("length(lpad('x', 1000000000, 'y')) > 0", "lpad"),
    ("year > 1; SELECT 1", "statement|syntax|;"),
    ("year IN (SELECT year FROM t)", "subquery"),
])
def test_sql_filters_refused_before_running(sqlcol, sql, what):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=what):
        sqlcol.search(np.ones(4), k=1, filter=sql)
    assert time.perf_counter() - t0 < 2.0


def test_sql_filters_allowed(sqlcol):
    assert sqlcol.count(filter="lang = 'a;b'") == 1  # r11: ';' inside a literal
    assert sqlcol.count(filter="h > 1") == 1  # r05: float16 columns
    assert sqlcol.count(filter="lang = 'it''s' OR (lower(lang) LIKE 'c%' AND length(lang) = 1)") == 2
    assert sqlcol.count(filter="regexp_matches(lang, '^[a-c]') AND year BETWEEN 1 AND 3") == 2
    assert sqlcol.count(filter="coalesce(h, 0) < 1 AND year % 2 = 1") == 2


def test_sql_time_and_memory_limits(sqlcol, monkeypatch):
    """The limits themselves, with the shape check out of the way (a query no allowed
    filter can express)."""
    from nestvec.collection.errors import FilterLimitError

    monkeypatch.setattr(sqlf, "check_condition", lambda sql: None)
    prev = sqlf.set_sql_limits(timeout_s=0.3)
    try:
        t0 = time.perf_counter()
        with pytest.raises(FilterLimitError, match="time limit of 0.3 s"):
            sqlcol.count(filter="(SELECT count(*) FROM range(10000000000000)) > 0")
        assert time.perf_counter() - t0 < 3.0
        assert sqlcol.count(filter="year >= 2") == 2  # the connection is usable afterwards
        sqlf.set_sql_limits(timeout_s=20, memory_mb=64)
        with pytest.raises(FilterLimitError, match="memory limit of 64 MB"):
            sqlcol.count(filter="(SELECT len(list(range)) FROM range(1000000000)) > 0")
        assert sqlcol.count(filter="year >= 2") == 2
    finally:
        sqlf.set_sql_limits(**prev)
    with pytest.raises(ValueError, match="timeout_s"):
        sqlf.set_sql_limits(timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        sqlf.set_sql_limits(memory_mb=1.5)


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize("meta, exc, match", [
    ({"n": [2 ** 70]}, ValueError, "too large"),
    ({"x": np.array([1 + 2j])}, TypeError, "complex128"),
    ({"x": np.array([1.0], dtype=np.longdouble)}, TypeError, "float128|longdouble"),
])
def test_metadata_pyarrow_cannot_convert(meta, exc, match):
    col = nv.Collection.create(None, dim=4, schema={"n": "int64", "x": "float64"})
    with pytest.raises(exc, match=match):
        col.add(np.ones((1, 4)), metadata=meta)
    assert col.version == 0 and col.count() == 0


@pytest.mark.parametrize("device", ["meta", "xla", "privateuseone", "mps", "nonsense"])
def test_search_device_strings(device):
    pytest.importorskip("torch")
    col = nv.Collection.create(None, dim=4)
    col.add(np.random.default_rng(0).random((20, 4)) + 0.1)
    with pytest.raises(ValueError, match="device"):
        col.search(np.ones(4), k=3, device=device)


def test_meta_tensor_query():
    torch = pytest.importorskip("torch")
    col = nv.Collection.create(None, dim=4)
    col.add(np.random.default_rng(0).random((20, 4)) + 0.1)
    with pytest.raises(ValueError, match="device type 'meta'"):
        col.search(torch.ones(4, device="meta"), k=3)


def test_float32_cosine_prefixes_are_scorable():
    """r08: a row whose first values are 1e-25 would score 0 at a short prefix where its
    cosine is 1: refused at add(); rows opening with zeros and then normal values are
    fine and found at every prefix."""
    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    col = nv.Collection.create(None, dim=16, dtype="float32", metric="cosine", binary=False)
    bad = x.copy()
    bad[7, :8] = 1e-25
    with pytest.raises(ValueError, match="row 7 opens with 1e-25"):
        col.add(bad, ids=np.arange(50))
    assert col.count() == 0
    x[7, :3] = 0.0
    x[7, 3:8] = 1.0
    col.add(x, ids=np.arange(50))
    for dim in (4, 6, 8):  # row 7 is (0, 0, 0, 1, 1, 1, 1, 1, ...): cosine 1 at these prefixes
        q = np.zeros(dim, np.float32)
        q[3:] = 1.0
        r = col.search(q, k=3, dim=dim, mode="flat").to_pydict()
        assert 7 in r["id"] and abs(r["score"][r["id"].index(7)] - 1.0) < 1e-5
    # float16 and ip / l2 are unaffected (float16 values cannot underflow a float32 sum)
    ip = nv.Collection.create(None, dim=16, dtype="float32", metric="ip", binary=False)
    ip.add(bad)
    assert ip.count() == 50
