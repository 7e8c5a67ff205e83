"""ivf: an inverted file of binary codes, partitioned by centroids shared by every segment.

Centroids are trained once per collection with ``faiss.Kmeans`` on a sample of
normalised prefixes (the first ``dim`` values; spherical k-means under cosine and ip,
plain k-means under l2) and stored in a centroids file (``<uuid>.ivfc.arrow``: one row
per list). Every indexed segment gets its own list file (``<uuid>.ivf.arrow``): the
segment's rows grouped by list (stable, so rows keep their order inside a list) as an
Arrow table of ``row`` (int32, the row's position in the segment) and ``code`` (its
binary code), with the list offsets in the schema metadata. A probe of list ``l`` is
then the contiguous range ``offsets[l]:offsets[l + 1]`` of codes, scanned by
``ops.hamming_topk_ranges`` for every query of a batch in one call; segments stay
immutable and independent (a new segment is assigned to the same centroids).

Codes: ``sign`` copies the segment's sign bits (``quant.binarize``); ``centred`` takes
the sign bits of the normalised vector minus the sample mean (README, Indexes: what
each measured). Searching needs neither faiss nor hnswlib.
"""
from __future__ import annotations

import base64
import copy
import json
import threading

import numpy as np
import pyarrow as pa

from ...quant import sign_bits
from .. import hostcalls
from .. import integrity as ig
from ..errors import CorruptionError
from ..arrays import fixed_list_view, primitive_view

META_KEY = b"nestvec.ivf"
ASSIGN_BYTES = 64 << 20  # scores held at once while rows are assigned to lists
PROBE_NUMPY_QUERIES = 2  # probes of at most this many queries skip dense_topk (IvfCentroids.probe)
# ... when the centroids hold at most this many values: above it NumPy's BLAS splits the
# product over threads, which on a loaded machine took milliseconds (README, Indexes).
PROBE_NUMPY_VALUES = 1 << 18
PROBE_BLOCK = 16  # lists per block of the one-call probe table (csrc dense::kBlockRows)
# Centroid tables of at least this many values are probed in a narrower format where
# the CPU has its dot instruction (IvfCentroids.probe_table): int8 quads (u8 x s8 dot,
# AVX512-VNNI; ip probes) or bfloat16 pairs (bf16 dot, AVX512-BF16). There the float16
# table's conversions bound the probe of a large index, and a table read per query is
# mostly out of cache; int8 halves bf16's bytes (README, the ivf probe). Smaller tables
# stay float16, whose scores are closest to the staged probe's.
PROBE_NARROW_VALUES = 1 << 19


# --------------------------------------------------------------------------- vectors


