"""The ``ivf`` and ``hnsw`` search modes over one snapshot (called by planner.Planner).

Both split the segments into *indexed* ones (those with a list file / graph) and
*scanned* ones (small or fresh segments below the index's ``min_rows``, searched
exhaustively by the binary funnel, or flat without codes). Every candidate is
rescored exactly at ``dim`` (through the ladder), and all lists merge by (score,
global row position), the rule every mode uses, so a row's result never depends on
which segment holds it.

Filters and deletes arrive as each segment's ``allow`` mask:

* a *selective* filter (fewer than EXACT_FRACTION of the rows, for ivf at most
  EXACT_ROWS of them, or no more rows than the shortlist) is searched exhaustively
  over the allowed rows: the Hamming
  shortlist over their gathered codes, then exact rescoring (flat when they fit in the
  shortlist);
* otherwise the mask applies inside the probed lists (ivf: ``hamming_topk_ranges``
  checks ``allow`` per row; ``nprobe`` widened by ``selectivity ** -WIDEN_POWER``) or
  to the graph's candidates (hnsw; ``ef`` oversampled by 1 / the segment's allowed
  fraction); a query that still has fewer than ``min(k,
  matches)`` candidates is probed again with 4x the lists (ivf, up to every list) or
  searched exhaustively on that segment (hnsw).

So every mode returns exactly ``min(k, matching rows)`` rows per query.
"""
from __future__ import annotations

import math

import numpy as np

from .. import hostcalls
from . import span
from ..onecall import OneCall, fits
from ..filters import MaskMemo
from ..topk import merge_parts, merge_results

# Filters allowing fewer rows than this fraction are searched over the allowed rows
# (README, Indexes: the filtered benchmark).
EXACT_FRACTION = 0.05
# ... but ivf searches such a filter exhaustively only while it allows at most this many
# rows: the exhaustive scan costs its rows, while the probe over a filter's gathered
# per-list codes (allowed_lists) costs about what the unfiltered probe does. A 1% filter
# over 10M x 384 (100k rows): exhaustive 1.4-1.8x the unfiltered search, probed 1.4x,
# recall 1.000 either way (docs/ann-benchmark-log.md: the 10M filters).
EXACT_ROWS = 1 << 16
# A filter allowing fraction s of the rows multiplies nprobe (ivf) by s ** -WIDEN_POWER:
# the k nearest allowed rows are about the k / s nearest rows, held by fewer than 1 / s
# times the lists (a list holds many of them). 0.5 missed recall 0.99 at s = 0.5 on an
# earlier index (3 lists where 4 were needed); 0.6 kept 1 / s's recall at 10% and 50%
# for nprobe 2-4 at 200k rows and at 1M, where 1 / s made a 10% filter's search 1.6-1.9x
# the unfiltered one (README, the filtered runs).
WIDEN_POWER = 0.6
# ... and by s ** -SELECTIVE_WIDEN_POWER below EXACT_FRACTION (ivf probes such a filter
# only when it allows more than EXACT_ROWS rows; each probed list is then a range of a
# few gathered rows per segment, so its cost is the ranges): at 1% of 10M x 384, 0.4
# kept recall 1.000 against exact filtered search (nprobe 12 -> 76 lists instead of
# 190) at 1.05-1.14x the unfiltered search instead of 1.41-1.42x (README, the 10M
# filters).
SELECTIVE_WIDEN_POWER = 0.4
# ... and widens the Hamming shortlist (k * rescore) by min(FILTER_SHORTLIST, 1 / s):
# at 10M x 384 the default rescore, tuned to recall 0.95 unfiltered, left a 50% filter
# at 0.974 against exact filtered search however many lists were probed (19 or 30:
# the same), where twice the shortlist gave 0.995 at 1.47x the unfiltered search (and
# a 10% filter 0.9999 at 1.27x; docs/ann-benchmark-log.md: the 10M filters).
FILTER_SHORTLIST = 2.0
# hnsw: a filter allowing at most this many rows is searched over them exhaustively
# whatever its selectivity. The graph is asked for ef / s candidates under a filter
# allowing fraction s, which at 10% of 200k rows took 3.5x the unfiltered search; the
# Hamming scan of 20,000 rows' gathered codes and the rescoring take less (README, the
# filtered runs).
HNSW_EXACT_ROWS = 1 << 16
# Shortlist factor for the exhaustive route over a selective filter's rows: 2 kept
# recall@10 0.997 against exact filtered search at 1% of 200k x 768 (4: 1.000, 1: 0.978)
# and rescores half the rows of 4 (docs/ann-benchmark-log.md: the filtered runs).
EXACT_RESCORE = 2

