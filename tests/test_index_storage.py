"""Indexes on disk: persistence (reopen, old versions, compaction, merges carrying the
ivf lists over), streaming size-capped compaction and adds, bad input writes nothing,
damaged or tampered index files are CorruptionError."""
from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest

import nestvec as nv
from nestvec.collection import CorruptionError, NoMergePolicy, TieredMergePolicy
from nestvec.collection import manifest as mf

from collection_helpers import assert_same_hits, per_query

pytest.importorskip("faiss")
pytest.importorskip("hnswlib")

D = 32


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((16, D))
    x = centers[rng.integers(0, 16, n)] + 0.6 * rng.standard_normal((n, D))
    return x.astype(np.float32), rng.standard_normal((8, D)).astype(np.float32)


def files(path):
    out = []
    for root, _, fns in os.walk(path):
        out += [os.path.relpath(os.path.join(root, f), path) for f in fns if f != "LOCK"]
    return sorted(out)


def make(path, n=2000, policy=None, **kw):
    x, q = data(n)
    col = nv.Collection.create(path, dim=D, schema={"g": "int32"}, merge_policy=policy or NoMergePolicy())
    col.add(x, ids=np.arange(n), metadata={"g": np.arange(n) % 10})
    return col, x, q


def test_reopen_versions_compact_and_drop(tmp_path):
    path = str(tmp_path / "c")
    col, x, q = make(path)
    v0 = col.version
    col.create_index("ivf", nlist=16, min_rows=500)
    col.create_index("hnsw", M=8, min_rows=500)
    want_ivf = col.search(q, k=10, mode="ivf")
    want_hnsw = col.search(q, k=10, mode="hnsw")
    col.close()
    with nv.open(path, read_only=True) as r:  # mapped, not rebuilt: same answers
        assert set(r.indexes()) == {"ivf", "hnsw"}
        assert r.search(q, k=10, mode="ivf").equals(want_ivf)
        assert r.search(q, k=10, mode="hnsw").equals(want_hnsw)
        assert r.verify()["files"] == 4  # segment, centroids, list file, graph
        with open(os.path.join(path, "manifests", f"{r.version}.json")) as f:
            assert json.load(f)["format"] == mf.FORMAT_V3
    with nv.open(path, version=v0) as old:  # the version before the index
        assert old.indexes() == {}
        with pytest.raises(ValueError, match="no ivf index"):
            old.search(q, k=3, mode="ivf")
    col = nv.open(path)
    col.delete(ids=np.arange(0, 2000, 2))
    col.compact()  # rewritten without the deleted rows, indexed again before the commit
    assert col.indexes()["ivf"]["segments_indexed"] == 1 and col.indexes()["hnsw"]["segments_indexed"] == 1
    got = col.search(q, k=10, mode="ivf", nprobe=16, rescore=100)
    assert_same_hits(per_query(got), per_query(col.search(q, k=10, mode="flat")))
    assert set(got.column("id").to_pylist()) <= set(range(1, 2000, 2))
    col.drop_index("hnsw")
    col.drop_index("ivf")
    assert col.indexes() == {}
    col.compact()
    assert os.listdir(os.path.join(path, "indexes")) == []  # nothing names them any more
    with open(os.path.join(path, "manifests", f"{col.version}.json")) as f:
        assert json.load(f)["format"] == mf.FORMAT  # no index: readable by format-2 readers
    col.close()


def test_new_segments_are_indexed_and_merges_carry_lists(tmp_path):
    path = str(tmp_path / "m")
    col, x, q = make(path, n=1200, policy=TieredMergePolicy(merge_factor=3, floor_rows=10))
    col.create_index("ivf", nlist=8, min_rows=1000, tune=False)
    x2, _ = data(1100, seed=1)
    col.add(x2)  # large: indexed before its commit
    assert col.indexes()["ivf"]["segments_indexed"] == 2
    for i in range(3):  # small: scanned until merged
        col.add(data(400, seed=2 + i)[0])
    ix = col.indexes()["ivf"]
    # the small adds merged (with the others: levels within 0.75) into indexed segments
    assert ix["segments"] < 5 and ix["segments_indexed"] == ix["segments"] and ix["rows_indexed"] == 3500
    snap = col._snap
    cent = snap.indexes["ivf"]
    for s in snap.segments:  # carried lists == fresh assignment of the same rows
        lst = s.ann["ivf"]
        from nestvec.collection.indexes import ivf

        np.testing.assert_array_equal(lst.list_of_rows(), ivf.assign(s.vectors, cent.centroids, "cosine"))
    exact = col.search(q, k=10, mode="flat")
    assert_same_hits(per_query(col.search(q, k=10, mode="ivf", nprobe=8, rescore=400)), per_query(exact))
    col.close()


