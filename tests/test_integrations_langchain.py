"""The LangChain vector store: langchain-tests' standard VectorStoreIntegrationTests
(in memory and on disk), then what the standard suite does not cover: declared
metadata columns and filters, JSON metadata, MMR, scores, reopening, retrievers."""
import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402

import nestvec as nv  # noqa: E402
from nestvec.integrations.langchain import NestvecVectorStore  # noqa: E402

try:
    from langchain_tests.integration_tests import VectorStoreIntegrationTests
except ImportError:  # the test extra installs it; the [langchain] extra alone does not
    VectorStoreIntegrationTests = None

if VectorStoreIntegrationTests is not None:
    class TestNestvecStandardInMemory(VectorStoreIntegrationTests):
        @pytest.fixture()
        def vectorstore(self):
            store = NestvecVectorStore(self.get_embeddings())
            try:
                yield store
            finally:
                store.close()

    class TestNestvecStandardOnDisk(VectorStoreIntegrationTests):
        @pytest.fixture()
        def vectorstore(self, tmp_path):
            store = NestvecVectorStore(self.get_embeddings(), path=tmp_path / "lc.nv")
            try:
                yield store
            finally:
                store.close()
else:
    def test_standard_suite():
        pytest.skip("langchain-tests is not installed (pip install langchain-tests)")


# --------------------------------------------------------------------------- beyond the standard suite

EMB = DeterministicFakeEmbedding(size=16)
DOCS = [Document(page_content=f"doc {i}", id=f"d{i}",
                 metadata={"source": ["wiki", "news", "blog"][i % 3], "year": 2000 + i,
                           "tags": ["a", "b"][: i % 3], "score": i / 10})
        for i in range(12)]


def _store(**kw):
    return NestvecVectorStore(EMB, metadata_schema={"source": "string", "year": "int32"}, **kw)


def test_declared_columns_filters_and_json_round_trip():
    store = _store()
    assert store.add_documents(DOCS) == [d.id for d in DOCS]
    col = store.collection
    assert set(col.schema.names) == {"source", "year", "metadata", "text"}
    # metadata comes back exactly (declared keys from columns, the rest from JSON)
    assert store.get_by_ids(["d5", "d4"]) == [DOCS[5], DOCS[4]]
    q = "doc 7"
    hits = store.similarity_search(q, k=12, filter={"source": "news"})
    assert {d.id for d in hits} == {d.id for d in DOCS if d.metadata["source"] == "news"}
    hits = store.similarity_search(q, k=12, filter={"$or": [{"year": {"$lt": 2002}},
                                                            {"source": {"$in": ["blog"]}}]})
    assert {d.id for d in hits} == {"d0", "d1", "d2", "d5", "d8", "d11"}
    hits = store.similarity_search(q, k=12, filter={"year": {"$gte": 2003, "$lte": 2005},
                                                    "source": {"$ne": "wiki"}})
    assert {d.id for d in hits} == {"d4", "d5"}
    hits = store.similarity_search(q, k=12, filter=nv.field("year") > 2009)  # a nestvec expression
    assert {d.id for d in hits} == {"d10", "d11"}
    with pytest.raises(ValueError, match="not a filterable column"):
        store.similarity_search(q, filter={"tags": "a"})
    with pytest.raises(ValueError, match="unknown operator"):
        store.similarity_search(q, filter={"year": {"$near": 3}})
    assert store.delete(filter={"source": "wiki"})
    assert col.count() == 8


def test_scores_k_and_search_options():
    store = _store(dtype="float32")
    store.add_documents(DOCS)
    (top, score), = store.similarity_search_with_score("doc 3", k=1)
    assert top.id == "d3" and abs(score - 1.0) < 1e-5
    rel = store.similarity_search_with_relevance_scores("doc 3", k=3)
    assert rel[0][0].id == "d3" and abs(rel[0][1] - 1.0) < 1e-5 and all(0 <= s <= 1 for _, s in rel)
    assert len(store.similarity_search("doc 3", k=100)) == 12  # k beyond the rows
    by_vec = store.similarity_search_by_vector(EMB.embed_query("doc 3"), k=2, mode="flat")
    assert by_vec[0].id == "d3"
    assert store.similarity_search("doc 3", k=5, min_score=0.999)[0].id == "d3"
    with pytest.raises(TypeError, match="unexpected search arguments"):
        store.similarity_search("doc 3", k=2, fetch_k=3)
    with pytest.raises(TypeError, match="JSON-serializable"):
        store.add_texts(["x"], [{"when": object()}])


def test_mmr_prefers_diverse_results():
    store = _store(dtype="float32")
    store.add_texts(["same"] * 4 + ["other"], ids=["s0", "s1", "s2", "s3", "o"])
    plain = store.similarity_search("same", k=2)
    assert {d.id for d in plain} <= {"s0", "s1", "s2", "s3"}
    mmr = store.max_marginal_relevance_search("same", k=2, fetch_k=5, lambda_mult=0.1)
    assert [d.page_content for d in mmr] == ["same", "other"]
    retriever = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 5,
                                                                     "lambda_mult": 0.1})
    assert [d.page_content for d in retriever.invoke("same")] == ["same", "other"]


def test_persisted_store_reopens(tmp_path):
    path = tmp_path / "lc.nv"
    store = NestvecVectorStore.from_texts(["alpha", "beta", "gamma"], EMB, path=path,
                                          metadatas=[{"n": 1}, {"n": 2}, {"n": 3}], ids=["a", "b", "c"],
                                          metadata_schema={"n": "int64"})
    store.close()
    again = NestvecVectorStore(EMB, path=path)
    assert again.similarity_search("beta", k=1, filter={"n": {"$gt": 1}}) == [
        Document(id="b", page_content="beta", metadata={"n": 2})]
    # the collection is bound to the LangChain embeddings too
    assert again.collection.search("gamma", k=1).column("id").to_pylist() == ["c"]
    again.add_texts(["delta"], ids=["d"])
    assert again.collection.count() == 4
    again.close()
    with pytest.raises(ValueError, match="no text column"):
        c = nv.Collection.create(tmp_path / "plain", dim=16)
        c.close()
        NestvecVectorStore(EMB, path=tmp_path / "plain")


def test_wraps_an_open_collection():
    col = nv.Collection.create(None, dim=16, embedding=nv.Embedding(EMB), schema={"metadata": "string"})
    store = NestvecVectorStore(EMB, collection=col)
    store.add_texts(["x", "y"], ids=["1", "2"])
    assert col.count() == 2 and store.get_by_ids(["2"])[0].page_content == "y"