# allowed rows and their gathered codes per read-only mask (filters.MaskMemo)
_ROWS = MaskMemo(64 << 20)
# A filter allowing at most this fraction of an indexed segment's rows gets its allowed
# rows' codes gathered per list (allowed_lists): a 10% filter's probe over 10M rows
# then cost what the unfiltered one does, where reading the mask beside every probed
# row took twice as long (docs/ann-benchmark-log.md: the 10M filters); through a span,
# a 50% filter's probe took 0.27 ms gathered against 0.43 ms with the mask read beside
# the codes (1.3x against 2.0x the unfiltered search). The copies are at most this
# fraction of the list files' bytes, in a memo of their own (1.5 GiB: a 50% filter's
# copy over 10M x 384 is ~290 MB, and an entry may take a quarter of the memo).
GATHER_FRACTION = 0.6
_LISTS = MaskMemo(3 << 29)
# Whether ivf searches read the segments an ivf span covers through it (span.py); the
# benchmarks turn it off for the per-segment baseline of the same collection.
SPANS = True


def allowed_rows(mask: np.ndarray) -> np.ndarray:
    """``np.flatnonzero(mask)``, remembered while a read-only mask lives: a repeated
    filter's masks are the same cached objects, and the scan of a 200k-row mask was a
    fifth of a 1%-filtered search."""
    return _ROWS.get(mask, lambda: np.flatnonzero(mask))


def allowed_codes(mask: np.ndarray, codes: np.ndarray, nbytes: int) -> tuple:
    """(allowed rows, the first ``nbytes`` of their codes gathered into one array),
    remembered with a read-only mask (the gather of a 1% filter's codes on every search
    cost as much as the Hamming scan over them). ``codes``: the segment's code array,
    whole."""
    def gather():
        rows = allowed_rows(mask)
        return rows, codes[rows, :nbytes]
    return _ROWS.get(mask, gather, extra=("codes", codes, nbytes))  # (one lookup a segment and search)


def _ann(s, kind):
    ann = getattr(s, "ann", None)
    return ann.get(kind) if ann else None


