"""The on-disk layout of a sharded collection and its cluster manifests (no Ray here).

::

    root/
      cluster/LATEST              the current cluster version (replaced atomically)
      cluster/LOCK                flock()ed by the one writing driver
      cluster/<version>.json      one cluster manifest per committed version
      shards/0000/ ... /S-1/      one Collection directory per shard

A cluster manifest records, besides the collection's schema, each shard's committed
version (``shard_versions``). Readers open the shards at exactly those versions, so a
write that touched several shards is visible in all of them or in none: a shard's
own ``LATEST`` may run ahead of the cluster (a batch committed on some shards whose
cluster commit never came), and the next writer restores such a shard to its
recorded version before writing (``recover``). The commit point of a batch is the
replacement of ``cluster/LATEST``: manifest file first (temp + fsync + rename +
fsync of the folder), then ``LATEST`` the same way.

Manifests use the collection's encoding (``collection/manifest.py``: one JSON object
whose first key is a summary carrying the CRC-32 of the file).
"""
from __future__ import annotations

import os
import time

from ..collection import manifest as mf
from ..collection import storage as st
from ..collection import validate as vd
from ..collection.errors import CollectionNotFound, CorruptionError
from . import routing

FORMAT = "nestvec-sharded/1"
CLUSTER = "cluster"
SHARDS = "shards"
MAX_SHARDS = 4096


def shard_dir(i: int) -> str:
    return os.path.join(SHARDS, f"{i:04d}")


class Root:
    """Paths, the lock and the manifests of one sharded collection directory."""

    def __init__(self, path):
        self.path = os.path.abspath(str(path))
        self.lock = None

    def p(self, *parts) -> str:
        return os.path.join(self.path, *parts)

    def shard_path(self, m: dict, i: int) -> str:
        return self.p(m["shard_dirs"][i])

    def exists(self) -> bool:
        return os.path.exists(self.p(CLUSTER, "LATEST"))

    def init_dirs(self) -> None:
        os.makedirs(self.p(CLUSTER), exist_ok=True)
        os.makedirs(self.p(SHARDS), exist_ok=True)
        st.fsync_dir(self.path)
        st.fsync_dir(os.path.dirname(self.path))

    def acquire(self) -> None:
        if self.lock is None:
            try:
                self.lock = st.FileLock(self.p(CLUSTER))
            except st.LockError as e:
                raise st.LockError(str(e).replace("collection", "sharded collection", 1)) from None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- manifests
    def manifest_path(self, v: int) -> str:
        return self.p(CLUSTER, f"{int(v)}.json")

    def latest(self) -> int:
        path = self.p(CLUSTER, "LATEST")
        try:
            with open(path, "rb") as f:
                text = f.read(64).strip()
        except FileNotFoundError:
            hint = " (it is a single collection: use nestvec.open)" if os.path.exists(self.p("LATEST")) else ""
            raise CollectionNotFound(f"{self.path!r} is not a sharded nestvec collection (no "
                                     f"cluster/LATEST){hint}") from None
        if not text.isdigit() or len(text) > 18:
            raise CorruptionError(path, f"does not hold a version number (got {text[:40]!r})")
        return int(text)

    def read(self, v: int) -> dict:
        """The checked cluster manifest of version ``v`` (KeyError if absent)."""
        path = self.manifest_path(v)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise KeyError(v) from None
        return check(mf.decode(data, path), int(v), path)

    def versions(self) -> list:
        out = []
        for fn in os.listdir(self.p(CLUSTER)):
            stem, ext = os.path.splitext(fn)
            if ext == ".json" and stem.isdigit():
                out.append(int(stem))
        return sorted(out)

    def commit(self, m: dict) -> None:
        """Write manifest ``m`` and make it the latest (the commit point)."""
        st.write_atomic(self.manifest_path(m["version"]), mf.encode(m))
        st.write_atomic(self.p(CLUSTER, "LATEST"), f"{int(m['version'])}\n".encode())

    def drop_uncommitted(self) -> int:
        """Remove manifests above LATEST (a driver died between the two writes of a
        commit) and temp files; the writer calls this before its first commit."""
        latest, n = self.latest(), 0
        for v in self.versions():
            if v > latest:
                os.unlink(self.manifest_path(v))
                n += 1
        for fn in os.listdir(self.p(CLUSTER)):
            if fn.endswith(".tmp"):
                os.unlink(self.p(CLUSTER, fn))
        return n

    def gc(self, keep: list) -> int:
        """Remove every cluster manifest whose version is not in ``keep``."""
        n = 0
        for v in self.versions():
            if v not in keep:
                try:
                    os.unlink(self.manifest_path(v))
                    n += 1
                except FileNotFoundError:
                    pass
        st.fsync_dir(self.p(CLUSTER))
        return n


