"""Manifests: the committed description of one version, its file format and its checks.

A manifest file (``manifests/<version>.json``, format 2) is one compact JSON object
whose first key is a summary::

    {"_summary":{"crc32":"<CRC-32>","created":...,"op":"add","rows":N,"segments":S,"version":V},
     "binary":true,"dim":384,...,"segments":[...],...}

The CRC-32 covers the whole file as written with its own eight digits read as
``00000000``, so any changed byte is found. ``versions()`` reads only the summary (the
first few hundred bytes of each file instead of the whole manifest). Format 1 files
(one pretty-printed JSON object, no checksums) are still read.

Every field a reader relies on is checked here before any file it names is opened
(:func:`check`): types and ranges, row counts that add up, segment and deletion-file
names that match their patterns (so a tampered name can never point outside the
collection directory), row ranges in ascending order. A violation is a
:class:`CorruptionError` naming the manifest file.
"""
from __future__ import annotations

import base64
import json
import re
import zlib

import pyarrow as pa

from . import validate as vd
from .embedding import check_entry as embedding_problem
from .errors import CorruptionError
from .indexes import spec as ix

FORMAT_V1 = "nestvec-collection/1"
FORMAT = "nestvec-collection/2"
# Format 3 = format 2 + indexes (indexes/spec.py). Written only by manifests that carry
# an index, so a reader that does not know indexes refuses them (its garbage collection
# would delete the index files) while index-less collections stay readable by it.
FORMAT_V3 = "nestvec-collection/3"
# Whole-file checksums are one CRC-32 per block, so verify() can check blocks in
# parallel and a damaged block is located.
CRC_BLOCK = 1 << 26

SEGMENT_RE = re.compile(r"^[0-9a-f]{32}\.arrow$")
DELETION_RE = re.compile(r"^([0-9a-f]{32})\.([0-9]{1,19})\.arrow$")
_HEX = re.compile(r"^(?:[0-9a-f]{8})+$")
_SUMMARY = ("created", "op", "rows", "segments", "version")


def format_for(m: dict) -> str:
    """The format a manifest is written in: 3 when it carries an index."""
    return FORMAT_V3 if m.get("indexes") else FORMAT


def crc_hex(data) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def schema_b64(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_b64(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text, validate=True)))


# --------------------------------------------------------------------------- encoding


_HEAD = b'{"_summary":{"crc32":"'
_CRC_AT = slice(len(_HEAD), len(_HEAD) + 8)


def encode(m: dict) -> bytes:
    head = {"crc32": "00000000"}
    head.update((k, len(m.get("segments", ())) if k == "segments" else m.get(k)) for k in _SUMMARY)
    body = {"_summary": head}
    body.update(sorted((k, v) for k, v in m.items() if k != "_summary"))
    data = json.dumps(body, separators=(",", ":")).encode()
    assert data.startswith(_HEAD)
    return data[:_CRC_AT.start] + crc_hex(data).encode() + data[_CRC_AT.stop:]


