"""LangChain vector store on a nestvec collection (``pip install 'nestvec[langchain]'``).

::

    from nestvec.integrations.langchain import NestvecVectorStore

    store = NestvecVectorStore(embeddings, path="docs.nv", metadata_schema={"source": "string"})
    store.add_documents(docs)                       # ids kept (Document.id or ids=)
    store.similarity_search("query", k=4, filter={"source": "wiki"})
    retriever = store.as_retriever(search_type="mmr")

Each document is one row: its id, the vector, ``page_content`` in the text column,
declared metadata keys (``metadata_schema``) in typed columns that filters can use,
every other key JSON-encoded in one ``metadata`` column. Adding an id that exists
replaces it (LangChain's upsert semantics). Scores are nestvec's: cosine similarity
(higher is better), ip, or squared l2 distance (lower is better).
"""
from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from .. import collection as nvc
from ._metadata import MetadataLayout, dict_filter

# keyword arguments of the search methods handed on to Collection.search
_SEARCH_KW = ("mode", "dim", "rescore", "ladder", "min_score", "max_distance", "device")


class NestvecVectorStore(VectorStore):
    """A LangChain ``VectorStore`` backed by a :class:`nestvec.Collection`.

    Args:
        embedding: the LangChain ``Embeddings`` (bound to the collection too, so
            ``store.collection.search("text")`` works).
        path: a collection directory: opened when it holds one, else created on the
            first add (its width taken from the first vectors); None: in memory.
        metadata_schema: ``{key: type}`` metadata stored as typed columns, which
            filters can use (``filter={"year": {"$gte": 2020}}``); other keys go to
            the JSON column.
        text_column / metadata_column: column names for page_content and the JSON.
        collection: wrap an open Collection instead (path and options are ignored).
        **collection_options: for ``Collection.create`` (``dtype``, ``metric``,
            ``binary``, ``dim``, ``merge_policy``); ids are strings.
    """

    def __init__(self, embedding: Embeddings, path=None, *, metadata_schema: dict | None = None,
                 text_column: str = "text", metadata_column: str = "metadata", collection=None,
                 **collection_options: Any):
        self._embedding = embedding
        self._path = path
        self._text_column = text_column
        self._schema = dict(metadata_schema or {})
        bad = [k for k in self._schema if k in (text_column, metadata_column)]
        if bad:
            raise ValueError(f"metadata_schema: {bad} name the text or JSON column")
        self._options = collection_options
        self._col = collection
        if self._col is None and path is not None:
            try:
                self._col = nvc.open(path, embedding=nvc.Embedding(embedding))
            except nvc.CollectionNotFound:
                pass
        if self._col is not None:
            names = self._col.schema.names
            if self._col.text_column is None:
                raise ValueError("collection: it has no text column to hold page_content")
            self._text_column = self._col.text_column
            self._layout = MetadataLayout(
                [c for c in names if c not in (self._text_column, metadata_column)],
                metadata_column if metadata_column in names else None)
        else:
            self._layout = MetadataLayout(list(self._schema), metadata_column)

    # ------------------------------------------------------------------ plumbing

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def collection(self):
        """The nestvec Collection (None until the first add of a new store)."""
        return self._col

    def close(self) -> None:
        if self._col is not None:
            self._col.close()

    def _ensure(self, dim: int):
        if self._col is None:
            schema = dict(self._schema)
            if self._layout.json_column:
                schema[self._layout.json_column] = "string"
            opts = dict(self._options)
            opts.setdefault("dim", dim)
            self._col = nvc.Collection.create(self._path, schema=schema, id_type="string",
                                              embedding=nvc.Embedding(self._embedding, dim=opts["dim"]),
                                              text_column=self._text_column, **opts)
        return self._col

    def _filter(self, flt):
        if not isinstance(flt, dict):
            return flt  # SQL text, a nestvec expression, or None (the collection checks them)
        return dict_filter(flt, self._layout.declared)

    def _documents(self, t) -> list:
        metas = self._layout.from_table(t)
        texts = t.column(self._text_column).to_pylist()
        return [Document(id=i, page_content=txt or "", metadata=md)
                for i, txt, md in zip(t.column("id").to_pylist(), texts, metas)]

    # ------------------------------------------------------------------ writes

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *,
                  ids: list[str | None] | None = None, **kwargs: Any) -> list[str]:
        """Embed and upsert ``texts``; returns their ids (generated where None)."""
        texts = list(texts)
        return self.add_embeddings(texts, self._embedding.embed_documents(texts) if texts else [],
                                   metadatas, ids=ids)

    def add_embeddings(self, texts: Sequence[str], embeddings, metadatas: list[dict] | None = None, *,
                       ids: list[str | None] | None = None) -> list[str]:
        """Upsert texts with their precomputed vectors."""
        texts = list(texts)
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise ValueError(f"metadatas: {len(metadatas)} for {n} texts")
        if ids is not None and len(ids) != n:
            raise ValueError(f"ids: {len(ids)} for {n} texts")
        ids = [str(i) if i is not None else uuid.uuid4().hex for i in (ids or [None] * n)]
        if not n:
            return []
        vectors = np.asarray(embeddings, dtype=np.float32)
        col = self._ensure(vectors.shape[1])
        meta = self._layout.to_columns(metadatas or [{}] * n)
        col.upsert(vectors, ids=ids, metadata=meta, texts=texts)
        return ids

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None)
        if ids is None:
            ids = [d.id for d in documents]
        return self.add_texts([d.page_content for d in documents], [d.metadata for d in documents],
                              ids=ids, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete by ids (absent ids are ignored) and/or ``filter=``."""
        flt = kwargs.pop("filter", None)
        if kwargs:
            raise TypeError(f"delete: unexpected arguments {sorted(kwargs)}")
        if ids is None and flt is None:
            raise ValueError("delete: pass ids (or filter=)")
        if self._col is not None:
            self._col.delete(ids=[str(i) for i in ids] if ids is not None else None,
                             filter=self._filter(flt))
        return True

    # ------------------------------------------------------------------ reads

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        if self._col is None or not ids:
            return []
        t = self._col.get([str(i) for i in ids], columns=[self._text_column] + self._layout.columns)
        return self._documents(t)

    def _search(self, vector, k: int, filter=None, columns=(), **kwargs):
        unknown = [a for a in kwargs if a not in _SEARCH_KW]
        if unknown:
            raise TypeError(f"unexpected search arguments {unknown} (nestvec takes {list(_SEARCH_KW)})")
        if self._col is None:
            return None
        return self._col.search(np.asarray(vector, dtype=np.float32), k=k, filter=self._filter(filter),
                                columns=[self._text_column] + self._layout.columns + list(columns),
                                **kwargs)

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4, filter=None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        t = self._search(embedding, k, filter, **kwargs)
        if t is None:
            return []
        return list(zip(self._documents(t), t.column("score").to_pylist()))

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter=None,
                                    **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter=None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k,
                                                           filter, **kwargs)

    def similarity_search(self, query: str, k: int = 4, filter=None, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter=None,
                                                **kwargs: Any) -> list[Document]:
        t = self._search(embedding, max(k, fetch_k), filter, columns=["vector"], **kwargs)
        if t is None or t.num_rows == 0:
            return []
        vecs = np.stack(t.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
        picked = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32), vecs, k=k,
                                            lambda_mult=lambda_mult)
        docs = self._documents(t.drop_columns(["vector"]))
        return [docs[i] for i in picked]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20,
                                      lambda_mult: float = 0.5, filter=None, **kwargs: Any) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(self._embedding.embed_query(query), k, fetch_k,
                                                            lambda_mult, filter, **kwargs)

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        metric = self._col.metric if self._col is not None else self._options.get("metric", "cosine")
        if metric == "l2":  # squared distance of unit vectors lies in [0, 4]
            return lambda s: 1.0 - float(np.sqrt(max(s, 0.0))) / 2.0
        return lambda s: (1.0 + s) / 2.0  # cosine (and ip of unit vectors) in [-1, 1]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, path=None, **kwargs: Any) -> "NestvecVectorStore":
        store = cls(embedding, path=path, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store