def new_manifest(shards: int, dim: int, dtype: str, metric: str, binary: bool, schema_ipc: str,
                 schema: dict, id_type, shard_versions: list) -> dict:
    return {"format": FORMAT, "version": 0, "shards": shards, "hash": routing.HASH,
            "shard_dirs": [shard_dir(i) for i in range(shards)], "shard_versions": list(shard_versions),
            "shard_rows": [0] * shards, "dim": dim, "dtype": dtype, "metric": metric, "binary": bool(binary),
            "id_type": id_type, "schema": schema, "schema_ipc": schema_ipc, "next_row": 0, "next_id": 0,
            "rows": 0, "created": time.time(), "op": "create"}


def _int(v, lo=0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def check(m: dict, version: int, path) -> dict:
    """Validate a decoded cluster manifest; CorruptionError naming ``path``."""

    def bad(why):
        raise CorruptionError(path, f"invalid cluster manifest: {why}")

    fmt = m.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("nestvec-sharded/"):
            raise ValueError(f"{path}: sharded format {fmt!r} is newer than this nestvec reads ({FORMAT})")
        bad(f"'format' is {fmt!r}, expected {FORMAT!r}")
    if m.get("version") != version:
        bad(f"'version' is {m.get('version')!r} in the file of version {version}")
    s = m.get("shards")
    if not _int(s, 1) or s > MAX_SHARDS:
        bad(f"'shards' is {s!r}")
    if m.get("hash") != routing.HASH:
        bad(f"'hash' is {m.get('hash')!r}; this nestvec routes ids with {routing.HASH!r}")
    if m.get("shard_dirs") != [shard_dir(i) for i in range(s)]:
        bad("'shard_dirs' are not shards/0000 .. in order")  # never a path out of the root
    for key in ("shard_versions", "shard_rows"):
        vals = m.get(key)
        if not isinstance(vals, list) or len(vals) != s or not all(_int(v) for v in vals):
            bad(f"'{key}' is not {s} ints >= 0")
    if not _int(m.get("dim"), 1) or m.get("dtype") not in vd.DTYPES or m.get("metric") not in vd.METRICS \
            or not isinstance(m.get("binary"), bool) or m.get("id_type") not in (None, "int64", "string"):
        bad("'dim', 'dtype', 'metric', 'binary' or 'id_type' is invalid")
    try:
        schema = mf.schema_from_b64(m["schema_ipc"])
    except Exception as e:  # KeyError, TypeError, binascii.Error, ArrowInvalid
        bad(f"'schema_ipc' is not a serialized Arrow schema ({type(e).__name__}: {e})")
    if m.get("schema") != {f.name: str(f.type) for f in schema}:
        bad("'schema' and 'schema_ipc' disagree")
    for key in ("next_row", "next_id", "rows"):
        if not _int(m.get(key)):
            bad(f"'{key}' is {m.get(key)!r}")
    if sum(m["shard_rows"]) != m["rows"]:
        bad(f"'rows' is {m['rows']}, the shards hold {sum(m['shard_rows'])}")
    _check_indexes(m.get("indexes"), s, bad)
    return m


def _check_indexes(specs, s: int, bad) -> None:
    """``indexes``: {kind: {kind, options, shards: [each shard's spec]}} (the shards'
    own manifests hold the files; search trusts only ``nlist`` from here)."""
    if specs is None:
        return
    if not isinstance(specs, dict):
        bad("'indexes' is not an object")
    for kind, spec in specs.items():
        if kind not in ("ivf", "hnsw") or not isinstance(spec, dict) or spec.get("kind") != kind:
            bad(f"'indexes' entry {kind!r} is not an index spec of that kind")
        per = spec.get("shards")
        if not isinstance(spec.get("options"), dict) or not isinstance(per, list) or len(per) != s \
                or not all(isinstance(p, dict) for p in per):
            bad(f"index {kind!r}: 'options' or 'shards' (one spec per shard) is malformed")
        if kind == "ivf" and not all(_int(p.get("nlist"), 1) for p in per):
            bad("index 'ivf': a shard's 'nlist' is not an int >= 1")
