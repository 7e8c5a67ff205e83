"""search(min_score=) for cosine / ip and search(max_distance=) for l2 and Hamming: the
same rows as the uncut search, cut where the score passes the threshold."""
import numpy as np
import pyarrow as pa
import pytest

import nestvec as nv


def _col(metric, n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    col = nv.Collection.create(None, dim=d, dtype="float32", metric=metric,
                               schema={"tag": "int32"})
    col.add(x, metadata={"tag": (np.arange(n) % 4).astype(np.int32)})
    return col, x, rng


def _expect_cut(full: pa.Table, keep) -> pa.Table:
    return full.filter(pa.array(keep(full.column("score").to_numpy())))


@pytest.mark.parametrize("metric", ["cosine", "ip"])
@pytest.mark.parametrize("mode", ["flat", "funnel", "auto"])
def test_min_score(metric, mode):
    col, x, rng = _col(metric)
    q = rng.standard_normal((3, 16)).astype(np.float32)
    full = col.search(q, k=50, mode=mode, filter=nv.field("tag") != 2)
    thr = float(np.median(full.column("score").to_numpy()))
    cut = col.search(q, k=50, mode=mode, filter=nv.field("tag") != 2, min_score=thr)
    assert cut.equals(_expect_cut(full, lambda s: s >= thr))
    assert 0 < cut.num_rows < full.num_rows
    # every query keeps its own best-first prefix
    for qi in range(3):
        a = full.filter(pa.compute.equal(full.column("query"), qi)).column("id").to_pylist()
        b = cut.filter(pa.compute.equal(cut.column("query"), qi)).column("id").to_pylist()
        assert a[:len(b)] == b
    assert col.search(q, k=50, mode=mode, min_score=10.0 if metric == "cosine" else 1e9).num_rows == 0


def test_max_distance_l2_and_binary():
    col, x, rng = _col("l2")
    q = rng.standard_normal((2, 16)).astype(np.float32)
    full = col.search(q, k=40, mode="flat")
    thr = float(np.median(full.column("score").to_numpy()))
    cut = col.search(q, k=40, mode="flat", max_distance=thr)
    assert cut.equals(_expect_cut(full, lambda s: s <= thr))
    # Hamming distances in mode="binary", on any metric
    colc, _, _ = _col("cosine")
    fb = colc.search(q, k=60, mode="binary")
    cb = colc.search(q, k=60, mode="binary", max_distance=6)
    assert cb.equals(_expect_cut(fb, lambda s: s <= 6))
    # a radius search: k as large as the collection, cut by the threshold
    everything = col.search(q[:1], k=10 ** 6, mode="flat", max_distance=thr)
    all_rows = col.search(q[:1], k=len(x), mode="flat")
    assert everything.equals(_expect_cut(all_rows, lambda s: s <= thr))
    d2 = ((x - q[0]) ** 2).sum(1)
    assert abs(everything.num_rows - int((d2 <= thr).sum())) <= 1  # float32 vs float64 at the edge


@pytest.mark.parametrize("metric, mode, kwargs, exc, match", [
    ("l2", "flat", dict(min_score=0.5), ValueError, "use max_distance"),
    ("cosine", "flat", dict(max_distance=0.5), ValueError, "use min_score"),
    ("ip", "auto", dict(max_distance=1), ValueError, "use min_score"),
    ("cosine", "binary", dict(min_score=3), ValueError, "use max_distance"),
    ("cosine", "flat", dict(min_score=0.1, max_distance=1), ValueError, "not both"),
    ("cosine", "flat", dict(min_score="0.5"), TypeError, "min_score"),
    ("cosine", "flat", dict(min_score=True), TypeError, "min_score"),
    ("l2", "flat", dict(max_distance=float("nan")), ValueError, "NaN"),
])
def test_threshold_errors(metric, mode, kwargs, exc, match):
    col, _, rng = _col(metric, n=20)
    with pytest.raises(exc, match=match):
        col.search(np.ones(16, np.float32), k=3, mode=mode, **kwargs)
