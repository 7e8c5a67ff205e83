"""Checksums and structural checks of segment and deletion files.

What is checked when (README, Reliability):

* at open, for every file a version names: the file is a regular file inside the
  collection of the recorded size; its Arrow footer and record batch parse; the
  schema, row count and first/last ``_row`` match the manifest; every buffer is as
  long as its column needs (Arrow's cheap validation: no offset is read); storage
  columns hold no nulls; a deletion file's CRC-32, rows (ascending, inside the
  segment's row range) and count. All O(columns), never O(rows) of a segment, so
  ``open()`` stays milliseconds whatever the size.
* before a metadata column (``_row``, ``id``, user columns) is first read: its CRC-32
  and Arrow's full validation (string offsets inside their buffer, valid UTF-8), and
  ``_row`` strictly ascending. A damaged offset would otherwise send a read outside
  the mapped file (SIGBUS).
* vectors and codes are fixed-width: the open-time checks make every read of them
  land inside the file, so damage there cannot crash the process; their bytes are
  covered by the whole-file CRC-32 that ``verify()``, ``open(verify=True)`` and every
  merge check before they are read in full.

Every failure is a :class:`CorruptionError` naming the file.
"""
from __future__ import annotations

import contextlib
import os
import stat
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from .errors import CorruptionError

STORAGE_COLUMNS = ("_row", "id", "vector", "code")
BULK_COLUMNS = ("vector", "code")  # fixed-width, covered by the file checksum only


