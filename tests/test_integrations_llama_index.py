"""The LlamaIndex vector store, in the style of llama-index's own vector-store tests
(llama-index-core tests/vector_stores/test_simple.py): the same three nodes, every
filter operator and condition, delete by ref_doc_id, node_ids / doc_ids; then
persistence, MMR, an index end to end and bad input."""
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import nestvec as nv  # noqa: E402
from nestvec.integrations.llama_index import NestvecVectorStore  # noqa: E402

A = "AF3BE6C4-5F43-4D74-B075-6B0E07900DE8"  # weight 1, rank a
B = "7D9CD555-846C-445C-A9DD-F8924A01411D"  # weight 2, rank c
C = "452D24AB-F185-414C-A352-590B4B9EE51B"  # weight 3, rank c
SCHEMA = {"weight": "float64", "rank": "string", "quality": "list<item: string>", "identifier": "string"}


def _nodes():
    def node(nid, emb, src, weight, rank, quality, ident):
        return TextNode(text="lorem ipsum", id_=nid, embedding=emb,
                        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=src)},
                        metadata={"weight": weight, "rank": rank, "quality": quality, "identifier": ident})
    return [node(A, [1.0, 0.0], "test-0", 1.0, "a", ["medium", "high"], "6FTR78Yun"),
            node(B, [0.0, 1.0], "test-1", 2.0, "c", ["medium"], "6FTR78Ygl"),
            node(C, [1.0, 1.0], "test-2", 3.0, "c", ["low", "medium", "high"], "6FTR78Ztl")]


@pytest.fixture()
def store():
    s = NestvecVectorStore(metadata_schema=SCHEMA, dtype="float32")
    s.add(_nodes())
    yield s
    s.close()


def _query(store, filters=None, k=3, **kw):
    return store.query(VectorStoreQuery(query_embedding=[1.0, 1.0], similarity_top_k=k, filters=filters,
                                        **kw)).ids


def _f(key, op, value):
    return MetadataFilters(filters=[MetadataFilter(key=key, operator=op, value=value)])


def test_query_without_filters_returns_all_rows_sorted_by_similarity(store):
    ids = _query(store)
    assert sorted(ids) == sorted([A, B, C]) and ids[0] == C


def test_query_with_filters_returns_multiple_matches(store):
    assert _query(store, _f("rank", FilterOperator.EQ, "c")) == [C, B]
    assert _query(store, _f("rank", FilterOperator.EQ, "c"), k=1) == [C]


def test_query_with_filter_applies_node_id_and_doc_id_filters(store):
    assert _query(store, _f("rank", FilterOperator.EQ, "c"), node_ids=[C]) == [C]
    assert _query(store, doc_ids=["test-0", "test-1"]) == [A, B]  # a tie: row order


def test_query_with_exact_and_contradictive_filters(store):
    f = MetadataFilters(filters=[MetadataFilter(key="rank", value="c"), MetadataFilter(key="weight", value=2.0)])
    assert _query(store, f) == [B]
    f = MetadataFilters(filters=[MetadataFilter(key="weight", value=2), MetadataFilter(key="weight", value=3)])
    assert _query(store, f) == []


@pytest.mark.parametrize("key, op, value, expected", [
    ("weight", FilterOperator.EQ, 1.0, 1),
    ("weight", FilterOperator.NE, 1.0, 2),
    ("weight", FilterOperator.GT, 1.5, 2),
    ("weight", FilterOperator.GTE, 1.0, 3),
    ("weight", FilterOperator.LT, 1.1, 1),
    ("weight", FilterOperator.LTE, 1.0, 1),
    ("rank", FilterOperator.IN, ["a", "c"], 3),
    ("rank", FilterOperator.NIN, ["c"], 1),
    ("identifier", FilterOperator.TEXT_MATCH, "6FTR78Y", 2),
    ("identifier", FilterOperator.TEXT_MATCH_INSENSITIVE, "6ftr78y", 2),
    ("quality", FilterOperator.CONTAINS, "high", 2),
    ("quality", FilterOperator.ANY, ["high", "low"], 2),
    ("quality", FilterOperator.ALL, ["medium", "high"], 2),
])
def test_every_operator(store, key, op, value, expected):
    if op in (FilterOperator.CONTAINS, FilterOperator.ANY, FilterOperator.ALL):
        pytest.importorskip("duckdb")  # list operators become SQL
    assert len(_query(store, _f(key, op, value))) == expected