class IndexRun:
    """One ivf / hnsw search: the planner's segments split by index, the stats."""

    def __init__(self, pl, kind: str):
        self.pl = pl
        self.kind = kind
        self.req = pl.req
        self.indexed, self.scanned = [], []
        for i in pl._active():
            (self.scanned if _ann(pl.segments[i], kind) is None else self.indexed).append(i)
        self.matches = sum(pl.counts)
        rows = sum(s.n for s in pl.segments)
        self.selectivity = self.matches / rows if rows else 1.0
        st = pl.stats
        st.update(segments=len(pl.segments), indexed_segments=len(self.indexed),
                  scanned_segments=len(self.scanned), rows=rows, matches=self.matches,
                  rows_scanned=0, rows_rescored=0)

    @property
    def offsets(self) -> np.ndarray:
        """Each segment's first row's global position (merges of several results)."""
        return np.array([s.offset for s in self.pl.segments] or [0], np.int64)

    @property
    def larger_better(self) -> bool:
        return self.req.metric != "l2"

    def selective(self, short: int, max_rows: int | None = None) -> bool:
        """Whether the filter's rows are searched exhaustively: no more than the
        shortlist, or below EXACT_FRACTION (and, given, at most ``max_rows`` rows)."""
        if not self.pl.filtered:
            return False
        if self.matches <= short:
            return True
        return self.selectivity < EXACT_FRACTION and (max_rows is None or self.matches <= max_rows)

    def nprobe(self, spec: dict) -> int:
        """Lists probed: the request's or the index's nprobe, widened for a filter."""
        return min(spec["nlist"], math.ceil((self.req.nprobe or spec["nprobe"]) * self.widen()))

    def need(self) -> int:
        """Rows each query must find in its lists: min(k, the indexed segments' matches)."""
        return min(self.req.k, sum(self.pl.counts[i] for i in self.indexed))

    def widen(self) -> float:
        if self.matches == 0 or self.selectivity >= 1:
            return 1.0
        return self.selectivity ** -(SELECTIVE_WIDEN_POWER if self.selectivity < EXACT_FRACTION else WIDEN_POWER)

    def widened_short(self, short: int) -> int:
        """A probed search's shortlist under a filter (FILTER_SHORTLIST)."""
        if not self.pl.filtered or self.matches == 0 or self.selectivity >= 1:
            return short
        return math.ceil(short * min(FILTER_SHORTLIST, 1 / self.selectivity))

    # -- pieces shared by both modes
    def finish(self, queries, nq, results):
        """Rescored results of each group + flat results of codeless scanned
        segments, merged."""
        k = self.req.k
        if len(results) == 1:
            return results[0]
        return merge_results(results, k, self.larger_better, self.offsets, nq)

    def rescore(self, queries, seg, local, nq):
        self.pl.stats["rows_rescored"] += int((local >= 0).sum())
        return self.pl._rescore(queries, seg, local, nq)

    def scanned_results(self, queries, nq, short):
        """The scanned segments: the funnel's Hamming shortlist and rescoring (flat
        when the collection has no codes or a segment's rows fit in the shortlist)."""
        pl = self.pl
        if not self.scanned:
            return []
        funnel = [i for i in self.scanned if pl.segments[i].codes is not None and pl.counts[i] > short]
        flat = [i for i in self.scanned if i not in funnel]
        out = []
        if funnel:
            qcodes, nbytes = pl._query_codes(queries)
            seg, local, _ = pl._hamming(qcodes, nbytes, short, nq, only=funnel)
            self.pl.stats["rows_scanned"] += nq * sum(pl.counts[i] for i in funnel)
            out.append(self.rescore(queries, seg, local, nq))
        if flat:
            self.pl.stats["rows_scanned"] += nq * sum(pl.counts[i] for i in flat)
            out.append(pl._flat(queries, nq, only=flat))
        return out

    def exhaustive(self, queries, nq, only, rescore: int):
        """Every allowed row of segments ``only``: Hamming shortlist of ``k*rescore``
        over their gathered codes, rescored; flat when they fit in the shortlist or
        there are no codes."""
        pl, k = self.pl, self.req.k
        short = k * rescore
        n_allowed = sum(pl.counts[i] for i in only)
        pl.stats["rows_scanned"] += nq * n_allowed
        if n_allowed <= short or any(pl.segments[i].codes is None for i in only):
            return pl._flat(queries, nq, only=only)
        qcodes, nbytes = pl._query_codes(queries)
        if pl.native(queries):
            # a filtered segment's gathered codes are scanned as one range whose ids are
            # their rows (ascending: the tie order of the per-segment path)
            segs = exhaustive_segs(pl, only, short, nbytes)
            if fits(pl, short):  # shortlist and rescoring in one call
                call = OneCall(pl, only, segs, short, 0, nbytes)
                score, seg, local, _, _, rescored, _ = call(queries, qcodes)
                pl.stats["rows_rescored"] += rescored
                return seg, local, score
            segs = [t if t is None or t[4] is None else t[:4] + (np.repeat(t[4], nq, 0), t[5]) for t in segs]
            _, seg, local, _ = hostcalls.hamming_segments(qcodes, short, segs)
            return self.rescore(queries, seg, local, nq)
        parts = []
        for i in only:
            s, m = pl.segments[i], pl.masks[i]
            rows = allowed_rows(m) if m is not None else None
            codes = pl._codes(i, nbytes)
            if rows is not None:
                codes = codes[rows]
            d, idx = hostcalls.hamming(codes, qcodes, min(short, len(codes)))
            if rows is not None:
                idx = np.where(idx >= 0, rows[np.maximum(idx, 0)], -1)
            parts.append((s.offset, i, d, idx))
        seg, local, _ = merge_parts(parts, short, False, nq)
        return self.rescore(queries, seg, local, nq)


