"""The multi-segment host ops (csrc/cpu/multiseg.cpp, collection/hostcalls.py
*_segments): Hamming top-k over several segments equals the reference exactly; exact
rescoring over several segments equals the per-segment dense_topk path merged by
(score, global position) bit for bit; a collection search returns the same whether its
stages run per segment (the path a swapped kernel or a device search takes) or in one
call. Bad input raises, never crashes."""
import numpy as np
import pytest

import nestvec as nv
from nestvec import _backend as be
from nestvec import ops, reference
from nestvec.collection import NoMergePolicy, hostcalls
from nestvec.collection.topk import merge_parts

from conftest import cpu_isas

pytestmark = pytest.mark.skipif(be._C is None, reason="needs the native module")

NS = [1, 7, 97, 1023, 1025]


def _segments(rng, sizes, b, dup=None):
    """Codes of segments of `sizes` rows (few distinct bytes: many ties); `dup`: a row
    copied into every segment (ties across segments)."""
    out = []
    for n in sizes:
        c = rng.integers(0, 4, (n, b), dtype=np.uint8)
        if dup is not None and n:
            c[rng.integers(0, n)] = dup
        out.append(c)
    return out


def _positions(sizes, interleave, rng):
    if not interleave:
        return list(np.cumsum([0] + list(sizes[:-1])))
    # a union of shards' segments: rows interleave, increasing within each segment
    total = sum(sizes)
    order = rng.permutation(total)
    pos, at = [], 0
    for n in sizes:
        pos.append(np.sort(order[at:at + n]).astype(np.int64))
        at += n
    return pos


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("b", [3, 48])
def test_hamming_segments_equal_reference(isa, b, restore_isa):
    be._C.set_isa(isa)
    rng = np.random.default_rng(b)
    for sizes in ([1, 7, 97], [1023, 0, 1025], [97] * 4, [1025]):
        dup = rng.integers(0, 4, b, dtype=np.uint8)
        codes = _segments(rng, sizes, b, dup)
        for interleave in (False, True):
            pos = _positions(sizes, interleave, rng)
            for nq in (1, 5):
                q = rng.integers(0, 4, (nq, b), dtype=np.uint8)
                q[0] = dup
                for k in (1, 10, 1100):
                    for mode in ("full", "allow", "ranges", "lists"):
                        segs = []
                        nlist = 5
                        lists = np.stack([rng.permutation(nlist)[:3] for _ in range(nq)]) if mode == "lists" else None
                        for s, (c, p) in enumerate(zip(codes, pos)):
                            n = len(c)
                            allow = None
                            if mode != "full" and s % 2 == 1:
                                allow = rng.random(n) < 0.5 if s != 3 else np.zeros(n, bool)  # all masked
                            kk = min(k, n if allow is None else int(allow.sum()))
                            ranges = ids = None
                            if mode == "ranges":
                                cuts = np.sort(rng.integers(0, n + 1, (nq, 4)), axis=1)
                                ranges = cuts.reshape(nq, 2, 2).astype(np.int64)
                                ids = rng.permutation(n).astype(np.int32)
                            elif mode == "lists":
                                ranges = np.sort(np.r_[0, rng.integers(0, n + 1, nlist - 1), n]).astype(np.int64)
                                ids = rng.permutation(n).astype(np.int64)
                            segs.append((c, allow, p, kk, ranges, ids) if s != 2 else None)
                        got = hostcalls.hamming_segments(q, k, segs, lists)
                        want = reference.hamming_topk_segments(q, k, segs, lists)
                        for g, w in zip(got[:3], want):
                            np.testing.assert_array_equal(g, w, err_msg=f"{sizes} {mode} k={k} nq={nq}")


def test_hamming_ties_across_segments_order_by_global_position():
    b = 8
    row = np.arange(b, dtype=np.uint8)
    segs = [(np.tile(row, (3, 1)), None, off, 10, None, None) for off in (30, 0, 10)]
    d, seg, local, _ = hostcalls.hamming_segments(row[None], 5, segs)
    np.testing.assert_array_equal(d[0], [0] * 5)
    np.testing.assert_array_equal(seg[0], [1, 1, 1, 2, 2])
    np.testing.assert_array_equal(local[0], [0, 1, 2, 0, 1])


