"""ivf spans (indexes/span.py): one list file over several segments' rows. A search
through a span returns what the per-segment list files return (every filter and delete
shape, every route, the searcher and search(); the shortlist rescored in one kernel call
or segment by segment); spans are written by create_index,
optimize and compact, dropped with a member, checked, reopened and collected."""
from __future__ import annotations

import os

import numpy as np
import pytest

import nestvec as nv
from nestvec import _backend as be
from nestvec.collection import NoMergePolicy, TieredMergePolicy
from nestvec.collection.errors import CorruptionError
from nestvec.collection.indexes import plan, span

from collection_helpers import assert_same_hits, per_query

pytest.importorskip("faiss")

D, SEG, NSEG = 64, 700, 4
N = SEG * NSEG


def data(n=N, seed=0, nq=13):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((24, D))
    x = centers[rng.integers(0, 24, n)] + 0.6 * rng.standard_normal((n, D))
    q = centers[rng.integers(0, 24, nq)] + 0.6 * rng.standard_normal((nq, D))
    return x.astype(np.float32), q.astype(np.float32)


def build(path=None, policy=None, seed=0):
    x, q = data(seed=seed)
    col = nv.Collection.create(path, dim=D, schema={"cat": "int32"}, merge_policy=policy or NoMergePolicy())
    cat = np.arange(N) % 100
    for a in range(0, N, SEG):
        col.add(x[a:a + SEG], ids=np.arange(a, a + SEG), metadata={"cat": cat[a:a + SEG]})
    col.create_index("ivf", nlist=32, min_rows=100, tune=False)
    return col, x, q


def spans_of(col):
    return col._snap.indexes["ivf"].spans


class SpanCalls:
    """Counts the one-call searches whose Hamming entries include a span."""

    def __init__(self, monkeypatch):
        from nestvec.collection import hostcalls

        self.n = 0
        real = hostcalls.ivf_search

        def spy(*a, **kw):
            self.n += any(t is not None and len(t) == 9 for t in a[6])
            return real(*a, **kw)
        monkeypatch.setattr(hostcalls, "ivf_search", spy)


def without_spans(monkeypatch):
    monkeypatch.setattr(plan, "SPANS", False)


@pytest.fixture(scope="module")
def col():
    c, _, q = build()
    yield c, q


def test_create_index_writes_one_span_over_the_indexed_segments(col):
    c, _ = col
    (sp,) = spans_of(c)
    assert sp.members == tuple(s.name for s in c._snap.segments)
    assert len(sp.rows) == N and sp.offsets[-1] == N
    spec = c._snap.manifest["indexes"]["ivf"]
    assert [e["name"] for e in spec["spans"]] == [sp.name]
    # the span's codes are each member's list file's codes, list by list
    for m, s in enumerate(c._snap.segments):
        lst = s.ann["ivf"]
        mine = (sp.rows >= sp.member_base[m]) & (sp.rows < sp.member_base[m + 1])
        np.testing.assert_array_equal(sp.codes[mine], lst.codes)
        np.testing.assert_array_equal(sp.rows[mine] - sp.member_base[m], lst.rows)


FILTERS = {
    "none": None,
    "selective": nv.field("cat") < 3,  # exhaustive over the filter's rows
    "gathered": nv.field("cat") < 20,  # allowed rows gathered per list, in the span
    "at": nv.field("cat") < 60,  # the masks in the span's order
}