def prefix_f32(vectors: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """float32 copy of the first ``dim`` values of each row, unit length unless l2
    (always a copy: it is normalised in place)."""
    x = np.array(vectors[:, :dim], dtype=np.float32)
    if metric != "l2":
        n = np.sqrt(np.einsum("ij,ij->i", x, x))
        np.divide(x, n[:, None], out=x, where=n[:, None] > 0)
    return x


def centred_codes(vectors: np.ndarray, mean: np.ndarray, metric: str) -> np.ndarray:
    """Sign bits of (normalised row - mean), packed like quant.binarize."""
    x = prefix_f32(vectors, vectors.shape[1], metric)
    x -= mean[:x.shape[1]]
    return np.packbits(x > 0, axis=-1)


def sign_codes(vectors: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


# --------------------------------------------------------------------------- training


def train(sample: np.ndarray, nlist: int, metric: str, niter: int, seed: int) -> np.ndarray:
    """k-means centroids ``[nlist, dim]`` float32 of ``sample`` (already prefixed and,
    unless l2, normalised): ``faiss.Kmeans``, spherical unless l2."""
    try:
        import faiss
    except ImportError:
        raise ImportError("building an ivf index needs faiss (pip install 'nestvec[ann]')") from None
    km = faiss.Kmeans(sample.shape[1], nlist, niter=niter, seed=seed, spherical=metric != "l2",
                      verbose=False, max_points_per_centroid=256)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    c = np.ascontiguousarray(km.centroids, dtype=np.float32)
    if metric != "l2":  # faiss normalises spherical centroids; an empty cluster may not be
        n = np.linalg.norm(c, axis=1, keepdims=True)
        np.divide(c, n, out=c, where=n > 0)
    return c


def assign(vectors: np.ndarray, centroids: np.ndarray, metric: str, rows_per_chunk: int | None = None) -> np.ndarray:
    """The list of each row (int32 ``[n]``): the nearest centroid on the prefix
    (largest cosine, or smallest l2), in chunks of rows so the score block stays
    within ASSIGN_BYTES."""
    nlist, dim = centroids.shape
    n = vectors.shape[0]
    out = np.empty(n, np.int32)
    step = rows_per_chunk or max(256, ASSIGN_BYTES // (4 * nlist))
    half_sq = 0.5 * np.einsum("ij,ij->i", centroids, centroids) if metric == "l2" else None
    ct = np.ascontiguousarray(centroids.T)
    for a in range(0, n, step):
        x = prefix_f32(vectors[a:a + step], dim, metric)
        s = x @ ct
        if half_sq is not None:
            s -= half_sq  # argmin |x - c|^2 = argmax (x.c - |c|^2 / 2)
        out[a:a + step] = np.argmax(s, axis=1)
    return out


# --------------------------------------------------------------------------- files


def centroids_table(centroids: np.ndarray, mean: np.ndarray | None) -> pa.Table:
    nlist, dim = centroids.shape
    col = pa.FixedSizeListArray.from_arrays(pa.array(centroids.reshape(-1)), dim)
    meta = {"nlist": nlist, "dim": dim}
    if mean is not None:
        meta["mean"] = base64.b64encode(np.ascontiguousarray(mean, np.float32).tobytes()).decode()
    return pa.table({"centroid": col}).replace_schema_metadata({META_KEY: json.dumps(meta)})


def lists_table(lids: np.ndarray, codes: np.ndarray, nlist: int, centroids_name: str) -> pa.Table:
    """The list file of one segment: rows grouped by list (stable), their codes."""
    order = np.argsort(lids, kind="stable").astype(np.int32)
    offsets = np.zeros(nlist + 1, np.int64)
    np.cumsum(np.bincount(lids, minlength=nlist), out=offsets[1:])
    lo = np.ascontiguousarray(codes[order])
    nb = codes.shape[1]
    meta = {"nlist": nlist, "centroids": centroids_name,
            "offsets": base64.b64encode(offsets.tobytes()).decode()}
    code_col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nb), len(order), [None, pa.py_buffer(lo)])
    return pa.table({"row": pa.array(order), "code": code_col}).replace_schema_metadata(
        {META_KEY: json.dumps(meta)})


def _meta(table: pa.Table, path, key: bytes = META_KEY) -> dict:
    raw = (table.schema.metadata or {}).get(key)
    try:
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            raise ValueError("not an object")
        return meta
    except (TypeError, ValueError) as e:
        raise CorruptionError(path, f"ivf metadata is missing or not JSON ({e})") from None


class IvfCentroids:
    """The collection-level part: centroids ``[nlist, dim]`` float32 (a view into the
    mapped file) and, for centred codes, the mean ``[D]``; ``spans``: the snapshot's
    usable list files over several segments (span.py)."""

    spans = ()

    def with_spans(self, spans: tuple) -> "IvfCentroids":
        """This index with another snapshot's spans (the centroids' mapping and probe
        table shared while computed)."""
        out = copy.copy(self)
        out.spans = spans
        return out

    def __init__(self, spec: dict, table: pa.Table, path, d_full: int):
        self.spec = spec
        self.name = spec["centroids"]["name"]
        self.path = path
        nlist, dim = spec["nlist"], spec["dim"]
        with ig.damage(path):
            want = pa.schema([pa.field("centroid", pa.list_(pa.float32(), dim))])
            if not table.schema.remove_metadata().equals(want) or table.num_rows != nlist \
                    or table.column(0).num_chunks != 1:
                raise CorruptionError(path, f"is not a centroids file of {nlist} x {dim} float32 "
                                            f"(schema {table.schema.remove_metadata()}, {table.num_rows} rows)")
            arr = table.column(0).chunk(0)
            arr.validate()
            if arr.null_count or arr.values.null_count:
                raise CorruptionError(path, "centroids hold nulls")
            meta = _meta(table, path)
            self.centroids = fixed_list_view(table.column(0), dim, np.float32)
            if not np.isfinite(self.centroids).all():  # nlist x dim: small
                raise CorruptionError(path, "centroids hold NaN or infinity")
            self.mean = None
            self._half_sq = None  # l2: |c|^2 / 2, on the first probe
            self._probe_table = None  # the one-call search's copy (probe_table)
            if spec["codes"] == "centred":
                mean = np.frombuffer(base64.b64decode(meta.get("mean", ""), validate=True), np.float32)
                if mean.shape != (d_full,) or not np.isfinite(mean).all():
                    raise CorruptionError(path, f"the mean of centred codes is not {d_full} finite values")
                self.mean = mean

    def probe(self, queries, nprobe: int):
        """The ``nprobe`` nearest lists of each query, best first (int64 ``[Q, nprobe]``):
        largest cosine (unit centroids) or smallest l2 on the prefix. A batch goes to
        ``dense_topk``; one or two queries over up to PROBE_NUMPY_VALUES centroid values
        to a NumPy product and a partial sort (same order up to exact ties): that
        product stays on one thread, while ``dense_topk`` splits the rows over threads,
        which costs a single query more on a loaded machine (bench_ann_ivf_call.json).
        Larger centroid sets go to ``dense_topk`` whatever the batch: there NumPy's BLAS
        splits the product over its own threads, and a single query took 5-7 ms on a
        loaded machine against ~0.1 ms in ``dense_topk``."""
        nlist, dim = self.centroids.shape
        p = min(int(nprobe), nlist)
        if queries.shape[0] > PROBE_NUMPY_QUERIES or nlist * dim > PROBE_NUMPY_VALUES:
            q = np.asarray(queries[:, :dim], dtype=np.float32)
            metric = "l2" if self.spec["metric"] == "l2" else "cosine"
            return hostcalls.dense(self.centroids, q, p, dim, metric)[1]
        s = np.asarray(queries[:, :dim], dtype=np.float32) @ self.centroids.T
        if self.spec["metric"] == "l2":
            if self._half_sq is None:
                self._half_sq = 0.5 * np.einsum("ij,ij->i", self.centroids, self.centroids)
            s -= self._half_sq  # argmin |q - c|^2 = argmax (q.c - |c|^2 / 2)
        s = -s  # ascending: best first
        if p >= nlist:
            order = np.argsort(s, axis=1, kind="stable")
            return order.astype(np.int64, copy=False)
        # row by row in 1-D: the same partition and sort as along axis 1, without
        # take_along_axis's index grids (most of a single query's selection time)
        out = np.empty((s.shape[0], p), np.int64)
        for j in range(s.shape[0]):
            row = s[j]
            part = np.argpartition(row, p - 1)[:p]
            out[j] = part[np.argsort(row[part], kind="stable")]
        return out

    def probe_table(self) -> np.ndarray:
        """The centroids as the one-call search (hostcalls.ivf_search) probes them:
        float16, half the bytes of a table every query reads, in blocks of 16 lists
        stored value by value (``[ceil(nlist / 16), dim, 16]``, the lists past ``nlist``
        zero), which the probe scores without a horizontal sum per list (README, the
        ivf probe). A table of at least PROBE_NARROW_VALUES values is instead, on a CPU
        with the dot instruction, int8 in value quads (``i8_quad_table``; ip probes,
        width a multiple of 4) or bfloat16 in value pairs (``bf16_pair_table``; even
        width). Lists whose scores differ by less than that rounding may swap places
        with the staged probe's."""
        t = self._probe_table
        if t is None:
            nlist, dim = self.centroids.shape
            if nlist * dim >= PROBE_NARROW_VALUES:
                if dim % 4 == 0 and self.spec["metric"] != "l2" and hostcalls.probe_i8_available():
                    t = self._probe_table = i8_quad_table(self.centroids)
                    return t
                if dim % 2 == 0 and hostcalls.probe_bf16_available():
                    t = self._probe_table = bf16_pair_table(self.centroids)
                    return t
            nb = -(-nlist // PROBE_BLOCK)
            rows = np.zeros((nb * PROBE_BLOCK, dim), np.float16)
            rows[:nlist] = self.centroids
            t = self._probe_table = np.ascontiguousarray(rows.reshape(nb, PROBE_BLOCK, dim).transpose(0, 2, 1))
        return t

    def query_codes(self, queries, nbytes: int):
        """The queries' codes in the list files' encoding (first ``nbytes`` bytes)."""
        if self.mean is None:  # the queries are validated: sign_bits skips the checks
            return sign_bits(queries[:, :8 * nbytes] if 8 * nbytes < queries.shape[1] else queries)
        return centred_codes(queries, self.mean, self.spec["metric"])[:, :nbytes]


def i8_quad_table(centroids: np.ndarray) -> np.ndarray:
    """``centroids`` [nlist, dim] (dim a multiple of 4) as the probe's int8 quad table
    ``[ceil(nlist / 16), dim / 4 + 2, 16, 4]``: per block of 16 lists, each quad of
    values (4c .. 4c + 3) of the 16 lists side by side, each list scaled to 127 at its
    largest |value| and rounded; then each list's int32 correction (-128 x the sum of its
    int8 values: the query's bytes are offset by 128) and its float32 inverse scale
    (the lists past ``nlist`` zero)."""
    nlist, dim = centroids.shape
    nb, nq4 = -(-nlist // PROBE_BLOCK), dim // 4
    c = np.zeros((nb * PROBE_BLOCK, dim), np.float32)
    c[:nlist] = centroids
    mx = np.abs(c).max(axis=1)
    scale = np.divide(127.0, mx, out=np.zeros_like(mx), where=mx > 0)
    c8 = np.clip(np.rint(c * scale[:, None]), -127, 127).astype(np.int8)
    t = np.zeros((nb, nq4 + 2, PROBE_BLOCK, 4), np.int8)
    t[:, :nq4] = c8.reshape(nb, PROBE_BLOCK, nq4, 4).transpose(0, 2, 1, 3)
    corr = (-128 * c8.astype(np.int32).sum(axis=1)).astype("<i4")
    inv = np.divide(mx, 127.0, out=np.zeros_like(mx), where=mx > 0).astype("<f4")
    t[:, nq4] = corr.view(np.int8).reshape(nb, PROBE_BLOCK, 4)
    t[:, nq4 + 1] = inv.view(np.int8).reshape(nb, PROBE_BLOCK, 4)
    return t


def bf16_pair_table(centroids: np.ndarray) -> np.ndarray:
    """``centroids`` [nlist, dim] (dim even) rounded to bfloat16 (nearest even; uint16
    bits) in the probe's pair layout ``[ceil(nlist / 16), dim / 2, 16, 2]``: per block
    of 16 lists and pair of values (2p, 2p + 1), the 16 lists' pairs side by side, as
    one bf16 dot instruction multiplies them (the lists past ``nlist`` zero)."""
    nlist, dim = centroids.shape
    nb = -(-nlist // PROBE_BLOCK)
    u = np.ascontiguousarray(centroids, dtype=np.float32).view(np.uint32)
    bits = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    rows = np.zeros((nb * PROBE_BLOCK, dim), np.uint16)
    rows[:nlist] = bits
    return np.ascontiguousarray(rows.reshape(nb, PROBE_BLOCK, dim // 2, 2).transpose(0, 2, 1, 3))


class RowsFile:
    """An index file of codes in list order with the row each one is (``row``): a
    segment's list file (IvfLists) or a span (span.IvfSpan). ``_open`` checks its
    structure; ``ready()`` the ``row`` column's checksum and range before its first
    use (an id out of range would send the rescoring outside the segment)."""

    _of = "its segment"  # what the rows are rows of, in the errors

    def _open(self, entry: dict, table: pa.Table, path, spec: dict, n: int, row_type, nbytes: int,
              key: bytes = META_KEY) -> dict:
        """Check and map ``table`` (``n`` rows; call inside ``ig.damage(path)``); its
        metadata."""
        self.entry = entry
        self.name = entry["name"]
        self.path = path
        self.table = table
        self._ready = path is None
        self._lock = threading.Lock()
        want = pa.schema([pa.field("row", row_type), pa.field("code", pa.binary(nbytes))])
        if not table.schema.remove_metadata().equals(want):
            raise CorruptionError(path, f"schema is {table.schema.remove_metadata()}, expected {want}")
        if table.num_rows != n:
            raise CorruptionError(path, f"holds {table.num_rows} rows, {self._of} {n}")
        for c in table.columns:
            if c.num_chunks != 1:
                raise CorruptionError(path, "a column is not one chunk")
            c.chunk(0).validate()
            if c.null_count:
                raise CorruptionError(path, "a column holds nulls")
        meta = _meta(table, path, key)
        if meta.get("nlist") != spec["nlist"] or meta.get("centroids") != spec["centroids"]["name"]:
            raise CorruptionError(path, "was built for other centroids than the manifest's ivf index")
        off = np.frombuffer(base64.b64decode(meta.get("offsets", ""), validate=True), np.int64)
        if off.shape != (spec["nlist"] + 1,) or off[0] != 0 or off[-1] != n or (np.diff(off) < 0).any():
            raise CorruptionError(path, f"list offsets do not partition the rows of {self._of}")
        self.offsets = off
        self.codes = fixed_list_view(table.column("code"), nbytes, np.uint8)
        self.rows = primitive_view(table.column("row"), np.dtype(row_type.to_pandas_dtype()))
        return meta

    def ready(self):
        """Before the first probe: the ``row`` column's checksum and range."""
        if not self._ready:
            with self._lock:
                if not self._ready:
                    want = (self.entry.get("columns") or {}).get("row")
                    if want is not None and ig.column_crc(self.table.column("row")) != want:
                        raise CorruptionError(self.path, "column 'row' fails its checksum (damaged)")
                    r = self.rows
                    if len(r) and (int(r.min()) < 0 or int(r.max()) >= len(r)):
                        raise CorruptionError(self.path, f"column 'row' names rows outside {self._of}")
                    self._ready = True
        return self

    def verify(self, crc_block: int) -> None:
        """Every byte (file checksum) and the rows: a permutation of all rows."""
        if self.path is not None:
            ig.check_file_crc(self.path, self.entry.get("crc32"), crc_block)
        self.ready()
        if len(self.rows) and (np.bincount(self.rows, minlength=len(self.rows)) != 1).any():
            raise CorruptionError(self.path, f"column 'row' is not a permutation of the rows of {self._of}")


class IvfLists(RowsFile):
    """One segment's list file, mapped: ``codes`` ``[n, B]`` and ``rows`` int32 ``[n]`` in
    list order, ``offsets`` int64 ``[nlist + 1]``."""

    def __init__(self, entry: dict, table: pa.Table, path, spec: dict, n: int, nbytes: int):
        with ig.damage(path):
            self._open(entry, table, path, spec, n, pa.int32(), nbytes)

    def ranges(self, lists: np.ndarray) -> np.ndarray:
        """int64 ``[Q, P, 2]`` (start, stop) of the probed lists."""
        out = np.empty(lists.shape + (2,), np.int64)
        np.take(self.offsets, lists, out=out[..., 0])
        np.take(self.offsets, lists + 1, out=out[..., 1])
        return out

    def list_of_rows(self) -> np.ndarray:
        """int32 ``[n]``: each row's list (carried into a merge's output)."""
        out = np.empty(len(self.rows), np.int32)
        sizes = np.diff(self.offsets)
        out[self.ready().rows] = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        return out