# --------------------------------------------------------------------------- ivf


def _check_width(queries, spec: dict, kind: str) -> None:
    if queries.shape[1] < spec["dim"]:
        raise ValueError(f"dim: the {kind} index works on the first {spec['dim']} values; pass queries of "
                         f"at least that width (full D-value queries serve any dim)")


def run_ivf(pl, queries):
    run = IndexRun(pl, "ivf")
    cent = pl.indexes["ivf"]
    spec = cent.spec
    _check_width(queries, spec, "ivf")
    r = run.req
    nq = queries.shape[0]
    rescore = r.rescore or spec["rescore"]
    short = r.k * rescore
    st = pl.stats
    st.update(nlist=spec["nlist"], rescore=rescore)
    if run.selective(short, EXACT_ROWS):
        st.update(route="exhaustive over the filter's rows (selective filter)", nprobe=0, lists_probed=0)
        exact = run.exhaustive(queries, nq, pl._active(), rescore * EXACT_RESCORE)
        return run.finish(queries, nq, [exact])
    nprobe = run.nprobe(spec)
    short = run.widened_short(short)
    st.update(route="ivf probe" + (" (widened by the filter)" if run.widen() > 1 else ""), nprobe=nprobe,
              shortlist=short)
    results = run.scanned_results(queries, nq, short)
    if run.indexed:
        results.append(_ivf_indexed(run, cent, queries, nq, nprobe, short))
    else:
        st.update(lists_probed=0)
    return run.finish(queries, nq, results)


def _ivf_query_codes(pl, cent, queries, native_signs: bool = False):
    """(query codes, nbytes); codes None with ``native_signs`` where they are the sign
    bits of whole bytes of values, which the one-call search takes itself."""
    r = pl.req
    nbytes = pl.code_bytes(queries.shape[1])
    if nbytes is None:
        raise ValueError(f"dim: binary codes of a {r.dim}-value prefix need dim % 8 == 0 "
                         f"(or pass full {r.d_full}-value queries with mode='ivf')")
    if native_signs and cent.mean is None and 8 * nbytes <= queries.shape[1]:
        return None, nbytes
    return cent.query_codes(queries, nbytes), nbytes


