"""Per-query fixed cost of a host search over several segments: each search stage
(Hamming shortlist, ivf probe of the lists, exact rescoring, flat scan) as one native
call over every segment (csrc/cpu/multiseg.cpp) against the per-segment path (one op
call per segment and a merge in NumPy: what a swapped kernel still takes, and what
every host search took before), in the same process, alternating.

    python benchmarks/bench_multiseg.py --collection /tmp/seg8/col.nv --queries /tmp/seg8/q.npy

--collection: an existing collection with several segments and an ivf index (the
README's figure: 1M x 384 float16 rows of bench_collection.data_chunks(clusters=1024)
in 8 segments of <= 100 MiB, `create_index("ivf")` at its defaults: 4,032 lists, nprobe
6); without it only the 1k-row rows of bench_latency run (one segment, flat and funnel,
its per-call overhead). Per case: median / min microseconds per call over --calls
single-query calls, after a warm-up, in --rounds rounds whose order alternates; the
answers of both paths are checked equal. Writes benchmarks/results/<--name>.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402
from nestvec.collection import hostcalls  # noqa: E402
from nestvec.collection import search as search_mod  # noqa: E402

_NATIVE = hostcalls.native_segments
_SMALL = search_mod._SMALL_RESULT


def variant(one_call: bool) -> None:
    """one_call: the multi-segment ops; else the per-segment path and the result's
    per-segment id gather (the code before them)."""
    hostcalls.native_segments = _NATIVE if one_call else (lambda: False)
    search_mod._SMALL_RESULT = _SMALL if one_call else 0


def per_call(fn, qs, calls: int) -> list:
    for j in range(min(50, len(qs))):
        fn(qs[j])
    ts = []
    for j in range(calls):
        q = qs[j % len(qs)]
        t0 = time.perf_counter()
        fn(q)
        ts.append((time.perf_counter() - t0) * 1e6)
    return ts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", default=None)
    p.add_argument("--queries", default=None, help=".npy of float32 queries for --collection")
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--name", default="bench_multiseg")
    args = p.parse_args()
    load0 = os.getloadavg()
    print("loadavg", load0, flush=True)

    cases = []  # (case, fn, queries)
    rng = np.random.default_rng(0)
    tmp = tempfile.TemporaryDirectory()
    small = nv.Collection.create(str(Path(tmp.name) / "c"), dim=384)  # bench_latency's 1k rows
    small.add(rng.standard_normal((1000, 384), dtype=np.float32))
    sq = rng.standard_normal((64, 384)).astype(np.float32)
    for mode in ("flat", "funnel"):
        cases.append((f"1k rows, 1 segment, {mode}", lambda q, mode=mode: small.search(q, k=10, mode=mode), sq))
    big = None
    if args.collection:
        big = nv.Collection.open(args.collection, read_only=True)
        bq = np.load(args.queries).astype(np.float32) if args.queries else \
            rng.standard_normal((256, big._snapshot().manifest["dim"])).astype(np.float32)
        nseg = len(big._snapshot().segments)
        rows = sum(s.n for s in big._snapshot().segments)
        for mode in ("ivf", "funnel"):
            cases.append((f"{rows} rows, {nseg} segments, {mode}",
                          lambda q, mode=mode: big.search(q, k=10, mode=mode), bq))

    for name, fn, qs in cases:  # both paths give the same answers
        for q in qs[:20]:
            variant(True)
            a = fn(q)
            variant(False)
            b = fn(q)
            assert a.equals(b), name
    times = {(name, v): [] for name, _, _ in cases for v in ("one call", "per segment")}
    for r in range(args.rounds):
        order = [True, False] if r % 2 == 0 else [False, True]
        for name, fn, qs in cases:
            calls = args.calls if "1k" in name else max(100, args.calls // 2)
            for one in order:
                variant(one)
                times[(name, "one call" if one else "per segment")] += per_call(fn, qs, calls)
    variant(True)
    rows = []
    for name, _, _ in cases:
        before = statistics.median(times[(name, "per segment")])
        after = statistics.median(times[(name, "one call")])
        for v in ("per segment", "one call"):
            ts = times[(name, v)]
            rows.append({"case": name, "path": v, "median_us": round(statistics.median(ts), 1),
                         "min_us": round(min(ts), 1), "calls": len(ts)})
        rows[-1]["speedup"] = round(before / after, 2)
    load1 = os.getloadavg()
    print("loadavg", load1)
    print(f"\nsingle query, k=10, microseconds per call; {H.describe()}")
    print(H.markdown_table(rows, ["case", "path", "median_us", "min_us", "calls", "speedup"]))
    path = H.save(args.name, rows, meta={"args": vars(args), "loadavg_before": load0, "loadavg_after": load1,
                                         "threads": nv._backend._C.get_num_threads()})
    print("wrote", path)
    small.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
