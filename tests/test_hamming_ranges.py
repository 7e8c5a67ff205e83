"""hamming_topk_ranges (the IVF probe): the cpu backend equals the reference exactly
(ties by id) over awkward sizes, every ISA, ids / allow / empty and clipped ranges."""
import numpy as np
import pytest

import nestvec.ops as ops
from nestvec import _backend, reference

from conftest import cpu_isas

NS = [1, 7, 97, 1023, 1025]
BS = [1, 3, 48, 96]


def make(rng, n, b, nq, p):
    codes = rng.integers(0, 4, (n, b), dtype=np.uint8)  # few distinct distances: many ties
    queries = rng.integers(0, 4, (nq, b), dtype=np.uint8)
    cuts = np.sort(rng.integers(0, n + 1, (nq, 2 * p)), axis=1)  # disjoint, some empty
    return codes, queries, cuts.reshape(nq, p, 2)


@pytest.mark.parametrize("isa", cpu_isas())
@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("b", BS)
def test_cpu_equals_reference(isa, n, b, restore_isa):
    rng = np.random.default_rng(n * 131 + b)
    ids = rng.permutation(n).astype(np.int32)
    allow = rng.random(n) < 0.5
    _backend._C.set_isa(isa)
    for nq, p in ((1, 1), (5, 3), (17, 8)):
        codes, queries, ranges = make(rng, n, b, nq, p)
        for k in sorted({1, 10, n, n + 3}):
            for idv in (None, ids, ids.astype(np.int64)):
                for al in (None, allow, np.zeros(n, bool)):
                    got = ops.hamming_topk_ranges(codes, queries, k, ranges, ids=idv, allow=al, backend="cpu")
                    want = reference.hamming_topk_ranges(codes, queries, k, ranges, idv, al)
                    np.testing.assert_array_equal(got[0], want[0])
                    np.testing.assert_array_equal(got[1], want[1])


def test_threads_split_one_query_and_ties_break_by_id():
    # enough rows that several threads share one query's ranges; every code equal, so
    # only the id order decides (ids reversed against positions)
    n, b = 60000, 16
    codes = np.zeros((n, b), np.uint8)
    ids = np.arange(n)[::-1].astype(np.int64).copy()
    ranges = np.array([[[0, 20000], [30000, 60000]]])
    d, i = ops.hamming_topk_ranges(codes, codes[:1], 5, ranges, ids=ids)
    np.testing.assert_array_equal(i[0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(d[0], [0] * 5)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (n, b), dtype=np.uint8)
    q = rng.integers(0, 256, (3, b), dtype=np.uint8)
    r = np.array([[[5, 40000]], [[0, n]], [[100, 101]]])
    got = ops.hamming_topk_ranges(codes, q, 50, r, ids=ids)
    want = reference.hamming_topk_ranges(codes, q, 50, r, ids)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_one_query_and_strided_prefix_codes():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (300, 12), dtype=np.uint8)
    sub = codes[:, :4]  # a prefix of every code: strided rows
    d, i = ops.hamming_topk_ranges(sub, codes[7, :4], 3, [[0, 150], [200, 300]])
    wd, wi = reference.hamming_topk_ranges(np.ascontiguousarray(sub), codes[7:8, :4], 3,
                                           np.array([[[0, 150], [200, 300]]]))
    np.testing.assert_array_equal(d, wd[0])
    np.testing.assert_array_equal(i, wi[0])
    assert i[0] == 7 and d[0] == 0


@pytest.mark.parametrize("kw, err, match", [
    (dict(ranges=[[[0, 5], [3, 8]]]), ValueError, "overlap"),
    (dict(ranges=[[0, 5]]), ValueError, "ranges: expected shape"),
    (dict(ranges=np.array([[[0.0, 5.0]]])), TypeError, "ranges: expected integer"),
    (dict(ranges=[[[0, 5]]], ids=np.arange(9)), ValueError, "ids: expected one id per code"),
    (dict(ranges=[[[0, 5]]], ids=np.arange(10, dtype=np.float32)), TypeError, "ids"),
    (dict(ranges=[[[0, 5]]], allow=np.ones(10, np.int8)), TypeError, "allow"),
    (dict(ranges=[[[0, 5]]], allow=np.ones(4, bool)), ValueError, "allow: expected at least"),
    (dict(ranges=[[[0, 10]]], ids=np.arange(10) + 5, allow=np.ones(10, bool)), ValueError, "ids"),
    (dict(ranges=[[[0, 5]]], k=0), ValueError, "k"),
])
def test_bad_input(kw, err, match):
    codes = np.zeros((10, 4), np.uint8)
    q = np.zeros((1, 4), np.uint8)
    args = dict(k=3, ids=None, allow=None)
    args.update(kw)
    with pytest.raises(err, match=match):
        ops.hamming_topk_ranges(codes, q, args.pop("k"), args.pop("ranges"), **args)