def _ivf_indexed(run, cent, queries, nq, nprobe, short):
    """Hamming shortlist over the probed lists of every indexed segment, widened for
    queries that found fewer than min(k, matches) rows; then rescored."""
    pl, r = run.pl, run.req
    nlist = cent.spec["nlist"]
    need = run.need()
    if pl.native(queries):
        return _ivf_native(run, cent, queries, nq, nprobe, short, need, nlist)
    qcodes, nbytes = _ivf_query_codes(pl, cent, queries)
    todo = np.arange(nq)
    seg = np.full((nq, short), -1, np.int64)
    local = np.full((nq, short), -1, np.int64)
    probes, rounds = np.zeros(nq, np.int64), 0
    while len(todo):
        rounds += 1
        lists = cent.probe(queries[todo], nprobe)
        probes[todo] = lists.shape[1]
        parts = []
        for i in run.indexed:
            lst = pl.segments[i].ann["ivf"].ready()
            ranges = lst.ranges(lists)
            pl.stats["rows_scanned"] += int((ranges[..., 1] - ranges[..., 0]).sum())
            d, loc = hostcalls.hamming_ranges(lst.codes if nbytes == lst.codes.shape[1] else lst.codes[:, :nbytes],
                                              qcodes[todo], min(short, pl.counts[i]), ranges, ids=lst.rows,
                                              allow=pl.masks[i])
            parts.append((pl.segments[i].offset, i, d, loc))
        s, lo, _ = merge_parts(parts, short, False, len(todo))
        seg[todo, :s.shape[1]] = s
        local[todo, :lo.shape[1]] = lo
        lacking = (lo >= 0).sum(axis=1) < need
        if not lacking.any() or nprobe >= nlist:
            break
        todo = todo[lacking]
        nprobe = min(nlist, nprobe * 4)
    pl.stats.update(lists_probed=int(probes.sum()), probe_rounds=rounds, nprobe_max=int(probes.max()))
    return run.rescore(queries, seg, local, nq)


def exhaustive_segs(pl, only, short, nbytes):
    """Hamming tuples of segments ``only`` for a search of their allowed rows: a
    masked segment's allowed rows' codes, gathered, as one range (shared by every
    query: [1, 1, 2]) whose ids are the rows."""
    segs = [None] * len(pl.segments)
    for i in only:
        s, m = pl.segments[i], pl.masks[i]
        if m is None:
            segs[i] = (s.codes, None, s.offset, min(short, s.n), None, None)
            continue
        rows, codes = allowed_codes(m, s.codes, nbytes)
        segs[i] = (codes, None, s.offset, min(short, len(rows)), np.array([[[0, len(rows)]]], np.int64), rows)
    return segs


