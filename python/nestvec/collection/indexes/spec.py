"""Index specs: what a manifest records about each index, and the checks of it.

A manifest that carries indexes (format 3) has a top-level ``"indexes"`` object, one
spec per kind, and each indexed segment entry names its own index file::

    "indexes": {"ivf": {"kind": "ivf", "nlist": 2048, "dim": 128, ...,
                        "centroids": {"name": "<32 hex>.ivfc.arrow", "bytes": .., "crc32": ..}},
                "hnsw": {"kind": "hnsw", "dim": 256, "M": 16, ...}}
    "segments": [{"name": ..., "ivf": {"name": "<32 hex>.ivf.arrow", "bytes": .., "crc32": ..,
                                       "columns": {"row": ..}}, "hnsw": {...}}, ...]

Index files live in ``indexes/`` and are named ``<32 hex digits>.<suffix>`` (never a
path); this module checks names, sizes and every spec field, so a tampered manifest
cannot point outside the directory or hand the search code impossible numbers. It
imports nothing heavy: the manifest checks call it on every open.
"""
from __future__ import annotations

import re
import uuid

KINDS = ("ivf", "hnsw")
SUFFIX = {"centroids": "ivfc.arrow", "ivf": "ivf.arrow", "hnsw": "hnsw", "span": "ivfs.arrow"}
INDEX_RE = re.compile(r"^[0-9a-f]{32}\.(ivfc\.arrow|ivf\.arrow|ivfs\.arrow|hnsw)$")
_HEX = re.compile(r"^(?:[0-9a-f]{8})+$")
IVF_CODES = ("sign", "centred")


def new_name(what: str) -> str:
    return f"{uuid.uuid4().hex}.{SUFFIX[what]}"


def _int(v, lo=0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def check_file(e, what: str, where: str, bad) -> dict:
    """An index file entry {name, bytes, crc32[, columns]}; ``what`` picks the suffix."""
    if not isinstance(e, dict):
        bad(f"{where}: index entry is a {type(e).__name__}, expected an object")
    name = e.get("name")
    if not isinstance(name, str) or not INDEX_RE.match(name) or not name.endswith("." + SUFFIX[what]):
        bad(f"{where}: index file name {name!r} does not match <32 hex digits>.{SUFFIX[what]} inside indexes/")
    nbytes, crc, cols = e.get("bytes"), e.get("crc32"), e.get("columns")
    if nbytes is not None and not _int(nbytes, 1):
        bad(f"{where}: index file 'bytes' is {nbytes!r}")
    if crc is not None and not (isinstance(crc, str) and _HEX.match(crc) and nbytes):
        bad(f"{where}: index file 'crc32' is {crc!r}")
    if cols is not None and not (isinstance(cols, dict) and all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 8 and _HEX.match(v) for k, v in cols.items())):
        bad(f"{where}: index file 'columns' checksums are malformed")
    return {"name": name, "bytes": nbytes, "crc32": crc, "columns": cols}


def _check_span(e, i: int, bad) -> dict:
    """A span entry (span.py): an index file entry and its member segments' names."""
    where = f"index 'ivf' span {i}"
    out = check_file(e, "span", where, bad)
    members = e.get("members")
    if not isinstance(members, list) or len(members) < 2 or len(set(members)) != len(members) \
            or not all(isinstance(n, str) for n in members):
        bad(f"{where}: 'members' is {members!r}, expected a list of two or more distinct segment names")
    return dict(out, members=list(members))


def check_spec(kind, spec, m: dict, bad) -> dict:
    """One entry of ``manifest["indexes"]`` against the collection ``m`` (dim, metric)."""
    if kind not in KINDS:
        bad(f"'indexes' names an unknown kind {kind!r} (known: {KINDS})")
    if not isinstance(spec, dict) or spec.get("kind") != kind:
        bad(f"index {kind!r}: spec is not an object of that kind")
    d = m["dim"]

    def need(key, ok, what):
        if not ok(spec.get(key)):
            bad(f"index {kind!r}: {key!r} is {spec.get(key)!r}, expected {what}")

    need("dim", lambda v: _int(v, 1) and v <= d, f"an int in [1, {d}]")
    need("min_rows", lambda v: _int(v, 0), "an int >= 0")
    need("metric", lambda v: v == m["metric"], f"the collection's metric {m['metric']!r}")
    if kind == "ivf":
        need("nlist", lambda v: _int(v, 1) and v < 1 << 24, "an int in [1, 2^24)")
        need("nprobe", lambda v: _int(v, 1) and v <= spec["nlist"], f"an int in [1, nlist={spec['nlist']}]")
        need("rescore", lambda v: _int(v, 1), "an int >= 1")
        need("codes", lambda v: v in IVF_CODES, f"one of {IVF_CODES}")
        out = dict(spec, centroids=check_file(spec.get("centroids"), "centroids", "index 'ivf'", bad))
        spans = spec.get("spans")
        if spans is not None:
            if not isinstance(spans, list):
                bad(f"index 'ivf': 'spans' is {type(spans).__name__}, expected a list")
            out["spans"] = [_check_span(e, i, bad) for i, e in enumerate(spans)]
    else:
        need("M", lambda v: _int(v, 2) and v <= 512, "an int in [2, 512]")
        need("ef_construction", lambda v: _int(v, 1), "an int >= 1")
        need("ef", lambda v: _int(v, 1), "an int >= 1")
        need("space", lambda v: v == ("l2" if m["metric"] == "l2" else "ip"), "the space of the metric")
        out = dict(spec)
    return out
