"""A collection bound to an embedding function: texts in, texts out.

``Collection.create(path, embedding=...)`` takes a :class:`nestvec.Encoder`, a
sentence-transformers model, an object with ``embed_documents`` / ``embed_query``
(LangChain's ``Embeddings``), or any callable ``texts -> vectors``, optionally wrapped
in :class:`Embedding` for query / document prompts. The manifest records how to
rebuild it -- a model directory or name and its options, as JSON data, never a
pickle -- so ``nestvec.open(path)`` restores it (on first use: opening stays cheap and
never imports torch). A plain callable cannot be described as data; such a
collection reopens with ``nestvec.open(path, embedding=fn)``.

Nothing here imports torch, transformers or sentence-transformers: the models arrive
built, or are rebuilt lazily through their own packages.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from . import validate as vd

# manifest["embedding"]["spec"]["kind"]
ENCODER = "nestvec.Encoder"
SENTENCE_TRANSFORMERS = "sentence-transformers"
EMBEDDINGS = "embeddings"  # embed_documents / embed_query (LangChain); not rebuildable
CALLABLE = "callable"      # texts -> vectors; not rebuildable

DEFAULT_TEXT_COLUMN = "text"


def _is_encoder(model) -> bool:
    return any(c.__module__ == "nestvec.embed" and c.__name__ == "Encoder" for c in type(model).__mro__)


def _is_sentence_transformer(model) -> bool:
    return any(c.__module__.startswith("sentence_transformers") and c.__name__ == "SentenceTransformer"
               for c in type(model).__mro__)


def _has_embed_methods(model) -> bool:
    return callable(getattr(model, "embed_documents", None)) and callable(getattr(model, "embed_query", None))


def _prompt(p, name):
    if p is not None and not isinstance(p, str):
        raise TypeError(f"{name}: expected a str (prepended to each text) or None, got {type(p).__name__}")
    return p or None


# --------------------------------------------------------------------------- specs


def encoder_spec(enc) -> dict:
    """How to rebuild a :class:`nestvec.Encoder` from its public attributes: the model
    directory (None for the bundled all-MiniLM-L6-v2, which resolves on any machine
    with its package), pooling, normalize, dim, layers, binary, max_length. Runtime
    choices (device, dtype, batch size) are not recorded."""
    from ..embed import default_model_path

    path = str(enc.model_path)
    try:
        bundled = os.path.realpath(path) == os.path.realpath(default_model_path())
    except ImportError:
        bundled = False
    layers = getattr(enc, "layers", None)
    if layers is not None and layers == getattr(enc, "num_layers", None):
        layers = None
    return {"kind": ENCODER, "model": None if bundled else os.path.abspath(path),
            "name": getattr(enc, "name", None), "pooling": enc.pooling, "normalize": bool(enc.normalize),
            "dim": int(enc.dim), "layers": None if layers is None else int(layers),
            "binary": bool(enc.binary), "max_length": int(enc.max_length)}


def _st_name(model) -> str | None:
    for get in (lambda m: m.transformers_model.name_or_path,
                lambda m: m[0].auto_model.config._name_or_path,
                lambda m: m.model_card_data.base_model):
        try:
            v = get(model)
        except Exception:  # noqa: BLE001 (attribute layouts differ between versions)
            continue
        if isinstance(v, str) and v:
            return os.path.abspath(v) if os.path.isdir(v) else v
    return None


def sentence_transformers_spec(model) -> dict:
    """A sentence-transformers model: its local directory (or hub name, loaded with
    ``local_files_only=True``: from the local cache, never downloaded), truncate_dim,
    prompts and default prompt name."""
    prompts = getattr(model, "prompts", None) or {}
    return {"kind": SENTENCE_TRANSFORMERS, "model": _st_name(model),
            "truncate_dim": getattr(model, "truncate_dim", None),
            "prompts": {str(k): str(v) for k, v in prompts.items()},
            "default_prompt_name": getattr(model, "default_prompt_name", None)}


# --------------------------------------------------------------------------- the binding


class Embedding:
    """Texts -> vectors for a collection, and the description to rebuild it.

    Args:
        model: a :class:`nestvec.Encoder`, a sentence-transformers model, an object
            with ``embed_documents(list[str])`` / ``embed_query(str)`` (LangChain
            ``Embeddings``), or a callable ``list[str] -> [n, d]`` vectors (NumPy,
            torch or lists).
        query_prompt / document_prompt: text prepended to every query / document
            (E5's ``"query: "`` / ``"passage: "``, BGE's instruction, nomic's
            ``"search_query: "``). A sentence-transformers model without them uses
            its own ``encode_query`` / ``encode_document`` (its configured prompts).
        dim: the vector width, when it cannot be read from the model (a callable is
            otherwise called once on a probe text to find it).
        query_layers: a :class:`nestvec.Encoder` only: embed queries with its first
            ``query_layers`` layers (early exit), documents with its ``layers`` (all by
            default). Query encoding is the per-request cost, documents are encoded
            once; an encoder trained by ``nestvec.train.distill_2d`` keeps each exit in
            its full-depth space, so a shallow query exit searches a full-depth index
            (README: Train). An untrained encoder's exits are not in that space: a
            warning says so.

    ``embed_documents(texts)`` / ``embed_query(texts)`` return float32 ``[n, d]``.
    """

    def __init__(self, model, *, query_prompt: str | None = None, document_prompt: str | None = None,
                 dim: int | None = None, query_layers: int | None = None):
        if isinstance(model, Embedding):
            raise TypeError("model: already an Embedding")
        self.model = model
        self.query_prompt = _prompt(query_prompt, "query_prompt")
        self.document_prompt = _prompt(document_prompt, "document_prompt")
        if _is_encoder(model):
            self.kind = ENCODER
        elif _is_sentence_transformer(model):
            self.kind = SENTENCE_TRANSFORMERS
        elif _has_embed_methods(model):
            self.kind = EMBEDDINGS
        elif callable(model):
            self.kind = CALLABLE
        else:
            raise TypeError("embedding: expected a nestvec.Encoder, a sentence-transformers model, an "
                            "object with embed_documents/embed_query, or a callable texts -> vectors; "
                            f"got {type(model).__name__}")
        self._dim = None if dim is None else vd.positive_int(dim, "dim")
        self.query_layers = self._check_query_layers(query_layers)

    def _check_query_layers(self, v):
        if v is None:
            return None
        if self.kind != ENCODER:
            raise TypeError(f"query_layers: only a nestvec.Encoder can stop after a layer; this "
                            f"embedding is a {self.kind} model")
        m = self.model
        v = vd.positive_int(v, "query_layers", m.num_layers)
        info = getattr(m, "training_info", None) or {}
        if v < m.num_layers and info.get("method") != "distill_2d":
            import warnings

            warnings.warn(f"query_layers={v}: this encoder was not trained for early exits "
                          "(nestvec.train.distill_2d), so its shallow embeddings are not in the space "
                          "of its full-depth document embeddings; expect much worse search",
                          UserWarning, stacklevel=3)
        return v

    def __repr__(self):
        q = f", query_layers={self.query_layers}" if self.query_layers is not None else ""
        return f"Embedding({self.kind}, {self.name!r}, dim={self._dim}{q})"

    @property
    def name(self) -> str:
        if self.kind == ENCODER:
            return getattr(self.model, "name", "Encoder")
        if self.kind == SENTENCE_TRANSFORMERS:
            return _st_name(self.model) or "SentenceTransformer"
        m = self.model
        return getattr(m, "__qualname__", None) or type(m).__name__

    @property
    def dim(self) -> int:
        """The vector width (a plain callable is called once to find it)."""
        if self._dim is None:
            if self.kind == ENCODER:
                self._dim = int(self.model.dim)
            elif self.kind == SENTENCE_TRANSFORMERS:
                get = getattr(self.model, "get_embedding_dimension", None) or \
                    getattr(self.model, "get_sentence_embedding_dimension", None)
                d = get() if get is not None else None
                self._dim = int(d) if d else self.embed_documents(["dimension probe"]).shape[1]
            else:
                self._dim = self.embed_documents(["dimension probe"]).shape[1]
        return self._dim

    @property
    def binary(self) -> bool | None:
        """An Encoder's ``binary`` option (whether the collection stores codes by
        default); None for other models."""
        return bool(self.model.binary) if self.kind == ENCODER else None

    def spec(self) -> dict:
        """The JSON description recorded in the manifest."""
        if self.kind == ENCODER:
            s = encoder_spec(self.model)
        elif self.kind == SENTENCE_TRANSFORMERS:
            s = sentence_transformers_spec(self.model)
        else:
            s = {"kind": self.kind, "model": None, "name": self.name}
        s.update(query_prompt=self.query_prompt, document_prompt=self.document_prompt)
        if self.query_layers is not None:
            s["query_layers"] = self.query_layers
        return s

    @property
    def rebuildable(self) -> bool:
        return self.kind in (ENCODER, SENTENCE_TRANSFORMERS)

    # -- embedding
    def embed_documents(self, texts) -> np.ndarray:
        return self._embed(texts_list(texts, "texts"), self.document_prompt, query=False)

    def embed_query(self, texts) -> np.ndarray:
        return self._embed(texts_list(texts, "q"), self.query_prompt, query=True)

    def _embed(self, texts: list, prompt, query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), np.float32)
        m = self.model
        if self.kind == ENCODER:
            out = m.encode([prompt + t for t in texts] if prompt else texts,
                           layers=self.query_layers if query else None)
            if isinstance(out, tuple):  # binary=True: (vectors, codes); codes are re-derived
                out = out[0]
        elif self.kind == SENTENCE_TRANSFORMERS:
            fn = getattr(m, "encode_query" if query else "encode_document", None)
            if prompt is not None or fn is None:
                out = m.encode(texts, prompt=prompt, convert_to_numpy=True, show_progress_bar=False)
            else:
                out = fn(texts, convert_to_numpy=True, show_progress_bar=False)
        elif self.kind == EMBEDDINGS:
            texts = [prompt + t for t in texts] if prompt else texts
            out = [m.embed_query(t) for t in texts] if query else m.embed_documents(texts)
        else:
            out = m([prompt + t for t in texts] if prompt else texts)
        x = vd.to_host_float(out, "embedding output")
        if x.ndim == 1 and len(texts) == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] != len(texts):
            raise ValueError(f"embedding: returned shape {list(x.shape)} for {len(texts)} texts; "
                             f"expected [{len(texts)}, dim]")
        if self._dim is not None and x.shape[1] != self._dim:
            raise ValueError(f"embedding: returned {x.shape[1]} values per text, the collection "
                             f"stores {self._dim}")
        return np.ascontiguousarray(x, dtype=np.float32)


def texts_list(texts, name: str) -> list:
    if isinstance(texts, str):
        return [texts]
    try:
        out = list(texts)
    except TypeError:
        raise TypeError(f"{name}: expected a str or a list of str, got {type(texts).__name__}") from None
    bad = [t for t in out if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name}: expected str values, got {type(bad[0]).__name__} ({bad[0]!r:.40})")
    return out


def is_text(x) -> bool:
    """A str, or a non-empty list / tuple / 1-D array of str (text where vectors were
    expected)."""
    if isinstance(x, str):
        return True
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
        return True
    return isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype.kind in "UO" and x.size > 0 \
        and isinstance(x[0], str)


def bind(embedding) -> Embedding | None:
    if embedding is None or isinstance(embedding, Embedding):
        return embedding
    return Embedding(embedding)


# --------------------------------------------------------------------------- the collection side


class EmbeddingMixin:
    """Texts in and out for :class:`~.collection.Collection`."""

    @property
    def text_column(self) -> str | None:
        """The column ``add(texts=...)`` stores texts in (None: not stored)."""
        return (self._snap.manifest.get("embedding") or {}).get("text_column")

    @property
    def embedding(self):
        """The bound :class:`nestvec.Embedding` (rebuilt from the manifest's description
        on first use), or None."""
        if self._embedding is None:
            entry = self._snap.manifest.get("embedding") or {}
            if entry.get("spec") is not None:
                with self._write_lock:
                    if self._embedding is None:
                        emb = rebuild(entry["spec"])
                        self._check_embedding(emb)
                        self._embedding = emb
        return self._embedding

    def _check_embedding(self, emb) -> None:
        if emb._dim is not None and emb._dim != self.dim:
            raise ValueError(f"embedding: returns {emb._dim} values per text, the collection stores {self.dim}")
        emb._dim = self.dim

    def _embed_query(self, q):
        emb = self.embedding
        if emb is None:
            raise TypeError("q: a text query needs an embedding bound to the collection "
                            "(Collection.create(..., embedding=...) or nestvec.open(path, embedding=...)); "
                            "otherwise pass query vectors")
        x = emb.embed_query(q)
        return x[0] if isinstance(q, str) else x

    def _rows_with_texts(self, vectors, texts, metadata):
        """(vectors, metadata) for a write given texts: embedded when no vectors are
        given, stored in the text column when there is one."""
        if vectors is not None and is_text(vectors):
            raise TypeError("vectors: got text; pass texts=[...] (the collection's embedding embeds "
                            "them)")
        if texts is None:
            if vectors is None:
                raise TypeError("vectors: required (or texts= with an embedding bound)")
            return vectors, metadata
        texts = texts_list(texts, "texts")
        tc = self.text_column
        if vectors is None:
            emb = self.embedding
            if emb is None:
                raise ValueError("texts: this collection has no embedding to embed them with; create it "
                                 "with embedding=... (or open it with nestvec.open(path, embedding=...)), "
                                 "or pass vectors too")
            vectors = emb.embed_documents(texts)
        elif tc is None:
            raise ValueError("texts: with vectors given texts are only stored, and this collection has "
                             "no text column (Collection.create(..., text_column='text'))")
        if tc is not None:
            cols = vd.meta_columns(metadata)
            if tc in cols:
                raise ValueError(f"metadata: column {tc!r} is filled from texts=; pass it once")
            cols[tc] = pa.array(texts, pa.string())
            metadata = cols
        return vectors, metadata


# --------------------------------------------------------------------------- manifest


def manifest_entry(emb: Embedding | None, text_column: str | None) -> dict | None:
    if emb is None and text_column is None:
        return None
    return {"spec": emb.spec() if emb is not None else None, "dim": emb.dim if emb is not None else None,
            "text_column": text_column}


def rebuild(spec: dict) -> Embedding:
    """The Embedding a manifest describes (loads the model, offline)."""
    kind = spec.get("kind")
    prompts = dict(query_prompt=spec.get("query_prompt"), document_prompt=spec.get("document_prompt"))
    if kind == ENCODER:
        from ..embed import Encoder

        enc = Encoder(spec.get("model"), pooling=spec.get("pooling", "mean"),
                      normalize=spec.get("normalize", True), dim=spec.get("dim"),
                      layers=spec.get("layers"), binary=spec.get("binary", False),
                      max_length=spec.get("max_length"))
        return Embedding(enc, **prompts, query_layers=spec.get("query_layers"))
    if kind == SENTENCE_TRANSFORMERS:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError("this collection's embedding is a sentence-transformers model; "
                              "pip install sentence-transformers (or pass embedding= to nestvec.open)") from e
        name = spec.get("model")
        if not name:
            raise ValueError("embedding: the recorded sentence-transformers model has no name or "
                             "path; pass embedding= to nestvec.open")
        kw = {}
        if spec.get("prompts"):
            kw["prompts"] = spec["prompts"]
        if spec.get("default_prompt_name"):
            kw["default_prompt_name"] = spec["default_prompt_name"]
        try:
            model = SentenceTransformer(name, local_files_only=True, truncate_dim=spec.get("truncate_dim"), **kw)
        except OSError as e:
            raise OSError(f"embedding: cannot load the sentence-transformers model {name!r} from local "
                          f"files ({e}); nestvec never downloads: pass embedding= to nestvec.open") from e
        return Embedding(model, **prompts)
    raise ValueError(f"embedding: this collection was bound to {spec.get('name') or kind!r}, which "
                     f"cannot be rebuilt from a description; pass it again: "
                     f"nestvec.open(path, embedding=...)")


def check_entry(entry, schema_names) -> str | None:
    """Why a manifest's ``embedding`` entry is malformed (None when it is fine)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        return f"'embedding' is a {type(entry).__name__}, expected an object"
    spec, tc, dim = entry.get("spec"), entry.get("text_column"), entry.get("dim")
    if spec is not None and not (isinstance(spec, dict) and isinstance(spec.get("kind"), str)):
        return "'embedding.spec' is not an object with a 'kind'"
    if tc is not None and tc not in schema_names:
        return f"'embedding.text_column' {tc!r} is not a column of the schema"
    if dim is not None and not (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 1):
        return f"'embedding.dim' is {dim!r}"
    return None
