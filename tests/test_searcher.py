"""Collection.searcher (a search with fixed arguments answering NumPy arrays) against
Collection.search in every mode, and the one-call ivf route (csrc/cpu/ivf_search.cpp)
against the staged calls: same rows, padding, following writes, bad input."""
from __future__ import annotations

import numpy as np
import pytest

import nestvec as nv
from nestvec import _backend as be
from nestvec.collection import NoMergePolicy

from collection_helpers import assert_same_hits, per_query

pytest.importorskip("faiss")

D, N = 64, 3000


def data(n=N, d=D, seed=0, clusters=24, nq=21):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d))
    q = centers[rng.integers(0, clusters, nq)] + 0.6 * rng.standard_normal((nq, d))
    return x.astype(np.float32), q.astype(np.float32)


def table_arrays(t, nq, k, binary=False, l2=False):
    """A search table as the searcher's (ids, scores) [nq, k] with its padding."""
    ids = np.full((nq, k), -1, np.int64)
    sc = np.full((nq, k), np.iinfo(np.int32).max if binary else (np.inf if l2 else -np.inf),
                 np.int32 if binary else np.float32)
    for j, (i, s) in enumerate(per_query(t)):
        ids[j, :len(i)], sc[j, :len(s)] = i, s
    return ids, sc


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two indexed segments (1,200 and 1,500 rows) and a scanned one (300); cat 0..99."""
    pytest.importorskip("hnswlib")
    x, q = data()
    col = nv.Collection.create(str(tmp_path_factory.mktemp("s") / "c"), dim=D, schema={"cat": "int32"},
                               merge_policy=NoMergePolicy())
    cat = np.arange(N) % 100
    for a, b in ((0, 1200), (1200, 2700), (2700, N)):
        col.add(x[a:b], ids=np.arange(a, b), metadata={"cat": cat[a:b]})
    col.create_index("ivf", nlist=32, min_rows=1000)
    col.create_index("hnsw", M=8, ef_construction=64, min_rows=1000)
    yield col, q
    col.close()


@pytest.fixture(scope="module")
def all_indexed():
    """Every segment indexed: the searcher's one-call ivf route."""
    x, q = data(seed=3)
    col = nv.Collection.create(None, dim=D, merge_policy=NoMergePolicy())
    col.add(x[:1700], ids=np.arange(1700))
    col.add(x[1700:], ids=np.arange(1700, N))
    col.create_index("ivf", nlist=32, min_rows=100)
    return col, q


@pytest.mark.parametrize("mode", ["flat", "binary", "funnel", "ivf", "hnsw", "auto"])
@pytest.mark.parametrize("flt", [None, "cat < 30", "cat = 7"])
@pytest.mark.parametrize("k", [1, 10, 97])
def test_searcher_equals_search(mixed, mode, flt, k):
    col, q = mixed
    filt = None if flt is None else (nv.field("cat") < 30 if flt == "cat < 30" else nv.field("cat") == 7)
    s = col.searcher(k=k, mode=mode, filter=filt)
    ids, sc = s.search(q)
    want = table_arrays(col.search(q, k=k, mode=mode, filter=filt), len(q), k, binary=mode == "binary")
    np.testing.assert_array_equal(ids, want[0])
    np.testing.assert_array_equal(sc, want[1])
    assert ids.dtype == np.int64 and sc.dtype == (np.int32 if mode == "binary" else np.float32)


def test_flat_searcher_is_one_call(mixed):
    """A flat searcher scans every segment in one native call, with a filter too, but
    for one selective enough that the planner gathers its rows (cat = 7: 1%)."""
    col, q = mixed
    for filt, route in ((None, "one call"), (nv.field("cat") < 30, "one call"), (nv.field("cat") == 7, "planner")):
        s = col.searcher(k=10, mode="flat", filter=filt)
        assert route in repr(s)
        for b in (1, len(q)):
            ids, sc = s.search(q[:b])
            want = table_arrays(col.search(q[:b], k=10, mode="flat", filter=filt), b, 10)
            np.testing.assert_array_equal(ids, want[0])
            np.testing.assert_array_equal(sc, want[1])
    s = col.searcher(k=10, mode="flat", dim=32)  # prefix queries take the planner's route
    np.testing.assert_array_equal(s.search(q[:, :32])[0], table_arrays(col.search(q[:, :32], k=10, mode="flat", dim=32), len(q), 10)[0])


