"""nestvec.distributed.ingest: Ray Data map_batches with an actor pool of encoders
staging shard segments, one commit at the end (local Ray, 2 CPUs)."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

import nestvec as nv  # noqa: E402
from nestvec.distributed import ShardedCollection, ingest  # noqa: E402
from nestvec.distributed.ingest import _pool  # noqa: E402
from ray_helpers import deadline_fixture  # noqa: E402

_deadline = deadline_fixture(180)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                    "beir-msmarco-subset", "corpus.jsonl")


def hash_encoder():
    """A stand-in Encoder (same interface, no model): a text's vector is a function of
    the text. Defined in a function, so Ray ships it by value to the actors."""
    import zlib

    class HashEncoder:
        dim = 16

        def encode(self, texts, progress=None):
            return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(16)
                             for t in texts]).astype(np.float32)

    return HashEncoder()


def corpus(n, start=0):
    return [{"_id": f"d{i}", "title": f"title {i % 4}", "text": f"passage number {i} " * (1 + i % 5)}
            for i in range(start, start + n)]


@pytest.fixture(scope="module")
def session(ray_session):
    return ray_session


class FakeRay:
    def __init__(self, nodes=1, **res):
        self.res, self.n = res, nodes

    def cluster_resources(self):
        return self.res

    def nodes(self):
        return [{"Alive": True}] * self.n + [{"Alive": False}]


def test_source_columns_read_from_the_first_file(tmp_path, monkeypatch):
    import importlib

    ing = importlib.import_module("nestvec.distributed.ingest")  # the module (the package exports the function)
    monkeypatch.setattr(ing, "_SNIFF_BYTES", 64)  # the head ends mid-line
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in corpus(20)))
    assert ing._file_columns(str(src), "json") == {"_id", "title", "text"}
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "x" * 200, "k": 1}))  # one line, no newline
    assert ing._file_columns(str(tmp_path / "one.jsonl"), "json") == {"text", "k"}
    pq.write_table(pa.table({"text": ["a"], "n": [1]}), tmp_path / "a.parquet")
    assert ing._file_columns(str(tmp_path / "a.parquet"), "parquet") == {"text", "n"}


def test_the_encoder_pool_leaves_the_reads_a_cpu_slot():
    """(actors, CPU slots each, torch threads each): Ray Data starts the pool before
    the reads, so actors that held every slot would starve them forever."""
    # one node: a single-threaded actor per slot, fractional slots leaving one free
    assert _pool(FakeRay(CPU=2.0), None, 0) == (2, 0.5, 1)
    assert _pool(FakeRay(CPU=16.0), None, 0) == (16, 0.9375, 1)
    # several nodes: whole slots, all but one (a node keeps a whole slot for the reads)
    assert _pool(FakeRay(nodes=2, CPU=16.0), None, 0) == (15, 1, 1)
    assert _pool(FakeRay(CPU=1.0), None, 0) == (1, 0, 1)
    assert _pool(FakeRay(CPU=2.0), 4, 0) == (4, 0.25, 1)
    assert _pool(FakeRay(CPU=4.0), 2, 0) == (2, 1, 2)
    n, slots, _ = _pool(FakeRay(CPU=4.0), 7, 0)
    assert n == 7 and n * slots <= 3
    assert _pool(FakeRay(CPU=8.0, GPU=4.0), None, 0.5) == (8, 0, 0)


def nice_encoder():
    """An Encoder stand-in whose vectors carry the niceness of the process encoding."""
    class NiceEncoder:
        dim = 16

        def encode(self, texts, progress=None):
            return np.full((len(texts), 16), float(os.getpriority(os.PRIO_PROCESS, 0)), np.float32)

    return NiceEncoder()


def test_encoder_actors_run_at_the_drivers_priority(session, tmp_path):
    """Ray starts workers at niceness 15; the Encoder actors do the work the caller
    waits for, so they take the driver's niceness where the process may raise it."""
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in corpus(20)))
    with ingest(str(src), tmp_path / "sc", text_column="text", id_column="_id", encoder=nice_encoder(),
                shards=2, batch_size=8, metric="ip") as sc:  # ip: the vectors stored as given
        nice = {float(v[0]) for v in sc.to_table(columns=["vector"]).column("vector").to_pylist()}
    driver = os.getpriority(os.PRIO_PROCESS, 0)
    if os.geteuid() == 0:  # may raise its priority
        assert nice == {float(driver)}
    else:
        assert len(nice) == 1 and min(nice) >= driver


