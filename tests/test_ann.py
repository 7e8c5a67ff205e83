"""ivf and hnsw search modes against exact search: recall floors, equality at full
probe / large ef, the (score, position) merge of indexed and scanned segments,
filters and deletes in every mode, explain, in-memory collections."""
from __future__ import annotations

import numpy as np
import pytest

import nestvec as nv
from nestvec.collection import NoMergePolicy

from collection_helpers import assert_same_hits, per_query

pytest.importorskip("faiss")
pytest.importorskip("hnswlib")

D, N = 64, 3000


@pytest.fixture(autouse=True)
def hnsw_graph_under_filters(monkeypatch):
    """These collections are small: every filter would allow at most
    plan.HNSW_EXACT_ROWS rows, which hnsw searches exhaustively. The tests here cover
    the graph's own route under filters (test_hnsw_small_filters_search_their_rows
    the exhaustive one)."""
    from nestvec.collection.indexes import plan

    monkeypatch.setattr(plan, "HNSW_EXACT_ROWS", 0)


def data(n=N, d=D, seed=0, clusters=24):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d))
    q = centers[rng.integers(0, clusters, 20)] + 0.6 * rng.standard_normal((20, d))
    return x.astype(np.float32), q.astype(np.float32)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """One collection, two segments indexed (1,200 and 1,500 rows), one scanned (300),
    both indexes; cat: 0..99 per row."""
    x, q = data()
    path = str(tmp_path_factory.mktemp("ann") / "c")
    col = nv.Collection.create(path, dim=D, schema={"cat": "int32"}, merge_policy=NoMergePolicy())
    cat = np.arange(N) % 100
    for a, b in ((0, 1200), (1200, 2700), (2700, N)):
        col.add(x[a:b], ids=np.arange(a, b), metadata={"cat": cat[a:b]})
    col.create_index("ivf", nlist=32, min_rows=1000)
    col.create_index("hnsw", M=8, ef_construction=64, min_rows=1000)
    yield col, x, q, cat
    col.close()


def recall(got, want, k=10):
    return np.mean([len(set(g[0][:k].tolist()) & set(w[0][:k].tolist())) / max(1, min(k, len(w[0])))
                    for g, w in zip(per_query(got), per_query(want))])


def test_indexes_report(indexed):
    col = indexed[0]
    ix = col.indexes()
    assert set(ix) == {"ivf", "hnsw"}
    assert ix["ivf"]["nlist"] == 32 and ix["ivf"]["segments_indexed"] == 2 and ix["ivf"]["rows_indexed"] == 2700
    assert ix["hnsw"]["segments_indexed"] == 2 and ix["hnsw"]["M"] == 8
    assert 1 <= ix["ivf"]["nprobe"] <= 32 and ix["hnsw"]["ef"] >= 10  # tuned
    assert ix["ivf"]["tuned_recall"] >= 0.9


@pytest.mark.parametrize("mode", ["ivf", "hnsw", "auto"])
def test_recall_floor_at_tuned_defaults(indexed, mode):
    col, x, q, _ = indexed
    exact = col.search(q, k=10, mode="flat")
    got = col.search(q, k=10, mode=mode)
    assert recall(got, exact) >= 0.9
    assert got.num_rows == 10 * len(q)


def test_ivf_every_list_equals_flat_and_covers_the_funnel(indexed):
    col, x, q, _ = indexed
    # a shortlist covering every row of a segment: exact, in every segment
    assert_same_hits(per_query(col.search(q, k=10, mode="ivf", nprobe=32, rescore=300)),
                     per_query(col.search(q, k=10, mode="flat")))
    # every list probed: the funnel's candidates, and more (one shortlist per group)
    ivf = col.search(q, k=10, mode="ivf", nprobe=32)
    funnel = col.search(q, k=10, mode="funnel")
    exact = col.search(q, k=10, mode="flat")
    assert recall(ivf, exact) >= recall(funnel, exact)


def test_hnsw_large_ef_equals_flat(indexed):
    col, x, q, _ = indexed
    assert_same_hits(per_query(col.search(q, k=10, mode="hnsw", ef=1500, rescore=300)),
                     per_query(col.search(q, k=10, mode="flat")))