def test_streaming_compaction_caps_and_balances_segments(tmp_path):
    n = 6000
    x, q = data(n)
    row = D * 2 + D // 8 + 8 + 8 + 4  # vector, code, _row, id, g
    cap = 1000 * row + 64  # ~1,000 rows a segment
    path = str(tmp_path / "s")
    col = nv.Collection.create(path, dim=D, schema={"g": "int32"},
                               merge_policy=TieredMergePolicy(max_segment_bytes=cap, on_commit=False))
    for a in range(0, n, 250):
        col.add(x[a:a + 250], ids=np.arange(a, a + 250), metadata={"g": np.arange(a, a + 250) % 10})
    col.delete(ids=np.arange(0, n, 7))
    want = col.search(q, k=10, mode="flat")
    tracemalloc.start()
    col.compact()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    sizes = [s.n for s in col._snap.segments]
    live = n - len(range(0, n, 7))
    assert sum(sizes) == live and max(sizes) - min(sizes) <= 1 and len(sizes) == -(-live * row // cap) or \
        max(sizes) * row <= cap
    assert all(e["bytes"] <= cap + 4096 for e in col._snap.manifest["segments"])  # + Arrow framing
    assert peak < 4 * cap  # one output segment at a time, never the whole run
    assert col.search(q, k=10, mode="flat").equals(want)
    assert col.to_table().column("id").to_pylist() == [i for i in range(n) if i % 7]
    col.close()


def test_large_add_streams_into_capped_segments(tmp_path):
    n = 5000
    x, q = data(n)
    cap = 600 * (D * 2 + D // 8 + 16)
    path = str(tmp_path / "a")
    col = nv.Collection.create(path, dim=D, merge_policy=NoMergePolicy())
    col.merge_policy.max_segment_bytes = cap
    col.add(x)
    assert len(col._snap.segments) == -(-n * (D * 2 + D // 8 + 16) // cap)
    assert col.count() == n
    before = files(path)
    bad = x.copy()
    bad[4321, 3] = np.nan  # found while the 8th segment is built: the add writes nothing
    with pytest.raises(ValueError, match="row 4321 contains NaN"):
        col.add(bad)
    assert files(path) == before and col.count() == n
    col.close()


@pytest.mark.parametrize("call, err, match", [
    (lambda c: c.create_index("pq"), ValueError, "kind"),
    (lambda c: c.create_index("ivf", nlists=8), TypeError, "unknown option"),
    (lambda c: c.create_index("ivf", nlist=0), ValueError, "nlist"),
    (lambda c: c.create_index("ivf", nlist=10 ** 6), ValueError, "nlist"),
    (lambda c: c.create_index("ivf", dim=D + 1), ValueError, "dim"),
    (lambda c: c.create_index("ivf", nprobe=0), ValueError, "nprobe"),
    (lambda c: c.create_index("ivf", codes="pq"), ValueError, "codes"),
    (lambda c: c.create_index("hnsw", ef=0), ValueError, "ef"),
    (lambda c: c.create_index("hnsw", M=1), ValueError, "M"),
    (lambda c: c.create_index("hnsw", tune="yes"), TypeError, "tune"),
    (lambda c: c.search(np.ones(D), mode="ivf"), ValueError, "no ivf index"),
    (lambda c: c.search(np.ones(D), mode="hnsw"), ValueError, "no hnsw index"),
    (lambda c: c.search(np.ones(D), nprobe=0), ValueError, "nprobe"),
    (lambda c: c.search(np.ones(D), ef=-1), ValueError, "ef"),
    (lambda c: c.drop_index("ivf"), ValueError, "no ivf index"),
])
def test_bad_input_writes_nothing(tmp_path, call, err, match):
    path = str(tmp_path / "b")
    col, _, _ = make(path, n=300)
    before = files(path)
    with pytest.raises(err, match=match):
        call(col)
    assert files(path) == before
    col.close()


def test_bad_input_with_an_index(tmp_path):
    path = str(tmp_path / "i")
    col, x, q = make(path, n=600)
    with pytest.raises(ValueError, match="no rows"):
        nv.Collection.create(None, dim=D).create_index("ivf")
    col.create_index("ivf", nlist=8, dim=16, min_rows=100, tune=False)
    col.create_index("hnsw", dim=24, M=8, min_rows=100, tune=False)
    before = files(path)
    with pytest.raises(ValueError, match="already has"):
        col.create_index("ivf")
    with pytest.raises(ValueError, match=r"nprobe: expected an int in \[1, nlist=8\]"):
        col.search(q, mode="ivf", nprobe=9)
    with pytest.raises(ValueError, match="first 16 values"):  # prefix queries narrower than the index's
        col.search(q[:, :8], dim=8, mode="ivf")
    with pytest.raises(ValueError, match="first 24 values"):
        col.search(q[:, :16], dim=16, mode="hnsw")
    assert files(path) == before
    col.create_index("ivf", replace=True, nlist=4, min_rows=100, tune=False)
    assert col.indexes()["ivf"]["nlist"] == 4
    col.close()


def _flip(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_damaged_index_files(tmp_path):
    path = str(tmp_path / "x")
    col, x, q = make(path, n=1500)
    col.create_index("ivf", nlist=8, min_rows=100, tune=False)
    col.create_index("hnsw", M=8, min_rows=100, tune=False)
    m = col._snap.manifest
    lists = os.path.join(path, "indexes", m["segments"][0]["ivf"]["name"])
    graph = os.path.join(path, "indexes", m["segments"][0]["hnsw"]["name"])
    cents = os.path.join(path, "indexes", m["indexes"]["ivf"]["centroids"]["name"])
    col.close()
    # a flipped code byte: found by verify (checksum), never a crash
    _flip(lists, os.path.getsize(lists) // 2)
    with nv.open(path) as c:
        with pytest.raises(CorruptionError, match=os.path.basename(lists)):
            c.verify()
    _flip(lists, os.path.getsize(lists) // 2)
    # a graph byte: found before hnswlib loads the file (first hnsw search) and by verify
    _flip(graph, 200)
    with nv.open(path) as c:
        c.search(q, k=3, mode="ivf")
        with pytest.raises(CorruptionError, match=os.path.basename(graph)):
            c.search(q, k=3, mode="hnsw")
        with pytest.raises(CorruptionError):
            c.verify()
    _flip(graph, 200)
    # truncated files: found at open
    for f in (lists, cents, graph):
        data = open(f, "rb").read()
        with open(f, "wb") as out:
            out.write(data[:-10])
        with pytest.raises(CorruptionError, match=os.path.basename(f)):
            nv.open(path)
        with open(f, "wb") as out:
            out.write(data)
    with nv.open(path) as c:
        c.verify()


def test_tampered_manifest_index_entries(tmp_path):
    path = str(tmp_path / "t")
    col, x, q = make(path, n=800)
    col.create_index("ivf", nlist=4, min_rows=100, tune=False)
    v = col.version
    col.close()
    mpath = os.path.join(path, "manifests", f"{v}.json")
    good = open(mpath, "rb").read()
    m = json.loads(good)
    m.pop("_summary")
    for change in (lambda m: m["segments"][0]["ivf"].update(name="../segments/" + m["segments"][0]["name"]),
                   lambda m: m["indexes"]["ivf"].update(nprobe=99),
                   lambda m: m["indexes"]["ivf"]["centroids"].update(name="/etc/passwd"),
                   lambda m: m["indexes"].update(pq={"kind": "pq"}),
                   lambda m: m.update(format=mf.FORMAT)):
        bad = json.loads(json.dumps(m))
        change(bad)
        with open(mpath, "wb") as f:
            f.write(mf.encode(bad))  # a valid checksum over tampered content
        with pytest.raises(CorruptionError):
            nv.open(path)
    with open(mpath, "wb") as f:
        f.write(good)
    nv.open(path).close()
