"""Indexes of a sharded collection (local Ray, 2 CPUs): each shard builds its own ivf /
hnsw through its writer actor, one cluster version names them all. With every list
probed (ivf) or every row a candidate (hnsw) a sharded index search finds exactly
the single collection's flat results; filters, explain, drop, reopen, and bad input
(a clear error, nothing written)."""
from __future__ import annotations

import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("faiss")
pytest.importorskip("hnswlib")

import nestvec as nv  # noqa: E402
from nestvec.distributed import ShardedCollection  # noqa: E402
from ray_helpers import deadline_fixture  # noqa: E402
from test_distributed import D, SCHEMA, queries, rows  # noqa: E402

_deadline = deadline_fixture(180)

NLIST = 8
# every option fixed: no tuning (it searches 200 queries per shard), small segments indexed
IVF = {"nlist": NLIST, "min_rows": 50, "tune": False, "rescore": 10, "nprobe": 2}
HNSW = {"M": 8, "ef_construction": 64, "min_rows": 50, "tune": False, "ef": 16}


@pytest.fixture(scope="module")
def indexed(ray_session, tmp_path_factory):
    """3 shards with ivf and hnsw, and a single collection (no index) with the same rows."""
    base = tmp_path_factory.mktemp("indexed")
    sc = ShardedCollection.create(base / "sharded", shards=3, dim=D, schema=SCHEMA)
    one = nv.Collection.create(base / "single", dim=D, schema=SCHEMA)
    for b, n in enumerate((700, 300)):
        x, ids, meta = rows(n, 10 + b, 1000 * b)
        for c in (sc, one):
            c.add(x, ids=ids, metadata=meta)
    sc.create_index("ivf", **IVF)
    sc.create_index("hnsw", **HNSW)
    yield sc, one
    sc.close()
    one.close()


def same_hits(a, b):
    """ids equal, scores equal to float32 rounding (an index rescoring its candidates
    reads the rows through the candidate kernel, flat through the scan)."""
    assert a.column("query").equals(b.column("query")) and a.column("id").equals(b.column("id")), \
        (a.slice(0, 12).to_pydict(), b.slice(0, 12).to_pydict())
    np.testing.assert_allclose(a.column("score").to_numpy(), b.column("score").to_numpy(), atol=2e-6)
    for c in a.column_names[3:]:
        assert a.column(c).equals(b.column(c))


def test_index_search_equals_flat(indexed):
    sc, one = indexed
    q = queries(7)
    spec = sc.indexes()
    assert set(spec) == {"ivf", "hnsw"}
    ivf = spec["ivf"]
    assert ivf["shards"] == 3 and len(ivf["per_shard"]) == 3 and ivf["nlist"] == NLIST
    assert ivf["rows_indexed"] == sc.count() and ivf["options"] == IVF
    assert all(p["nlist"] == NLIST for p in ivf["per_shard"])
    for kw in ({}, {"filter": nv.field("g") == 3}, {"filter": "g >= 1 AND tag = 't2'"},
               {"columns": ["tag", "vector"]}, {"k": 1}, {"k": 400}, {"filter": nv.field("g") == 99}):
        kw = dict({"k": 10}, **kw)
        want = one.search(q, mode="flat", **kw)
        # every list probed, a shortlist covering every row of a shard: exact
        same_hits(sc.search(q, mode="ivf", nprobe=NLIST, rescore=1000, **kw), want)
        # most rows of a shard graph candidates (hnswlib cannot always return every
        # row of a graph): exact on these small shards
        if kw["k"] <= 10:
            same_hits(sc.search(q, mode="hnsw", ef=200, rescore=1000, **kw), want)
    # the defaults (2 lists of 8 per shard; ef 16): approximate, and never better than exact
    got = sc.search(q, k=10, mode="ivf").column("score").to_numpy().reshape(7, 10)
    best = one.search(q, k=10, mode="flat").column("score").to_numpy().reshape(7, 10)
    assert (got <= best + 1e-6).all() and (got >= best - 1).all()
    # min_score cuts on every shard
    same_hits(sc.search(q, k=10, mode="ivf", nprobe=NLIST, rescore=1000, min_score=0.3),
              one.search(q, k=10, mode="flat", min_score=0.3))


def test_index_explain(indexed):
    sc, one = indexed
    q = queries(4)
    plan = sc.explain(q, k=5, mode="ivf", nprobe=3)
    assert plan["mode"] == plan["requested"] == "ivf" and plan["shards"] == 3 and plan["queries"] == 4
    assert plan["version"] == sc.version and plan["shard_versions"] == sc.shard_versions
    assert [p["nprobe"] for p in plan["per_shard"]] == [3, 3, 3]
    assert plan["lists_probed"] == 4 * 3 * 3 == sum(p["lists_probed"] for p in plan["per_shard"])
    assert plan["rows"] == plan["matches"] == sc.count()
    assert 0 < plan["rows_scanned"] < 4 * sc.count() and plan["ms"] > 0
    plan = sc.explain(q, k=5, mode="hnsw", ef=20, filter=nv.field("g") != 0)
    assert plan["mode"] == "hnsw" and plan["filtered"] and all(p["ef"] == 20 for p in plan["per_shard"])
    assert plan["matches"] == sc.count(filter=nv.field("g") != 0)
    assert sc.explain(q, k=5)["mode"] == "ivf"  # auto picks the index
    plan = sc.explain(q, k=5, mode="funnel", funnel="two_round")
    assert plan["funnel"] == "two_round" and plan["rows_rescored"] > 0
    t = sc.search(q, k=5, mode="ivf", explain=True)
    assert b"nestvec.explain" in t.schema.metadata
    assert sc.search(q, k=5, mode="ivf").schema.metadata is None