def decode(data: bytes, path) -> dict:
    """Parse a manifest file (format 1 or 2); CorruptionError when damaged."""
    if data.startswith(_HEAD):
        zeroed = data[:_CRC_AT.start] + b"00000000" + data[_CRC_AT.stop:]
        if data[_CRC_AT] != crc_hex(zeroed).encode():
            raise CorruptionError(path, "manifest checksum mismatch (the file was changed or damaged)")
    try:
        m = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CorruptionError(path, f"manifest is not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise CorruptionError(path, f"manifest is a JSON {type(m).__name__}, expected an object")
    head = m.pop("_summary", None)
    if m.get("format") in (FORMAT, FORMAT_V3) and not data.startswith(_HEAD):
        raise CorruptionError(path, "manifest was rewritten: its checksum header is missing")
    if head is not None and (not isinstance(head, dict) or any(
            head.get(k) != (len(m.get("segments", ())) if k == "segments" else m.get(k)) for k in _SUMMARY)):
        raise CorruptionError(path, "manifest summary disagrees with the manifest")
    return m


def summary(data: bytes, path) -> dict:
    """The summary fields of a manifest from its first bytes (whole file for format 1)."""
    if data.startswith(_HEAD):
        try:
            s = json.loads(data[len(b'{"_summary":'):data.index(b"}") + 1])
        except ValueError as e:  # JSONDecodeError, or no "}"
            raise CorruptionError(path, f"manifest summary is not valid JSON ({e})") from None
        if not isinstance(s, dict) or any(k not in s for k in _SUMMARY):
            raise CorruptionError(path, "manifest summary lacks fields")
        return s
    m = decode(data, path)
    segs = m.get("segments")
    return {"version": m.get("version"), "rows": m.get("rows"), "created": m.get("created"),
            "op": m.get("op"), "segments": len(segs) if isinstance(segs, list) else None}


# --------------------------------------------------------------------------- checks


def _int(v, lo=0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def check(m: dict, version: int, path) -> dict:
    """Validate a decoded manifest against its file name's ``version``; return it in
    the current in-memory shape (format 1 entries get ``None`` checksums and their
    deletion file as a dict). Raises CorruptionError naming ``path``."""

    def bad(why):
        raise CorruptionError(path, f"invalid manifest: {why}")

    fmt = m.get("format")
    if fmt not in (FORMAT, FORMAT_V1, FORMAT_V3):
        if isinstance(fmt, str) and fmt.startswith("nestvec-collection/"):
            raise ValueError(f"{path}: collection format {fmt!r} is newer than this nestvec reads "
                             f"({FORMAT_V3}); upgrade nestvec")
        bad(f"'format' is {fmt!r}, expected {FORMAT!r}")
    if m.get("version") != version:
        bad(f"'version' is {m.get('version')!r} in the file of version {version}")
    if not _int(m.get("dim"), 1):
        bad(f"'dim' is {m.get('dim')!r}, expected an int >= 1")
    if m.get("dtype") not in vd.DTYPES:
        bad(f"'dtype' is {m.get('dtype')!r}, expected one of {tuple(vd.DTYPES)}")
    if m.get("metric") not in vd.METRICS:
        bad(f"'metric' is {m.get('metric')!r}, expected one of {vd.METRICS}")
    if not isinstance(m.get("binary"), bool):
        bad(f"'binary' is {m.get('binary')!r}, expected true or false")
    if m.get("id_type") not in (None, "int64", "string"):
        bad(f"'id_type' is {m.get('id_type')!r}")
    try:
        schema = schema_from_b64(m["schema_ipc"])
    except Exception as e:  # KeyError, TypeError, binascii.Error, ArrowInvalid
        bad(f"'schema_ipc' is not a serialized Arrow schema ({type(e).__name__}: {e})")
    if any(f.name in vd.RESERVED for f in schema) or m.get("schema") != {f.name: str(f.type) for f in schema}:
        bad("'schema' and 'schema_ipc' disagree or name reserved columns")
    for key in ("next_row", "rows"):
        if not _int(m.get(key)):
            bad(f"'{key}' is {m.get(key)!r}, expected an int >= 0")
    m.setdefault("next_id", m["next_row"])
    if not _int(m.get("next_id")) or not isinstance(m.get("created"), (int, float)) \
            or not isinstance(m.get("op"), str):
        bad("'next_id', 'created' or 'op' has the wrong type")
    segs = m.get("segments")
    if not isinstance(segs, list):
        bad(f"'segments' is {type(segs).__name__}, expected a list")
    if segs and m["id_type"] is None:
        bad("segments but no 'id_type'")
    indexes = m.get("indexes") or {}
    if not isinstance(indexes, dict) or (indexes and fmt != FORMAT_V3):
        bad(f"'indexes' is {type(indexes).__name__} in a {fmt} manifest (indexes need format 3)")
    indexes = {kind: ix.check_spec(kind, spec, m, bad) for kind, spec in indexes.items()}
    out, names, prev_last, live = [], set(), -1, 0
    for i, e in enumerate(segs):
        out.append(_check_entry(e, i, version, bad))
        e = out[-1]
        for kind in ix.KINDS:
            if isinstance(segs[i], dict) and segs[i].get(kind) is not None:
                if kind not in indexes:
                    bad(f"segment {e['name']} names a {kind} index file but the manifest has no {kind} index")
                e[kind] = ix.check_file(segs[i][kind], kind, f"segment {e['name']}", bad)
        if e["name"] in names:
            bad(f"segment {e['name']} is listed twice")
        names.add(e["name"])
        if e["first_row"] <= prev_last:
            bad(f"segment {i} ({e['name']}) starts at row {e['first_row']}, inside the previous segment")
        prev_last = e["last_row"]
        live += e["rows"] - e["deleted"]
    with_ivf = {e["name"] for e in out if e.get("ivf") is not None}
    for sp in (indexes.get("ivf") or {}).get("spans") or ():
        for n in sp["members"]:
            if n not in with_ivf:
                bad(f"ivf span {sp['name']} names {n!r}, not a segment with an ivf list file")
    if prev_last >= m["next_row"]:
        bad(f"'next_row' {m['next_row']} is not above the last row {prev_last}")
    if live != m["rows"]:
        bad(f"'rows' is {m['rows']} but the segments hold {live} live rows")
    why = embedding_problem(m.get("embedding"), schema.names)
    if why:
        bad(why)
    if fmt in (FORMAT, FORMAT_V3) and not _int(m.get("crc_block"), 1):
        bad(f"'crc_block' is {m.get('crc_block')!r}")
    return dict(m, segments=out, crc_block=m.get("crc_block", CRC_BLOCK), indexes=indexes)


def _check_entry(e, i, version, bad) -> dict:
    if not isinstance(e, dict):
        bad(f"segment {i} is a {type(e).__name__}, expected an object")
    name = e.get("name")
    if not isinstance(name, str) or not SEGMENT_RE.match(name):
        bad(f"segment {i} has the name {name!r}; segment files are named <32 hex digits>.arrow "
            f"inside segments/")
    rows, deleted, first, last = (e.get(k) for k in ("rows", "deleted", "first_row", "last_row"))
    if not (_int(rows, 1) and _int(deleted) and _int(first) and _int(last)):
        bad(f"segment {name}: 'rows', 'deleted', 'first_row' and 'last_row' must be ints (rows >= 1)")
    if deleted >= rows or last < first or last - first + 1 < rows:
        bad(f"segment {name}: rows={rows}, deleted={deleted}, first_row={first}, last_row={last} "
            f"do not fit together")
    for key in ("bytes",):
        if e.get(key) is not None and not _int(e[key], 1):
            bad(f"segment {name}: '{key}' is {e[key]!r}")
    crc = e.get("crc32")
    if crc is not None and not (isinstance(crc, str) and _HEX.match(crc) and e.get("bytes")):
        bad(f"segment {name}: 'crc32' is {crc!r}")
    cols = e.get("columns")
    if cols is not None and not (isinstance(cols, dict) and all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 8 and _HEX.match(v) for k, v in cols.items())):
        bad(f"segment {name}: 'columns' checksums are malformed")
    d = e.get("deletions")
    if (d is None) != (deleted == 0):
        bad(f"segment {name}: {deleted} deleted rows but deletion file {d!r}")
    dbytes, dcrc = e.get("deletions_bytes"), e.get("deletions_crc32")
    if d is not None:
        match = DELETION_RE.match(d) if isinstance(d, str) else None
        if not match or match.group(1) != name[:32] or int(match.group(2)) > version:
            bad(f"segment {name}: deletion file name {d!r} does not match <segment>.<version <= {version}>.arrow")
        if dbytes is not None and not _int(dbytes, 1):
            bad(f"segment {name}: 'deletions_bytes' is {dbytes!r}")
        if dcrc is not None and not (isinstance(dcrc, str) and len(dcrc) == 8 and _HEX.match(dcrc)):
            bad(f"segment {name}: 'deletions_crc32' is {dcrc!r}")
    return {"name": name, "rows": rows, "deleted": deleted, "first_row": first, "last_row": last,
            "bytes": e.get("bytes"), "crc32": crc, "columns": cols, "deletions": d,
            "deletions_bytes": dbytes if d else None, "deletions_crc32": dcrc if d else None}


def deletion_entry(e: dict):
    """A segment entry's deletion file as {name, bytes, crc32}, or None."""
    if not e.get("deletions"):
        return None
    return {"name": e["deletions"], "bytes": e.get("deletions_bytes"), "crc32": e.get("deletions_crc32")}


def deletion_name(segment: str, version: int) -> str:
    """``deletions/<segment uuid>.<version>.arrow``."""
    stem = segment[:-len(".arrow")] if segment.endswith(".arrow") else segment
    return f"{stem}.{int(version)}.arrow"
