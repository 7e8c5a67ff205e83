"""Shared by the framework adapters: document metadata in a collection (declared keys
as typed columns, the rest as one JSON column) and dict filters as nestvec filters.

Neither LangChain nor LlamaIndex is imported here."""
from __future__ import annotations

import json
import numbers

import pyarrow as pa
import pyarrow.compute as pc


class MetadataLayout:
    """Where each metadata key lives. ``declared``: the collection's typed columns a
    filter can use; every other key goes, JSON-encoded, into ``json_column`` (when
    there is one). A declared key whose value is None reads back as absent."""

    def __init__(self, declared, json_column: str | None):
        self.declared = list(declared)
        self.json_column = json_column

    @property
    def columns(self) -> list:
        return self.declared + ([self.json_column] if self.json_column else [])

    def to_columns(self, metadatas: list) -> dict:
        """list of dicts -> {column: list of values}."""
        cols = {c: [] for c in self.columns}
        for i, md in enumerate(metadatas):
            md = md or {}
            if not isinstance(md, dict):
                raise TypeError(f"metadata: expected a dict per text, got {type(md).__name__} at {i}")
            rest = {}
            for key, v in md.items():
                if not isinstance(key, str):
                    raise TypeError(f"metadata: keys must be str, got {key!r}")
                if key in self.declared:
                    continue
                rest[key] = v
            for c in self.declared:
                cols[c].append(md.get(c))
            if rest and not self.json_column:
                raise ValueError(f"metadata: keys {sorted(rest)} are not declared columns "
                                 f"({self.declared}) and this store has no JSON metadata column")
            if self.json_column:
                try:
                    cols[self.json_column].append(json.dumps(rest, allow_nan=False) if rest else None)
                except (TypeError, ValueError) as e:
                    raise TypeError(f"metadata: values of undeclared keys must be JSON-serializable "
                                    f"(or declare the key in the schema): {e}") from None
        return cols

    def from_table(self, t: pa.Table) -> list:
        """The metadata dict of each row of ``t`` (which holds self.columns)."""
        n = t.num_rows
        out = [{} for _ in range(n)]
        if self.json_column:
            for i, s in enumerate(t.column(self.json_column).to_pylist()):
                if s:
                    out[i].update(json.loads(s))
        for c in self.declared:
            for i, v in enumerate(t.column(c).to_pylist()):
                if v is not None:
                    out[i][c] = v
        return out


_OPS = {"$eq": "__eq__", "$ne": "__ne__", "$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__",
        "$lte": "__le__"}


def dict_filter(spec: dict, declared, extra=("id",)) -> pc.Expression:
    """A Chroma / PGVector-style dict filter as a nestvec (pyarrow) expression:
    ``{"lang": "en", "year": {"$gte": 2020}}`` (keys ANDed), operators ``$eq $ne $gt
    $gte $lt $lte $in $nin``, and ``{"$and": [...]}`` / ``{"$or": [...]}``. Keys must be
    declared columns (or ``id``): JSON-held metadata cannot be filtered."""
    if not isinstance(spec, dict) or not spec:
        raise TypeError(f"filter: expected a non-empty dict, got {spec!r}")
    parts = []
    for key, cond in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(cond, (list, tuple)) or not cond:
                raise TypeError(f"filter: {key} takes a non-empty list of filters")
            subs = [dict_filter(c, declared, extra) for c in cond]
            e = subs[0]
            for s in subs[1:]:
                e = (e & s) if key == "$and" else (e | s)
            parts.append(e)
            continue
        if key.startswith("$"):
            raise ValueError(f"filter: unknown operator {key!r} at the top level")
        if key not in declared and key not in extra:
            raise ValueError(f"filter: {key!r} is not a filterable column (declared: {list(declared)}); "
                             f"declare it in the store's metadata schema to filter on it")
        f = pc.field(key)
        conds = cond if isinstance(cond, dict) else {"$eq": cond}
        for op, v in conds.items():
            if op in ("$eq", "$ne") and v is None:
                parts.append(f.is_null() if op == "$eq" else ~f.is_null())
            elif op in _OPS:
                _scalar(v, key, op)
                parts.append(getattr(f, _OPS[op])(v))
            elif op in ("$in", "$nin"):
                if not isinstance(v, (list, tuple)):
                    raise TypeError(f"filter: {key} {op} takes a list, got {type(v).__name__}")
                e = f.isin(list(v))
                parts.append(e if op == "$in" else ~e)
            else:
                raise ValueError(f"filter: unknown operator {op!r} for {key!r}")
    e = parts[0]
    for p in parts[1:]:
        e = e & p
    return e


def _scalar(v, key, op) -> None:
    if isinstance(v, (str, bool, numbers.Real)):
        return
    raise TypeError(f"filter: {key} {op} takes a str, number or bool, got {type(v).__name__}")