@pytest.mark.parametrize("flt", list(FILTERS))
@pytest.mark.parametrize("deletes", [False, True])
@pytest.mark.parametrize("nq", [1, 7, 13])
def test_span_search_equals_per_segment_lists(monkeypatch, flt, deletes, nq):
    c, x, q = build(seed=1)
    if deletes:
        c.delete(ids=np.arange(0, N, 7))
    q = q[:nq]
    kw = dict(k=10, mode="ivf", filter=FILTERS[flt])
    calls = SpanCalls(monkeypatch)
    with_s = [c.search(q, nprobe=p, **kw) for p in (1, 4, 32)]
    searched = [c.searcher(nprobe=p, **kw).search(q) for p in (1, 4, 32)]
    explained = c.explain(q, nprobe=4, **kw)
    used = calls.n
    # the layout before spans: per-segment lists, and the shortlist rescored one
    # segment at a time (not in one kernel call over all of them)
    without_spans(monkeypatch)
    be._C.set_multiseg_one_call_rescore(False)
    try:
        want = [c.search(q, nprobe=p, **kw) for p in (1, 4, 32)]
        want_s = [c.searcher(nprobe=p, **kw).search(q) for p in (1, 4, 32)]
    finally:
        be._C.set_multiseg_one_call_rescore(True)
    for got, w in zip(with_s, want):
        assert_same_hits(per_query(got), per_query(w), atol=0)
    for (gi, gs), (wi, ws) in zip(searched, want_s):
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_array_equal(gs, ws)
    assert explained["rows_scanned"] == c.explain(q, nprobe=4, **kw)["rows_scanned"]
    # the span serves every route but the selective filter's exhaustive one
    assert (used > 0) == (flt != "selective")
    if flt == "none":  # all lists probed: the funnel's rows
        flat = c.search(q, k=10, mode="funnel", rescore=10)
        assert_same_hits(per_query(with_s[2]), per_query(flat))


def test_span_through_staged_calls(monkeypatch, col):
    """A ladder (not the one call): the Python rounds read the span too."""
    c, q = col
    got = c.search(q, k=5, dim=64, mode="ivf", nprobe=4, ladder=(16, 32))
    without_spans(monkeypatch)
    want = c.search(q, k=5, dim=64, mode="ivf", nprobe=4, ladder=(16, 32))
    assert_same_hits(per_query(got), per_query(want), atol=0)


