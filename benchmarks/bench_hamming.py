"""Hamming top-k on the CPU: nestvec vs FAISS IndexBinaryFlat vs USearch exact vs NumPy.

    python benchmarks/bench_hamming.py [--n 1000000] [--repeats 5]

One table, every library in the same run on the same codes; medians after warm-up.
Writes benchmarks/results/bench_hamming.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

# FAISS's OpenMP threads otherwise spin for a while after each search and steal the
# cores from whatever is timed next; passive waiting keeps the libraries from
# disturbing each other's timings.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec.ops as ops  # noqa: E402

TARGETS = {(1024, 1): 2.5, (1024, 16): 8, (1024, 256): 100, (256, 1): 0.7, (256, 16): 3, (256, 256): 30}


def numpy_topk(codes, queries, k):
    out = []
    for q in queries:
        d = np.bitwise_count(np.bitwise_xor(codes, q)).sum(axis=1, dtype=np.int32)
        part = np.argpartition(d, k)[:k]
        out.append(part[np.lexsort((part, d[part]))])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--bits", default="1024,256")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip", default="", help="comma list of: faiss,usearch,numpy")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    rng = np.random.default_rng(0)
    rows = []
    for bits in map(int, args.bits.split(",")):
        nbytes = bits // 8
        codes = rng.integers(0, 256, (args.n, nbytes), dtype=np.uint8)
        index = None
        if "faiss" not in skip:
            try:
                import faiss

                index = faiss.IndexBinaryFlat(bits)
                index.add(codes)
            except ImportError:
                index = None
        for b in map(int, args.batches.split(",")):
            queries = rng.integers(0, 256, (b, nbytes), dtype=np.uint8)
            reps = args.repeats if b < 256 else max(3, args.repeats // 2 + 1)
            row = {"bits": bits, "batch": b, "n": args.n, "k": args.k,
                   "target_ms": TARGETS.get((bits, b))}
            ours = H.timeit(lambda: ops.hamming_topk(codes, queries, args.k), reps)
            row["nestvec_ms"] = ours["median_ms"]
            d_ours, i_ours = ops.hamming_topk(codes, queries, args.k)
            if index is not None:
                row["faiss_ms"] = H.timeit(lambda: index.search(queries, args.k), reps)["median_ms"]
                fd, _ = index.search(queries, args.k)
                row["faiss_same_dists"] = bool(np.array_equal(fd, d_ours))
            if "usearch" not in skip:
                try:
                    from usearch.index import MetricKind, ScalarKind, search

                    run = lambda: search(codes, queries, args.k, MetricKind.Hamming, exact=True,  # noqa: E731
                                         dtype=ScalarKind.B1)
                    row["usearch_ms"] = H.timeit(run, 3 if b >= 16 else reps, warmup=1)["median_ms"]
                except ImportError:
                    pass
            if "numpy" not in skip and hasattr(np, "bitwise_count") and b <= 16:
                row["numpy_ms"] = H.timeit(lambda: numpy_topk(codes, queries, args.k),
                                           3 if b > 1 else reps)["median_ms"]
            for base in ("faiss_ms", "usearch_ms", "numpy_ms"):
                if row.get(base):
                    row["x_vs_" + base[:-3]] = row[base] / row["nestvec_ms"]
            row["meets_target"] = row["target_ms"] is not None and row["nestvec_ms"] <= row["target_ms"]
            rows.append(row)
            print(f"bits={bits} batch={b}: " + ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                if k.endswith("_ms")), flush=True)
    cols = ["bits", "batch", "nestvec_ms", "faiss_ms", "usearch_ms", "numpy_ms", "x_vs_faiss",
            "target_ms", "meets_target"]
    print()
    print(f"N={args.n:,}, k={args.k}, median ms of {args.repeats} after warm-up; machine: "
          f"{H.machine().get('cpu')} x{H.machine().get('cpu_count')}")
    print(H.markdown_table(rows, cols))
    path = H.save("bench_hamming", rows, vars(args))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
