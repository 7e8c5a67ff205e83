"""LlamaIndex vector store on a nestvec collection (``pip install 'nestvec[llama-index]'``).

::

    from llama_index.core import StorageContext, VectorStoreIndex
    from nestvec.integrations.llama_index import NestvecVectorStore

    store = NestvecVectorStore("docs.nv", metadata_schema={"author": "string", "year": "int32"})
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store))
    retriever = index.as_retriever(filters=MetadataFilters(filters=[
        MetadataFilter(key="year", operator=FilterOperator.GTE, value=2020)]))

One row per node: the node id, its embedding, its text (``stores_text``), its
``ref_doc_id`` (``delete(ref_doc_id)``), the node itself as JSON (LlamaIndex's own
``node_to_metadata_dict``, text removed) and the declared metadata keys as typed
columns. ``MetadataFilters`` become nestvec filters on those columns: a pyarrow
expression, or DuckDB SQL for the list operators (``contains``, ``any``, ``all``).
Filtering on a key that was not declared is an error (it lives only in the JSON).
"""
from __future__ import annotations

import json
import numbers
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow.compute as pc
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from .. import collection as nvc

NODE_COLUMN = "_node"
DOC_COLUMN = "ref_doc_id"
_RESERVED = ("id", "vector", "code", "query", "score")
# keyword arguments of query() handed on to Collection.search ("mode" is LlamaIndex's)
_SEARCH_KW = {"search_mode": "mode", "dim": "dim", "rescore": "rescore", "ladder": "ladder",
              "min_score": "min_score", "max_distance": "max_distance", "device": "device"}
_CMP = {FilterOperator.EQ: ("__eq__", "="), FilterOperator.NE: ("__ne__", "<>"),
        FilterOperator.GT: ("__gt__", ">"), FilterOperator.GTE: ("__ge__", ">="),
        FilterOperator.LT: ("__lt__", "<"), FilterOperator.LTE: ("__le__", "<=")}
_LIST_OPS = (FilterOperator.CONTAINS, FilterOperator.ANY, FilterOperator.ALL)


class NestvecVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store backed by a :class:`nestvec.Collection`.

    Args:
        path: a collection directory: opened when it holds one, else created on the
            first add (width from the first embedding); None: in memory.
        metadata_schema: ``{key: type}`` node metadata kept as typed columns, which
            ``MetadataFilters`` can use (a list type such as ``"list<string>"``
            takes the ``contains`` / ``any`` / ``all`` operators).
        collection: wrap an open Collection created by this class.
        **collection_options: for ``Collection.create`` (``dtype``, ``metric``,
            ``binary``, ``dim``, ``merge_policy``).
    """

    stores_text: bool = True
    flat_metadata: bool = False
    path: Optional[str] = None
    metadata_schema: Dict[str, Any] = Field(default_factory=dict)
    text_column: str = "text"

    _col: Any = PrivateAttr(default=None)
    _options: Dict[str, Any] = PrivateAttr(default_factory=dict)

    def __init__(self, path=None, *, metadata_schema: Optional[dict] = None, collection=None,
                 text_column: str = "text", **collection_options: Any):
        schema = dict(metadata_schema or {})
        bad = [k for k in schema if k in (text_column, NODE_COLUMN, DOC_COLUMN) or k in _RESERVED]
        if bad:
            raise ValueError(f"metadata_schema: {bad} are names the store uses itself")
        super().__init__(path=None if path is None else str(path), metadata_schema=schema,
                         text_column=text_column)
        self._options = collection_options
        col = collection
        if col is None and path is not None:
            try:
                col = nvc.open(path)
            except nvc.CollectionNotFound:
                col = None
        if col is not None:
            missing = [c for c in (NODE_COLUMN, DOC_COLUMN) if c not in col.schema.names]
            if missing or col.text_column is None:
                raise ValueError(f"collection: not a LlamaIndex store (lacks {missing or ['a text column']})")
            self.text_column = col.text_column
            self.metadata_schema = {f.name: str(f.type) for f in col.schema
                                    if f.name not in (self.text_column, NODE_COLUMN, DOC_COLUMN)}
        self._col = col

    @classmethod
    def class_name(cls) -> str:
        return "NestvecVectorStore"

    @property
    def client(self) -> Any:
        """The nestvec Collection (None until the first add of a new store)."""
        return self._col

    def close(self) -> None:
        if self._col is not None:
            self._col.close()

    def _ensure(self, dim: int):
        if self._col is None:
            schema = dict(self.metadata_schema)
            schema.update({NODE_COLUMN: "string", DOC_COLUMN: "string"})
            opts = dict(self._options)
            opts.setdefault("dim", dim)
            self._col = nvc.Collection.create(self.path, schema=schema, id_type="string",
                                              text_column=self.text_column, **opts)
        return self._col

    @property
    def _columns(self) -> list:
        return [self.text_column, NODE_COLUMN]

    # ------------------------------------------------------------------ writes

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Upsert nodes (an id that exists is replaced); returns their ids."""
        nodes = list(nodes)
        if not nodes:
            return []
        vecs = []
        for n in nodes:
            e = n.get_embedding() if n.embedding is not None else None
            if e is None:
                raise ValueError(f"nodes: node {n.node_id!r} has no embedding (embed the nodes first, "
                                 "as VectorStoreIndex does)")
            vecs.append(e)
        vectors = np.asarray(vecs, dtype=np.float32)
        col = self._ensure(vectors.shape[1])
        meta = {NODE_COLUMN: [], DOC_COLUMN: []}
        meta.update({k: [] for k in self.metadata_schema})
        texts = []
        for n in nodes:
            d = node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata)
            meta[NODE_COLUMN].append(json.dumps(d, ensure_ascii=False))
            meta[DOC_COLUMN].append(n.ref_doc_id)
            for k in self.metadata_schema:
                meta[k].append(n.metadata.get(k))
            texts.append(n.get_content(metadata_mode=MetadataMode.NONE))
        ids = [n.node_id for n in nodes]
        col.upsert(vectors, ids=ids, metadata=meta, texts=texts)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        if self._col is not None:
            self._col.delete(filter=pc.field(DOC_COLUMN) == str(ref_doc_id))

    def delete_nodes(self, node_ids: Optional[List[str]] = None, filters: Optional[MetadataFilters] = None,
                     **delete_kwargs: Any) -> None:
        if node_ids is None and filters is None:
            raise ValueError("delete_nodes: pass node_ids and/or filters")
        if self._col is not None:
            self._col.delete(ids=None if node_ids is None else [str(i) for i in node_ids],
                             filter=None if filters is None else self._filter(filters))

    def clear(self) -> None:
        if self._col is not None and self._col.count():
            self._col.delete(filter=pc.field("id").is_valid())

    # ------------------------------------------------------------------ reads

    def _nodes(self, t) -> list:
        out = []
        for text, blob in zip(t.column(self.text_column).to_pylist(), t.column(NODE_COLUMN).to_pylist()):
            out.append(metadata_dict_to_node(json.loads(blob), text=text))
        return out

    def get_nodes(self, node_ids: Optional[List[str]] = None,
                  filters: Optional[MetadataFilters] = None) -> List[BaseNode]:
        if self._col is None:
            return []
        flt = None if filters is None else self._filter(filters)
        if node_ids is not None:
            t = self._col.get([str(i) for i in node_ids], columns=self._columns)
            if flt is not None:
                keep = self._col.to_table(columns=["id"], filter=flt).column("id")
                t = t.filter(pc.is_in(t.column("id"), value_set=keep.combine_chunks()))
        else:
            t = self._col.to_table(columns=self._columns, filter=flt)
        return self._nodes(t)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.query_embedding is None:
            raise ValueError("query: needs query_embedding (this store searches vectors)")
        unknown = [a for a in kwargs if a not in _SEARCH_KW]
        if unknown:
            raise TypeError(f"query: unexpected arguments {unknown} (nestvec takes {list(_SEARCH_KW)})")
        mode = query.mode
        if mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR):
            raise ValueError(f"query: mode {mode.value!r} is not supported (default, mmr)")
        if self._col is None:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        parts = []
        if query.filters is not None:
            parts.append(self._filter(query.filters))
        if query.doc_ids:
            parts.append(pc.field(DOC_COLUMN).isin([str(i) for i in query.doc_ids]))
        if query.node_ids:
            parts.append(pc.field("id").isin([str(i) for i in query.node_ids]))
        flt = _and(parts)
        k = int(query.similarity_top_k)
        mmr = mode == VectorStoreQueryMode.MMR
        fetch = max(k, int(kwargs.pop("mmr_prefetch_k", 0) or 0), 4 * k) if mmr else k
        cols = self._columns + (["vector"] if mmr else [])
        t = self._col.search(np.asarray(query.query_embedding, dtype=np.float32), k=fetch, filter=flt,
                             columns=cols, **{_SEARCH_KW[a]: v for a, v in kwargs.items()})
        scores = t.column("score").to_pylist()
        if mmr and t.num_rows:
            from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings

            vecs = np.stack(t.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
            scores, pick = get_top_k_mmr_embeddings(
                list(query.query_embedding), vecs.tolist(), similarity_top_k=k,
                embedding_ids=list(range(t.num_rows)), mmr_threshold=query.mmr_threshold)
            t = t.take(pick)
        nodes = self._nodes(t)
        return VectorStoreQueryResult(nodes=nodes, similarities=list(scores), ids=[n.node_id for n in nodes])

    # ------------------------------------------------------------------ filters

    def _filter(self, filters: MetadataFilters):
        """MetadataFilters -> a pyarrow expression, or DuckDB SQL when a list operator
        (contains / any / all) is used."""
        if _uses_list_ops(filters):
            return _to_sql(filters, self._filterable)
        return _to_expr(filters, self._filterable)

    @property
    def _filterable(self) -> set:
        return set(self.metadata_schema) | {DOC_COLUMN, "id"}


def _and(parts):
    if not parts:
        return None
    e = parts[0]
    for p in parts[1:]:
        e = e & p
    return e


def _uses_list_ops(f) -> bool:
    if isinstance(f, MetadataFilters):
        return any(_uses_list_ops(x) for x in f.filters)
    return f.operator in _LIST_OPS


def _key(key: str, allowed: set) -> str:
    if key in ("doc_id", "document_id"):
        return DOC_COLUMN
    if key not in allowed:
        raise ValueError(f"filters: {key!r} is not a filterable column (declared: {sorted(allowed)}); "
                         f"declare it in metadata_schema to filter on it")
    return key


def _combine(parts, condition, what):
    condition = condition or FilterCondition.AND
    if condition == FilterCondition.NOT:
        return what["not"](what["and"](parts))
    return what["or"](parts) if condition == FilterCondition.OR else what["and"](parts)


def _to_expr(filters: MetadataFilters, allowed: set):
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(_to_expr(f, allowed))
            continue
        col = pc.field(_key(f.key, allowed))
        op, v = f.operator, f.value
        if op in _CMP:
            parts.append(getattr(col, _CMP[op][0])(v))
        elif op in (FilterOperator.IN, FilterOperator.NIN):
            e = col.isin(list(v) if isinstance(v, list) else [v])
            parts.append(e if op == FilterOperator.IN else ~e)
        elif op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
            parts.append(pc.match_substring(col, str(v),
                                            ignore_case=op == FilterOperator.TEXT_MATCH_INSENSITIVE))
        elif op == FilterOperator.IS_EMPTY:
            parts.append(col.is_null())
        else:
            raise ValueError(f"filters: operator {op.value!r} is not supported")

    def both(ps):
        e = ps[0]
        for p in ps[1:]:
            e = e & p
        return e

    def either(ps):
        e = ps[0]
        for p in ps[1:]:
            e = e | p
        return e

    if not parts:
        return None
    return _combine(parts, filters.condition, {"and": both, "or": either, "not": lambda e: ~e})


def _sql_value(v) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, numbers.Real):
        return repr(float(v)) if isinstance(v, float) else str(int(v))
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    raise TypeError(f"filters: unsupported value {v!r}")


