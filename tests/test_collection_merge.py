"""Merge policy: many small commits stay a few segments, merges and optimize() never
change a search result, deleted rows are reclaimed, a writer killed mid-merge loses
nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nestvec as nv
from nestvec.collection import NoMergePolicy, SegmentStats, TieredMergePolicy

D = 24
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "python")


def stats(*lives, rows=None, nbytes=1000):
    return [SegmentStats(f"s{i}", rows[i] if rows else n, n, nbytes) for i, n in enumerate(lives)]


def test_tiered_policy_plans():
    p = TieredMergePolicy(merge_factor=4, floor_rows=10)
    assert p.find_merges(stats(1, 2, 3)) == []
    assert p.find_merges(stats(1, 2, 3, 4)) == [(0, 4)]  # all below floor_rows: one level
    assert p.find_merges(stats(500, 9, 9, 9, 9)) == [(1, 5)]  # the big one is left alone
    assert p.find_merges(stats(20, 30, 12, 39, 5)) == [(0, 4)]  # within 0.75 levels; 12 swept in
    assert p.find_merges(stats(*[5] * 9)) == [(0, 4), (4, 8)]  # oldest groups first
    assert p.find_merges(stats(40, 40, 40, 5, 40)) == [(0, 4)]  # a small one inside the band
    assert p.find_merges(stats(640, 40, 5, 5, 5)) == []  # three levels apart: nothing to do
    # more than half deleted: rewritten alone
    assert p.find_merges(stats(100, 20, rows=[100, 50])) == [(1, 2)]
    capped = TieredMergePolicy(merge_factor=2, floor_rows=10, max_segment_bytes=1500)
    assert capped.find_merges(stats(5, 5)) == []  # the output would exceed the cap
    assert NoMergePolicy().find_merges(stats(*[1] * 50)) == []
    for bad in (dict(merge_factor=1), dict(floor_rows=0), dict(max_deleted_fraction=0),
                dict(max_segment_bytes=True)):
        with pytest.raises(ValueError):
            TieredMergePolicy(**bad)
    with pytest.raises(TypeError, match="merge_policy"):
        nv.Collection.create(None, dim=4, merge_policy="tiered")


def _small_commits(path, policy, adds=120, rows=5, seed=0):
    rng = np.random.default_rng(seed)
    col = nv.Collection.create(path, dim=D, schema={"g": "int32"}, merge_policy=policy)
    for i in range(adds):
        col.add(rng.standard_normal((rows, D)), ids=np.arange(i * rows, (i + 1) * rows),
                metadata={"g": (np.arange(rows) + i) % 7})
        if i % 17 == 16:
            col.delete(ids=[i * rows - 3, i * rows - 40])
    return col


def _answers(col):
    q = np.random.default_rng(9).standard_normal((3, D))
    out = [col.count(), col.to_table(columns=["id", "g"]).to_pydict()]
    for mode in ("flat", "binary", "funnel"):
        for flt in (None, nv.field("g") == 3):
            out.append(col.search(q, k=15, mode=mode, filter=flt, columns=["g"]).to_pydict())
    return out


@pytest.mark.parametrize("where", ["disk", "memory"])
def test_small_commits_merge_without_changing_results(tmp_path, where):
    path = None if where == "memory" else str(tmp_path / "m")
    col = _small_commits(path, TieredMergePolicy(merge_factor=4, floor_rows=20))
    ref = _small_commits(None, NoMergePolicy())
    assert len(ref._snap.segments) == 120
    assert len(col._snap.segments) <= 12, [s.n for s in col._snap.segments]
    assert _answers(col) == _answers(ref)  # ids, scores and order: rows keep their order
    ops = [v["op"] for v in col.versions()]
    assert "merge" in ops and ops.count("add") == 120
    if path:
        assert col.verify()["not_checksummed"] == []
        r = nv.open(path, read_only=True)
        assert _answers(r) == _answers(ref)


def test_packed_small_segments_search_like_separate_ones(monkeypatch):
    """Adjacent small segments are searched as one packed copy: the same rows, scores
    and order as searching them one by one, with deletions and filters."""
    from nestvec.collection import packing

    col = _small_commits(None, NoMergePolicy(), adds=40)
    col.add(np.random.default_rng(5).standard_normal((3000, D)), ids=np.arange(10**6, 10**6 + 3000),
            metadata={"g": np.arange(3000) % 7})
    col.add(np.ones((2, D)), ids=[-1, -2])  # a small segment after a large one
    monkeypatch.setattr(packing, "PACK_SEGMENT_BYTES", 40_000)  # the 3000-row segment stays apart
    packed = _answers(col)
    segs, _, remap = packing.pack(col._snap.segments, [None] * len(col._snap.segments), col._packs)
    assert remap is not None and len(segs) == 3
    monkeypatch.setattr(packing, "PACK_SEGMENT_BYTES", 0)
    assert packed == _answers(col)


def test_optimize_when_merges_are_off(tmp_path):
    col = _small_commits(str(tmp_path / "o"), TieredMergePolicy(merge_factor=4, floor_rows=20, on_commit=False))
    assert len(col._snap.segments) == 120
    before = _answers(col)
    rep = col.optimize()
    assert rep["segments_before"] == 120 and rep["segments_after"] == len(col._snap.segments) <= 12
    assert rep["merges"] > 0 and rep["rows_rewritten"] >= col.count()
    assert _answers(col) == before
    assert col.optimize()["merges"] == 0  # nothing left to do
    with pytest.raises(PermissionError):
        nv.open(str(tmp_path / "o"), read_only=True).optimize()


def test_deleted_rows_are_reclaimed():
    col = nv.Collection.create(None, dim=D, merge_policy=TieredMergePolicy(max_deleted_fraction=0.3))
    col.add(np.random.default_rng(0).standard_normal((200, D)), ids=np.arange(200))
    col.add(np.random.default_rng(1).standard_normal((200, D)), ids=np.arange(200, 400))
    col.delete(ids=np.arange(0, 50))
    assert [s.n for s in col._snap.segments] == [200, 200]  # 25% deleted: kept
    col.delete(ids=np.arange(50, 70))  # 35%: the segment is rewritten without them
    assert [s.n for s in col._snap.segments] == [130, 200]
    assert all(s.deletions is None for s in col._snap.segments) and col.count() == 330


KILL_IN_MERGE = textwrap.dedent("""
    import os, sys
    import numpy as np
    import nestvec as nv
    from nestvec.collection import commit
    path = sys.argv[1]
    col = nv.open(path, merge_policy=nv.collection.TieredMergePolicy(merge_factor=2, floor_rows=1000))
    real = commit._publish
    def publish(store, old, entries, **fields):
        if fields.get("op") == "merge":
            os._exit(9)  # the merged file is written; its manifest is not
        return real(store, old, entries, **fields)
    commit._publish = publish
    col.add(np.random.default_rng(2).standard_normal((7, 24)), ids=np.arange(100, 107))
