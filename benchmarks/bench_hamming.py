"""Hamming top-k on the CPU: nestvec vs FAISS IndexBinaryFlat vs USearch exact vs NumPy.

    python benchmarks/bench_hamming.py [--n 1000000] [--repeats 5] [--isa all]
    FAISS_OPT_LEVEL=avx2 NESTVEC_ISA=avx2 python benchmarks/bench_hamming.py   # AVX2 only

One table, every library in the same run on the same codes; medians after warm-up.
nestvec runs under every ISA given by --isa (default "all": each SIMD ISA this CPU
runs, so an AVX-512 machine gives an avx2 and an avx512 row); the baselines run once.
Batch-1 rows also show the floor: a bare read of the same bytes by the same number of
threads in the same minutes (benchmarks/read_floor.cpp).
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
    p.add_argument("--skip", default="", help="comma list of: faiss,usearch,numpy,floor")
    p.add_argument("--isa", default="all", help="nestvec CPU ISAs: all, auto, or a list (avx2,avx512)")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    isas = H.cpu_isas(args.isa)
    rng = np.random.default_rng(0)
    rows = []
    print(H.describe(), flush=True)
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
        floor = None
        if "floor" not in skip:
            floor = H.read_floor(args.n, nbytes, [nbytes], offset=0)
            floor = floor and floor[nbytes]["median_ms"]
        for b in map(int, args.batches.split(",")):
            queries = rng.integers(0, 256, (b, nbytes), dtype=np.uint8)
            reps = args.repeats if b < 256 else max(3, args.repeats // 2 + 1)
            base = {"bits": bits, "batch": b, "n": args.n, "k": args.k, "target_ms": TARGETS.get((bits, b))}
            d_ref, i_ref = ops.hamming_topk(codes, queries, args.k)
            if index is not None:
                base["faiss_ms"] = H.timeit(lambda: index.search(queries, args.k), reps)["median_ms"]
                fd, _ = index.search(queries, args.k)
                base["faiss_same_dists"] = bool(np.array_equal(fd, d_ref))
            if "usearch" not in skip:
                try:
                    from usearch.index import MetricKind, ScalarKind, search

                    run = lambda: search(codes, queries, args.k, MetricKind.Hamming, exact=True,  # noqa: E731
                                         dtype=ScalarKind.B1)
                    base["usearch_ms"] = H.timeit(run, 3 if b >= 16 else reps, warmup=1)["median_ms"]
                except ImportError:
                    pass
            if "numpy" not in skip and hasattr(np, "bitwise_count") and b <= 16:
                base["numpy_ms"] = H.timeit(lambda: numpy_topk(codes, queries, args.k),
                                            3 if b > 1 else reps)["median_ms"]
            if b == 1 and floor:
                base["floor_ms"] = floor
            for isa in isas:
                with H.using_isa(isa):
                    row = dict(base, isa=isa)
                    row["nestvec_ms"] = H.timeit(lambda: ops.hamming_topk(codes, queries, args.k), reps)["median_ms"]
                    d_ours, i_ours = ops.hamming_topk(codes, queries, args.k)
                row["same_as_" + isas[0]] = bool(np.array_equal(d_ours, d_ref) and np.array_equal(i_ours, i_ref))
                for other in ("faiss_ms", "usearch_ms", "numpy_ms"):
                    if row.get(other):
                        row["x_vs_" + other[:-3]] = row[other] / row["nestvec_ms"]
                if row.get("floor_ms"):
                    row["x_floor"] = row["nestvec_ms"] / row["floor_ms"]
                row["meets_target"] = row["target_ms"] is not None and row["nestvec_ms"] <= row["target_ms"]
                rows.append(row)
                print(f"bits={bits} batch={b} isa={isa}: " + ", ".join(
                    f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                    if k.endswith("_ms") or k.startswith("x_")), flush=True)
    cols = ["bits", "batch", "isa", "nestvec_ms", "faiss_ms", "usearch_ms", "numpy_ms", "x_vs_faiss",
            "floor_ms", "x_floor", "target_ms", "meets_target"]
    print()
    print(f"N={args.n:,}, k={args.k}, median ms of {args.repeats} after warm-up")
    print(H.describe())
    print(H.markdown_table(rows, cols))
    path = H.save("bench_hamming", rows, vars(args))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