@pytest.mark.parametrize("kw", [{}, {"nprobe": 1}, {"nprobe": 3, "rescore": 3}, {"dim": 32}, {"ladder": (16, 32)}])
def test_one_call_route_equals_search(all_indexed, kw):
    col, q = all_indexed
    s = col.searcher(k=10, mode="ivf", **kw)
    plain = "dim" not in kw and "ladder" not in kw
    assert ("one call" in repr(s)) == plain
    for b in (1, 4, 7, len(q)):  # blocks of 4 queries over the threads
        ids, sc = s.search(q[:b])
        want = table_arrays(col.search(q[:b], k=10, mode="ivf", **kw), b, 10)
        np.testing.assert_array_equal(ids, want[0])
        np.testing.assert_array_equal(sc, want[1])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_call_matches_the_staged_calls(all_indexed, monkeypatch, threads):
    """The one native call against the probe rounds from Python: identical rows with
    every list probed; at a small nprobe the same hits but for lists whose scores tie
    within the float16 probe table's rounding (none here)."""
    from nestvec.collection.indexes import plan

    col, q = all_indexed
    old = be._C.get_num_threads()
    be._C.set_num_threads(threads)
    try:
        one = [col.search(q, k=10, mode="ivf", nprobe=p) for p in (32, 2)]
        monkeypatch.setattr(plan, "fits", lambda *a: False)
        staged = [col.search(q, k=10, mode="ivf", nprobe=p) for p in (32, 2)]
    finally:
        be._C.set_num_threads(old)
    for a, b in zip(one, staged):
        assert_same_hits(per_query(a), per_query(b), atol=1e-6)
    e1 = col.explain(q, k=10, mode="ivf", nprobe=2)
    monkeypatch.undo()
    assert e1["lists_probed"] == 2 * len(q) and e1["probe_rounds"] == 1 and e1["rows_rescored"] > 0


def test_one_call_widens_queries_that_find_too_few_rows():
    """A filter leaving few rows in the probed lists: the one call reports those
    queries and they are probed again wider, so each gets min(k, matches) rows."""
    x, q = data(seed=4)
    col = nv.Collection.create(None, dim=D, schema={"cat": "int32"})
    col.add(x, metadata={"cat": np.arange(N) % 10})
    col.create_index("ivf", nlist=128, min_rows=100)
    flt = nv.field("cat") == 3  # 10% of the rows: above the exhaustive route's threshold
    exact = col.search(q, k=40, mode="flat", filter=flt)
    kw = dict(k=40, mode="ivf", nprobe=1, rescore=1, filter=flt)  # 10 lists of ~23 rows: too few
    got = col.search(q, **kw)
    plan = col.explain(q, **kw)
    assert plan["probe_rounds"] >= 2
    assert got.num_rows == exact.num_rows == 40 * len(q)
    s = col.searcher(**kw)
    ids, _ = s.search(q)
    np.testing.assert_array_equal(ids, table_arrays(got, len(q), 40)[0])


def test_single_query_padding_metrics_and_string_ids():
    x, q = data(200, seed=5)
    for metric in ("cosine", "l2"):
        col = nv.Collection.create(None, dim=D, metric=metric, id_type="string")
        col.add(x[:7], ids=[f"r{i}" for i in range(7)])
        s = col.searcher(k=10)
        ids, sc = s.search(q[0])
        assert ids.shape == (10,) and ids.dtype == object and sc.shape == (10,)
        want = per_query(col.search(q[0], k=10))[0]
        assert list(ids[:7]) == list(want[0]) and all(i is None for i in ids[7:])
        np.testing.assert_array_equal(sc[:7], want[1])
        assert np.all(sc[7:] == (np.inf if metric == "l2" else -np.inf))


def test_follows_writes_refresh_and_close(tmp_path):
    x, q = data(500, seed=6)
    path = str(tmp_path / "c")
    col = nv.Collection.create(path, dim=D)
    col.add(x[:300], ids=np.arange(300))
    s = col.searcher(k=5, mode="flat")
    v0 = s.version
    reader = nv.open(path, read_only=True)
    rs = reader.searcher(k=5, mode="flat")
    col.add(x[300:], ids=np.arange(300, 500))
    col.delete(ids=[int(s.search(q[0])[0][0])])
    ids, _ = s.search(q)
    assert s.version > v0
    np.testing.assert_array_equal(ids, table_arrays(col.search(q, k=5, mode="flat"), len(q), 5)[0])
    old = rs.search(q)[0]
    np.testing.assert_array_equal(old, table_arrays(reader.search(q, k=5, mode="flat"), len(q), 5)[0])
    reader.refresh()
    np.testing.assert_array_equal(rs.search(q)[0], ids)
    col.close()
    with pytest.raises(ValueError, match="closed"):
        s.search(q)
    reader.close()