def _to_sql(filters: MetadataFilters, allowed: set) -> str:
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(_to_sql(f, allowed))
            continue
        col = '"' + _key(f.key, allowed).replace('"', '""') + '"'
        op, v = f.operator, f.value
        vals = v if isinstance(v, list) else [v]
        # any / all as list_contains terms: the SQL sandbox has no list literals
        has = [f"list_contains({col}, {_sql_value(x)})" for x in vals]
        if op in _CMP:
            parts.append(f"{col} {_CMP[op][1]} {_sql_value(v)}")
        elif op == FilterOperator.IN:
            parts.append(f"{col} IN ({', '.join(_sql_value(x) for x in vals)})")
        elif op == FilterOperator.NIN:
            parts.append(f"{col} NOT IN ({', '.join(_sql_value(x) for x in vals)})")
        elif op == FilterOperator.CONTAINS:
            parts.append(f"list_contains({col}, {_sql_value(v)})")
        elif op == FilterOperator.ANY:
            parts.append("(" + (" OR ".join(has) or "FALSE") + ")")
        elif op == FilterOperator.ALL:
            parts.append("(" + (" AND ".join(has) or "TRUE") + ")")
        elif op == FilterOperator.TEXT_MATCH:
            parts.append(f"contains({col}, {_sql_value(str(v))})")
        elif op == FilterOperator.TEXT_MATCH_INSENSITIVE:
            parts.append(f"contains(lower({col}), lower({_sql_value(str(v))}))")
        elif op == FilterOperator.IS_EMPTY:
            parts.append(f"({col} IS NULL OR len({col}) = 0)")
        else:
            raise ValueError(f"filters: operator {op.value!r} is not supported")
    if not parts:
        return "TRUE"
    return _combine(parts, filters.condition, {
        "and": lambda ps: "(" + " AND ".join(ps) + ")", "or": lambda ps: "(" + " OR ".join(ps) + ")",
        "not": lambda e: f"(NOT {e})"})


__all__ = ["NestvecVectorStore", "MetadataFilter", "MetadataFilters"]