def _dense_reference(q, dim, metric, k, vecs, pos, kks, cand_seg=None, cand_local=None):
    """Per-segment ops.dense_topk (cpu) merged by (score, global position)."""
    parts = []
    for s, (v, p, kk) in enumerate(zip(vecs, pos, kks)):
        if kk <= 0 or v is None:
            continue
        if cand_seg is None:
            sc, ix = ops.dense_topk(v, q, kk, dim=dim, metric=metric, backend="cpu")
        else:
            cand = np.where(cand_seg == s, cand_local, -1)
            if not (cand >= 0).any():
                continue
            sc, ix = ops.dense_topk(v, q, kk, dim=dim, metric=metric, candidates=cand, backend="cpu")
        parts.append((p, s, sc, ix))
    return merge_parts(parts, k, metric != "l2", q.shape[0])


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dense_segments_bit_identical_to_per_segment(metric, dtype, one_call):
    rng = np.random.default_rng(len(metric) * 7 + len(dtype))
    d = 37
    for sizes in ([1, 7, 97], [1023, 0, 1025], [97] * 4):
        vecs = [rng.standard_normal((n, d)).astype(dtype) for n in sizes]
        dup = rng.standard_normal(d).astype(dtype)
        for v in vecs:
            if len(v):
                v[rng.integers(0, len(v))] = dup
        for interleave in (False, True):
            pos = _positions(sizes, interleave, rng)
            for nq in (1, 4):
                q = rng.standard_normal((nq, d)).astype(np.float32)
                q[0] = dup
                for dim in (d, 16):
                    for k in (1, 10, 300):
                        kks = [min(k, len(v)) if s != 1 else 0 for s, v in enumerate(vecs)]
                        segs = [(v, hostcalls.dtype_code(v), p, kk, None) for v, p, kk in zip(vecs, pos, kks)]
                        # shortlist: random rows of random segments, -1 padded, some out of range
                        C = 50
                        cs = rng.integers(-1, len(sizes) + 1, (nq, C))
                        cl = np.array([[rng.integers(0, max(1, sizes[s])) if 0 <= s < len(sizes) else 3
                                        for s in row] for row in cs])
                        cl[rng.random(cl.shape) < 0.2] = -1
                        for shortlist in (False, True):
                            a, b_ = (cs, cl) if shortlist else (None, None)
                            seg, local, score = hostcalls.dense_segments(q, dim, metric, k, segs, a, b_)
                            w = _dense_reference(q, dim, metric, k, vecs, pos, kks, a, b_)
                            m = w[1].shape[1]
                            np.testing.assert_array_equal(local[:, :m], w[1])
                            np.testing.assert_array_equal(np.where(w[1] >= 0, seg[:, :m], -1),
                                                          np.where(w[1] >= 0, w[0], -1))
                            ok = w[1] >= 0
                            assert np.array_equal(score[:, :m][ok].view(np.uint32), w[2][ok].astype(np.float32).view(np.uint32))
                            assert (local[:, m:] == -1).all()