def test_bad_arguments(all_indexed):
    col, q = all_indexed
    with pytest.raises(ValueError, match="mode"):
        col.searcher(mode="nope")
    with pytest.raises(ValueError, match="k"):
        col.searcher(k=0)
    with pytest.raises(ValueError, match="nprobe"):
        col.searcher(mode="ivf", nprobe=33)
    with pytest.raises(ValueError, match="hnsw"):
        col.searcher(mode="hnsw")
    with pytest.raises(ValueError, match="dim"):
        col.searcher(dim=D + 1)
    s = col.searcher(k=3)
    with pytest.raises(ValueError, match="q"):
        s.search(np.zeros((2, D + 1), np.float32))
    with pytest.raises(ValueError, match="q"):
        s.search(np.full((1, D), np.nan, np.float32))


def test_native_call_checks_its_arguments(all_indexed):
    col, q = all_indexed
    s = col.searcher(k=10, mode="ivf")
    call = s._state[-1]
    C = be._C
    good = dict(queries=q, qcodes=None, nbytes=D // 8, centroids=call.table, probe_metric=1, nprobe=2,
                hsegs=call.hsegs, dsegs=call.dsegs, short_k=100, dim=D, metric=0, k=10, need=10, nlist=call.nlist)
    out = C.ivf_search(**good)
    assert out[0].shape == (len(q), 10) and out[3].shape == (len(q),) and out[6] is None
    # with the segments' id columns the call answers each hit's id
    snap = col._snapshot()
    seg_cols = [sg.file.int_ids() for sg in snap.segments]
    pad = [None] * (len(call.hsegs) - len(seg_cols))  # entries past the segments: ivf spans
    cols = seg_cols + pad
    with_ids = C.ivf_search(**good, ids=cols)
    want = np.full(out[1].shape, -1, np.int64)
    hit = out[2] >= 0
    want[hit] = [cols[a][b] for a, b in zip(out[1][hit], out[2][hit])]
    np.testing.assert_array_equal(with_ids[6], want)
    assert call.ids is not None  # the searcher's kept call answers ids
    for bad_ids in ([None] * (len(cols) + 1), [c.astype(np.int32) for c in seg_cols] + pad,
                    [c[:-1] for c in seg_cols] + pad, [c[::2] for c in seg_cols] + pad, "x"):
        with pytest.raises((ValueError, TypeError), match="ids"):
            C.ivf_search(**good, ids=bad_ids)
    # the row-major centroids give the same answer as the blocked table
    flat = call.cent.centroids.astype(np.float16)
    same = C.ivf_search(**{**good, "centroids": flat, "nlist": 0})
    for a, b in zip(out[:3], same[:3]):
        np.testing.assert_array_equal(a, b)
    bad = [
        {"centroids": call.table.astype(np.float64)},
        {"centroids": np.zeros((0, 16), np.float32)},
        {"nlist": call.nlist + 16},  # more lists than the blocks hold
        {"nlist": 0},  # a blocked table needs its lists' count
        {"centroids": np.ascontiguousarray(call.table[:, :, :8]), "nlist": 1},  # blocks of 8
        {"centroids": call.table.transpose(0, 2, 1)},  # not C-contiguous
        {"centroids": call.table.astype(np.float32)},  # blocked, but float32
        {"centroids": flat, "nlist": call.nlist + 1},
        {"qcodes": np.zeros((len(q) + 1, D // 8), np.uint8)},
        {"nbytes": D},  # more sign bits than values
        {"nprobe": 0},
        {"need": 11},
        {"metric": 7},
        {"probe_metric": 0},
        {"dim": 8},  # narrower than the centroids
        {"hsegs": [None] * (len(call.hsegs) + 1)},
        {"hsegs": [(t[0], t[1], t[2], t[3], None, t[5]) if t else None for t in call.hsegs]},
        {"dsegs": [None] * len(call.dsegs)},
    ]
    for b in bad:
        with pytest.raises((ValueError, TypeError)):
            C.ivf_search(**{**good, **b})


def cat_collection(seed):
    """Two ivf-indexed segments (2,000 + 1,000 rows), cat = row % 100, ids = rows."""
    x, q = data(seed=seed)
    col = nv.Collection.create(None, dim=D, schema={"cat": "int32"}, merge_policy=NoMergePolicy())
    cat = np.arange(N) % 100
    col.add(x[:2000], metadata={"cat": cat[:2000]})
    col.add(x[2000:], metadata={"cat": cat[2000:]})
    col.create_index("ivf", nlist=32, min_rows=100)
    return col, q, cat


@pytest.mark.parametrize("ids_filter", [False, True])
def test_selective_filter_route_in_one_call(monkeypatch, ids_filter):
    """A filter below EXACT_FRACTION: its rows' gathered codes (remembered with the
    mask) searched in the one native call, by search() and by the searcher's kept
    call, equal to the staged calls and exact up to the shortlist."""
    from nestvec.collection.indexes import plan

    col, q, _ = cat_collection(seed=7)
    if ids_filter:
        col.delete(ids=list(range(0, 3000, 7)))  # a live mask as well
    flt = nv.field("cat") < 3  # 3%: 60 + 30 rows
    s = col.searcher(k=10, mode="ivf", rescore=2, filter=flt)
    assert "one call" in repr(s)
    got = col.search(q, k=10, mode="ivf", rescore=2, filter=flt)
    assert col.explain(q, k=10, mode="ivf", rescore=2, filter=flt)["route"].startswith("exhaustive")
    for _ in range(2):  # the second search reads the remembered codes
        ids, sc = s.search(q)
        want = table_arrays(got, len(q), 10)
        np.testing.assert_array_equal(ids, want[0])
        np.testing.assert_array_equal(sc, want[1])
    monkeypatch.setattr(plan, "fits", lambda *a: False)
    assert_same_hits(per_query(col.search(q, k=10, mode="ivf", rescore=2, filter=flt)), per_query(got), atol=1e-6)
    exact = col.search(q, k=10, mode="flat", filter=flt)
    assert np.mean([len(set(a[0]) & set(b[0])) / 10 for a, b in zip(per_query(got), per_query(exact))]) >= 0.9


def test_selective_filter_over_many_rows_is_probed(monkeypatch):
    """Below EXACT_FRACTION but more than EXACT_ROWS allowed rows: ivf probes the
    filter's gathered per-list codes (widened) instead of scanning every allowed row,
    through search() and the searcher alike, and still answers min(k, matches) rows
    close to exact filtered search."""
    from nestvec.collection.indexes import plan

    col, q, cat = cat_collection(seed=11)
    flt = nv.field("cat") < 4  # 4%: 120 rows
    assert col.explain(q, k=10, mode="ivf", rescore=2, filter=flt)["route"].startswith("exhaustive")
    monkeypatch.setattr(plan, "EXACT_ROWS", 100)
    plan_ = col.explain(q, k=10, mode="ivf", rescore=2, filter=flt)
    assert plan_["route"].startswith("ivf probe"), plan_
    got = per_query(col.search(q, k=10, mode="ivf", rescore=2, filter=flt))
    s = col.searcher(k=10, mode="ivf", rescore=2, filter=flt)
    ids, _ = s.search(q)
    exact = per_query(col.search(q, k=10, mode="flat", filter=flt))
    assert all(len(a[0]) == 10 for a in got)
    for j, (a, b) in enumerate(zip(got, exact)):
        np.testing.assert_array_equal(ids[j], a[0])
        assert np.all(cat[np.asarray(a[0])] < 4)
    assert np.mean([len(set(a[0]) & set(b[0])) / 10 for a, b in zip(got, exact)]) >= 0.9


def test_filter_keys_are_remembered_per_expression():
    from nestvec.collection.filters import MaskCache

    a, b = nv.field("x") == 7, nv.field("x") == 7.0
    assert MaskCache.key(a) is MaskCache.key(a)
    assert MaskCache.key(a) != MaskCache.key(b)  # str() renders both alike
    assert MaskCache.key("x = 7") == ("sql", "x = 7")


@pytest.mark.parametrize("flt", [None, "cat < 40"])
@pytest.mark.parametrize("pieces", [1, 6])  # six small segments are searched as one pack
def test_funnel_over_few_rows_in_one_call(monkeypatch, flt, pieces):
    """A funnel over at most onecall.FUNNEL_ROWS allowed rows is one native call (search
    and the searcher's kept call): the staged calls' answer."""
    from nestvec.collection import onecall

    x, q = data(1500, seed=8)
    col = nv.Collection.create(None, dim=D, schema={"cat": "int32"}, merge_policy=NoMergePolicy())
    bounds = np.linspace(0, 1500, pieces + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        col.add(x[a:b], ids=np.arange(a, b), metadata={"cat": np.arange(a, b) % 100})
    col.delete(ids=[3, 500, 1499])
    filt = None if flt is None else nv.field("cat") < 40
    s = col.searcher(k=10, mode="funnel", filter=filt)
    assert "one call" in repr(s)
    got = col.search(q, k=10, mode="funnel", filter=filt)
    ids, sc = s.search(q)
    want = table_arrays(got, len(q), 10)
    np.testing.assert_array_equal(ids, want[0])
    np.testing.assert_array_equal(sc, want[1])
    monkeypatch.setattr(onecall, "FUNNEL_ROWS", 0)
    assert_same_hits(per_query(col.search(q, k=10, mode="funnel", filter=filt)), per_query(got), atol=1e-6)
    assert "planner" in repr(col.searcher(k=10, mode="funnel", filter=filt))


def test_allowed_counts_are_remembered_for_read_only_masks():
    from nestvec.collection.filters import allowed_count

    m = np.zeros(1000, bool)
    m[::3] = True
    assert allowed_count(m) == 334
    m[1] = True  # writable: counted each time
    assert allowed_count(m) == 335
    m.setflags(write=False)
    assert allowed_count(m) == 335 and allowed_count(m) == 335


@pytest.mark.parametrize("deletes", [False, True])
@pytest.mark.parametrize("flt", ["cat < 10", "cat < 50", "cat < 80"])
def test_mask_routes_of_probed_lists_agree(monkeypatch, deletes, flt):
    """A filter's mask reaches the probed lists by row, in list order (allow_at) or as
    the allowed rows gathered per list (plan._mask_route): the same answer each way,
    through the searcher's one call and the staged calls, and the route taken by
    default is the gathered lists for 10% and 50% and the mask in list order for 80%."""
    from nestvec.collection.indexes import plan

    x, q = data(seed=9)
    col = nv.Collection.create(None, dim=D, schema={"cat": "int32"}, merge_policy=NoMergePolicy())
    cat = (np.arange(N) * 37) % 100
    col.add(x[:1300], ids=np.arange(1300), metadata={"cat": cat[:1300]})
    col.add(x[1300:], ids=np.arange(1300, N), metadata={"cat": cat[1300:]})
    col.create_index("ivf", nlist=16, min_rows=100)
    if deletes:
        col.delete(ids=list(range(0, N, 11)))
    f = flt  # (an SQL filter string)
    seen = []
    real = plan._mask_route
    monkeypatch.setattr(plan, "_mask_route", lambda *a: seen.append(real(*a)) or seen[-1])
    want_ids, want_sc = col.searcher(k=10, mode="ivf", nprobe=3, filter=f).search(q)
    assert seen and seen[-1] == ("at" if flt == "cat < 80" else "lists")
    fits = plan.fits
    for route in ("row", "at", "lists"):
        monkeypatch.setattr(plan, "_mask_route", lambda *a, r=route: r)
        monkeypatch.setattr(plan, "fits", fits)
        s = col.searcher(k=10, mode="ivf", nprobe=3, filter=f)
        for _ in range(2):  # the second search reads the remembered copies
            ids, sc = s.search(q)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(sc, want_sc)
        monkeypatch.setattr(plan, "fits", lambda *a: False)  # the staged calls
        got = table_arrays(col.search(q, k=10, mode="ivf", nprobe=3, filter=f), len(q), 10)
        np.testing.assert_array_equal(got[0], want_ids)
        np.testing.assert_allclose(got[1], want_sc, atol=1e-6)
    live = np.ones(N, bool)
    if deletes:
        live[::11] = False
    allowed = live & (cat < int(flt.split("<")[1]))
    assert np.isin(want_ids[want_ids >= 0], np.flatnonzero(allowed)).all()


def test_mask_route_falls_back_when_copies_would_not_stay(monkeypatch):
    """plan._mask_route takes the gathered lists only while every segment's copy stays
    in its memo, then the mask in list order, else the mask by row (a writable mask:
    by row); answers are the same whichever it takes."""
    from nestvec.collection.filters import MaskMemo
    from nestvec.collection.indexes import plan

    x, q = data(seed=10)
    col = nv.Collection.create(None, dim=D, schema={"cat": "int32"}, merge_policy=NoMergePolicy())
    col.add(x, ids=np.arange(N), metadata={"cat": np.arange(N) % 100})
    col.create_index("ivf", nlist=16, min_rows=100)
    f = nv.field("cat") < 10
    seen = []
    real = plan._mask_route
    monkeypatch.setattr(plan, "_mask_route", lambda *a: seen.append(real(*a)) or seen[-1])
    want = col.searcher(k=10, mode="ivf", nprobe=3, filter=f).search(q)
    monkeypatch.setattr(plan, "_LISTS", MaskMemo(1024))  # the gathered lists no longer fit
    got_at = col.searcher(k=10, mode="ivf", nprobe=3, filter=f).search(q)
    monkeypatch.setattr(plan, "_ROWS", MaskMemo(1024))  # nor the mask in list order
    got_row = col.searcher(k=10, mode="ivf", nprobe=3, filter=f).search(q)
    assert seen == ["lists", "at", "row"]
    for got in (got_at, got_row):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    m = np.ones(N, bool)  # a writable mask is read by row
    pl = type("P", (), {"masks": [m], "counts": [N], "segments": col._snapshot().segments})()
    assert real(pl, [0]) == "row"


def test_repeated_search_reuses_its_plan(tmp_path):
    """search() keeps a Searcher for an argument set seen twice on a snapshot: the
    third call answers through it, with the same table as the full path; writes
    empty the memo (new rows are found), and arguments the memo does not take
    (columns, explain, score cut-offs, non-int numbers, text) take the full path."""
    pytest.importorskip("hnswlib")
    x, q = data(n=2400, seed=8, nq=5)
    col = nv.Collection.create(str(tmp_path / "c"), dim=D, schema={"cat": "int32"}, merge_policy=NoMergePolicy())
    for a in (0, 1200):
        col.add(x[a:a + 1200], ids=np.arange(a, a + 1200), metadata={"cat": np.arange(a, a + 1200) % 100})
    col.create_index("ivf", nlist=16, min_rows=500)
    cases = [dict(mode=m, filter=f) for m in ("flat", "binary", "funnel", "ivf", "auto")
             for f in (None, nv.field("cat") < 5, "cat < 60")] + [dict(mode="ivf", nprobe=2, rescore=3, k=3)]
    for kw in cases:
        kw = {"k": 10, **kw}
        full = col.search(q, **kw)
        assert col.search(q, **kw).equals(full)  # second sighting: its Searcher is kept
        assert any(s is not None for s in col._plans.values())
        assert col.search(q, **kw).equals(full)  # through the kept Searcher
        one = col.search(q[2], **kw).to_pydict()
        rows = [i for i, j in enumerate(full.column("query").to_pylist()) if j == 2]
        assert one["query"] == [0] * len(rows)
        assert one["id"] == [full.column("id")[i].as_py() for i in rows]
        assert one["score"] == [full.column("score")[i].as_py() for i in rows]
    keep = dict(k=10, mode="ivf", filter="cat < 60")
    col.search(q, **keep)
    new = x[:3] * 1.0
    col.add(new, ids=[9000, 9001, 9002], metadata={"cat": [1, 1, 1]})
    assert not col._plans  # a new version empties the memo
    assert 9000 in col.search(new[:1], **keep).column("id").to_pylist()
    col._plans.clear()
    for extra in (dict(columns=["cat"]), dict(explain=True), dict(min_score=0.0)):
        for _ in range(3):
            col.search(q, k=10, **extra)
    assert not any(s is not None for s in col._plans.values())
    with pytest.raises(TypeError, match="k"):
        col.search(q, k=10.0)
    col.close()


def test_search_memo_does_not_keep_a_dropped_handle(tmp_path):
    """The memo's Searcher refers to its collection weakly: a writer dropped without
    close() still releases its lock at once (no reference cycle waiting for the GC)."""
    import gc

    path = str(tmp_path / "c")
    col = nv.Collection.create(path, dim=8)
    col.add(np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32), ids=np.arange(50))
    q = np.ones(8, np.float32)
    for _ in range(3):
        col.search(q, k=3)
    assert any(s is not None for s in col._plans.values())
    gc.disable()
    try:
        del col
        again = nv.open(path)  # the writer lock came free with the last reference
    finally:
        gc.enable()
    assert again.search(q, k=3).num_rows == 3
    again.close()
