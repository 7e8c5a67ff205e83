"""Per-query fixed cost of Collection.search (ivf at batch 1 and 16, the 1k-row flat /
funnel overhead rows of bench_latency) for two source trees, alternating.

A change to the Python around the kernels cannot be switched on and off inside one
process, so each round runs one worker process per tree (this checkout's ``python/``
and ``--baseline``, e.g. ``git archive <commit> python | tar -x -C /tmp/base`` with
the same ``_C`` module copied in), in alternating order; per case the median over all
rounds of the per-call microseconds. Every worker also hashes its answers to a fixed
set of queries: both trees must return identical tables.

    python benchmarks/bench_query_cost.py --baseline /tmp/base/python \\
        --collection /tmp/seg8/col.nv:/tmp/seg8/q.npy \\
        --collection /tmp/nv21/ann/col-200000x768.nv:/tmp/nv21/ann/synth-200000x768-c1024.q.npy

--collection PATH:QUERIES: an existing collection with an ivf index and a .npy of
float32 queries (docs/ann-benchmark-log.md: 1M x 384 f16 in 8 segments, and the
200k x 768 bench_ann collection). --stages: per tree, the microseconds of each stage
of an ivf search (perf_counter wrappers around the probe, the Hamming scan, the
rescoring, the result table, ...; the rest is "other Python"). Writes
benchmarks/results/<--name>.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent



def open_case(spec: str):
    """``COLLECTION:QUERIES.npy`` -> (the collection read-only, up to 512 float32
    queries, a label: rows x dim, segments)."""
    import numpy as np

    import nestvec as nv

    path, qpath = spec.split(":")
    col = nv.Collection.open(path, read_only=True)
    snap = col._snapshot()
    qs = np.load(qpath).astype(np.float32)[:512]
    return col, qs, f"{sum(s.n for s in snap.segments)} x {snap.manifest['dim']}, {len(snap.segments)} seg"


def _worker(args) -> None:
    import numpy as np

    import nestvec as nv

    rng = np.random.default_rng(0)
    tmp = tempfile.TemporaryDirectory()
    small = nv.Collection.create(str(Path(tmp.name) / "c"), dim=384)  # bench_latency's 1k rows
    small.add(rng.standard_normal((1000, 384), dtype=np.float32))
    sq = rng.standard_normal((64, 384)).astype(np.float32)
    cases = []  # (name, fn, queries, batch)
    for mode in ("flat", "funnel"):
        cases.append((f"1k rows, {mode}, batch 1", lambda q, mode=mode: small.search(q, k=10, mode=mode), sq, 1))
    for spec in args.collection:
        col, qs, label = open_case(spec)
        for b in (1, 16):
            cases.append((f"{label}, ivf, batch {b}", lambda q, col=col: col.search(q, k=10, mode="ivf"), qs, b))
    out = {"times": {}, "digest": {}}
    for name, fn, qs, b in cases:
        batches = [qs[j] for j in range(len(qs))] if b == 1 else \
            [qs[j:j + b] for j in range(0, len(qs) - b + 1, b)]
        h = hashlib.sha256()
        for q in batches[:32]:
            t = fn(q)
            for c in t.columns:
                h.update(c.to_numpy().tobytes())
        out["digest"][name] = h.hexdigest()
        for q in batches[:50]:
            fn(q)
        ts = []
        calls = args.calls if b == 1 else max(50, args.calls // 8)
        for j in range(calls):
            q = batches[j % len(batches)]
            t0 = time.perf_counter()
            fn(q)
            ts.append((time.perf_counter() - t0) * 1e6)
        out["times"][name] = ts
    small.close()
    tmp.cleanup()
    print(json.dumps(out))


def _stages(args) -> None:
    """Where one ivf search's time goes (this tree): perf_counter around each stage."""
    import collections

    from nestvec.collection import collection as cm
    from nestvec.collection import hostcalls
    from nestvec.collection import search as sm
    from nestvec.collection import validate as vd
    from nestvec.collection.indexes import ivf as ivfm
    from nestvec.collection.indexes import plan as planm

    acc = collections.defaultdict(float)

    def wrap(owner, attr, label):
        f = getattr(owner, attr)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                acc[label] += time.perf_counter() - t0
        setattr(owner, attr, timed)

    for owner, attr, label in ((ivfm.IvfCentroids, "probe", "centroid probe"),
                               (ivfm.IvfCentroids, "query_codes", "query codes"),
                               (hostcalls, "hamming_segments", "Hamming scan of the lists"),
                               (hostcalls, "dense_segments", "exact rescoring"),
                               (sm.SearchMixin, "_result", "result table"),
                               (vd, "queries", "query validation"),
                               (cm.Collection, "_masks", "masks"),
                               (planm, "IndexRun", "IndexRun")):
        wrap(owner, attr, label)
    rows = []
    for spec in args.collection:
        col, qs, label = open_case(spec)
        for b in (1, 16):
            batches = [qs[j] for j in range(len(qs))] if b == 1 else \
                [qs[j:j + b] for j in range(0, len(qs) - b + 1, b)]
            for q in batches[:100]:
                col.search(q, k=10, mode="ivf")
            acc.clear()
            calls = args.calls if b == 1 else max(50, args.calls // 8)
            t0 = time.perf_counter()
            for j in range(calls):
                col.search(batches[j % len(batches)], k=10, mode="ivf")
            total = (time.perf_counter() - t0) / calls * 1e6
            row = {"case": f"{label}, ivf, batch {b}", "search_us": round(total, 1)}
            row.update({k: round(v / calls * 1e6, 1) for k, v in acc.items()})
            row["other Python"] = round(total - sum(row[k] for k in acc), 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"stages": rows}))