def test_prefix_dims_and_ladder(indexed):
    col, x, q, _ = indexed
    for mode, kw in (("ivf", {"nprobe": 32, "rescore": 300}), ("hnsw", {"ef": 1500, "rescore": 300})):
        assert_same_hits(per_query(col.search(q, k=5, dim=32, mode=mode, **kw)),
                         per_query(col.search(q, k=5, dim=32, mode="flat")))
        # prefix-only queries (dim values) are served down to the index's own prefix
        got = col.search(q[:, :64], k=5, dim=64, mode=mode, ladder=(16, 32), **kw)
        assert recall(got, col.search(q, k=5, mode="flat"), k=5) >= 0.8


@pytest.mark.parametrize("mode", ["flat", "binary", "funnel", "ivf", "hnsw", "auto"])
@pytest.mark.parametrize("cut", [1, 3, 10, 60])  # allowed categories: 3, 9, 30, 180 rows per segment...
def test_filters_return_min_k_matches(indexed, mode, cut):
    col, x, q, cat = indexed
    flt = nv.field("cat") < cut
    matches = int((cat < cut).sum())
    for k in (1, 10, 50):
        got = col.search(q, k=k, mode=mode, filter=flt, columns=["cat"])
        per = per_query(got)
        assert len(per) == len(q) and all(len(ids) == min(k, matches) for ids, _ in per), (mode, k)
        assert max(got.column("cat").to_pylist()) < cut
    if mode in ("ivf", "hnsw"):
        exact = col.search(q, k=10, mode="flat", filter=flt)
        big = {"ivf": {"nprobe": 32, "rescore": 300}, "hnsw": {"ef": 1500, "rescore": 300}}[mode]
        assert_same_hits(per_query(col.search(q, k=10, mode=mode, filter=flt, **big)), per_query(exact))
        assert recall(col.search(q, k=10, mode=mode, filter=flt), exact) >= 0.85


def more_queries(n, seed, clusters=24):
    """Queries of ``data()``'s distribution (its centres), from another seed."""
    centers = np.random.default_rng(0).standard_normal((clusters, D))
    rng = np.random.default_rng(seed)
    return (centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, D))).astype(np.float32)


@pytest.mark.parametrize("mode", ["ivf", "hnsw", "auto"])
def test_filtered_recall_floor_at_half_selectivity(indexed, mode):
    """Half the rows allowed: the tuned defaults keep recall@10 >= 0.99 against exact
    filtered search (ivf widens nprobe by 1 / selectivity, hnsw asks ef / selectivity
    candidates), and every query gets its k rows."""
    col, _, _, _ = indexed
    q = more_queries(200, seed=7)
    flt = nv.field("cat") < 50
    exact = col.search(q, k=10, mode="flat", filter=flt)
    got = col.search(q, k=10, mode=mode, filter=flt)
    assert got.num_rows == 10 * len(q)
    assert recall(got, exact) >= 0.99, mode
    if mode == "ivf":
        plan = col.explain(q, k=10, mode="ivf", filter=flt)
        assert plan["nprobe"] >= min(32, 2 * col.indexes()["ivf"]["nprobe"]), plan


def test_deletes_in_index_modes(tmp_path):
    x, q = data(2000)
    col = nv.Collection.create(str(tmp_path / "d"), dim=D, merge_policy=NoMergePolicy())
    col.add(x, ids=np.arange(2000))
    col.create_index("ivf", nlist=16, min_rows=500, tune=False)
    col.create_index("hnsw", M=8, ef_construction=40, min_rows=500, tune=False)
    gone = np.arange(0, 2000, 3)
    col.delete(ids=gone)
    assert col.indexes()["ivf"]["segments_indexed"] == 1  # deletions keep the index
    for mode in ("ivf", "hnsw"):
        got = col.search(q, k=20, mode=mode)
        assert got.num_rows == 20 * len(q)
        assert not set(got.column("id").to_pylist()) & set(gone.tolist())
    col.delete(filter="true")
    for mode in ("ivf", "hnsw", "auto"):
        assert col.search(q, k=5, mode=mode).num_rows == 0
    col.close()