""")


def test_writer_killed_mid_merge(tmp_path):
    path = str(tmp_path / "k")
    with nv.Collection.create(path, dim=D, merge_policy=NoMergePolicy()) as col:
        col.add(np.random.default_rng(1).standard_normal((5, D)), ids=np.arange(5))
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", KILL_IN_MERGE, path], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 9, r.stderr
    with nv.open(path) as col:  # the add committed before its merge began: nothing lost
        assert col.count() == 12 and len(col._snap.segments) == 2
        assert sorted(col.to_table().column("id").to_pylist()) == list(range(5)) + list(range(100, 107))
        col.verify()
        assert len(os.listdir(os.path.join(path, "segments"))) == 3  # the orphaned merge output
        col.compact()
        assert len(os.listdir(os.path.join(path, "segments"))) == 1 and col.count() == 12


def test_segments_hold_at_most_arrow_array_rows(monkeypatch, tmp_path):
    """A segment's vector column is one Arrow array of rows x D values (at most 2^31 - 1):
    adds and compaction split at merge.max_rows whatever the byte cap, and a segment
    write that fails leaves no file behind."""
    import pyarrow as pa

    from nestvec.collection import merge

    assert merge.max_rows(384) == (2**31 - 1) // 384
    assert merge.split_rows(10, 1, None, 4) == [4, 3, 3]
    assert merge.split_rows(10, 1, 1 << 40, 3) == [3, 3, 2, 2]
    monkeypatch.setattr(merge, "ARROW_MAX_VALUES", 8 * 300)  # 300 rows of 8 values
    policy = TieredMergePolicy(max_segment_bytes=1 << 40)
    col = nv.Collection.create(str(tmp_path / "c"), dim=8, merge_policy=policy)
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    col.add(x, ids=np.arange(1000))
    assert [s.n for s in col._snapshot().segments] == [250, 250, 250, 250]
    col.compact()
    assert [s.n for s in col._snapshot().segments] == [250, 250, 250, 250]
    got = col.search(x[:3], k=1, mode="flat")
    np.testing.assert_array_equal(got.column("id").to_numpy(), [0, 1, 2])

    real = pa.ipc.new_file

    class Failing:  # a writer whose batch fails after the file's header is out
        def __init__(self, sink, schema):
            self.w = real(sink, schema)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write_batch(self, b):
            raise pa.ArrowCapacityError("Cannot write arrays larger than 2^31 - 1 in length")

    seg_dir = tmp_path / "c" / "segments"
    before = set(os.listdir(seg_dir))
    monkeypatch.setattr(pa.ipc, "new_file", Failing)
    with pytest.raises(pa.ArrowCapacityError):
        col.add(x[:5], ids=np.arange(1000, 1005))
    assert set(os.listdir(seg_dir)) == before
    monkeypatch.undo()
    assert col.count() == 1000
    col.close()