def test_conditions_and_nesting(store):
    two = [MetadataFilter(key="rank", value="c"), MetadataFilter(key="weight", value=1.0)]
    assert len(_query(store, MetadataFilters(filters=two, condition=FilterCondition.OR))) == 3
    assert len(_query(store, MetadataFilters(filters=two, condition=FilterCondition.AND))) == 0
    assert sorted(_query(store, MetadataFilters(filters=[MetadataFilter(key="rank", value="a")],
                                                condition=FilterCondition.NOT))) == sorted([B, C])
    nested = MetadataFilters(filters=[
        MetadataFilter(key="weight", operator=FilterOperator.GTE, value=2.0),
        MetadataFilters(filters=[MetadataFilter(key="identifier", value="6FTR78Ygl"),
                                 MetadataFilter(key="identifier", value="6FTR78Yun")],
                        condition=FilterCondition.OR)])
    assert _query(store, nested) == [B]
    pytest.importorskip("duckdb")  # the same tree as SQL (a list operator inside)
    nested.filters.append(MetadataFilter(key="quality", operator=FilterOperator.CONTAINS, value="medium"))
    assert _query(store, nested) == [B]


def test_undeclared_key_is_a_clear_error(store):
    with pytest.raises(ValueError, match="'unknown_field' is not a filterable column"):
        _query(store, _f("unknown_field", FilterOperator.EQ, "c"))


def test_delete_and_get(store):
    store.delete("test-1")
    assert _query(store, k=2) == [C, A]
    nodes = store.get_nodes(node_ids=[A, C])
    assert [n.node_id for n in nodes] == [A, C]
    assert nodes[0].text == "lorem ipsum" and nodes[0].metadata["quality"] == ["medium", "high"]
    assert nodes[0].ref_doc_id == "test-0"
    assert [n.node_id for n in store.get_nodes(filters=_f("rank", FilterOperator.EQ, "c"))] == [C]
    assert store.get_nodes(node_ids=[A, C], filters=_f("rank", FilterOperator.EQ, "c"))[0].node_id == C
    store.delete_nodes(node_ids=[A])
    assert _query(store) == [C]
    store.clear()
    assert _query(store) == [] and store.client.count() == 0


def test_results_carry_nodes_and_scores(store):
    res = store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=2))
    assert res.ids == [A, C] and abs(res.similarities[0] - 1.0) < 1e-6
    assert isinstance(res.nodes[0], TextNode) and res.nodes[0].get_embedding is not None
    assert res.nodes[0].metadata == _nodes()[0].metadata
    # MMR: the second pick avoids near-duplicates of the first
    res = store.query(VectorStoreQuery(query_embedding=[1.0, 0.1], similarity_top_k=2,
                                       mode=VectorStoreQueryMode.MMR, mmr_threshold=0.1))
    assert res.ids[0] == A and len(res.ids) == 2
    with pytest.raises(ValueError, match="not supported"):
        store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], mode=VectorStoreQueryMode.SPARSE))
    with pytest.raises(TypeError, match="unexpected arguments"):
        store.query(VectorStoreQuery(query_embedding=[1.0, 0.0]), nprobe=3)
    assert store.query(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=3),
                       search_mode="flat", min_score=0.5).ids == [A, C]


def test_upsert_persist_and_reopen(tmp_path):
    path = tmp_path / "li.nv"
    s = NestvecVectorStore(path, metadata_schema=SCHEMA)
    s.add(_nodes())
    changed = _nodes()[1]
    changed.text = "new text"
    s.add([changed])  # same id: replaced
    assert s.client.count() == 3
    s.close()
    again = NestvecVectorStore(path)
    assert again.metadata_schema["rank"] == "string"
    assert again.get_nodes(node_ids=[B])[0].text == "new text"
    assert _query(again, _f("rank", FilterOperator.EQ, "a")) == [A]
    again.close()
    with pytest.raises(ValueError, match="not a LlamaIndex store"):
        nv.Collection.create(tmp_path / "plain", dim=2).close()
        NestvecVectorStore(tmp_path / "plain")


def test_vector_store_index_end_to_end():
    from llama_index.core import MockEmbedding, StorageContext, VectorStoreIndex
    from llama_index.core.schema import Document

    store = NestvecVectorStore(metadata_schema={"lang": "string"})
    docs = [Document(text=f"text {i}", metadata={"lang": "en" if i % 2 else "de"}, id_=f"doc{i}")
            for i in range(6)]
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                            embed_model=MockEmbedding(embed_dim=8))
    got = index.as_retriever(similarity_top_k=10, filters=_f("lang", FilterOperator.EQ, "en")).retrieve("text")
    assert sorted(n.node.ref_doc_id for n in got) == ["doc1", "doc3", "doc5"]
    index.delete_ref_doc("doc1")
    assert store.client.count() == 5


def test_bad_input():
    with pytest.raises(ValueError, match="names the store uses"):
        NestvecVectorStore(metadata_schema={"_node": "string"})
    s = NestvecVectorStore()
    with pytest.raises(ValueError, match="has no embedding"):
        s.add([TextNode(text="x", id_="1")])
    with pytest.raises(ValueError, match="query_embedding"):
        s.query(VectorStoreQuery(query_str="x"))
    assert s.query(VectorStoreQuery(query_embedding=[1.0])).ids == []  # nothing added yet