def test_index_bad_input_writes_nothing(indexed, tmp_path):
    sc, _ = indexed
    def shard_heads():
        out = []
        for p in sc.shard_paths:
            with nv.open(p, read_only=True) as c:
                out.append(c.version)
        return out

    state = (sc.version, sc.shard_versions, shard_heads())
    lo, hi = min(sc._m["shard_rows"]), max(sc._m["shard_rows"])
    assert lo < hi

    def unchanged():
        with ShardedCollection.open(sc.path, read_only=True) as r:
            assert r.version == state[0] and r.shard_versions == state[1]
        assert sc.version == state[0] and sc.shard_versions == state[1]
        assert shard_heads() == state[2]

    for call, err, match in [
        (lambda: sc.create_index("pq"), ValueError, "kind"),
        (lambda: sc.create_index("ivf", nlists=8, replace=True), TypeError, "unknown option"),
        (lambda: sc.create_index("ivf", nlist=0, replace=True), ValueError, "nlist"),
        (lambda: sc.create_index("ivf", nlist=hi + 1, replace=True), ValueError, "nlist"),
        (lambda: sc.create_index("ivf", nlist=hi, replace=True), ValueError, r"nlist.*shard . holds \d+ rows"),
        (lambda: sc.create_index("ivf", nprobe=0, replace=True), ValueError, "nprobe"),
        (lambda: sc.create_index("ivf", **IVF), ValueError, "already has"),
        (lambda: sc.create_index("ivf", replace="yes"), TypeError, "replace"),
        (lambda: sc.drop_index("pq"), ValueError, "kind"),
        (lambda: sc.search(queries(), nprobe=0), ValueError, "nprobe"),
        (lambda: sc.search(queries(), mode="ivf", nprobe=NLIST + 1), ValueError, "nprobe"),
        (lambda: sc.search(queries(), mode="hnsw", ef=0), ValueError, "ef"),
        (lambda: sc.search(queries(), mode="ivf", min_score="x"), (TypeError, ValueError), "min_score"),
    ]:
        with pytest.raises(err, match=match):
            call()
    unchanged()
    with ShardedCollection.open(sc.path, read_only=True) as r:
        with pytest.raises(PermissionError):
            r.create_index("ivf", replace=True)
    # an empty sharded collection, and one with an empty shard
    with ShardedCollection.create(tmp_path / "e", shards=2, dim=D) as e:
        with pytest.raises(ValueError, match="no rows"):
            e.create_index("ivf")
        with pytest.raises(ValueError, match="no ivf index"):
            e.search(queries(), mode="ivf")
        e.add(rows(1, 3, 0)[0], ids=[0])
        with pytest.raises(ValueError, match="shard . has no rows"):
            e.create_index("hnsw")
        assert e.version == 1 and e.indexes() == {}
    unchanged()


def test_index_reopen_refresh_drop(indexed):
    sc, one = indexed
    q = queries(5)
    want = one.search(q, k=10, mode="flat")
    exact = {"mode": "ivf", "nprobe": NLIST, "rescore": 1000}
    with ShardedCollection.open(sc.path, read_only=True) as r:
        assert set(r.indexes()) == {"ivf", "hnsw"}
        same_hits(r.search(q, k=10, **exact), want)
        sc.drop_index("hnsw")
        assert set(sc.indexes()) == {"ivf"} and "hnsw" in r.indexes()  # r: its version
        same_hits(r.search(q, k=10, mode="hnsw", ef=200, rescore=1000), want)
        r.refresh()
        with pytest.raises(ValueError, match="no hnsw index"):
            r.search(q, mode="hnsw")
        with pytest.raises(ValueError, match="no hnsw index"):
            sc.drop_index("hnsw")
        # writes after the index: new segments of min_rows rows are indexed on their shard
        x, ids, meta = rows(400, 21, 5000)
        for c in (sc, one):
            c.add(x, ids=ids, metadata=meta)
        want = one.search(q, k=10, mode="flat")
        assert sc.indexes()["ivf"]["rows_indexed"] == sc.count()
        same_hits(sc.search(q, k=10, **exact), want)
        r.refresh()
        same_hits(r.search(q, k=10, **exact), want)
    sc.create_index("hnsw", **HNSW)  # back for the module's other tests
    # each shard is a collection of its own, index included
    with nv.open(sc.shard_paths[1], version=sc.shard_versions[1]) as shard:
        assert set(shard.indexes()) == {"ivf", "hnsw"}
    assert os.path.isdir(os.path.join(sc.shard_paths[1], "indexes"))
