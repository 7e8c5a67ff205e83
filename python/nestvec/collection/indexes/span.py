"""ivf spans: one list file over several segments' rows.

A probe reads one range of codes per probed list and indexed segment, so with the
default 1 GiB segment cap a 10M-row search read 10 x nprobe short ranges, each a few
scattered cache lines and TLB misses (docs/ann-benchmark-log.md: the 10M run). A span
(``indexes/<uuid>.ivfs.arrow``) holds the codes of several indexed segments (its
*members*) grouped by list across all of them, so a probed list is one range whatever
the number of members. Its Arrow table is::

    row   int64           the row in the members' rows concatenated (member m's rows
                          start at member_base[m])
    code  binary(B)       that row's ivf code (the members' list files' codes)

with the list offsets, member names and row counts in the schema metadata. The
manifest's ivf spec lists spans (``"spans": [{name, bytes, crc32, columns, members}]``)
next to the per-segment list files, which stay: a search uses a span while every
member is in its snapshot, and a commit that removes a member drops the span (its file
then goes with the versions that name it). Deleted rows and filters reach a span as
its members' masks (by row, or copied in the span's order: plan.py). Spans are written
by ``create_index("ivf")``, ``optimize()`` and ``compact()`` (``build.commit_span``)
over the indexed segments no span covers.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pyarrow as pa

from .. import integrity as ig
from ..errors import CorruptionError
from .ivf import RowsFile

META_KEY = b"nestvec.ivfs"
MIN_MEMBERS = 2  # a span over one segment would be its list file again


def span_table(lists: list, nlist: int, centroids_name: str, members: list) -> pa.Table:
    """The span of list files ``lists`` (``ivf.IvfLists``, in member order; each one's
    rows are its whole segment's): their codes grouped by list, members in order inside
    a list, each member's rows in its list file's order."""
    counts = np.stack([np.diff(lst.offsets) for lst in lists])  # [M, nlist]
    sizes = np.array([len(lst.rows) for lst in lists], np.int64)
    base = np.zeros(len(lists) + 1, np.int64)
    np.cumsum(sizes, out=base[1:])
    offsets = np.zeros(nlist + 1, np.int64)
    np.cumsum(counts.sum(axis=0), out=offsets[1:])
    # where member m's part of list l starts: the list's start plus the earlier members' parts
    start = offsets[:-1][None, :] + np.cumsum(counts, axis=0) - counts
    nb = lists[0].codes.shape[1]
    codes = np.empty((int(base[-1]), nb), np.uint8)
    rows = np.empty(int(base[-1]), np.int64)
    for m, lst in enumerate(lists):
        lids = np.repeat(np.arange(nlist, dtype=np.int64), counts[m])
        dest = start[m][lids] + (np.arange(len(lids), dtype=np.int64) - lst.offsets[lids])
        codes[dest] = lst.codes
        rows[dest] = lst.ready().rows.astype(np.int64) + base[m]
    meta = {"nlist": nlist, "centroids": centroids_name, "members": list(members),
            "member_rows": sizes.tolist(), "offsets": base64.b64encode(offsets.tobytes()).decode()}
    code_col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nb), len(rows), [None, pa.py_buffer(codes)])
    return pa.table({"row": pa.array(rows), "code": code_col}).replace_schema_metadata(
        {META_KEY: json.dumps(meta)})


class IvfSpan(RowsFile):
    """A span's file, mapped: ``codes`` ``[n, B]`` and ``rows`` int64 ``[n]`` in list
    order, ``offsets`` int64 ``[nlist + 1]``, ``members`` (segment names) and
    ``member_base`` int64 ``[M + 1]``."""

    _of = "its members"

    def __init__(self, entry: dict, table: pa.Table, path, spec: dict, member_rows: list, nbytes: int):
        self.members = tuple(entry["members"])
        with ig.damage(path):
            meta = self._open(entry, table, path, spec, int(sum(member_rows)), pa.int64(), nbytes, META_KEY)
            if meta.get("members") != list(self.members) or meta.get("member_rows") != [int(r) for r in member_rows]:
                raise CorruptionError(path, "its members are not the segments the manifest names for it")
            self.member_base = np.zeros(len(member_rows) + 1, np.int64)
            np.cumsum(np.asarray(member_rows, np.int64), out=self.member_base[1:])


# --------------------------------------------------------------------------- manifests


def live_spans(spec: dict, segment_entries: list) -> list:
    """The spans of ivf ``spec`` whose members are all segments of ``segment_entries``
    with an ivf list file (a commit that removed one drops the span)."""
    indexed = {e["name"] for e in segment_entries if e.get("ivf")}
    return [s for s in spec.get("spans") or () if all(n in indexed for n in s["members"])]


def uncovered(snap) -> list:
    """Indices of the snapshot's segments with an ivf list file that no span covers."""
    spec = (snap.manifest.get("indexes") or {}).get("ivf")
    if spec is None:
        return []
    covered = {n for s in spec.get("spans") or () for n in s["members"]}
    return [i for i, s in enumerate(snap.segments) if "ivf" in s.ann and s.name not in covered]


def write(store, names: list, lists: list, spec: dict, block: int) -> dict:
    """Write the span of segments ``names`` whose list files are ``lists``
    (``ivf.IvfLists``); its manifest entry."""
    table = span_table(lists, spec["nlist"], spec["centroids"]["name"], names)
    e = store.write_index_table("span", table, block)
    del table
    return dict(e, members=list(names))


def attach(store, m: dict, indexes: dict, segments, reuse) -> dict:
    """``indexes`` with the ivf centroids carrying the spans usable in this snapshot
    (``spans``; mapped, or reused from ``reuse``'s by name)."""
    cent = indexes.get("ivf")
    if cent is None:
        return indexes
    spec = m["indexes"]["ivf"]
    by_name = {s.name: s for s in segments if "ivf" in s.ann}
    old = {s.name: s for s in getattr((reuse or {}).get("ivf"), "spans", ())}
    spans = []
    for e in live_spans(spec, [{"name": n, "ivf": True} for n in by_name]):
        sp = old.get(e["name"])
        if sp is None:
            path = store.index_path(e["name"])
            with ig.damage(path):
                sp = IvfSpan(e, store.load_index_table(e), path, spec, [by_name[n].n for n in e["members"]],
                             (m["dim"] + 7) // 8)
        spans.append(sp)
    if tuple(s.name for s in spans) == tuple(s.name for s in cent.spans):
        return indexes
    return dict(indexes, ivf=cent.with_spans(tuple(spans)))


# --------------------------------------------------------------------------- searches


def searched(pl, indexed) -> list:
    """(span, member_segs int64 [M]) of planner ``pl``'s ivf spans with at least two
    members among the searched segments ``indexed`` (member_segs: each member's
    segment index, -1 for one not searched)."""
    spans = getattr((pl.indexes or {}).get("ivf"), "spans", ())
    if not spans:
        return []
    at = {pl.segments[i].name: i for i in indexed}
    out = []
    for sp in spans:
        members = np.array([at.get(n, -1) for n in sp.members], np.int64)
        if (members >= 0).sum() >= MIN_MEMBERS:
            out.append((sp.ready(), members))
    return out


def mask_in_order(sp, members, masks) -> np.ndarray:
    """The members' masks (None: every row) in span ``sp``'s order; False for the rows
    of members not searched (-1)."""
    b = sp.member_base
    full = np.ones(int(b[-1]), bool)
    for j, (i, m) in enumerate(zip(members, masks)):
        if i < 0 or m is not None:
            full[b[j]:b[j + 1]] = False if i < 0 else m[:b[j + 1] - b[j]]
    return full[sp.rows]
