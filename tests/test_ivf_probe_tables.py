"""The ivf probe's narrow tables (IvfCentroids.probe_table on CPUs with the dot
instruction): bfloat16 pairs and int8 quads, their layout and rounding, the one native
call's answers with them against the float16 table's, where each is used, bad tables."""
from __future__ import annotations

import numpy as np
import pytest

import nestvec as nv
from nestvec import _backend as be
from nestvec.collection import NoMergePolicy, hostcalls
from nestvec.collection.indexes import ivf as ivfmod

pytest.importorskip("faiss")

D, N = 64, 3000


def data(seed=3, n=N, d=D, clusters=24, nq=40):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d))
    x = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d))
    q = centers[rng.integers(0, clusters, nq)] + 0.6 * rng.standard_normal((nq, d))
    return x.astype(np.float32), q.astype(np.float32)


@pytest.fixture(scope="module")
def indexed():
    x, q = data()
    col = nv.Collection.create(None, dim=D, merge_policy=NoMergePolicy())
    col.add(x[:1700], ids=np.arange(1700))
    col.add(x[1700:], ids=np.arange(1700, N))
    col.create_index("ivf", nlist=40, min_rows=100)  # 40 lists: a partial last block
    return col, q, x


def bf16_reference(v):
    """float32 -> bfloat16 bits, nearest even, in Python integers (the reference)."""
    out = []
    for u in np.asarray(v, np.float32).view(np.uint32).ravel().tolist():
        lo = u & 0xFFFF
        hi = u >> 16
        if lo > 0x8000 or (lo == 0x8000 and hi & 1):
            hi += 1
        out.append(hi)
    return np.array(out, np.uint16).reshape(np.shape(v))