@pytest.fixture(params=[True, False], ids=["one-call", "per-segment"])
def one_call(request):
    """multiseg::rescore with its one kernel call for a shortlist over several segments
    (the default) or a call per segment; restored after the test."""
    was = be._C.multiseg_one_call_rescore()
    be._C.set_multiseg_one_call_rescore(request.param)
    yield request.param
    be._C.set_multiseg_one_call_rescore(was)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_dense_shortlist_layouts_one_call_or_per_segment(metric, one_call):
    """A shortlist over several segments is scored in one kernel call when the segments'
    rows can be addressed from one base, else segment by segment: both equal the
    per-segment path bit for bit, whatever the layout (adjacent views of one array, in
    or against address order, strided prefix views, the same array as two segments,
    mixed dtypes, a segment whose own k is below k), with rows repeated across segments
    (ties broken by position, also at the k-th place)."""
    rng = np.random.default_rng(31)
    d, nq, C = 40, 5, 30  # (few candidates a segment: the one-call path takes them)
    big = rng.standard_normal((3000, d)).astype(np.float16)
    wide = rng.standard_normal((900, 3 * d)).astype(np.float32)
    # one row 5 times in each third of `big` (ties within and across segments)
    dup_at = [3, 7, 400, 650, 999, 1005, 1200, 1500, 1777, 1999, 2001, 2222, 2500, 2800, 2999]
    big[dup_at] = big[2500]
    layouts = {  # segments, and the (segment, local) rows holding the repeated row
        "adjacent views": ([big[:1000], big[1000:2000], big[2000:]], [(i // 1000, i % 1000) for i in dup_at]),
        "against address order": ([big[2000:], big[1000:2000], big[:1000]],
                                  [(2 - i // 1000, i % 1000) for i in dup_at]),
        "strided prefixes": ([wide[:450, :d], wide[450:, d:2 * d]], []),
        "same array twice": ([big[:700], big[:700]], [(s, i) for s in (0, 1) for i in dup_at if i < 700]),
        "mixed dtypes": ([big[:1000], big[1000:2000].astype(np.float32)],
                         [(i // 1000, i % 1000) for i in dup_at if i < 2000]),
    }
    for name, (vecs, dups) in layouts.items():
        sizes = [len(v) for v in vecs]
        for interleave in (False, True):
            pos = _positions(sizes, interleave, rng)
            for own_k in ("k", "short"):
                for k in (1, 3, 10, 97):
                    kks = [k] * len(vecs) if own_k == "k" else [k] + [max(1, k // 2)] * (len(vecs) - 1)
                    segs = [(v, hostcalls.dtype_code(v), p, kk, None) for v, p, kk in zip(vecs, pos, kks)]
                    q = rng.standard_normal((nq, d)).astype(np.float32)
                    q[0] = big[2500]
                    cs = rng.integers(0, len(vecs), (nq, C))
                    cl = np.array([[rng.integers(0, sizes[s]) for s in row] for row in cs])
                    cl[rng.random(cl.shape) < 0.1] = -1
                    for j, (s_, l_) in enumerate(dups):  # every copy of the query's own row
                        cs[0, j], cl[0, j] = s_, l_
                    for dim in (d, 16):
                        seg, local, score = hostcalls.dense_segments(q, dim, metric, k, segs, cs, cl)
                        w = _dense_reference(q, dim, metric, k, vecs, pos, kks, cs, cl)
                        m = w[1].shape[1]
                        msg = f"{name} interleave={interleave} own_k={own_k} k={k} dim={dim}"
                        np.testing.assert_array_equal(local[:, :m], w[1], err_msg=msg)
                        np.testing.assert_array_equal(np.where(w[1] >= 0, seg[:, :m], -1),
                                                      np.where(w[1] >= 0, w[0], -1), err_msg=msg)
                        ok = w[1] >= 0
                        assert np.array_equal(score[:, :m][ok].view(np.uint32),
                                              w[2][ok].astype(np.float32).view(np.uint32)), msg


def test_dense_segments_bfloat16():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = [torch.from_numpy(rng.standard_normal((n, 24)).astype(np.float32)).to(torch.bfloat16) for n in (97, 1025)]
    q = rng.standard_normal((3, 24)).astype(np.float32)
    raw = [t.view(torch.int16).numpy().view(np.uint16) for t in x]
    segs = [(r, 2, off, 10, None) for r, off in zip(raw, (0, 97))]
    seg, local, score = hostcalls.dense_segments(q, 24, "cosine", 10, segs)
    parts = []
    for s, (t, off) in enumerate(zip(x, (0, 97))):
        sc, ix = ops.dense_topk(t, torch.from_numpy(q), 10, metric="cosine", backend="cpu")
        parts.append((off, s, np.asarray(sc), np.asarray(ix)))
    w = merge_parts(parts, 10, True, 3)
    np.testing.assert_array_equal(seg, w[0])
    np.testing.assert_array_equal(local, w[1])
    np.testing.assert_array_equal(score, w[2])


def test_bad_input_raises():
    C = be._C
    q = np.zeros((2, 4), np.uint8)
    codes = np.zeros((5, 4), np.uint8)
    ok = (codes, None, 0, 3, None, None)
    for segs, err in [
        ([(codes,)], TypeError),
        (["x"], TypeError),
        ([(codes.astype(np.float32), None, 0, 3, None, None)], ValueError),
        ([(codes[:, :2], None, 0, 3, None, None)], ValueError),
        ([(codes, np.zeros(4, bool), 0, 3, None, None)], ValueError),
        ([(codes, None, np.zeros(2, np.int64), 3, None, None)], ValueError),
        ([(codes, None, 0, -1, None, None)], ValueError),
        ([(codes, None, 0, 2.5, None, None)], TypeError),
        ([(codes, None, "0", 3, None, None)], TypeError),
        ([(codes, None, 0, 3, np.zeros((2, 1, 3), np.int64), None)], ValueError),
        ([(codes, None, 0, 3, None, np.zeros(5, np.int32))], ValueError),
        ([(codes, None, 0, 3, np.zeros((2, 1, 2), np.int64), np.full(5, 99, np.int32))], None),
    ]:
        if err is None:  # ids beyond the positions
            bad = (codes, None, np.arange(5, dtype=np.int64), 3, np.array([[[0, 5]]] * 2, np.int64),
                   np.full(5, 99, np.int32))
            with pytest.raises(ValueError):
                C.multiseg_hamming_topk(q, 3, [bad])
            continue
        with pytest.raises(err):
            C.multiseg_hamming_topk(q, 3, segs)
    with pytest.raises(ValueError):
        C.multiseg_hamming_topk(q, 0, [ok])
    offs = np.array([0, 2, 5], np.int64)
    with pytest.raises(ValueError):  # a list number past the offsets
        C.multiseg_hamming_topk(q, 3, [(codes, None, 0, 3, offs, None)], np.array([[0], [2]], np.int64))
    with pytest.raises(ValueError):
        C.multiseg_hamming_topk(q, 3, [(codes, None, 0, 3, offs, None)], np.array([[0]], np.int64))
    v = np.zeros((5, 8), np.float32)
    qf = np.ones((2, 8), np.float32)
    cs = np.zeros((2, 3), np.int64)
    for args, err in [
        ((qf, 8, 0, 3, [(v,)], cs, cs), TypeError),
        ((qf, 8, 0, 3, [(v, 1, 0, 3, None)], cs, cs), ValueError),  # item size of float16
        ((qf, 8, 0, 3, [(v, 7, 0, 3, None)], cs, cs), ValueError),
        ((qf, 8, 0, 3, [(v, 0.0, 0, 3, None)], cs, cs), TypeError),
        ((qf, 8, 0, 3, [(v, 0, 0, None, None)], cs, cs), TypeError),
        ((qf, 9, 0, 3, [(v, 0, 0, 3, None)], cs, cs), ValueError),
        ((qf, 8, 5, 3, [(v, 0, 0, 3, None)], cs, cs), ValueError),
        ((qf, 8, 0, 3, [(v, 0, 0, 3, None)], cs, cs[:, :2]), ValueError),
        ((qf, 8, 0, 3, [(v, 0, 0, 3, None)], cs, None), ValueError),
        ((qf, 8, 0, 3, [(v, 0, 0, 3, np.zeros(4, bool))], None, None), ValueError),
        ((qf.astype(np.float64), 8, 0, 3, [(v, 0, 0, 3, None)], cs, cs), ValueError),
    ]:
        with pytest.raises(err):
            C.multiseg_rescore(*args)


# --------------------------------------------------------------------------- collections


def _collection(tmp_path, name, metric, index):
    rng = np.random.default_rng(11)
    d = 64
    col = nv.Collection.create(str(tmp_path / name), dim=d, metric=metric, schema={"g": "int32"},
                               merge_policy=NoMergePolicy())
    x = rng.standard_normal((3000, d)).astype(np.float32)
    x[1500] = x[10]  # a duplicate in another segment: ties across segments
    for a, b in ((0, 1023), (1023, 1030), (1030, 2500), (2500, 2597), (2597, 3000)):
        col.add(x[a:b], ids=np.arange(a, b), metadata={"g": (np.arange(a, b) % 7).tolist()})
    col.delete([5, 1600])
    if index:
        col.create_index("ivf", nlist=16, min_rows=1000, tune=False)
        assert len(col._snapshot().segments) == 5
    return col, x


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_collection_search_same_with_and_without_multiseg(tmp_path, monkeypatch, metric):
    col, x = _collection(tmp_path, "c", metric, index=True)
    q = np.concatenate([x[[10, 77]], np.random.default_rng(2).standard_normal((3, x.shape[1]))]).astype(np.float32)
    runs = []
    for native in (True, False):
        monkeypatch.setattr(hostcalls, "native_segments", lambda native=native: native)
        out = []
        for mode, kw in [("flat", {}), ("binary", {}), ("funnel", {}), ("funnel", {"ladder": (16, 32)}),
                         ("ivf", {}), ("ivf", {"nprobe": 1}), ("funnel", {"dim": 32})]:
            for k in (1, 10, 250):
                # mixed: segment 0 allows 39 of its rows (gathered), segment 2 all of them
                mixed = (nv.field("id") < 40) | (nv.field("id") >= 1030)
                for flt in (None, nv.field("g") == 3, nv.field("g") < 0, mixed):
                    t = col.search(q, k=k, mode=mode, filter=flt, **kw)
                    out.append((mode, k, t.column("query").to_pylist(), t.column("id").to_pylist(),
                                np.asarray(t.column("score")).tobytes()))
                t = col.search(q[0], k=k, mode=mode, filter=nv.field("id") < 40, **kw)  # selective
                out.append((mode, k, t.column("id").to_pylist(), np.asarray(t.column("score")).tobytes()))
        runs.append(out)
    assert runs[0] == runs[1]


def test_hamming_segments_large_scans_take_the_threaded_kernels():
    # a full scan past the small-scan bound goes to hamming_topk, one query's long
    # ranges to hamming_topk_ranges (rows split over threads); same answer as the reference
    rng = np.random.default_rng(9)
    b = 8
    codes = [rng.integers(0, 2, (n, b), dtype=np.uint8) for n in (70000, 3, 300000)]
    pos = _positions([len(c) for c in codes], True, rng)
    for nq in (1, 3):
        q = rng.integers(0, 2, (nq, b), dtype=np.uint8)
        allow = rng.random(300000) < 0.7
        segs = [(codes[0], None, pos[0], 50, None, None), (codes[1], None, pos[1], 3, None, None),
                (codes[2], allow, pos[2], 50, np.array([[[0, 300000]]] * nq, np.int64),
                 rng.permutation(300000).astype(np.int32))]
        got = hostcalls.hamming_segments(q, 50, segs)
        want = reference.hamming_topk_segments(q, 50, segs)
        for g, w in zip(got[:3], want):
            np.testing.assert_array_equal(g, w)
        assert got[3] == nq * (70000 + 3 + 300000)


def test_hamming_segments_one_query_splits_rows_of_all_segments():
    # fewer queries than threads: the full scans of every segment go to the threads in
    # one region, blocks of rows crossing segment ends; many ties (4-byte codes of few
    # values) settle by global position; a segment whose own k is below its allowed rows
    # keeps the per-segment route
    rng = np.random.default_rng(21)
    b = 4
    sizes = (90000, 50000, 70000)
    codes = [rng.integers(0, 3, (n, b), dtype=np.uint8) for n in sizes]
    pos = _positions(list(sizes), True, rng)
    q = rng.integers(0, 3, (1, b), dtype=np.uint8)
    allow = rng.random(sizes[1]) < 0.3
    for k in (1, 10, 300):
        for capped in (False, True):
            kk1 = 5 if capped else min(k, int(allow.sum()))
            segs = [(codes[0], None, pos[0], k, None, None), (codes[1], allow, pos[1], kk1, None, None),
                    (codes[2], None, pos[2], k, None, None)]
            got = hostcalls.hamming_segments(q, k, segs)
            want = reference.hamming_topk_segments(q, k, segs)
            for g, w in zip(got[:3], want):
                np.testing.assert_array_equal(g, w, err_msg=f"k={k} capped={capped}")