def test_explain(indexed):
    col, x, q, cat = indexed
    e = col.explain(q[:2], k=10, mode="ivf", nprobe=4)
    assert e["mode"] == "ivf" and e["requested"] == "ivf" and e["nprobe"] == 4
    assert e["indexed_segments"] == 2 and e["scanned_segments"] == 1 and e["lists_probed"] == 8
    assert 0 < e["rows_scanned"] < 2 * N and 0 < e["rows_rescored"] <= 2 * 2 * 100
    e = col.explain(q[:1], k=10, filter=nv.field("cat") < 1)  # 1%: exhaustive over the matches
    assert e["mode"] in ("flat", "funnel") and e["matches"] == 30
    e = col.explain(q[:1], k=10, filter=nv.field("cat") < 4)  # 4%, more than the shortlist
    assert e["mode"] == "ivf" and e["route"].startswith("exhaustive") and e["matches"] == 120
    e = col.explain(q[:1, :16], k=10, dim=16)  # narrower than the ivf index's prefix: the funnel
    assert e["mode"] == "funnel"
    e = col.explain(q[:1], k=10, filter=nv.field("cat") < 50)
    assert e["mode"] == "ivf" and "widened" in e["route"]
    e = col.explain(q[:1], k=10, mode="hnsw")
    assert e["mode"] == "hnsw" and e["ef"] >= 10
    t = col.search(q[:1], k=3, mode="ivf", explain=True)
    assert b"nestvec.explain" in t.schema.metadata and t.num_rows == 3


def test_in_memory_collection():
    x, q = data(1500)
    col = nv.Collection.create(None, dim=D)
    col.add(x)
    col.create_index("ivf", nlist=8, min_rows=100)
    col.create_index("hnsw", M=8, min_rows=100)
    exact = col.search(q, k=10, mode="flat")
    assert recall(col.search(q, k=10, mode="ivf"), exact) >= 0.9
    assert recall(col.search(q, k=10, mode="hnsw"), exact) >= 0.9
    col.add(x[:700] + 0.01)  # a large add: indexed before its commit
    assert col.indexes()["ivf"]["segments_indexed"] == 2 and col.indexes()["hnsw"]["segments_indexed"] == 2
    col.compact()
    assert col.search(q, k=10, mode="ivf").num_rows == 10 * len(q)
    col.drop_index("hnsw")
    assert set(col.indexes()) == {"ivf"}


