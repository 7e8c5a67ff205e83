"""col.add(table): Arrow tables, record batches and readers, pandas and polars
DataFrames, Arrow C streams and Parquet files, with a vector column; streamed in
chunks (one segment each, one commit); results stay Arrow tables."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nestvec as nv
from nestvec.collection import NoMergePolicy, ingest

D = 8


def _data(n, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)).astype(dtype)


def _col(path=None, **kw):
    kw.setdefault("schema", {"lang": "string", "year": "int32"})
    return nv.Collection.create(path, dim=D, dtype="float32", merge_policy=NoMergePolicy(), **kw)


def _fsl(x):
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _check_rows(col, x, ids, lang=None):
    t = col.get(ids, columns=["vector", "lang"])
    assert t.column("id").to_pylist() == list(ids)
    np.testing.assert_array_equal(np.stack(t.column("vector").to_numpy(zero_copy_only=False)), x)
    if lang is not None:
        assert t.column("lang").to_pylist() == list(lang)


def test_arrow_table_fixed_size_list():
    x = _data(50)
    t = pa.table({"id": pa.array(np.arange(100, 150)), "vector": _fsl(x),
                  "lang": ["en", "fr"] * 25, "year": pa.array(np.arange(50), pa.int32())})
    col = _col()
    ids = col.add(t)
    assert ids.to_pylist() == list(range(100, 150))
    _check_rows(col, x, list(range(100, 150)), ["en", "fr"] * 25)
    hits = col.search(x[7], k=1, mode="flat")
    assert hits.column("id").to_pylist() == [107]
    # results stay Arrow; pandas and polars take them as they are
    df = col.search(x[:2], k=3, columns=["lang"]).to_pandas()
    assert list(df.columns) == ["query", "id", "score", "lang"] and len(df) == 6
    pl = pytest.importorskip("polars")
    assert pl.from_arrow(col.search(x[:2], k=3)).shape == (6, 3)


def test_zero_copy_vector_column():
    """A fixed-size list column with no nulls is read as a view of its Arrow buffer,
    and so is a list column (offsets contiguous), sliced or not."""
    x = _data(40, dtype=np.float16)
    arr = _fsl(x)[5:30]
    v = ingest.vectors_of(arr, D, "vector")
    base = np.frombuffer(arr.values.buffers()[1], np.float16)
    assert np.shares_memory(v, base) and (v == x[5:30]).all()
    lst = pa.array([list(r) for r in x.astype(np.float32)], pa.list_(pa.float32()))[3:9]
    v2 = ingest.vectors_of(lst, D, "vector")
    assert np.shares_memory(v2, np.frombuffer(lst.values.buffers()[1], np.float32))
    assert (v2 == x[3:9].astype(np.float32)).all()


@pytest.mark.parametrize("kind", ["record_batch", "reader", "list", "large_list_int", "pandas",
                                  "polars_array", "polars_list", "c_stream", "parquet_file",
                                  "parquet_dir"])
def test_sources(kind, tmp_path):
    x = _data(30, seed=1)
    ids = [f"r{i}" for i in range(30)]
    lang = ["en", "de", "fr"] * 10
    base = pa.table({"id": ids, "vector": _fsl(x), "lang": lang})
    if kind == "record_batch":
        src = base.to_batches()[0]
    elif kind == "reader":
        src = pa.RecordBatchReader.from_batches(base.schema, base.to_batches(max_chunksize=7))
    elif kind == "list":
        src = base.set_column(1, "vector", pa.array([list(r) for r in x], pa.list_(pa.float64())))
    elif kind == "large_list_int":
        x = np.round(x * 10)
        src = base.set_column(1, "vector", pa.array([[int(v) for v in r] for r in x],
                                                    pa.large_list(pa.int64())))
    elif kind == "pandas":
        pd = pytest.importorskip("pandas")
        src = pd.DataFrame({"id": ids, "vector": list(x), "lang": lang})
    elif kind.startswith("polars"):
        pl = pytest.importorskip("polars")
        vec = pl.Series("vector", x.tolist(), dtype=pl.Array(pl.Float32, D) if kind == "polars_array"
                        else pl.List(pl.Float32))
        src = pl.DataFrame({"id": ids, "lang": lang}).with_columns(vec)
    elif kind == "c_stream":
        class Stream:  # any producer of the Arrow PyCapsule stream interface
            def __arrow_c_stream__(self, requested_schema=None):
                return base.__arrow_c_stream__(requested_schema)
        src = Stream()
    elif kind == "parquet_file":
        src = tmp_path / "t.parquet"
        pq.write_table(base, src, row_group_size=8)
    else:
        (tmp_path / "d").mkdir()
        pq.write_table(base.slice(0, 12), tmp_path / "d" / "a.parquet")
        pq.write_table(base.slice(12), tmp_path / "d" / "b.parquet")
        src = str(tmp_path / "d")
    col = _col()
    out = col.add(src)
    assert sorted(out.to_pylist()) == sorted(ids)
    _check_rows(col, x.astype(np.float32), ids, lang)


def test_named_columns_and_generated_ids():
    x = _data(10, seed=2)
    t = pa.table({"emb": _fsl(x), "key": list(range(10, 20)), "year": pa.array(range(10), pa.int32())})
    col = _col()
    assert col.add(t, vector_column="emb", id_column="key").to_pylist() == list(range(10, 20))
    t2 = pa.table({"emb": _fsl(x[:3])})
    assert col.add(t2).to_pylist() == [20, 21, 22]  # the one list column; ids generated
    with pytest.raises(ValueError, match="vector_column: no column 'nope'"):
        col.add(t2, vector_column="nope")


def test_streamed_in_chunks_one_commit(monkeypatch, tmp_path):
    """A large input is read, validated and written a chunk (one segment) at a time,
    still one commit; row order, ids and search results as for one piece."""
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 64 * D * 4)  # 64 rows a chunk
    x = _data(1000, seed=3)
    t = pa.table({"id": np.arange(1000), "vector": _fsl(x)})
    col = _col(tmp_path / "c")
    v0 = col.version
    col.add(pa.RecordBatchReader.from_batches(t.schema, t.to_batches(max_chunksize=100)), progress=True)
    assert col.version == v0 + 1 and len(col._snap.segments) == 16
    assert col.to_table().column("id").to_pylist() == list(range(1000))
    ref = _col()
    ref.add(x, ids=np.arange(1000))
    q = _data(3, seed=9)
    assert col.search(q, k=20, mode="flat").equals(ref.search(q, k=20, mode="flat"))


@pytest.mark.parametrize("bad, match", [
    ("nan_late", "row 5 contains NaN"),
    ("dup_across_chunks", "duplicate ids within one call"),
    ("existing_id", "already in the collection"),
])
def test_failure_mid_stream_writes_nothing(bad, match, monkeypatch, tmp_path):
    monkeypatch.setattr(ingest, "CHUNK_BYTES", 64 * D * 4)
    col = _col(tmp_path / "c")
    col.add(_data(5, seed=4), ids=np.arange(10_000, 10_005))
    before = (col.version, col._store.files())
    x = _data(300, seed=5)
    ids = np.arange(300)
    if bad == "nan_late":
        x[64 * 3 + 5, 2] = np.nan
    elif bad == "dup_across_chunks":
        ids[250] = 3
    else:
        ids[200] = 10_003
    with pytest.raises(ValueError, match=match):
        col.add(pa.table({"id": ids, "vector": _fsl(x)}))
    assert (col.version, col._store.files()) == before
    assert col.count() == 5


@pytest.mark.parametrize("table, kw, exc, match", [
    (lambda x: pa.table({"vector": _fsl(x), "color": ["r"] * 4}), {}, ValueError,
     r"columns \['color'\] are not in the collection's schema"),
    (lambda x: pa.table({"lang": ["a"] * 4}), {}, ValueError, "no vector column"),
    (lambda x: pa.table({"vector": pa.array([[1.0] * D, [1.0] * 3, [1.0] * D, [2.0] * D])}), {},
     ValueError, "row 1 has 3 values"),
    (lambda x: pa.table({"vector": pa.array([[1.0] * D, None, [1.0] * D, [2.0] * D],
                                            pa.list_(pa.float32()))}), {}, ValueError, "row 1 is null"),
    (lambda x: pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(x[:, :4].reshape(-1)), 4)}),
     {}, ValueError, "4 values, the collection stores 8"),
    (lambda x: pa.table({"vector": pa.array([["a"] * D] * 4)}), {"vector_column": "vector"}, TypeError,
     "list or fixed_size_list column of numbers"),
    (lambda x: pa.table({"a": _fsl(x), "b": _fsl(x)}), {}, ValueError, "several list columns"),
    (lambda x: pa.table({"vector": _fsl(x)}), {"ids": [1, 2, 3, 4]}, TypeError, "come from the table"),
])
def test_bad_tables(table, kw, exc, match):
    col = _col()
    extra = {}
    if "ids" in kw:
        extra["ids"] = kw.pop("ids")
    with pytest.raises(exc, match=match):
        col.add(table(_data(4)), **kw, **extra)
    assert col.count() == 0 and col.version == 0


def test_bad_paths(tmp_path):
    col = _col()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        col.add(str(tmp_path / "missing.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a Parquet"):
        col.add(tmp_path / "junk.parquet")
