"""The ivf probe's bfloat16 pair table (IvfCentroids.probe_table on CPUs with a bf16
dot): its layout and rounding, the one native call's answers with it against the
float16 table's, where it is used, and bad tables."""
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


@pytest.mark.skipif(not hostcalls.probe_bf16_available(), reason="no bf16 dot on this CPU / ISA")
def test_bf16_probe_answers_as_float16(indexed):
    """Every list probed: the answers are the float16 table's exactly (the probe's order
    does not matter); a narrow probe differs only where lists nearly tie."""
    col, q, _ = indexed
    f = col.searcher(k=10, mode="ivf")._state[-1]
    cents = f.cent.centroids
    bf = ivfmod.bf16_pair_table(cents)
    nb = -(-f.nlist // 16)
    rows = np.zeros((nb * 16, D), np.float16)
    rows[:f.nlist] = cents
    f16 = np.ascontiguousarray(rows.reshape(nb, 16, D).transpose(0, 2, 1))
    for nq in (1, 2, 3, 7, len(q)):  # one to four queries a pass over the table
        for pm in (1, 2):  # ip, and l2 (|c|^2 from the same pass)
            a, _ = _call(col, q[:nq], bf, f.nlist, pm)
            b, _ = _call(col, q[:nq], f16, f.nlist, pm)
            for x, y in zip(a[:3], b[:3]):
                np.testing.assert_array_equal(x, y)
    a, _ = _call(col, q, bf, 2, 2)
    b, _ = _call(col, q, f16, 2, 2)
    assert ((a[2] == b[2]).all(axis=1) & (a[1] == b[1]).all(axis=1)).mean() >= 0.9
    a, _ = _call(col, q, bf, 2)
    b, _ = _call(col, q, f16, 2)
    same = (a[2] == b[2]).all(axis=1) & (a[1] == b[1]).all(axis=1)
    assert same.mean() >= 0.9
    # where they differ, the two probes' lists tie within bf16 rounding of the dots
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    dots = qn @ cents.T
    for j in np.flatnonzero(~same):
        top = np.sort(dots[j])[::-1]
        assert top[1] - top[2] < 0.02 or top[0] - top[1] < 0.02


@pytest.mark.skipif(not hostcalls.probe_bf16_available(), reason="no bf16 dot on this CPU / ISA")
def test_large_tables_probe_in_bf16(indexed, monkeypatch):
    """At least PROBE_BF16_VALUES values: the searcher's call probes the pair table, and
    answers what search() answers at recall of the float16 table's."""
    col, q, x = indexed
    cent = col.searcher(k=10, mode="ivf")._state[-1].cent
    monkeypatch.setattr(cent, "_probe_table", None)
    monkeypatch.setattr(ivfmod, "PROBE_BF16_VALUES", 0)
    col.refresh()
    s = col.searcher(k=10, mode="ivf")
    assert s._state[-1].table.dtype == np.uint16 and s._state[-1].table.ndim == 4
    ids, _ = s.search(q)
    exact, _ = col.searcher(k=10, mode="flat").search(q)
    rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    monkeypatch.setattr(cent, "_probe_table", None)
    monkeypatch.setattr(ivfmod, "PROBE_BF16_VALUES", 1 << 60)
    s2 = col.searcher(k=10, mode="ivf", nprobe=s._state[-1].nprobe)
    assert s2._state[-1].table.dtype == np.float16
    ids2, _ = s2.search(q)
    rec2 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids2, exact)])
    assert rec >= rec2 - 0.02 and rec >= 0.8


@pytest.mark.skipif(be._C is None, reason="no native module")
def test_pair_table_needs_a_bf16_dot(indexed, restore_isa):
    """On an ISA without a bf16 dot (AVX2, scalar) the table stays float16, and the call
    refuses a pair table with a clear error."""
    col, q, _ = indexed
    f = col.searcher(k=10, mode="ivf")._state[-1]
    bf = ivfmod.bf16_pair_table(f.cent.centroids)
    for isa in ("scalar", "avx2"):
        try:
            be._C.set_isa(isa)
        except (ValueError, RuntimeError):
            continue
        assert not hostcalls.probe_bf16_available()
        with pytest.raises(ValueError, match="bf16"):
            _call(col, q, bf, 2)


@pytest.mark.skipif(not hostcalls.probe_bf16_available(), reason="no bf16 dot on this CPU / ISA")
def test_bad_pair_tables(indexed):
    col, q, _ = indexed
    f = col.searcher(k=10, mode="ivf")._state[-1]
    bf = ivfmod.bf16_pair_table(f.cent.centroids)
    bad = [bf.astype(np.int16), bf.astype(np.uint32), np.ascontiguousarray(bf[:, :, :8]),
           np.ascontiguousarray(bf[..., :1]), bf.transpose(0, 2, 1, 3), np.ascontiguousarray(bf[:-1])]
    for t in bad:
        with pytest.raises((ValueError, TypeError)):
            _call(col, q, t, 2)