def test_codes_centred_and_no_stored_codes(tmp_path):
    x, q = data(2000)
    col = nv.Collection.create(None, dim=D, binary=False)
    col.add(x)
    col.create_index("ivf", nlist=16, min_rows=100, codes="centred")
    assert col.indexes()["ivf"]["codes"] == "centred"
    exact = col.search(q, k=10, mode="flat")
    assert recall(col.search(q, k=10, mode="ivf"), exact) >= 0.9
    assert col.search(q, k=10).num_rows == 10 * len(q)  # auto on an index without stored codes
    assert_same_hits(per_query(col.search(q, k=10, mode="ivf", nprobe=16, rescore=200)), per_query(exact))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_other_metrics(metric):
    x, q = data(2000)
    col = nv.Collection.create(None, dim=D, metric=metric)
    col.add(x)
    col.create_index("ivf", nlist=16, min_rows=100)
    col.create_index("hnsw", M=8, min_rows=100)
    exact = col.search(q, k=10, mode="flat")
    for mode in ("ivf", "hnsw"):
        assert recall(col.search(q, k=10, mode=mode), exact) >= 0.85, mode
    assert_same_hits(per_query(col.search(q, k=10, mode="ivf", nprobe=16, rescore=200)), per_query(exact),
                     atol=1e-3)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_probe_routes_agree(metric, monkeypatch):
    """A single query's probe (a NumPy product for small centroid sets, dense_topk for
    large ones) picks the same lists either way, and so the same hits."""
    from nestvec.collection.indexes import ivf

    x, q = data(2000)
    col = nv.Collection.create(None, dim=D, metric=metric)
    col.add(x)
    col.create_index("ivf", nlist=32, min_rows=100)
    cent = col._snap.indexes["ivf"]
    got = {}
    for name, values in (("numpy", 1 << 40), ("dense_topk", 0)):
        monkeypatch.setattr(ivf, "PROBE_NUMPY_VALUES", values)
        got[name] = ([cent.probe(q[j:j + 1], 5) for j in range(len(q))],
                     [col.search(q[j], k=10, mode="ivf", nprobe=5) for j in range(len(q))])
    for a, b in zip(got["numpy"][0], got["dense_topk"][0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got["numpy"][1], got["dense_topk"][1]):
        assert_same_hits(per_query(a), per_query(b), atol=1e-6)


def test_numpy_probe_matches_the_axis_selection():
    """The NumPy probe selects row by row; the lists equal the selection along axis 1
    (argpartition, then a stable sort of the kept scores), ties and nprobe = nlist too."""
    from nestvec.collection.indexes import ivf

    rng = np.random.default_rng(5)
    cent = rng.standard_normal((64, 16)).astype(np.float32)
    cent[7] = cent[3]  # exact ties
    cent /= np.linalg.norm(cent, axis=1, keepdims=True)
    obj = ivf.IvfCentroids.__new__(ivf.IvfCentroids)
    obj.centroids, obj.spec, obj._half_sq = cent, {"metric": "cosine"}, None
    q = rng.standard_normal((2, 16)).astype(np.float32)
    q[1] = cent[3]
    s = -(q @ cent.T)
    for p in (1, 5, 63, 64):
        part = np.argpartition(s, p - 1, axis=1)[:, :p] if p < 64 else np.broadcast_to(np.arange(64), s.shape)
        want = np.take_along_axis(part, np.argsort(np.take_along_axis(s, part, 1), axis=1, kind="stable"), 1)
        np.testing.assert_array_equal(obj.probe(q, p), want)
        np.testing.assert_array_equal(obj.probe(q[1:], p), want[1:])


def test_queries_are_not_modified(indexed):
    col, x, q, _ = indexed
    q0 = q.copy()
    for mode in ("ivf", "hnsw"):
        col.search(q, k=5, mode=mode)
        col.search(q[0], k=5, mode=mode)
    np.testing.assert_array_equal(q, q0)



def test_hnsw_ef_above_the_segment_rows(tmp_path):
    """A small graph and ef, k near its size: every query still gets its rows."""
    rng = np.random.default_rng(3)
    x, q = rng.standard_normal((300, D)).astype(np.float32), rng.standard_normal((8, D)).astype(np.float32)
    col = nv.Collection.create(str(tmp_path / "c"), dim=D)
    col.add(x, ids=np.arange(len(x)))
    col.create_index("hnsw", M=4, ef_construction=8, min_rows=0)
    got = col.search(q, k=300, mode="hnsw", ef=1200, rescore=10)
    assert got.num_rows == 300 * len(q)
    col.close()


def test_hnsw_query_that_reaches_fewer_rows_than_asked():
    """hnswlib refuses a whole batch when one query reaches fewer than k rows (a sparse
    graph, k near its size): each query then asks for fewer and pads with -1."""
    import hnswlib

    from nestvec.collection.indexes.hnsw import HnswGraph

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    g = hnswlib.Index(space="ip", dim=16)
    g.init_index(max_elements=300, M=4, ef_construction=8, random_seed=1)
    g.add_items(x)
    g.set_ef(1200)
    with pytest.raises(RuntimeError):
        g.knn_query(x[:5], k=300)
    labels = HnswGraph._search_each(g, x[:5], 300)
    assert labels.shape == (5, 300)
    for row in labels:
        got = row[row >= 0]
        assert len(got) >= 200 and len(set(got.tolist())) == len(got) and (row[len(got):] == -1).all()


def test_allowed_rows_remembers_read_only_masks_only():
    from nestvec.collection.indexes import plan

    rng = np.random.default_rng(5)
    m = rng.random(1000) < 0.1
    m.setflags(write=False)
    a = plan.allowed_rows(m)
    np.testing.assert_array_equal(a, np.flatnonzero(m))
    assert plan.allowed_rows(m) is a  # the same mask again: remembered
    w = rng.random(1000) < 0.1  # writable: never remembered (it could change)
    first = plan.allowed_rows(w)
    w[first[0]] = False
    np.testing.assert_array_equal(plan.allowed_rows(w), np.flatnonzero(w))


def test_hnsw_small_filters_search_their_rows(indexed, monkeypatch):
    """A filter allowing at most HNSW_EXACT_ROWS rows (default 65,536) is searched over
    its rows exhaustively in hnsw mode, whatever its selectivity: the graph would be
    asked for ef / selectivity candidates."""
    from nestvec.collection.indexes import plan

    monkeypatch.setattr(plan, "HNSW_EXACT_ROWS", 1 << 16)
    col, x, q, cat = indexed
    flt = nv.field("cat") < 30  # 30%: not selective by EXACT_FRACTION
    plan_ = col.explain(q, k=10, mode="hnsw", filter=flt)
    assert plan_["route"].startswith("exhaustive") and "fewer rows" in plan_["route"]
    exact = col.search(q, k=10, mode="flat", filter=flt)
    got = col.search(q, k=10, mode="hnsw", filter=flt)
    assert got.num_rows == exact.num_rows and recall(got, exact) >= 0.95
    monkeypatch.setattr(plan, "HNSW_EXACT_ROWS", 100)  # more rows than that: the graph
    assert col.explain(q, k=10, mode="hnsw", filter=flt)["route"].startswith("hnsw graph")
