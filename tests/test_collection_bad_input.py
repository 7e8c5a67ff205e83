"""Bad input: a clear exception and nothing written (same files, version, rows)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import nestvec as nv

from collection_helpers import clustered

D = 16
SCHEMA = {"lang": "string", "year": "int32"}


@pytest.fixture
def col(tmp_path):
    c = nv.Collection.create(str(tmp_path / "b"), dim=D, metric="cosine", schema=SCHEMA)
    c.add(clustered(10, D), ids=np.arange(10), metadata={"lang": ["en"] * 10, "year": list(range(10))})
    yield c
    c.close()


def _state(c):
    return (c.version, c.count(), c._store.files(), c.to_table(columns=["id", "lang", "year", "vector"]))


def _good(n=2):
    return clustered(n, D, 5)


def _nan():
    x = _good()
    x[1, 3] = np.nan
    return x


def _inf():
    x = _good()
    x[0, 0] = np.inf
    return x


def _zero():
    x = _good(3)
    x[2] = 0
    return x


CASES = {
    "wrong dim": (lambda: dict(vectors=clustered(2, D + 1), ids=[100, 101]), ValueError, "shape"),
    "3-d vectors": (lambda: dict(vectors=np.ones((2, 2, D)), ids=[100, 101]), ValueError, "shape"),
    "ragged list": (lambda: dict(vectors=[[1.0] * D, [1.0] * 3], ids=[100, 101]), ValueError, "length"),
    "string vectors": (lambda: dict(vectors=np.array([["a"] * D] * 2), ids=[100, 101]), TypeError, "numbers"),
    "NaN": (lambda: dict(vectors=_nan(), ids=[100, 101]), ValueError, "row 1 contains NaN"),
    "inf": (lambda: dict(vectors=_inf(), ids=[100, 101]), ValueError, "NaN or infinity"),
    "float16 overflow": (lambda: dict(vectors=_good() * 1e6, ids=[100, 101]), ValueError, "overflows float16"),
    "zero vector cosine": (lambda: dict(vectors=_zero(), ids=[100, 101, 102]), ValueError, "row 2 is all zeros"),
    "duplicate ids": (lambda: dict(vectors=_good(3), ids=[100, 101, 100]), ValueError, "duplicate"),
    "existing id": (lambda: dict(vectors=_good(2), ids=[100, 3]), ValueError, "already"),
    "str id in int collection": (lambda: dict(vectors=_good(), ids=["a", "b"]), TypeError, "int64"),
    "float ids": (lambda: dict(vectors=_good(), ids=[1.0, 2.0]), TypeError, "float"),
    "float id array": (lambda: dict(vectors=_good(), ids=np.array([1.5, 2.5])), TypeError, "dtype"),
    "bool ids": (lambda: dict(vectors=_good(), ids=[True, False]), TypeError, "bool"),
    "mixed ids": (lambda: dict(vectors=_good(), ids=[1, "b"]), TypeError, "mix"),
    "None id": (lambda: dict(vectors=_good(), ids=[1, None]), TypeError, "NoneType"),
    "ids count": (lambda: dict(vectors=_good(3), ids=[100, 101]), ValueError, "2 ids for 3"),
    "scalar ids": (lambda: dict(vectors=_good(1), ids=100), TypeError, "sequence"),
    "metadata length": (lambda: dict(vectors=_good(), ids=[100, 101], metadata={"lang": ["en"]}),
                        ValueError, "1 values for 2"),
    "metadata type": (lambda: dict(vectors=_good(), ids=[100, 101], metadata={"year": ["a", "b"]}),
                      TypeError, "int32"),
    "metadata numeric strings": (lambda: dict(vectors=_good(), ids=[100, 101], metadata={"year": ["1", "2"]}),
                                 TypeError, "int32"),
    "metadata truncation": (lambda: dict(vectors=_good(), ids=[100, 101], metadata={"year": [1.5, 2.0]}),
                            TypeError, "year"),
    "metadata overflow": (lambda: dict(vectors=_good(), ids=[100, 101], metadata={"year": [2**40, 1]}),
                          TypeError, "year"),
    "unknown column": (lambda: dict(vectors=_good(), ids=[100, 101], metadata={"nope": [1, 2]}),
                       ValueError, "unknown columns"),
    "unknown column table": (lambda: dict(vectors=_good(), ids=[100, 101],
                                          metadata=pa.table({"lang": ["a", "b"], "x": [1, 2]})),
                             ValueError, "unknown columns"),
    "metadata not a table": (lambda: dict(vectors=_good(), ids=[100, 101], metadata=[1, 2]),
                             TypeError, "metadata"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_add_rejects_and_writes_nothing(col, case):
    make, exc, match = CASES[case]
    before = _state(col)
    with pytest.raises(exc, match=match):
        col.add(**make())
    after = _state(col)
    assert after[:3] == before[:3] and after[3].equals(before[3])
    reopened = nv.open(col.path, read_only=True)
    assert reopened.version == before[0] and reopened.count() == before[1]


@pytest.mark.parametrize("case", ["wrong dim", "NaN", "zero vector cosine", "duplicate ids", "metadata type",
                                  "unknown column", "str id in int collection"])
def test_upsert_rejects_and_writes_nothing(col, case):
    make, exc, match = CASES[case]
    before = _state(col)
    with pytest.raises(exc):
        col.upsert(**make())
    after = _state(col)
    assert after[:3] == before[:3] and after[3].equals(before[3])


def test_upsert_needs_ids(col):
    before = _state(col)
    with pytest.raises(ValueError, match="ids"):
        col.upsert(_good(), ids=None)
    assert _state(col)[:3] == before[:3]


def test_delete_rejects(col):
    before = _state(col)
    with pytest.raises(ValueError, match="ids= or filter="):
        col.delete()
    with pytest.raises(TypeError, match="int64"):
        col.delete(ids=["a"])
    with pytest.raises(ValueError, match="unknown column"):
        col.delete(filter=nv.field("nope") == 1)
    with pytest.raises(TypeError):
        col.delete(filter=nv.field("year") == "x")
    after = _state(col)
    assert after[:3] == before[:3]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(q=np.ones(D + 1)), ValueError, "values per query"),
    (dict(q=np.full(D, np.nan)), ValueError, "NaN"),
    (dict(q=np.zeros(D)), ValueError, "all zeros"),
    (dict(q=np.ones(D), k=0), ValueError, "k"),
    (dict(q=np.ones(D), k=2.0), TypeError, "k"),
    (dict(q=np.ones(D), k=5000), ValueError, "k"),
    (dict(q=np.ones(D), dim=D + 1), ValueError, "dim"),
    (dict(q=np.ones(D), mode="hnsw"), ValueError, "mode"),
    (dict(q=np.ones(D), rescore=0), ValueError, "rescore"),
    (dict(q=np.ones(D), k=100, rescore=100, mode="funnel"), ValueError, "shortlist"),
    (dict(q=np.ones(D), columns=["nope"]), ValueError, "unknown"),
    (dict(q=np.ones(5), dim=5, mode="binary"), ValueError, "dim % 8"),
    (dict(q=np.ones((0, D))), ValueError, "at least one"),
    (dict(q="abc"), TypeError, "numbers"),
    (dict(q=np.ones(D), columns=["lang", "lang"]), ValueError, "more than once"),
    (dict(q=np.ones(D), device="nope"), ValueError, "device"),
    (dict(q=np.ones(D), filter=""), ValueError, "empty SQL"),
    (dict(q=np.full(D, 1e-20)), ValueError, "norm below"),  # queries are float32
    (dict(q=np.full(D, 1e20)), ValueError, "norm above"),
])
def test_search_rejects(col, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        col.search(**kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(dim=0), ValueError, "dim"),
    (dict(dim=8, dtype="int8"), ValueError, "dtype"),
    (dict(dim=8, metric="hamming"), ValueError, "metric"),
    (dict(dim=8, schema={"id": "string"}), ValueError, "reserved"),
    (dict(dim=8, schema={"score": "float64"}), ValueError, "reserved"),  # result columns
    (dict(dim=8, schema={"query": "string"}), ValueError, "reserved"),
    (dict(dim=8, schema={"x": "not-a-type"}), TypeError, "unknown type"),
    (dict(dim=8, schema=["x"]), TypeError, "schema"),
])
def test_create_rejects(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        nv.Collection.create(str(tmp_path / "c"), **kwargs)


def test_closed_and_readonly(col):
    r = nv.open(col.path, read_only=True)
    for call in (lambda: r.add(_good(), ids=[100, 101]), lambda: r.delete(ids=[1]), lambda: r.compact(),
                 lambda: r.upsert(_good(), ids=[1, 2])):
        with pytest.raises(PermissionError, match="read-only"):
            call()
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.search(np.ones(D))


def test_search_on_cuda_without_cuda(col):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        col.search(np.ones(D), device="cuda")


@pytest.mark.parametrize("metric, scale, match", [
    ("l2", 1e20, "norm above"), ("ip", 1e19, "norm above"), ("cosine", 1e30, "norm above"),
    ("cosine", 1e-30, "norm below"),
])
def test_float32_norms_the_kernels_cannot_score(tmp_path, metric, scale, match):
    """A float32 row or query whose squared norm overflows float32 (or, under cosine,
    underflows it) would score inf / 0 and silently drop out of the results."""
    c = nv.Collection.create(str(tmp_path / "f"), dim=D, dtype="float32", metric=metric)
    c.add(_good(4), ids=[0, 1, 2, 3])
    before = (c.version, c._store.files())
    bad = _good(3)
    bad[1] = scale
    with pytest.raises(ValueError, match="vectors: row 1 has a " + match):
        c.add(bad, ids=[10, 11, 12])
    assert (c.version, c._store.files()) == before
    with pytest.raises(ValueError, match="q: query 0 has a " + match):
        c.search(np.full(D, scale, np.float32), mode="flat")
    ok = _good(1)[0] * (1e-12 if scale < 1 else 1e12)  # far from the limits: scored
    assert c.search(ok, k=4).num_rows == 4


def test_float_metadata_overflow(tmp_path):
    c = nv.Collection.create(str(tmp_path / "m"), dim=D, schema={"f": "float32"})
    with pytest.raises(TypeError, match="'f'.*overflows"):
        c.add(_good(2), metadata={"f": [1e300, 1.0]})
    c.add(_good(2), metadata={"f": [float("inf"), None]})  # an explicit inf is a value
    assert c.count() == 2


def test_generated_ids_cannot_overflow(col):
    col.add(_good(1), ids=[np.iinfo(np.int64).max])
    before = _state(col)
    with pytest.raises(ValueError, match="pass ids explicitly"):
        col.add(_good(2))
    assert _state(col)[:3] == before[:3]


@pytest.fixture
def duckdb():
    return pytest.importorskip("duckdb")


def test_sql_filter_must_be_boolean(col, duckdb):
    with pytest.raises(TypeError, match="gives INTEGER, expected a boolean"):
        col.search(np.ones(D), filter="year")
    with pytest.raises(TypeError, match="expected a boolean"):
        col.count(filter="year + 1")
    assert col.count(filter="year >= 5") == 5


def test_sql_filter_cannot_read_files_or_other_rows(col, duckdb, tmp_path):
    f = tmp_path / "secret.csv"
    f.write_text("a\n1\n")
    with pytest.raises(ValueError, match="subquery|disabled|Permission"):
        col.count(filter=f"EXISTS (SELECT * FROM read_csv_auto('{f}'))")
    with pytest.raises(ValueError, match="not a plain WHERE"):
        col.search(np.ones(D), filter="year > 3) UNION ALL SELECT 999 --")