def _run(tree: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--calls", str(args.calls)]
    for c in args.collection:
        cmd += ["--collection", c]
    env = dict(os.environ, PYTHONPATH=tree)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=False, help="python/ directory of the tree to compare against")
    p.add_argument("--collection", action="append", default=[], help="PATH:QUERIES.npy (repeatable)")
    p.add_argument("--calls", type=int, default=400, help="batch-1 calls per case and round (batch 16: 1/8)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--name", default="bench_query_cost")
    p.add_argument("--stages", action="store_true",
                   help="also time each stage of an ivf search in each tree (one process per tree)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stages-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args)
    if args.stages_worker:
        return _stages(args)
    sys.path.insert(0, str(HERE))
    import _harness as H

    trees = {"this tree": str(HERE.parent / "python")}
    if args.baseline:
        trees = {"baseline": args.baseline, **trees}
    load0 = os.getloadavg()
    print("loadavg", load0, flush=True)
    times, digests = {}, {}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for t in order:
            res = _run(trees[t], args)
            for name, ts in res["times"].items():
                times.setdefault((name, t), []).extend(ts)
                digests.setdefault(name, {}).setdefault(t, set()).add(res["digest"][name])
        print("round", r + 1, "loadavg", os.getloadavg(), flush=True)
    stages = {}
    if args.stages and args.collection:
        for t in trees:
            cmd = [sys.executable, __file__, "--stages-worker", "--calls", str(args.calls)]
            for c in args.collection:
                cmd += ["--collection", c]
            r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=trees[t]), capture_output=True,
                               text=True, check=True)
            stages[t] = json.loads(r.stdout.strip().splitlines()[-1])["stages"]
            print(t, "stages (us per search):")
            for row in stages[t]:
                print("  ", json.dumps(row))
    same = {name: len({x for s in d.values() for x in s}) == 1 for name, d in digests.items()}
    rows = []
    for name in digests:
        for t in trees:
            ts = times[(name, t)]
            rows.append({"case": name, "tree": t, "median_us": round(statistics.median(ts), 1),
                         "min_us": round(min(ts), 1), "calls": len(ts), "identical": same[name]})
        if args.baseline:
            rows[-1]["speedup"] = round(rows[-2]["median_us"] / rows[-1]["median_us"], 2)
    load1 = os.getloadavg()
    print("loadavg", load1)
    print(f"\nk=10, microseconds per call; {H.describe()}")
    print(H.markdown_table(rows, ["case", "tree", "median_us", "min_us", "calls", "identical", "speedup"]))
    path = H.save(args.name, rows, meta={"args": vars(args), "trees": trees, "loadavg_before": load0,
                                         "loadavg_after": load1, "stages_us": stages})
    print("wrote", path)
    if not all(same.values()):
        raise SystemExit("the trees' answers differ: " + ", ".join(n for n, ok in same.items() if not ok))


if __name__ == "__main__":
    main()