def test_pair_table_layout_and_rounding():
    rng = np.random.default_rng(0)
    c = rng.standard_normal((37, 10)).astype(np.float32)
    c[0, :4] = [1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -8 + 2 ** -20]  # ties to even, and above
    t = ivfmod.bf16_pair_table(c)
    assert t.shape == (3, 5, 16, 2) and t.dtype == np.uint16 and t.flags.c_contiguous
    bits = bf16_reference(c)
    for r in range(48):
        for v in range(10):
            want = bits[r, v] if r < 37 else 0  # lists past nlist are zero
            assert t[r // 16, v // 2, r % 16, v % 2] == want
    assert bits[0, 0] == 0x3F80 and bits[0, 1] == 0x3F82 and bits[0, 2] == 0xBF80 and bits[0, 3] == 0x3F81


def _call(col, q, table, nprobe, probe_metric=1):
    s = col.searcher(k=10, mode="ivf")
    f = s._state[-1]
    return be._C.ivf_search(q, None, f.nbytes, table, probe_metric, nprobe, f.hsegs, f.dsegs, 200, D, 0, 10, 10,
                            f.nlist), f


def i8_reference(c):
    """The int8 quad table's numbers for rows c: (int8 values, correction, inverse scale)."""
    mx = np.abs(c).max(axis=1)
    scale = np.where(mx > 0, 127.0 / np.where(mx > 0, mx, 1), 0)
    c8 = np.clip(np.rint(c * scale[:, None]), -127, 127).astype(np.int8)
    return c8, -128 * c8.astype(np.int64).sum(axis=1), np.where(mx > 0, mx / 127.0, 0).astype(np.float32)


def test_quad_table_layout():
    rng = np.random.default_rng(1)
    c = rng.standard_normal((37, 12)).astype(np.float32)
    c[5] = 0  # a zero row: zero scale, zero dots
    t = ivfmod.i8_quad_table(c)
    assert t.shape == (3, 5, 16, 4) and t.dtype == np.int8 and t.flags.c_contiguous
    c8, corr, inv = i8_reference(c)
    for r in range(48):
        for v in range(12):
            assert t[r // 16, v // 4, r % 16, v % 4] == (c8[r, v] if r < 37 else 0)
        got_corr = t[r // 16, 3, r % 16].view("<i4")[0]
        got_inv = t[r // 16, 4, r % 16].view("<f4")[0]
        assert got_corr == (corr[r] if r < 37 else 0) and got_inv == (inv[r] if r < 37 else 0)
    assert np.abs(c8).max() == 127


def _tables(f):
    cents = f.cent.centroids
    nb = -(-f.nlist // 16)
    rows = np.zeros((nb * 16, D), np.float16)
    rows[:f.nlist] = cents
    return cents, np.ascontiguousarray(rows.reshape(nb, 16, D).transpose(0, 2, 1))


NARROW = [
    pytest.param("bf16", ivfmod.bf16_pair_table, hostcalls.probe_bf16_available, (1, 2),
                 marks=pytest.mark.skipif(not hostcalls.probe_bf16_available(), reason="no bf16 dot on this CPU / ISA")),
    pytest.param("i8", ivfmod.i8_quad_table, hostcalls.probe_i8_available, (1,),
                 marks=pytest.mark.skipif(not hostcalls.probe_i8_available(), reason="no u8 x s8 dot on this CPU / ISA")),
]


@pytest.mark.parametrize("name,make,_avail,metrics", NARROW)
def test_narrow_probe_answers_as_float16(indexed, name, make, _avail, metrics):
    """Every list probed: the answers are the float16 table's exactly (the probe's order
    does not matter); a narrow probe differs only where lists nearly tie."""
    col, q, _ = indexed
    f = col.searcher(k=10, mode="ivf")._state[-1]
    cents, f16 = _tables(f)
    narrow = make(cents)
    for nq in (1, 2, 3, 7, len(q)):  # one to four queries a pass over the table
        for pm in metrics:  # ip, and (bf16) l2 with |c|^2 from the same pass
            a, _ = _call(col, q[:nq], narrow, f.nlist, pm)
            b, _ = _call(col, q[:nq], f16, f.nlist, pm)
            for x, y in zip(a[:3], b[:3]):
                np.testing.assert_array_equal(x, y)
    for pm in metrics:
        a, _ = _call(col, q, narrow, 2, pm)
        b, _ = _call(col, q, f16, 2, pm)
        same = (a[2] == b[2]).all(axis=1) & (a[1] == b[1]).all(axis=1)
        assert same.mean() >= 0.9
        if pm == 1:  # where they differ, the lists tie within the narrow rounding
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            dots = qn @ cents.T
            for j in np.flatnonzero(~same):
                top = np.sort(dots[j])[::-1]
                assert top[1] - top[2] < 0.02 or top[0] - top[1] < 0.02


@pytest.mark.skipif(not hostcalls.probe_i8_available(), reason="no u8 x s8 dot on this CPU / ISA")
def test_i8_probe_picks_the_reference_lists(indexed):
    """nprobe 1, one query at a time: the rows compared are the rows of the list the
    int8 reference dot ranks first (the query scaled to 127 at its largest value, each
    centroid likewise, the +128 offset undone by the correction)."""
    col, q, _ = indexed
    f = col.searcher(k=10, mode="ivf")._state[-1]
    cents = f.cent.centroids
    c8, corr, inv = i8_reference(cents)
    sizes = sum(np.diff(np.asarray(h[4])) for h in f.hsegs if h is not None and h[3] > 0)  # (spans: their members k 0)
    t = ivfmod.i8_quad_table(cents)
    agree = 0
    for j in range(len(q)):
        x = (q[j] / np.linalg.norm(q[j].astype(np.float64))).astype(np.float32)
        mx = np.abs(x).max()
        q8 = np.clip(np.rint(x * np.float32(127 / mx)), -127, 127).astype(np.int64) + 128
        ref = (c8.astype(np.int64) @ q8 + corr) * inv.astype(np.float64) * (mx / 127)
        a, _ = _call(col, q[j:j + 1], t, 1)
        agree += a[4] == sizes[int(np.argmax(ref))]
    assert agree >= 0.95 * len(q), agree


@pytest.mark.parametrize("name,make,avail,_metrics", NARROW)
def test_large_tables_probe_narrow(indexed, monkeypatch, name, make, avail, _metrics):
    """At least PROBE_NARROW_VALUES values: the searcher's call probes the narrow table
    (int8 where the CPU has it, ip), and answers at the recall of the float16 table's."""
    col, q, x = indexed
    cent = col.searcher(k=10, mode="ivf")._state[-1].cent
    if name == "bf16":  # (the int8 table comes first where both are available)
        monkeypatch.setattr(hostcalls, "probe_i8_available", lambda: False)
    monkeypatch.setattr(cent, "_probe_table", None)
    monkeypatch.setattr(ivfmod, "PROBE_NARROW_VALUES", 0)
    col.refresh()
    s = col.searcher(k=10, mode="ivf")
    want_dtype = np.int8 if name == "i8" else np.uint16
    assert s._state[-1].table.dtype == want_dtype and s._state[-1].table.ndim == 4
    ids, _ = s.search(q)
    exact, _ = col.searcher(k=10, mode="flat").search(q)
    rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    monkeypatch.setattr(cent, "_probe_table", None)
    monkeypatch.setattr(ivfmod, "PROBE_NARROW_VALUES", 1 << 60)
    s2 = col.searcher(k=10, mode="ivf", nprobe=s._state[-1].nprobe)
    assert s2._state[-1].table.dtype == np.float16
    ids2, _ = s2.search(q)
    rec2 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids2, exact)])
    assert rec >= rec2 - 0.02 and rec >= 0.8
    monkeypatch.setattr(cent, "_probe_table", None)


@pytest.mark.skipif(be._C is None, reason="no native module")
def test_narrow_tables_need_their_dot(indexed, restore_isa):
    """On an ISA without the dot instructions (AVX2, scalar) the table stays float16,
    and the call refuses a narrow table with a clear error."""
    col, q, _ = indexed
    f = col.searcher(k=10, mode="ivf")._state[-1]
    for isa in ("scalar", "avx2"):
        try:
            be._C.set_isa(isa)
        except (ValueError, RuntimeError):
            continue
        assert not hostcalls.probe_bf16_available() and not hostcalls.probe_i8_available()
        with pytest.raises(ValueError, match="bf16"):
            _call(col, q, ivfmod.bf16_pair_table(f.cent.centroids), 2)
        with pytest.raises(ValueError, match="int8"):
            _call(col, q, ivfmod.i8_quad_table(f.cent.centroids), 2)


@pytest.mark.skipif(not (hostcalls.probe_bf16_available() and hostcalls.probe_i8_available()),
                    reason="no bf16 / u8 x s8 dot on this CPU / ISA")
def test_bad_narrow_tables(indexed):
    col, q, _ = indexed
    f = col.searcher(k=10, mode="ivf")._state[-1]
    bf = ivfmod.bf16_pair_table(f.cent.centroids)
    i8 = ivfmod.i8_quad_table(f.cent.centroids)
    bad = [bf.astype(np.int16), bf.astype(np.uint32), np.ascontiguousarray(bf[:, :, :8]),
           np.ascontiguousarray(bf[..., :1]), bf.transpose(0, 2, 1, 3), np.ascontiguousarray(bf[:-1]),
           i8.view(np.uint8), np.ascontiguousarray(i8[..., :2]), np.ascontiguousarray(i8[:-1]),
           np.ascontiguousarray(i8[:, :, :8])]
    for t in bad:
        with pytest.raises((ValueError, TypeError)):
            _call(col, q, t, 2)
    with pytest.raises(ValueError, match="ip"):  # an int8 table serves ip probes only
        _call(col, q, i8, 2, probe_metric=2)


@pytest.fixture
def one_then_two_threads():
    before = nv.get_num_threads()
    yield
    nv.set_num_threads(before)


@pytest.mark.skipif(be._C is None, reason="no native module")
def test_single_query_probe_split_equals_one_thread(one_then_two_threads):
    """A single query's probe over a table of thousands of lists splits its blocks over
    the pool (dense.cpp topk_blocked): the lists, hence the answers, are one thread's,
    for every table kind and probe metric, with a centroid duplicated across the split
    (a tie settled by the smaller list) and a last block part-full."""
    x, q = data(seed=5, n=12000, d=16, clusters=64, nq=24)
    col = nv.Collection.create(None, dim=16, merge_policy=NoMergePolicy())
    col.add(x, ids=np.arange(len(x)))
    col.create_index("ivf", nlist=2600, min_rows=100, tune=False)
    s = col.searcher(k=10, mode="ivf")
    f = s._state[-1]
    assert f.nlist == 2600  # 163 blocks of 16: two parts of at least 64 blocks
    cents = f.cent.centroids.copy()
    cents[2400] = cents[7]  # the same centroid in both parts
    q = np.concatenate([q, cents[7:8] + 1e-3])
    nb = -(-f.nlist // 16)
    rows = np.zeros((nb * 16, 16), np.float16)
    rows[:f.nlist] = cents
    tables = [("f16", np.ascontiguousarray(rows.reshape(nb, 16, 16).transpose(0, 2, 1)), (1, 2))]
    if hostcalls.probe_bf16_available():
        tables.append(("bf16", ivfmod.bf16_pair_table(cents), (1, 2)))
    if hostcalls.probe_i8_available():
        tables.append(("i8", ivfmod.i8_quad_table(cents), (1,)))
    for name, t, metrics in tables:
        for pm in metrics:
            for nprobe in (1, 8):
                got = {}
                for n in (1, 2):
                    nv.set_num_threads(n)
                    got[n] = [be._C.ivf_search(q[j:j + 1], None, f.nbytes, t, pm, nprobe, f.hsegs, f.dsegs, 200, 16,
                                               0, 10, 10, f.nlist) for j in range(len(q))]
                for a, b in zip(got[1], got[2]):
                    for u, v in zip(a[:5], b[:5]):
                        np.testing.assert_array_equal(u, v, err_msg=f"{name} metric {pm} nprobe {nprobe}")