def test_jsonl_read_by_pyarrow_or_streamed_alike(session, tmp_path, monkeypatch):
    """Small JSON-lines files go through pyarrow's reader, large ones through Ray's
    streaming pandas reader: the same rows either way (U+2028 inside a text too)."""
    import importlib

    ing = importlib.import_module("nestvec.distributed.ingest")
    docs = corpus(50)
    docs[3]["text"] = "line\u2028separator and \u00fcml\u00e4ute"
    for i in range(2):
        (tmp_path / f"p{i}.jsonl").write_text(
            "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs[25 * i:25 * i + 25]), encoding="utf-8")
    import ray.data

    calls, real = [], ray.data.read_json

    def spy(*a, **kw):
        calls.append(kw.get("lines", False))
        return real(*a, **kw)

    monkeypatch.setattr(ray.data, "read_json", spy)
    rows = []
    for limit in (1 << 30, 10):  # every file small, then every file "large"
        monkeypatch.setattr(ing, "_ARROW_JSON_BYTES", limit)
        ds = ing._dataset(str(tmp_path), "text", "_id", ["title"])
        rows.append(sorted((r["_id"], r["text"], r["title"]) for r in ds.take_all()))
    assert calls == [False, True]
    assert rows[0] == rows[1] == sorted((d["_id"], d["text"], d["title"]) for d in docs)


def single_like(sc, path):
    """A single collection holding the sharded collection's rows in its row order."""
    t = sc.to_table(columns=["id", "vector", "title"])
    one = nv.Collection.create(path, dim=sc.dim, schema={"title": "string"})
    one.add(np.asarray(t.column("vector").to_pylist(), np.float32), ids=t.column("id"),
            metadata={"title": t.column("title")})
    return one


def test_ingest_jsonl_equals_encoding_in_one_process(session, tmp_path):
    docs = corpus(230)
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    enc = hash_encoder()
    sc = ingest(str(src), tmp_path / "sc", text_column="text", id_column="_id", encoder=enc, shards=3,
                batch_size=64, columns=["title"])
    try:
        assert sc.count() == 230 and sc.last_ingest["rows"] == 230
        info = sc.last_ingest
        assert 0 < info["encode_seconds"] <= info["seconds"] and info["encode_rows_per_s"] > 0
        assert info["actor_start_seconds"] >= 0 and info["prepare_seconds"] > 0
        assert 0 < info["commit_seconds"] < info["seconds"]
        assert [v["op"] for v in sc.versions()] == ["create", "import"]  # one commit
        got = sc.get(["d0", "d229", "d17"], columns=["vector", "title"])
        want = enc.encode([docs[0]["text"], docs[229]["text"], docs[17]["text"]]).astype(np.float16)
        np.testing.assert_array_equal(np.asarray(got.column("vector").to_pylist(), np.float16), want)
        assert got.column("title").to_pylist() == ["title 0", "title 1", "title 1"]
        one = single_like(sc, tmp_path / "one")
        q = enc.encode(["passage number 7", "title"])
        for mode in ("flat", "binary"):
            assert sc.search(q, k=9, mode=mode, columns=["title"]).equals(
                one.search(q, k=9, mode=mode, columns=["title"]))
    finally:
        sc.close()


@pytest.mark.slow
def test_ingest_refuses_ids_already_there_and_upserts_them(session, tmp_path):
    docs = corpus(120)
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    enc = hash_encoder()
    with ingest(str(src), tmp_path / "sc", text_column="text", id_column="_id", encoder=enc, shards=2,
                batch_size=50) as sc:
        with pytest.raises(ValueError, match="already in the collection"):
            ingest(str(src), sc, text_column="text", id_column="_id", encoder=enc, batch_size=50)
        assert sc.count() == 120 and sc.version == 1
        ingest(str(src), sc, text_column="text", id_column="_id", encoder=enc, batch_size=50, mode="upsert")
        assert sc.count() == 120 and sc.version == 2


@pytest.mark.slow
def test_ingest_parquet_and_a_dataset_append(session, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    for part in range(2):
        pq.write_table(pa.Table.from_pylist(corpus(60, 60 * part)), folder / f"part{part}.parquet")
    enc = hash_encoder()
    sc = ingest(str(folder), tmp_path / "sc", text_column="text", encoder=enc, shards=2, batch_size=50)
    assert sc.count() == 120
    assert sorted(sc.to_table().column("id").to_pylist()) == list(range(120))  # generated ids
    sc.close()
    ds = ray.data.from_items(corpus(40, 500))
    sc = ingest(ds, tmp_path / "sc", text_column="text", encoder=enc, batch_size=16, concurrency=1)
    assert sc.count() == 160 and sc.shards == 2
    assert sorted(sc.to_table().column("id").to_pylist()) == list(range(160))
    sc.close()


@pytest.mark.slow
def test_a_failed_ingest_leaves_nothing(session, tmp_path):
    docs = corpus(50) + [{"_id": "bad", "title": "x", "text": None}] + corpus(50, 50)
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    ShardedCollection.create(tmp_path / "sc", shards=2, dim=16, id_type="string").close()
    with pytest.raises(ValueError, match="text_column"):
        ingest(str(src), tmp_path / "sc", text_column="text", id_column="_id", encoder=hash_encoder(),
               batch_size=20)
    with ShardedCollection.open(tmp_path / "sc") as sc:
        assert sc.count() == 0 and sc.version == 0
        sc.compact()  # whatever a batch staged before the failure is garbage, removed here
        for p in sc.shard_paths:
            assert os.listdir(os.path.join(p, "segments")) == []
    with pytest.raises(ValueError, match="shards"):
        ingest(str(src), tmp_path / "new", text_column="text", encoder=hash_encoder())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text(src.read_text())
    pq.write_table(pa.Table.from_pylist(corpus(3)), mixed / "b.parquet")
    with pytest.raises(ValueError, match="source"):
        ingest(str(mixed), tmp_path / "new2", text_column="text", encoder=hash_encoder(), shards=2)
    (mixed / "b.parquet").rename(mixed / "_b.parquet")  # bookkeeping names are skipped
    with pytest.raises(ValueError, match=r"text_column: \['body'\] not in"):
        ingest(str(mixed), tmp_path / "new2", text_column="body", encoder=hash_encoder(), shards=2)
    with pytest.raises(ValueError, match="columns"):
        ingest(ray.data.from_items(corpus(5)), tmp_path / "new3", text_column="body", encoder=hash_encoder(),
               shards=2)
    assert not os.path.exists(tmp_path / "new2")  # a file source is checked before anything is created
    with ShardedCollection.open(tmp_path / "new3") as sc:  # a Dataset's batches in the actors
        assert sc.count() == 0 and sc.version == 0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(DATA), reason="the shared MS MARCO subset is not there")
def test_ingest_with_the_bundled_encoder(session, tmp_path):
    lines = open(DATA).read().splitlines()[:200]
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(lines) + "\n")
    enc = nv.Encoder()
    sc = ingest(str(src), tmp_path / "sc", text_column="text", id_column="_id", encoder=enc, shards=2,
                batch_size=64)
    docs = [json.loads(x) for x in lines]
    want = enc.encode([d["text"] for d in docs]).astype(np.float16)
    ids = sc.to_table(columns=["id"]).column("id").to_pylist()
    pos = {str(d["_id"]): i for i, d in enumerate(docs)}
    got = np.asarray(sc.to_table(columns=["vector"]).column("vector").to_pylist(), np.float32)
    np.testing.assert_allclose(got, want[[pos[str(i)] for i in ids]].astype(np.float32), atol=2e-3)
    q = enc.encode(["what is the boiling point of water"])
    hits = sc.search(q, k=5, mode="flat")
    assert hits.num_rows == 5
    sc.close()


def test_encoder_threads_follow_the_calling_thread():
    """torch's thread count is per thread under OpenMP, and Ray Data calls the batches on
    another thread than the constructor's: each call sets it again."""
    torch = pytest.importorskip("torch")
    import threading

    from nestvec.distributed.ingest import EncodeAndStage

    stage = object.__new__(EncodeAndStage)
    stage.threads = 2
    seen = []

    def batch_thread():
        torch.set_num_threads(1)  # as Ray's OMP_NUM_THREADS=1 leaves a fresh thread
        stage._threads()
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    try:
        t = threading.Thread(target=batch_thread)
        t.start()
        t.join()
    finally:
        torch.set_num_threads(before)
    assert seen == [2]
