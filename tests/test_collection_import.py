"""Bulk import (segments written by other processes, one commit), restore() and
remove_versions(): the Collection API the sharded collection builds on."""
from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pyarrow as pa
import pytest

import nestvec as nv
from nestvec.collection import discard_segments, write_segment

D = 24


def data(n, seed, start=0):
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x, np.arange(start, start + n), {"g": (np.arange(start, start + n) % 3).astype(np.int32)}


def new(path, **kw):
    return nv.Collection.create(path, dim=D, schema={"g": "int32"}, **kw)


def _stage(args):
    path, n, seed, start, first = args
    x, ids, meta = data(n, seed, start)
    return write_segment(path, x, ids=ids, metadata=meta, rows=first)


def results(col, q, **kw):
    t = col.search(q, k=7, **kw)
    return t.column("id").to_pylist(), t.column("score").to_pylist()


def test_import_from_worker_processes_equals_add(tmp_path):
    a, b = new(tmp_path / "a"), new(tmp_path / "b")
    x0, i0, m0 = data(50, 1)
    a.add(x0, ids=i0, metadata=m0)
    b.add(x0, ids=i0, metadata=m0)
    parts = [(40, 2, 100), (33, 3, 200), (1, 4, 300)]
    first = b.reserve_rows(sum(n for n, _, _ in parts))
    jobs, off = [], first
    for n, seed, start in parts:
        jobs.append((str(tmp_path / "b"), n, seed, start, off))
        off += n
    with mp.get_context("spawn").Pool(2) as pool:
        staged = pool.map(_stage, jobs)
    for n, seed, start in parts:
        a.add(*data(n, seed, start)[:2], metadata=data(n, seed, start)[2])
    with nv.open(tmp_path / "b", read_only=True) as r:  # staged rows are invisible
        assert r.count() == 50
    assert b.import_segments(staged[::-1]) == 74  # any order: sorted by row
    assert b.count() == a.count() == 124
    q = np.random.default_rng(9).standard_normal((3, D))
    for mode in ("flat", "binary", "funnel"):
        assert results(b, q, mode=mode) == results(a, q, mode=mode)
    assert results(b, q, filter=nv.field("g") == 1) == results(a, q, filter=nv.field("g") == 1)
    assert b.get([301, 5, 205]).equals(a.get([301, 5, 205]))
    assert b.versions()[-1]["op"] in ("import", "merge")


def test_import_checks_and_commits_nothing_on_error(tmp_path):
    col = new(tmp_path / "c")
    col.add(*data(10, 1)[:2])
    p = str(tmp_path / "c")
    v = col.version
    with pytest.raises(ValueError, match="rows"):
        write_segment(p, data(3, 2)[0], ids=[50, 51, 52])  # no row numbers
    with pytest.raises(ValueError, match="ids"):
        write_segment(p, data(3, 2)[0], rows=100)
    first = col.reserve_rows(6)
    s1 = write_segment(p, data(3, 2)[0], ids=[50, 51, 52], rows=first)
    overlap = write_segment(p, data(3, 3)[0], ids=[60, 61, 62], rows=first + 2)
    with pytest.raises(ValueError, match="overlap"):
        col.import_segments([s1, overlap])
    below = write_segment(p, data(2, 3)[0], ids=[70, 71], rows=[3, 20])
    with pytest.raises(ValueError, match="at or below"):
        col.import_segments([below])
    dup = write_segment(p, data(2, 3)[0], ids=[52, 80], rows=first + 4)
    with pytest.raises(ValueError, match="duplicate"):
        col.import_segments([s1, dup])
    clash = write_segment(p, data(2, 3)[0], ids=[1, 81], rows=first + 4)
    with pytest.raises(ValueError, match="already in the collection"):
        col.import_segments([s1, clash])
    with pytest.raises(TypeError, match="staged"):
        col.import_segments(["nope"])
    with pytest.raises(ValueError, match="mode"):
        col.import_segments([s1], mode="merge")
    assert col.version == v and col.count() == 10
    # a damaged byte in a staged file: named, nothing committed
    path = os.path.join(p, "segments", s1.name)
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 3] ^= 0x40
    open(path, "wb").write(bytes(raw))
    with pytest.raises(nv.CorruptionError, match=s1.name):
        col.import_segments([s1])
    assert col.version == v
    # upsert mode replaces the rows of ids already present
    up = write_segment(p, data(2, 4)[0], ids=[1, 90], metadata={"g": [7, 7]}, rows=first + 4)
    assert col.import_segments([up], mode="upsert") == 2
    assert col.count() == 11 and col.get([1]).column("g").to_pylist() == [7]
    late = write_segment(p, data(1, 5)[0], ids=[99], rows=col.reserve_rows(1))
    assert discard_segments(p, [overlap, below, dup, clash, s1, late]) == 6
    with pytest.raises(FileNotFoundError, match="compacted"):
        col.import_segments([late])


def test_string_ids_and_a_gap_left_by_an_unused_reservation(tmp_path):
    col = nv.Collection.create(tmp_path / "s", dim=D, id_type="string")
    p = str(tmp_path / "s")
    col.reserve_rows(100)  # never used: a gap
    s = write_segment(p, data(4, 1)[0], rows=col.reserve_rows(4))  # random string ids
    assert s.id_type == "string" and s.first_row == 100
    col.import_segments([s.to_dict()])  # the JSON-able form is accepted too
    col.add(data(2, 2)[0])
    assert col.count() == 6
    with nv.open(p, read_only=True) as r:
        assert r.count() == 6


def test_restore_and_remove_versions(tmp_path):
    col = new(tmp_path / "r", merge_policy=nv.collection.NoMergePolicy())
    col.add(*data(20, 1)[:2])                 # v1
    q = data(2, 5)[0]
    want = results(col, q)
    col.add(*data(5, 2, 100)[:2])             # v2
    col.delete(ids=[3, 4])                    # v3
    assert col.restore(1) == 4
    assert col.count() == 20 and results(col, q) == want
    assert col.versions()[-1]["op"] == "restore"
    with nv.open(tmp_path / "r", version=3) as old:  # versions in between stay readable
        assert old.count() == 23
    col.add(*data(3, 3, 200)[:2])             # rows 20..24 of version 2 are not handed out again
    assert col.get([200], columns=["id"]).num_rows == 1
    assert col._snap.manifest["segments"][-1]["first_row"] == 25
    with pytest.raises(KeyError):
        col.restore(99)
    removed = col.remove_versions(keep=[1])
    assert [v["version"] for v in col.versions()] == [1, col.version]
    assert removed["manifests"] == 4  # versions 0, 2, 3, 4
    with pytest.raises(KeyError):
        col.restore(2)
    assert col.restore(1) == col.version and col.count() == 20
    with nv.open(tmp_path / "r", read_only=True) as r:
        with pytest.raises(PermissionError):
            r.restore(1)
        assert isinstance(r.get([0]), pa.Table)
