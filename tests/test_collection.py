"""Collection API: writes, reads, search modes against brute force, filters, versions,
compaction, storage layout (mmap, zero-copy), device cache invalidation."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

import nestvec as nv
from nestvec import _backend
from nestvec.quant import binarize

from collection_helpers import assert_same_hits, clustered, hamming_oracle, oracle, per_query

D = 48
SCHEMA = {"lang": "string", "year": "int32", "score0": "float64"}


def _meta(n, start=0):
    r = np.arange(start, start + n)
    return {"lang": np.where(r % 3 == 0, "en", np.where(r % 3 == 1, "fr", "de")).tolist(),
            "year": (2000 + r % 25).tolist(), "score0": (r * 0.5).tolist()}


@pytest.fixture(params=["disk", "memory"])
def where(request, tmp_path):
    return None if request.param == "memory" else str(tmp_path / "col.nv")


def _make(where, n=300, segments=3, dtype="float16", metric="cosine", binary=True, seed=0):
    x = clustered(n, D, seed)
    col = nv.Collection.create(where, dim=D, dtype=dtype, metric=metric, binary=binary, schema=SCHEMA)
    bounds = np.linspace(0, n, segments + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        col.add(x[a:b], ids=np.arange(a, b) * 10, metadata=_meta(b - a, a))
    return col, x.astype(np.dtype(dtype)).astype(np.float32), np.arange(n) * 10


# --------------------------------------------------------------------------- basics


def test_create_add_count_get(where):
    col, x, ids = _make(where)
    assert col.count() == len(col) == 300
    assert col.version == 3
    t = col.get([30, 0, 999999, 20], columns=["lang", "year", "vector"])
    assert t.column("id").to_pylist() == [30, 0, 20]
    assert t.column("lang").to_pylist() == ["en", "en", "de"]
    np.testing.assert_array_equal(np.asarray(t.column("vector").to_pylist(), np.float32), x[[3, 0, 2]])
    assert col.count(filter=nv.field("lang") == "en") == 100
    col.close()


def test_generated_ids_and_string_ids(tmp_path):
    x = clustered(20, D, 1)
    with nv.Collection.create(None, dim=D) as col:
        ids = col.add(x[:10])
        assert ids.to_pylist() == list(range(10))
        assert col.add(x[10:]).to_pylist() == list(range(10, 20))
    with nv.Collection.create(str(tmp_path / "s"), dim=D) as col:
        col.add(x[:5], ids=["a", "b", "c", "d", "e"])
        gen = col.add(x[5:8])
        assert len(set(gen.to_pylist())) == 3 and all(isinstance(i, str) for i in gen.to_pylist())
        hits = col.search(x[1], k=1)
        assert hits.column("id").to_pylist() == ["b"]
        with pytest.raises(TypeError, match="string"):
            col.add(x[8:9], ids=[7])


def test_metadata_forms(tmp_path):
    pd = pytest.importorskip("pandas")
    x = clustered(9, D, 2)
    col = nv.Collection.create(str(tmp_path / "m"), dim=D, schema=SCHEMA)
    col.add(x[:3], ids=[0, 1, 2], metadata={"lang": ["en", "fr", None]})
    col.add(x[3:6], ids=[3, 4, 5], metadata=pa.table({"year": pa.array([1, 2, 3], pa.int64())}))
    col.add(x[6:9], ids=[6, 7, 8], metadata=pd.DataFrame({"lang": ["x", "y", "z"], "score0": [1.0, 2, 3]}))
    t = col.get(list(range(9)), columns=["lang", "year", "score0"])
    assert t.column("lang").to_pylist() == ["en", "fr", None, None, None, None, "x", "y", "z"]
    assert t.schema.field("year").type == pa.int32()
    assert t.column("year").to_pylist()[3:6] == [1, 2, 3]


def test_upsert_delete_versions(where):
    col, x, ids = _make(where)
    assert col.delete(ids=[0, 10, 20, 123456]) == 3
    assert col.count() == 297
    assert col.get([0, 10]).num_rows == 0
    n_fr = col.count(filter=nv.field("lang") == "fr")
    assert col.delete(filter=nv.field("lang") == "fr") == n_fr
    assert col.count(filter=nv.field("lang") == "fr") == 0
    # upsert: one existing id (replaced), one new
    new = clustered(2, D, 99)
    col.upsert(new, ids=[30, 5000], metadata={"lang": ["fr", "fr"]})
    t = col.get([30, 5000], columns=["lang", "vector"])
    assert t.column("lang").to_pylist() == ["fr", "fr"]
    np.testing.assert_allclose(np.asarray(t.column("vector").to_pylist()), new.astype(np.float16), rtol=0)
    assert col.count(filter=nv.field("id") == 30) == 1
    with pytest.raises(ValueError, match="already"):
        col.add(new[:1], ids=[30])
    assert col.delete(ids=[424242]) == 0  # no-op commits nothing
    vs = [v["version"] for v in col.versions()]
    assert vs == list(range(col.version + 1))
    assert [v["op"] for v in col.versions()][-3:] == ["delete", "delete", "upsert"]


def test_open_version_and_snapshot_isolation(tmp_path):
    p = str(tmp_path / "v")
    col, x, ids = _make(p)
    reader = nv.open(p, read_only=True)
    old = nv.open(p, version=2)
    col.delete(ids=ids[:50].tolist())
    col.add(clustered(5, D, 7), ids=[-1, -2, -3, -4, -5])
    assert reader.count() == 300 and reader.version == 3  # keeps what it opened
    assert old.count() == 200 and old.read_only
    with pytest.raises(PermissionError):
        old.add(x[:1], ids=[77777])
    with pytest.raises(PermissionError):
        reader.delete(ids=[0])
    assert reader.refresh() == col.version and reader.count() == 255
    with pytest.raises(KeyError):
        nv.open(p, version=99)
    col.compact(keep_versions=2)
    assert [v["version"] for v in col.versions()] == [col.version - 1, col.version]
    assert old.count() == 200 and old.search(x[0], k=3).num_rows == 3  # mapped: still readable
    with pytest.raises(KeyError):
        nv.open(p, version=2)


def test_lock_second_writer(tmp_path):
    p = str(tmp_path / "l")
    col = nv.Collection.create(p, dim=D)
    with pytest.raises(nv.LockError, match="read_only=True"):
        nv.open(p)
    r = nv.open(p, read_only=True)
    assert r.count() == 0
    col.close()
    with nv.open(p) as again:  # lock released by close
        again.add(clustered(3, D))
    with pytest.raises(ValueError, match="closed"):
        again.count()
    with pytest.raises(FileExistsError):
        nv.Collection.create(p, dim=D)
    with pytest.raises(FileNotFoundError):
        nv.open(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- search


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_flat_matches_bruteforce(where, metric, dtype):
    col, x, ids = _make(where, dtype=dtype, metric=metric)
    q = clustered(4, D, 5)
    for dim in (None, 20):
        got = per_query(col.search(q, k=7, dim=dim, mode="flat"))
        assert_same_hits(got, oracle(x, ids, q, 7, dim, metric))


def test_binary_matches_hamming(where):
    col, x, ids = _make(where)
    q = clustered(3, D, 6)
    got = per_query(col.search(q, k=9, mode="binary"))
    want = hamming_oracle(binarize(x), ids, binarize(q), 9)
    for (gi, gs), (wi, ws) in zip(got, want):
        np.testing.assert_array_equal(gi, wi)  # exact, ties by row order
        np.testing.assert_array_equal(gs, ws)
    got = per_query(col.search(q, k=9, mode="binary", dim=16))  # prefix codes
    want = hamming_oracle(np.ascontiguousarray(binarize(x)[:, :2]), ids, binarize(q[:, :16]), 9)
    for (gi, _), (wi, _) in zip(got, want):
        np.testing.assert_array_equal(gi, wi)


def test_funnel(where):
    col, x, ids = _make(where, n=400, segments=4)
    q = clustered(5, D, 8)
    # the shortlist is the global Hamming top k*rescore, then exact rescoring at dim
    k, rescore, dim = 5, 4, 24
    short = hamming_oracle(binarize(x), np.arange(len(x)), binarize(q), k * rescore)
    got = per_query(col.search(q, k=k, dim=dim, mode="funnel", rescore=rescore))
    for j, (rows, _) in enumerate(short):
        allow = np.zeros(len(x), bool)
        allow[rows] = True
        assert_same_hits([got[j]], oracle(x, ids, q[j:j + 1], k, dim, allow=allow))
    # a shortlist covering every row equals flat search
    full = per_query(col.search(q, k=k, mode="funnel", rescore=100))
    assert_same_hits(full, per_query(col.search(q, k=k, mode="flat")))


def test_funnel_ladder(where):
    """Hamming shortlist -> exact rescoring at each ladder prefix (shrinking) -> dim."""
    n = 400
    x = clustered(n, D, 3)
    x[:, 12:] = 0.0  # prefix-12 scores == full scores: no ladder stage can lose a hit
    col = nv.Collection.create(where, dim=D, dtype="float32", binary=True, schema=SCHEMA)
    for a, b in ((0, 150), (150, 400)):
        col.add(x[a:b], ids=np.arange(a, b) * 10, metadata=_meta(b - a, a))
    ids = np.arange(n) * 10
    q = clustered(6, D, 9)
    q[:, 12:] = 0.0
    flat = per_query(col.search(q, k=5, mode="flat"))
    got = per_query(col.search(q, k=5, mode="funnel", rescore=100, ladder=(12, 24)))
    assert_same_hits(got, flat)
    # with a filter and deletions: only matching live rows, scored exactly at dim
    col.delete(ids=ids[:40])
    f = nv.field("lang") == "en"
    got = per_query(col.search(q, k=5, mode="funnel", rescore=100, ladder=(16,), filter=f))
    allow = (np.arange(n) % 3 == 0) & (np.arange(n) >= 40)
    assert_same_hits(got, oracle(x, ids, q, 5, allow=allow))
    # a plain shortlist: every returned score is the exact one at dim
    xq = clustered(4, D, 10)
    t = col.search(xq, k=3, dim=24, mode="funnel", rescore=4, ladder=(8, 16))
    for qi, i, sc in zip(t.column("query").to_numpy(), t.column("id").to_numpy(),
                         t.column("score").to_numpy()):
        v, w = x[i // 10, :24], xq[qi, :24]
        assert abs(sc - v @ w / np.linalg.norm(v) / np.linalg.norm(w)) < 1e-4
    for bad, err in (((16, 8), ValueError), ((0,), ValueError), ((D,), ValueError),
                     ("64", TypeError), ((4.5,), TypeError)):
        with pytest.raises(err, match="ladder"):
            col.search(q, k=5, mode="funnel", ladder=bad)


def test_segmentation_and_compact_do_not_change_results(tmp_path):
    p = str(tmp_path / "c")
    col, x, ids = _make(p, n=300, segments=5)
    col.delete(ids=ids[::7].tolist())
    q = clustered(6, D, 9)
    before = {m: col.search(q, k=12, mode=m, rescore=3, columns=["lang"]) for m in ("flat", "binary", "funnel")}
    removed = col.compact()
    assert removed["segments"] == 5 and len(os.listdir(os.path.join(p, "segments"))) == 1
    assert col.count() == 300 - len(ids[::7])
    for m, t in before.items():
        assert col.search(q, k=12, mode=m, rescore=3, columns=["lang"]).equals(t)
    col.close()
    again = nv.open(p, read_only=True)
    assert again.search(q, k=12, mode="flat", rescore=3, columns=["lang"]).equals(before["flat"])


@pytest.mark.parametrize("mode", ["flat", "binary", "funnel"])
def test_filtered_search_returns_min_k_matching(where, mode):
    col, x, ids = _make(where)
    col.delete(ids=[0, 30, 60])  # some "en" rows (every third row) deleted
    q = clustered(3, D, 10)
    flt = (nv.field("lang") == "en") & (nv.field("year") < 2005)
    meta = _meta(300)
    match = (np.array(meta["lang"]) == "en") & (np.array(meta["year"]) < 2005)
    match[[0, 3, 6]] = False
    nm = int(match.sum())
    assert col.count(filter=flt) == nm and 10 < nm < 50
    for k in (1, 10, nm, 50):
        t = col.search(q, k=k, mode=mode, filter=flt, columns=["lang", "year"])
        assert t.num_rows == 3 * min(k, nm)
        assert set(t.column("lang").to_pylist()) == {"en"} and max(t.column("year").to_pylist()) < 2005
        assert set(t.column("id").to_pylist()) <= set(ids[match].tolist())
    if mode == "flat":
        got = per_query(col.search(q, k=10, mode="flat", filter=flt))
        assert_same_hits(got, oracle(x, ids, q, 10, allow=match))
        sql = per_query(col.search(q, k=10, mode="flat", filter="lang = 'en' AND year < 2005"))
        assert_same_hits(sql, got)
    assert col.search(q, k=5, mode=mode, filter=nv.field("lang") == "nope").num_rows == 0


def test_filter_errors(where):
    col, x, ids = _make(where, n=30, segments=1)
    with pytest.raises(ValueError, match="unknown column"):
        col.search(x[0], filter=nv.field("nope") == 1)
    with pytest.raises(TypeError, match="type mismatch"):
        col.search(x[0], filter=nv.field("year") == "abc")
    with pytest.raises(ValueError, match="unknown column"):
        col.search(x[0], filter="nope = 1")
    with pytest.raises(TypeError):
        col.search(x[0], filter="year = 'abc'")
    with pytest.raises(TypeError, match="filter"):
        col.search(x[0], filter=42)
    with pytest.raises(ValueError, match="unknown"):
        col.search(x[0], columns=["nope"])
    # the empty collection still checks the filter
    empty = nv.Collection.create(None, dim=D, schema=SCHEMA)
    with pytest.raises(ValueError, match="unknown column"):
        empty.search(x[0], filter=nv.field("nope") == 1)
    assert empty.search(x[0], k=3).num_rows == 0


def test_sql_filter_without_duckdb(monkeypatch, where):
    import builtins

    col, x, _ = _make(where, n=30, segments=1)
    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "duckdb":
            raise ImportError("no duckdb")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install duckdb"):
        col.search(x[0], filter="year > 3")


def test_query_forms(where):
    torch = pytest.importorskip("torch")
    col, x, ids = _make(where, n=120, segments=2)
    one = col.search(x[5], k=4)
    assert one.column("query").to_pylist() == [0] * 4 and one.column("id")[0].as_py() == 50
    assert col.search(x[5].tolist(), k=4).equals(one)
    assert col.search(torch.from_numpy(x[5]), k=4).equals(one)
    batch = col.search(torch.from_numpy(x[:3]).double(), k=4)
    assert batch.column("query").to_pylist() == [0] * 4 + [1] * 4 + [2] * 4
    assert col.search(x[5, :16], k=4, dim=16, mode="flat").column("id")[0].as_py() == 50
    assert col.search(x[5, :16], k=4, dim=16, mode="funnel").column("id")[0].as_py() == 50
    # a prefix query whose width is not whole code bytes: auto searches flat
    assert col.search(x[5, :20], k=4, dim=20).equals(col.search(x[5, :20], k=4, dim=20, mode="flat"))


def test_auto_mode(where):
    col, x, ids = _make(where, n=300, segments=2)
    q = x[:2]
    assert col.search(q, k=5, mode="auto", rescore=10).equals(col.search(q, k=5, mode="funnel", rescore=10))
    assert col.search(q, k=5, mode="auto", rescore=100).equals(col.search(q, k=5, mode="flat"))
    assert col.search(q, k=500, mode="auto", rescore=10).equals(col.search(q, k=500, mode="flat"))
    nob = nv.Collection.create(None, dim=D, binary=False)
    nob.add(x[:50])
    assert nob.search(q, k=3).num_rows == 6
    with pytest.raises(ValueError, match="binary=False"):
        nob.search(q, k=3, mode="funnel")


# --------------------------------------------------------------------------- storage


def test_storage_layout_and_zero_copy(tmp_path):
    p = str(tmp_path / "z")
    col, x, ids = _make(p, n=100, segments=2)
    col.delete(ids=[10])
    col.close()
    assert sorted(os.listdir(p)) == ["LATEST", "LOCK", "deletions", "manifests", "segments"]
    latest = int(open(os.path.join(p, "LATEST")).read())
    m = json.load(open(os.path.join(p, "manifests", f"{latest}.json")))
    assert list(m)[0] == "_summary" and m["_summary"]["version"] == latest  # first: a summary + checksum
    assert m["format"] == "nestvec-collection/2"
    assert m["dim"] == D and m["dtype"] == "float16" and len(m["segments"]) == 2
    dname = m["segments"][0]["deletions"]
    assert dname == m["segments"][0]["name"].replace(".arrow", f".{latest}.arrow")
    assert os.path.exists(os.path.join(p, "deletions", dname))
    seg_file = os.path.join(p, "segments", m["segments"][0]["name"])
    with pa.memory_map(seg_file) as f:
        reader = pa.ipc.open_file(f)  # IPC *file* format, uncompressed
        assert reader.num_record_batches == 1
        schema = reader.schema
    assert schema.names[:4] == ["_row", "id", "vector", "code"]
    assert schema.field("vector").type == pa.list_(pa.float16(), D)
    assert schema.field("code").type == pa.binary(D // 8)
    col = nv.open(p, read_only=True)
    seg = col._snap.segments[0]
    buf = seg.file.table.column("vector").chunk(0).values.buffers()[1]
    assert not buf.is_mutable  # a view of the read-only map
    assert seg.vectors.__array_interface__["data"][0] == buf.address  # the kernels' input: no copy
    assert not seg.vectors.flags.writeable and seg.vectors.dtype == np.float16
    np.testing.assert_array_equal(seg.vectors.astype(np.float32), x[:50])


def test_uncommitted_files_are_ignored_and_collected(tmp_path):
    p = str(tmp_path / "g")
    col, x, ids = _make(p, n=60, segments=2)
    v = col.version
    # a crashed writer's leftovers: a segment and a manifest LATEST never named
    open(os.path.join(p, "segments", "deadbeef.arrow"), "wb").write(b"partial")
    open(os.path.join(p, "manifests", f"{v + 1}.json"), "w").write("{not json")
    col.close()
    col = nv.open(p)
    assert col.version == v and [e["version"] for e in col.versions()][-1] == v
    col.add(x[:2], ids=[-1, -2])  # overwrites the orphan manifest atomically
    assert nv.open(p, read_only=True).count() == 62
    col.compact()
    assert "deadbeef.arrow" not in os.listdir(os.path.join(p, "segments"))


def test_device_cache_invalidation(where):
    """CPU stand-in for the GPU path: device='cpu' runs the same code on torch tensors
    through the device cache."""
    pytest.importorskip("torch")
    col, x, ids = _make(where, n=200, segments=2)
    q = clustered(3, D, 11)
    for mode in ("flat", "binary", "funnel"):
        assert col.search(q, k=6, mode=mode, device="cpu").equals(col.search(q, k=6, mode=mode))
    cache = col._caches["cpu"]
    names = [s.name for s in col._snap.segments]
    assert cache.keys() == {("vec", n) for n in names} | {("code", n) for n in names}
    t0 = cache.transfers
    col.search(q, k=6, device="cpu")
    assert cache.transfers == t0  # warm: nothing moved
    col.delete(ids=[0])  # commit: segment 0 gets a live mask keyed by its deletion file
    got = col.search(q, k=6, mode="flat", device="cpu")
    assert 0 not in got.column("id").to_pylist() and got.equals(col.search(q, k=6, mode="flat"))
    dfile = col._snap.segments[0].deletions
    assert ("live", names[0], dfile) in cache.keys()
    col.delete(ids=[10])  # a new deletion file: the old mask must go
    assert ("live", names[0], dfile) not in cache.keys()
    assert col.search(q, k=6, mode="flat", device="cpu").equals(col.search(q, k=6, mode="flat"))
    if where is not None:
        col.compact()  # new segment: every old key dropped
        assert all(k[1] == col._snap.segments[0].name for k in cache.keys())
    f = nv.field("lang") == "en"
    assert col.search(q, k=6, filter=f, device="cpu").equals(col.search(q, k=6, filter=f))


def test_readonly_refresh_invalidates_cache(tmp_path):
    pytest.importorskip("torch")
    p = str(tmp_path / "r")
    col, x, ids = _make(p, n=100, segments=1)
    r = nv.open(p, read_only=True)
    r.search(x[:1], k=3, device="cpu")
    col.delete(ids=[10])
    col.compact()  # rewrites the segment
    col.add(x[:1] + 1, ids=[-7])
    col.delete(ids=[0])
    r.refresh()
    assert r._caches["cpu"].keys() == set()
    assert r.search(x[:2], k=4, device="cpu").equals(col.search(x[:2], k=4))


def test_planner_uses_registered_dense_backend(monkeypatch):
    """The planner calls the registered dense backend (zero-copy, candidates passed
    through) and gives the same answer as the reference backend."""
    if _backend._C is None:
        pytest.skip("no native module")
    from nestvec.collection import packing

    monkeypatch.setattr(packing, "PACK_SEGMENT_BYTES", 0)  # segments searched apart, in place
    col, x, ids = _make(None, n=200, segments=2)
    q = clustered(3, D, 12)
    monkeypatch.setenv("NESTVEC_BACKEND", "reference")
    want = {m: col.search(q, k=5, mode=m, rescore=4) for m in ("flat", "funnel")}
    calls = []
    reference_impl = _backend.implementation("dense_topk", "reference")

    def fake_cpu(db, dt, queries, k, dim, metric, allow, candidates):
        calls.append((db.shape, candidates is not None))
        return reference_impl(db, dt, queries, k, dim, metric, allow, candidates)

    monkeypatch.delenv("NESTVEC_BACKEND", raising=False)
    with _backend.override("dense_topk", "cpu", fake_cpu):
        for m, t in want.items():
            assert col.search(q, k=5, mode=m, rescore=4).equals(t)
    shape = col._snap.segments[0].vectors.shape
    assert (shape, True) in calls and (shape, False) in calls


@pytest.mark.parametrize("device", [None, "cpu"])
def test_selective_filter_gather_path(where, device):
    """Below GATHER_FRACTION allowed rows, flat search scores a compact copy of them;
    the answer is the same as the masked full scan."""
    from nestvec.collection import planner

    if device:
        pytest.importorskip("torch")
    col, x, ids = _make(where, n=400, segments=2)
    q = clustered(4, D, 13)
    flt = (nv.field("year") == 2003) & (nv.field("lang") != "de")  # ~2.7% of rows
    frac = col.count(filter=flt) / 400
    assert 0 < frac < planner.GATHER_FRACTION
    got = col.search(q, k=6, mode="flat", filter=flt, device=device)
    old = planner.GATHER_FRACTION
    try:
        planner.GATHER_FRACTION = 0.0
        assert col.search(q, k=6, mode="flat", filter=flt, device=device).equals(got)
    finally:
        planner.GATHER_FRACTION = old
    meta = _meta(400)
    allow = (np.array(meta["year"]) == 2003) & (np.array(meta["lang"]) != "de")
    assert_same_hits(per_query(got), oracle(x, ids, q, 6, allow=allow))


def test_generated_ids_never_collide(where):
    col = nv.Collection.create(where, dim=D)
    x = clustered(30, D, 14)
    col.add(x[:10], ids=[5, 6, 100, 7, 8, 9, 10, 11, 12, 13])
    gen = col.add(x[10:20]).to_pylist()
    assert min(gen) == 101 and len(set(gen)) == 10
    col.delete(ids=[100])
    assert min(col.add(x[20:30]).to_pylist()) == 111  # not reused after a delete either
    assert col.count() == 29


def test_fully_deleted_segment_is_dropped(where):
    col, x, ids = _make(where, n=90, segments=3)
    col.delete(ids=ids[30:60].tolist())
    assert len(col._snap.segments) == 2 and col.count() == 60
    assert col.search(x[40], k=60, mode="flat").num_rows == 60
    assert 400 not in col.search(x[40], k=60, mode="flat").column("id").to_pylist()


def test_sql_filters_everywhere(where):
    col, x, ids = _make(where, n=90, segments=2)
    assert col.count(filter="lang = 'fr' AND year >= 2010") == col.count(
        filter=(nv.field("lang") == "fr") & (nv.field("year") >= 2010))
    assert col.to_table(filter="id < 50").column("id").to_pylist() == [0, 10, 20, 30, 40]
    assert col.delete(filter="score0 < 2.0") == 4
    assert col.count() == 86 and col.get([0, 10, 20, 30, 40]).column("id").to_pylist() == [40]
    with pytest.raises(ValueError, match=";|statement"):
        col.count(filter="1=1; DROP TABLE t")
    with pytest.raises(ValueError, match="statement|plain WHERE"):
        col.count(filter="1=1); DROP TABLE t; SELECT (1")


# --------------------------------------------------------------------------- filter masks


def test_filter_masks_cached_per_segment(where, monkeypatch):
    """An equal filter is evaluated once per segment; upserts, deletes and compaction
    keep results exact (segments never change; the live mask applies after)."""
    from nestvec.collection import filters

    calls = []
    real = filters.evaluate
    # calls: rows evaluated per call (segments missing from the cache go in one call)
    monkeypatch.setattr(filters, "evaluate", lambda f, t: calls.append(t.num_rows) or real(f, t))
    col, x, ids = _make(where)
    q = clustered(2, D, 10)
    flt = nv.field("lang") == "en"
    match = np.array(_meta(300)["lang"]) == "en"
    first = per_query(col.search(q, k=10, mode="flat", filter=flt))
    assert calls == [300]  # every segment, in one evaluation
    # equal filters built anew hit the cache; count() shares it
    assert_same_hits(per_query(col.search(q, k=10, mode="flat", filter=nv.field("lang") == "en")), first)
    assert col.count(filter=nv.field("lang") == "en") == int(match.sum()) and len(calls) == 1
    assert_same_hits(first, oracle(x, ids, q, 10, allow=match))
    # SQL text is its own key
    assert_same_hits(per_query(col.search(q, k=10, mode="flat", filter="lang = 'en'")), first)
    assert len(calls) == 1 + ("duckdb" in _sql_available())
    n_sql = len(calls)
    # a delete: the cached masks stay, the live mask removes the rows
    best = [int(h[0][0]) for h in first]
    col.delete(ids=best)
    match[np.isin(ids, best)] = False
    got = per_query(col.search(q, k=10, mode="flat", filter=flt))
    assert_same_hits(got, oracle(x, ids, q, 10, allow=match))
    assert len(calls) == n_sql
    # an upsert adds a segment: only that one is evaluated
    col.upsert(x[:5], ids=ids[:5], metadata={"lang": ["en"] * 5, "year": [1] * 5, "score0": [0.0] * 5})
    match[:5] = True
    assert col.count(filter=flt) == int(match.sum())
    assert len(calls) == n_sql + 1 and calls[-1] == 5
    # compaction rewrites segments: old entries go, results stay exact
    col.compact()
    assert len(col._mask_cache) <= 2 * len(col._snap.segments)
    assert {k[0] for k in col._mask_cache._d} <= {s.name for s in col._snap.segments}
    got = per_query(col.search(q, k=10, mode="flat", filter=flt))
    assert_same_hits(got, oracle(x, ids, q, 10, allow=match))
    col.close()


def _sql_available():
    try:
        import duckdb  # noqa: F401
        return "duckdb"
    except ImportError:
        return ""


def test_filter_mask_cache_keys_and_budget(monkeypatch):
    from nestvec.collection.filters import MaskCache

    # str() renders these alike; their cache keys differ
    assert str(nv.field("year") == 7) == str(nv.field("year") == 7.0)
    assert MaskCache.key(nv.field("year") == 7) != MaskCache.key(nv.field("year") == 7.0)
    assert MaskCache.key(nv.field("year") == 7) == MaskCache.key(nv.field("year") == 7)
    t = pa.table({"year": pa.array(np.arange(1000, dtype=np.int32))})
    c = MaskCache(budget_mb=2000 / (1 << 20))  # room for two 1000-row masks

    class Seg:  # what the cache needs of a segment
        def __init__(self, name):
            self.name = name

        def meta(self):
            return t

    masks = [c.masks([Seg(f"s{i}")], c.key(nv.field("year") < i), nv.field("year") < i)[0] for i in range(3)]
    assert [int(m.sum()) for m in masks] == [0, 1, 2]
    assert not masks[0].flags.writeable
    assert len(c) == 2 and ("s0", c.key(nv.field("year") < 0)) not in c._d  # least recent out
    c.retain(["s2"])
    assert len(c) == 1
    monkeypatch.setenv("NESTVEC_FILTER_CACHE_MB", "0")
    off = MaskCache()
    off.masks([Seg("s")], off.key(nv.field("year") < 5), nv.field("year") < 5)
    assert len(off) == 0
