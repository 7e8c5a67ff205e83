"""Batch-1 ivf searcher latency with the application busy between queries.

    python benchmarks/bench_ann_gap.py --n 10000000 --d 384 --data-dir /tmp/s16/ann10m
    NESTVEC_NUM_THREADS=1 python benchmarks/bench_ann_gap.py ...   # the one-thread baseline

bench_ann.py times searches back to back, when the thread pool's worker is still
spinning from the call before. An application does its own work between searches, and
after ~200 us without a call the worker sleeps: a single query that splits its stages
over the pool then meets a sleeping worker. This times each search call alone, after a
busy gap of --gap-us in Python before every call and with no gap (median of three 1 s
windows each, after 1,000 warm-up queries), on a collection bench_ann.py built, the
searcher at its default. Writes benchmarks/results/bench_ann_gap_<n>x<d>.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402


def per_call_us(search, q, gap_s: float) -> float:
    windows = []
    for _ in range(3):
        total, calls = 0.0, 0
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            j = calls % len(q)
            if gap_s:
                until = time.perf_counter() + gap_s
                while time.perf_counter() < until:
                    pass
            t0 = time.perf_counter()
            search(q[j:j + 1])
            total += time.perf_counter() - t0
            calls += 1
        windows.append(total / calls * 1e6)
    return statistics.median(windows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    H.add_ann_data_args(p)
    p.add_argument("--gap-us", type=float, default=500)
    args = p.parse_args(argv)
    work = Path(args.data_dir)
    q = np.load(work / f"synth-{args.n}x{args.d}-c{args.clusters}.q.npy").astype(np.float32)
    col = nv.open(str(work / f"col-{args.n}x{args.d}.nv"), read_only=True)
    s = col.searcher(k=10, mode="ivf")
    for j in range(len(q)):
        s.search(q[j:j + 1])
    row = {"threads": nv.get_num_threads(), "gap_us": args.gap_us,
           "back_to_back_us": round(per_call_us(s.search, q, 0.0), 1),
           "after_gap_us": round(per_call_us(s.search, q, args.gap_us * 1e-6), 1)}
    print(f"threads {row['threads']}: back to back {row['back_to_back_us']} us a call, "
          f"after a {args.gap_us:.0f} us gap {row['after_gap_us']} us")
    H.save(f"bench_ann_gap_{args.n}x{args.d}", [row], {"rows": args.n, "dim": args.d, "searcher": "default"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
