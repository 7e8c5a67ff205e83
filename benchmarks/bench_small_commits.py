"""Many small commits: 1,000 adds of 10 rows into one collection (issue 20's workload),
then what a reader pays for that history against the same rows compacted.

Reports add latency (mean and median of the first and last 100 adds), bytes of
manifests against bytes of data files (segments + deletion files), segments left,
``open()`` and ``versions()`` (median over fresh handles), the first SQL filter on a
fresh handle, and flat / funnel search latency, each against a compacted copy.

    python benchmarks/bench_small_commits.py                 # 1,000 x 10 rows, D=64
    python benchmarks/bench_small_commits.py --adds 200      # shorter
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402


def dir_bytes(path, sub):
    p = os.path.join(path, sub)
    return sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))


def build(path, adds, rows, d, seed=0):
    rng = np.random.default_rng(seed)
    col = nv.Collection.create(path, dim=d, dtype="float16", metric="cosine", binary=True,
                               schema={"lang": "string", "year": "int32"})
    times, merged = [], []
    for i in range(adds):
        x = rng.standard_normal((rows, d)).astype(np.float32)
        meta = {"lang": rng.choice(["en", "de", "fr"], rows).tolist(),
                "year": rng.integers(2000, 2025, rows).astype(np.int32)}
        v = col.version
        t0 = time.perf_counter()
        col.add(x, ids=np.arange(i * rows, (i + 1) * rows), metadata=meta)
        times.append((time.perf_counter() - t0) * 1e3)
        merged.append(col.version - v > 1)  # the add's commit was followed by a merge
    col.close()
    return np.array(times), np.array(merged)


def median_ms(fn, repeats):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ts))


def reader_costs(path, d, repeats):
    """open / versions / first SQL filter on fresh handles; search on one handle."""
    out = {}

    def opened():
        c = nv.open(path, read_only=True)
        c.close()

    out["open_ms"] = median_ms(opened, repeats)
    col = nv.open(path, read_only=True)
    out["segments"] = len(col.versions()[-1:]) and col.versions()[-1]["segments"]
    col.close()

    def versions():
        c = nv.open(path, read_only=True)
        t0 = time.perf_counter()
        c.versions()
        dt = time.perf_counter() - t0
        c.close()
        return dt

    out["versions_ms"] = float(np.median([versions() for _ in range(repeats)])) * 1e3
    q = np.random.default_rng(99).standard_normal((1, d)).astype(np.float32)

    def first_filter():
        c = nv.open(path, read_only=True)
        t0 = time.perf_counter()
        c.search(q, k=10, mode="flat", filter="lang = 'en' AND year >= 2010")
        dt = time.perf_counter() - t0
        c.close()
        return dt

    out["first_sql_filter_ms"] = float(np.median([first_filter() for _ in range(repeats)])) * 1e3
    col = nv.open(path, read_only=True)
    for mode in ("flat", "funnel"):
        out[f"search_{mode}_ms"] = H.timeit(lambda: col.search(q, k=10, mode=mode), repeats=max(repeats, 20))[
            "median_ms"]
    col.close()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adds", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--name", default="small_commits")
    ap.add_argument("--note", default="")
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench_small_commits_")
    try:
        path = os.path.join(root, "many.nv")
        # DuckDB's connection and the first-use imports are not part of any figure
        warm = nv.Collection.create(None, dim=args.d, schema={"lang": "string"})
        warm.add(np.ones((2, args.d)), metadata={"lang": ["en", "de"]})
        warm.count(filter="lang = 'en'")
        t, merged = build(path, args.adds, args.rows, args.d)
        n100 = min(100, len(t))
        plain = t[~merged]
        row = {"case": f"{args.adds} adds of {args.rows}",
               "add_first100_mean_ms": float(t[:n100].mean()), "add_last100_mean_ms": float(t[-n100:].mean()),
               "add_first100_median_ms": float(np.median(t[:n100])),
               "add_last100_median_ms": float(np.median(t[-n100:])),
               "add_max_ms": float(t.max()), "adds_with_merge": int(merged.sum()),
               "plain_add_first100_median_ms": float(np.median(plain[:n100])),
               "plain_add_last100_median_ms": float(np.median(plain[-n100:])),
               "manifest_bytes": dir_bytes(path, "manifests"),
               "data_bytes": dir_bytes(path, "segments") + dir_bytes(path, "deletions")}
        row.update(reader_costs(path, args.d, args.repeats))
        cpath = os.path.join(root, "compacted.nv")
        shutil.copytree(path, cpath)
        c = nv.open(cpath)
        c.compact()
        c.close()
        comp = {"case": "compacted copy", "manifest_bytes": dir_bytes(cpath, "manifests"),
                "data_bytes": dir_bytes(cpath, "segments") + dir_bytes(cpath, "deletions")}
        comp.update(reader_costs(cpath, args.d, args.repeats))
        rows = [row, comp]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().strip()
    cols = ["case", "add_first100_mean_ms", "add_last100_mean_ms", "add_first100_median_ms",
            "add_last100_median_ms", "add_max_ms", "adds_with_merge", "plain_add_first100_median_ms",
            "plain_add_last100_median_ms", "manifest_bytes", "data_bytes", "segments", "open_ms",
            "versions_ms", "first_sql_filter_ms", "search_flat_ms", "search_funnel_ms"]
    print(f"adds={args.adds} rows={args.rows} d={args.d} float16 + codes; loadavg {load}")
    print(H.markdown_table(rows, cols))
    meta = {"adds": args.adds, "rows": args.rows, "d": args.d, "loadavg": load, "note": args.note}
    print("saved", H.save(args.name, rows, meta))
    return rows


if __name__ == "__main__":
    main()