def expected_schema(m: dict, user: pa.Schema) -> pa.Schema:
    d, dt = m["dim"], pa.float16() if m["dtype"] == "float16" else pa.float32()
    fields = [pa.field("_row", pa.int64()),
              pa.field("id", pa.string() if m["id_type"] == "string" else pa.int64()),
              pa.field("vector", pa.list_(dt, d))]
    if m["binary"]:
        fields.append(pa.field("code", pa.binary((d + 7) // 8)))
    return pa.schema(fields + list(user))


@contextlib.contextmanager
def damage(path):
    """Whatever a damaged file makes Arrow or NumPy raise (a name that is not UTF-8, a
    buffer too short for a view, ...) is CorruptionError naming it."""
    try:
        yield
    except (CorruptionError, FileNotFoundError):
        raise
    except (pa.ArrowException, ValueError, IndexError, TypeError, OverflowError, OSError) as e:
        raise CorruptionError(path, f"is damaged ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------- checksums


def _crc_blocks(view: memoryview, block: int) -> list:
    n = len(view)
    starts = list(range(0, n, block)) or [0]
    parts = [view[s:s + block] for s in starts]
    if len(parts) == 1:
        return [zlib.crc32(parts[0]) & 0xFFFFFFFF]
    # zlib releases the GIL on large buffers: blocks are checked on every core
    with ThreadPoolExecutor(max_workers=min(len(parts), os.cpu_count() or 1)) as ex:
        return [c & 0xFFFFFFFF for c in ex.map(zlib.crc32, parts)]


def file_crc(path: str, block: int) -> str:
    """CRC-32 of each ``block`` bytes of the file, as one hex string."""
    with pa.memory_map(path, "r") as mm:
        size = mm.size()
        if size == 0:
            return f"{0:08x}"
        buf = mm.read_buffer(size)
        return "".join(f"{c:08x}" for c in _crc_blocks(memoryview(buf), block))


def column_crc(col) -> str:
    """CRC-32 over the buffers (lengths, then bytes) of a one-chunk column."""
    arr = col.chunk(0) if isinstance(col, pa.ChunkedArray) else col
    crc = zlib.crc32(f"{len(arr)}:{arr.offset}".encode())
    for buf in arr.buffers():
        if buf is None:
            crc = zlib.crc32(b"-", crc)
            continue
        crc = zlib.crc32(buf.size.to_bytes(8, "little"), crc)
        crc = zlib.crc32(memoryview(buf), crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def column_crcs(table: pa.Table) -> dict:
    return {c: column_crc(table.column(c)) for c in table.column_names if c not in BULK_COLUMNS}


# --------------------------------------------------------------------------- files


def regular_file(path: str, expect_bytes) -> None:
    """lstat: a regular file (never a symlink out of the directory) of the recorded size."""
    st = os.lstat(path)  # FileNotFoundError is the caller's to handle (a race or a loss)
    if not stat.S_ISREG(st.st_mode):
        raise CorruptionError(path, "is not a regular file (a symbolic link or other entry where a "
                                    "collection file should be)")
    if expect_bytes is not None and st.st_size != expect_bytes:
        raise CorruptionError(path, f"is {st.st_size} bytes, the manifest recorded {expect_bytes} "
                                    f"(truncated or overwritten)")


def read_ipc(path: str) -> pa.Table:
    """Memory-map an IPC file (footer and batch metadata only; buffers stay in the map)."""
    try:
        with pa.memory_map(path, "r") as mm:
            reader = pa.ipc.open_file(mm)
            if reader.num_record_batches > 1:
                raise CorruptionError(path, f"holds {reader.num_record_batches} record batches, expected one")
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            return pa.Table.from_batches(batches, schema=reader.schema)
    except FileNotFoundError:
        raise
    except CorruptionError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise CorruptionError(path, f"is not a readable Arrow IPC file ({type(e).__name__}: {e})") from None


def check_structure(table: pa.Table, entry: dict, schema: pa.Schema, path: str) -> None:
    """The O(columns) checks of a mapped segment against its manifest entry."""
    got = table.schema
    if got.names != schema.names or any(a.type != b.type for a, b in zip(got, schema)):
        want = ", ".join(f"{f.name}: {f.type}" for f in schema)
        have = ", ".join(f"{f.name}: {f.type}" for f in got)
        raise CorruptionError(path, f"schema does not match the manifest: file has ({have}), "
                                    f"manifest says ({want})")
    if table.num_rows != entry["rows"]:
        raise CorruptionError(path, f"holds {table.num_rows} rows, the manifest says {entry['rows']}")
    for name in table.column_names:
        col = table.column(name)
        if col.num_chunks != 1:
            raise CorruptionError(path, f"column {name!r} is not one chunk")
        arr = col.chunk(0)
        try:
            arr.validate()  # buffer sizes against lengths; reads no offsets
        except pa.ArrowException as e:
            raise CorruptionError(path, f"column {name!r} is damaged ({e})") from None
        if name in STORAGE_COLUMNS and (arr.null_count or (name == "vector" and arr.values.null_count)):
            raise CorruptionError(path, f"storage column {name!r} holds nulls")
    rows = table.column("_row").chunk(0)
    first, last = rows[0].as_py(), rows[len(rows) - 1].as_py()
    if first != entry["first_row"] or last != entry["last_row"]:
        raise CorruptionError(path, f"rows run from {first} to {last}, the manifest says "
                                    f"{entry['first_row']} to {entry['last_row']}")


def check_column(table: pa.Table, name: str, entry: dict, path: str) -> None:
    """Before the first read of a metadata column: checksum, full validation."""
    col = table.column(name)
    want = (entry.get("columns") or {}).get(name)
    if want is not None and column_crc(col) != want:
        raise CorruptionError(path, f"column {name!r} fails its checksum (damaged)")
    arr = col.chunk(0)
    try:
        arr.validate(full=True)
    except pa.ArrowException as e:
        raise CorruptionError(path, f"column {name!r} is damaged ({e})") from None
    if name == "_row" and len(arr) > 1:
        v = np.frombuffer(arr.buffers()[1], np.int64, count=arr.offset + len(arr))[arr.offset:]
        if not (v[1:] > v[:-1]).all():
            raise CorruptionError(path, "column '_row' is not strictly ascending")


def check_file_crc(path: str, entry_crc, block: int) -> bool:
    """Whole-file checksum; False when the manifest recorded none (format 1 files)."""
    if entry_crc is None:
        return False
    got = file_crc(path, block)
    if got != entry_crc:
        bad = [i for i in range(0, max(len(got), len(entry_crc)), 8) if got[i:i + 8] != entry_crc[i:i + 8]]
        raise CorruptionError(path, f"fails its checksum (damaged bytes in block(s) "
                                    f"{[i // 8 for i in bad][:5]} of {block >> 20} MiB)")
    return True


def check_deletions(rows: np.ndarray, entry: dict, path: str) -> None:
    """A deletion file's rows: the recorded count, ascending, inside the segment."""
    if len(rows) != entry["deleted"]:
        raise CorruptionError(path, f"lists {len(rows)} rows, the manifest says {entry['deleted']}")
    if len(rows) and (rows[0] < entry["first_row"] or rows[-1] > entry["last_row"]
                      or not (rows[1:] > rows[:-1]).all()):
        raise CorruptionError(path, f"lists rows outside segment {entry['name']} (rows {entry['first_row']}"
                                    f"..{entry['last_row']}) or out of order")


def deletion_positions(seg_rows: np.ndarray, deleted: np.ndarray, path: str) -> np.ndarray:
    """Positions of ``deleted`` in the segment's ``_row`` column; every one must exist."""
    pos = np.searchsorted(seg_rows, deleted)
    ok = pos < len(seg_rows)
    if not ok.all() or not np.array_equal(seg_rows[pos], deleted):
        raise CorruptionError(path, "lists rows that its segment does not hold")
    return pos