def test_span_persists_verifies_and_detects_damage(tmp_path):
    path = str(tmp_path / "c")
    c, _, q = build(path)
    want = c.search(q, k=10, mode="ivf", nprobe=4)
    (sp,) = spans_of(c)
    c.close()
    assert sp.name in os.listdir(os.path.join(path, "indexes"))
    with nv.open(path) as c2:
        assert [s.name for s in spans_of(c2)] == [sp.name]
        c2.verify()
        assert_same_hits(per_query(c2.search(q, k=10, mode="ivf", nprobe=4)), per_query(want), atol=0)
    f = os.path.join(path, "indexes", sp.name)
    with open(f, "r+b") as fh:  # one byte of the codes
        fh.seek(os.path.getsize(f) // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    with nv.open(path) as c3:
        with pytest.raises(CorruptionError):
            c3.verify()


def test_a_dropped_member_drops_the_span_and_optimize_writes_a_new_one(tmp_path):
    path = str(tmp_path / "c")
    c, _, q = build(path)
    (old,) = spans_of(c)
    v_span = c.version
    c.delete(ids=np.arange(SEG, 2 * SEG))  # every row of the second segment: it goes
    assert len(c._snap.segments) == NSEG - 1
    assert spans_of(c) == () and not c._snap.manifest["indexes"]["ivf"].get("spans")
    got = c.search(q, k=10, mode="ivf", nprobe=32)
    c.optimize()  # NoMergePolicy: no merge, only the span over the uncovered segments
    (new,) = spans_of(c)
    assert new.members == tuple(s.name for s in c._snap.segments)
    assert_same_hits(per_query(c.search(q, k=10, mode="ivf", nprobe=32)), per_query(got), atol=0)
    with nv.open(path, version=v_span) as old_c:  # an old version still reads its span
        assert [s.name for s in spans_of(old_c)] == [old.name]
    c.remove_versions()  # the old span goes with the versions that name it
    left = set(os.listdir(os.path.join(path, "indexes")))
    assert new.name in left and old.name not in left
    c.close()


def test_compaction_spans_its_output_segments(tmp_path):
    path = str(tmp_path / "c")
    # a cap holding ~2 input segments: compact merges 4 into 2, then spans them
    c, _, q = build(path, policy=TieredMergePolicy(max_segment_bytes=2 * SEG * (2 * D + 8 + 8 + 4) + 4096,
                                                   on_commit=False))
    want = c.search(q, k=10, mode="ivf", nprobe=32)
    c.delete(ids=np.arange(0, N, 5))
    c.compact()
    segs = c._snap.segments
    assert len(segs) < NSEG and all("ivf" in s.ann for s in segs)
    if len(segs) >= 2:
        (sp,) = spans_of(c)
        assert sp.members == tuple(s.name for s in segs)
    keep = [ids[ids % 5 != 0] for ids, _ in per_query(want)]
    for (gi, _), kept in zip(per_query(c.search(q, k=10, mode="ivf", nprobe=32)), keep):
        assert set(kept.tolist()) <= set(gi.tolist()) or len(gi) == 10
    c.close()


def test_manifest_naming_a_missing_member_is_refused(tmp_path):
    import json

    path = str(tmp_path / "c")
    c, _, _ = build(path)
    v = c.version
    c.close()
    mpath = os.path.join(path, "manifests", f"{v:020d}.json")
    if not os.path.exists(mpath):
        mpath = [os.path.join(path, "manifests", f) for f in os.listdir(os.path.join(path, "manifests"))
                 if f.endswith(".json") and int(f.split(".")[0]) == v][0]
    m = json.load(open(mpath))
    m["indexes"]["ivf"]["spans"][0]["members"][0] = "0" * 32 + ".arrow"
    with open(mpath, "w") as fh:
        json.dump(m, fh)
    with pytest.raises(CorruptionError):
        nv.open(path)


def _span_call(c, q, member_k=0, base0=0, member=0, bad_row=False):
    """The native call's arguments with one span over every segment, optionally bent."""
    from nestvec.collection import hostcalls

    snap = c._snap
    cent = snap.indexes["ivf"]
    (sp,) = cent.spans
    hsegs, dsegs = [], []
    for i, s in enumerate(snap.segments):
        lst = s.ann["ivf"]
        hsegs.append((lst.codes, None, s.offset, member_k, lst.offsets, lst.rows))
        dsegs.append((s.vectors, hostcalls.dtype_code(s.vectors), s.offset, 10, None))
    rows = sp.rows
    if bad_row:
        rows = rows.copy()
        rows[:] = N + 5
    base = sp.member_base.copy()
    base[0] = base0
    members = np.arange(len(snap.segments), dtype=np.int64)
    members[0] = member
    hsegs.append((sp.codes, None, 0, 40, sp.offsets, rows, None, members, base))
    dsegs.append(None)
    return hostcalls.ivf_search(q, None, D // 8, cent.probe_table(), False, 32, hsegs, dsegs, 40, D, "cosine", 10,
                                0, 32)


def test_native_span_arguments_are_checked(col):
    c, q = col
    if be._C is None:
        pytest.skip("no native module")
    score, seg, local, *_ = _span_call(c, q)
    assert (local >= 0).all()
    with pytest.raises(ValueError, match="span member"):
        _span_call(c, q, member_k=5)
    with pytest.raises(ValueError, match="member_base"):
        _span_call(c, q, base0=1)
    with pytest.raises(ValueError, match="member_segs"):
        _span_call(c, q, member=NSEG + 3)
    with pytest.raises(ValueError, match="row id"):
        _span_call(c, q, bad_row=True)


def test_uncovered_and_live_spans():
    spec = {"spans": [{"name": "a", "members": ["s1", "s2"]}, {"name": "b", "members": ["s3", "s4"]}]}
    ents = [{"name": n, "ivf": {"name": n + ".ivf"}} for n in ("s1", "s2", "s3")] + [{"name": "s4"}]
    assert [s["name"] for s in span.live_spans(spec, ents)] == ["a"]


@pytest.mark.parametrize("flt", ["at", "gathered"])
def test_span_with_masks_by_row(monkeypatch, flt):
    """Masks that are not remembered (read by row): the span reads each member's mask
    at the hit's row, with the same answers."""
    c, _, q = build(seed=2)
    c.delete(ids=np.arange(3, N, 11))
    monkeypatch.setattr(plan, "_mask_route", lambda pl, indexed: "row")
    calls = SpanCalls(monkeypatch)
    got = c.searcher(k=10, mode="ivf", nprobe=4, filter=FILTERS[flt]).search(q)
    assert calls.n > 0
    without_spans(monkeypatch)
    want = c.searcher(k=10, mode="ivf", nprobe=4, filter=FILTERS[flt]).search(q)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