def allowed_at(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A read-only mask in a list file's order (``mask[rows]``), remembered with it: the
    scan reads it beside the codes instead of each hit's mask entry at its row."""
    return _ROWS.get(mask, lambda: mask[rows], extra=("at", rows))


def allowed_lists(mask: np.ndarray, lst) -> tuple:
    """(codes, list offsets, rows) of the rows of list file ``lst`` that a read-only mask
    allows, in list order, remembered with it: a probe then reads only allowed rows."""
    def gather():
        kept = np.flatnonzero(mask[lst.rows])
        return (np.ascontiguousarray(lst.codes[kept]), np.searchsorted(kept, lst.offsets).astype(np.int64),
                np.ascontiguousarray(lst.rows[kept]))
    return _LISTS.get(mask, gather, extra=("lists", lst.rows))


def _mask_route(pl, indexed) -> str:
    """How the probed lists of the masked segments see their masks: "lists" (each
    filter's allowed rows gathered per list, for filters allowing at most
    GATHER_FRACTION of every such segment), "at" (the mask in list order) or "row"
    (the mask by row). A route is taken only while every segment's entry stays
    remembered within its memo's budget (else each search would rebuild them); a
    writable mask (not remembered) is read by row."""
    masked = [i for i in indexed if pl.masks[i] is not None]
    if not masked or any(pl.masks[i].flags.writeable for i in masked):
        return "row"
    ann = [pl.segments[i].ann["ivf"] for i in masked]
    n = [len(pl.masks[i]) for i in masked]
    lists = [m + pl.counts[i] * (a.codes.shape[1] + 4) + 8 * len(a.offsets) for i, m, a in zip(masked, n, ann)]
    if all(pl.counts[i] <= GATHER_FRACTION * m for i, m in zip(masked, n)) \
            and all(_LISTS.fits(b) for b in lists) and sum(lists) <= _LISTS.budget // 2:
        return "lists"
    if all(_ROWS.fits(2 * m) for m in n) and 2 * sum(n) <= _ROWS.budget // 2:
        return "at"
    return "row"


def _member_masks(pl, members) -> tuple:
    """(each member's mask or None, the first mask: the memo key)."""
    masks = [pl.masks[i] if i >= 0 else None for i in members]
    return masks, next(m for m in masks if m is not None)


def span_allowed_at(pl, sp, members) -> np.ndarray:
    """``span.mask_in_order``, remembered with the masks like ``allowed_at``."""
    masks, key = _member_masks(pl, members)
    return _ROWS.get(key, lambda: span.mask_in_order(sp, members, masks), extra=("span", sp.rows, *masks))


def span_allowed_lists(pl, sp, members) -> tuple:
    """(codes, list offsets, rows) of span ``sp``'s rows that the members' masks allow,
    in list order, remembered with the masks like ``allowed_lists``."""
    masks, key = _member_masks(pl, members)

    def gather():
        kept = np.flatnonzero(span.mask_in_order(sp, members, masks))
        return (np.ascontiguousarray(sp.codes[kept]), np.searchsorted(kept, sp.offsets).astype(np.int64),
                np.ascontiguousarray(sp.rows[kept]))
    return _LISTS.get(key, gather, extra=("span lists", sp.rows, *masks))


def _ivf_segs(pl, indexed, short):
    """Hamming tuples of the indexed segments' lists (hostcalls.hamming_segments), a
    masked segment's as _mask_route says. Segments an ivf span covers are read through
    it (one range per probed list for all its members; the route's mask copies made
    in the span's order): its tuple follows the segments', theirs have k 0 (and carry
    the mask by row, or none where the span has the masks in its own order)."""
    segs = [None] * len(pl.segments)
    route = _mask_route(pl, indexed)
    spans = span.searched(pl, indexed) if SPANS else []
    # (a span's copy of its members' masks or allowed rows must stay remembered, as the
    # segments' would)
    if route == "at":
        spans = [(sp, mem) for sp, mem in spans if _ROWS.fits(2 * len(sp.rows))]
    elif route == "lists":
        spans = [(sp, mem) for sp, mem in spans if _LISTS.fits(
            len(sp.rows) + sum(pl.counts[i] for i in mem if i >= 0) * (sp.codes.shape[1] + 8) + 8 * len(sp.offsets))]
    covered = {int(i) for _, members in spans for i in members if i >= 0}
    for i in indexed:
        s, m = pl.segments[i], pl.masks[i]
        if i in covered:  # (its list file is not read: no need to check its rows)
            lst = s.ann["ivf"]
            segs[i] = (lst.codes, m if route == "row" else None, s.offset, 0, lst.offsets, lst.rows)
            continue
        lst = s.ann["ivf"].ready()
        k = min(short, pl.counts[i])
        if m is None or route == "row":
            segs[i] = (lst.codes, m, s.offset, k, lst.offsets, lst.rows)
        elif route == "at":
            segs[i] = (lst.codes, None, s.offset, k, lst.offsets, lst.rows, allowed_at(m, lst.rows))
        else:
            codes, offsets, rows = allowed_lists(m, lst)
            segs[i] = (codes, None, s.offset, k, offsets, rows)
    for sp, members in spans:
        k = min(short, sum(pl.counts[i] for i in members if i >= 0))
        masked = any(pl.masks[i] is not None for i in members if i >= 0)
        if route == "lists" and masked:
            codes, offsets, rows = span_allowed_lists(pl, sp, members)
            segs.append((codes, None, 0, k, offsets, rows, None, members, sp.member_base))
            continue
        at = span_allowed_at(pl, sp, members) if route == "at" and masked else None
        segs.append((sp.codes, None, 0, k, sp.offsets, sp.rows, at, members, sp.member_base))
    return segs


def _ivf_native(run, cent, queries, nq, nprobe, short, need, nlist):
    """_ivf_indexed on the cpu backend: one native call (probe, shortlist, rescoring)
    where it fits, else probe rounds from Python, each one call over every indexed
    segment's lists (their offsets turn into ranges there)."""
    pl = run.pl
    segs = _ivf_segs(pl, run.indexed, short)
    one_call = fits(pl, short, cent)
    qcodes, nbytes = _ivf_query_codes(pl, cent, queries, native_signs=one_call)
    if not one_call:
        return _ivf_rounds(run, cent, queries, qcodes, nq, nprobe, short, need, nlist, segs)
    call = OneCall(pl, run.indexed, segs, short, need, nbytes, cent, nprobe)
    score, seg, local, lacking, scanned, rescored, _ = call(queries, qcodes)
    st = pl.stats
    st["rows_scanned"] += scanned
    st["rows_rescored"] += rescored
    width = min(nprobe, nlist)
    st.update(lists_probed=nq * width, probe_rounds=1, nprobe_max=width)
    if nprobe >= nlist or not lacking.any():
        return seg, local, score
    todo = np.flatnonzero(lacking)  # too few rows in the probed lists (a filter): wider
    if qcodes is None:
        qcodes = cent.query_codes(queries, nbytes)
    s2, l2, sc2 = _ivf_rounds(run, cent, queries[todo], qcodes[todo], len(todo), min(nlist, nprobe * 4), short,
                              need, nlist, segs)
    w = seg.shape[1]
    seg[todo], local[todo], score[todo] = s2[:, :w], l2[:, :w], sc2[:, :w]
    st.update(lists_probed=nq * width + st["lists_probed"], probe_rounds=1 + st["probe_rounds"])
    return seg, local, score


def plain_ivf(pl, q_width: int):
    """The OneCall that run_ivf would make for queries of ``q_width`` values when that
    is all it does (every searched segment indexed, or a selective filter's rows
    searched exhaustively; no ladder, host arrays, sign codes the call computes),
    else None."""
    r = pl.req
    cent = (pl.indexes or {}).get("ivf")
    if cent is None or q_width < cent.spec["dim"] or not hostcalls.native_segments():
        return None
    run = IndexRun(pl, "ivf")
    rescore = r.rescore or cent.spec["rescore"]
    short = r.k * rescore
    if run.selective(short, EXACT_ROWS):  # run.exhaustive over every active segment's allowed rows
        only = pl._active()
        short = short * EXACT_RESCORE
        nbytes = pl.code_bytes(q_width)
        if sum(pl.counts[i] for i in only) <= short or any(pl.segments[i].codes is None for i in only) \
                or nbytes is None or 8 * nbytes > q_width or not fits(pl, short):
            return None
        return OneCall(pl, only, exhaustive_segs(pl, only, short, nbytes), short, 0, nbytes)
    short = run.widened_short(short)
    if run.scanned or not run.indexed or not fits(pl, short, cent):
        return None
    nbytes = pl.code_bytes(q_width)
    if nbytes is None or cent.mean is not None or 8 * nbytes > q_width:
        return None
    return OneCall(pl, run.indexed, _ivf_segs(pl, run.indexed, short), short, run.need(), nbytes, cent,
                   run.nprobe(cent.spec))


def _ivf_rounds(run, cent, queries, qcodes, nq, nprobe, short, need, nlist, segs):
    """Probe rounds from Python: probe, then one Hamming call over every segment's
    lists, 4x the lists for queries that found too few rows; then the rescoring."""
    pl = run.pl
    lists = cent.probe(queries, nprobe)
    _, seg, local, scanned = hostcalls.hamming_segments(qcodes, short, segs, lists)
    if seg.shape[1] < short:  # the shortlist's width sizes the ladder: as wide as the per-segment path's
        pad = np.full((nq, short - seg.shape[1]), -1, np.int64)
        seg, local = np.concatenate([seg, pad], 1), np.concatenate([local, pad], 1)
    rows_scanned, rounds, width = scanned, 1, lists.shape[1]
    # hits come best first, -1 after them: a query lacks rows when its need-th is -1
    todo = ()
    if need > 0 and nprobe < nlist and (local[0, need - 1] < 0 if nq == 1 else (local[:, need - 1] < 0).any()):
        todo = np.flatnonzero(local[:, need - 1] < 0)
    if not len(todo):  # the common case: one round, nothing widened
        st = pl.stats
        st["rows_scanned"] += rows_scanned
        st.update(lists_probed=nq * width, probe_rounds=1, nprobe_max=width)
        return run.rescore(queries, seg, local, nq)
    probes = np.full(nq, width, np.int64)
    while len(todo) and nprobe < nlist:  # widen for queries that found too few rows
        nprobe = min(nlist, nprobe * 4)
        rounds += 1
        lists = cent.probe(queries[todo], nprobe)
        probes[todo] = lists.shape[1]
        _, s, lo, scanned = hostcalls.hamming_segments(qcodes[todo], short, segs, lists)
        rows_scanned += scanned
        seg[todo, :s.shape[1]] = s
        local[todo, :lo.shape[1]] = lo
        todo = todo[(lo >= 0).sum(axis=1) < need]
    st = pl.stats
    st["rows_scanned"] += rows_scanned
    st.update(lists_probed=int(probes.sum()), probe_rounds=rounds, nprobe_max=int(probes.max()))
    return run.rescore(queries, seg, local, nq)


# --------------------------------------------------------------------------- hnsw


def run_hnsw(pl, queries):
    run = IndexRun(pl, "hnsw")
    spec = pl.indexes["hnsw"]
    _check_width(queries, spec, "hnsw")
    r = run.req
    nq = queries.shape[0]
    rescore = r.rescore or 10
    st = pl.stats
    ef = max(r.k, r.ef or spec["ef"])
    st.update(ef=ef)
    selective = run.selective(r.k * rescore)
    few = pl.filtered and run.matches <= HNSW_EXACT_ROWS and run.selectivity < 1
    if selective or few:
        why = "selective filter" if selective else "fewer rows than a widened graph search"
        st.update(route=f"exhaustive over the filter's rows ({why})")
        exact = run.exhaustive(queries, nq, pl._active(), rescore * EXACT_RESCORE)
        return run.finish(queries, nq, [exact])
    st.update(route="hnsw graph" + (" (ef widened by the filter)" if run.widen() > 1 else ""),
              graphs_loaded_now=sum(not pl.segments[i].ann["hnsw"].loaded for i in run.indexed))
    results = run.scanned_results(queries, nq, r.k * rescore)
    cand_seg, cand_local, fallback = [], [], []
    for i in run.indexed:
        s, m = pl.segments[i], pl.masks[i]
        frac = pl.counts[i] / s.n
        ask = min(s.n, math.ceil(ef / frac) if m is not None else ef)
        labels = s.ann["hnsw"].search(queries, ask, ask)
        if m is not None:
            labels = np.where((labels >= 0) & m[np.maximum(labels, 0)], labels, -1)
        pl.stats["rows_scanned"] += nq * ask
        lacking = (labels >= 0).sum(axis=1) < min(r.k, pl.counts[i])
        if lacking.any():
            fallback.append((i, np.flatnonzero(lacking)))
            labels[lacking] = -1
        cand_seg.append(np.full(labels.shape, i, np.int64))
        cand_local.append(labels)
    if cand_seg:
        results.append(run.rescore(queries, np.concatenate(cand_seg, 1), np.concatenate(cand_local, 1), nq))
    for i, qs in fallback:  # too few allowed candidates: that segment's allowed rows, exhaustively
        seg, local, score = run.exhaustive(queries[qs], len(qs), [i], rescore * EXACT_RESCORE)
        full = [np.full((nq, seg.shape[1]), -1, np.int64), np.full((nq, seg.shape[1]), -1, np.int64),
                np.zeros((nq, seg.shape[1]), score.dtype)]
        full[0][qs], full[1][qs], full[2][qs] = seg, local, score
        results.append(tuple(full))
    st["fallback_queries"] = int(sum(len(qs) for _, qs in fallback))
    return run.finish(queries, nq, results)
