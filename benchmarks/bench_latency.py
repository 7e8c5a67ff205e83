"""Single-query latency of the CPU ops on small and mid-sized data: the case of an
application that embeds nestvec as its index and asks one query at a time.

    python benchmarks/bench_latency.py [--calls 300]
    python benchmarks/bench_latency.py --dense-n "" --hamming-n "" --collection-n 1000,10000 \
        --calls 1000 --name bench_latency_overhead     # per-call overhead of Collection.search

Per call, in microseconds (median and min over --calls back-to-back calls after a
warm-up), the whole Python call included: dense cosine top-10 over float16 rows of 384
values (MiniLM's width) and Hamming top-10 over 256-bit codes, at several N; nestvec on
all cores and on one, against NumPy and FAISS in the same run; and Collection.search
(flat / funnel) at the same sizes, and the same searches through Collection.searcher. Writes benchmarks/results/bench_latency.json.
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

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_hamming.py

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402
import nestvec.ops as ops  # noqa: E402
from nestvec import _backend

D, BITS, K = 384, 256, 10


def per_call_us(fn, calls: int) -> dict:
    t_end = time.perf_counter() + H.WARM_S
    while time.perf_counter() < t_end:
        fn()
    ts = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e6)
    return {"median_us": round(statistics.median(ts), 1), "min_us": round(min(ts), 1)}


def with_threads(n, fn):
    def run():
        before = _backend._C.get_num_threads()
        _backend._C.set_num_threads(n)
        try:
            return fn()
        finally:
            _backend._C.set_num_threads(before)
    return run


def numpy_cosine(db32n, q, k):
    s = db32n @ (q / np.linalg.norm(q))
    part = np.argpartition(-s, k)[:k]
    return part[np.argsort(-s[part], kind="stable")]


def numpy_hamming(codes, q, k):
    d = np.bitwise_count(np.bitwise_xor(codes, q)).sum(axis=1, dtype=np.int32)
    part = np.argpartition(d, k)[:k]
    return part[np.lexsort((part, d[part]))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense-n", default="1000,10000,100000")
    p.add_argument("--hamming-n", default="10000,100000,1000000")
    p.add_argument("--collection-n", default="10000,100000")
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--skip", default="", help="comma list of: numpy,faiss,collection")
    p.add_argument("--name", default="bench_latency",
                   help="results file name (a partial run, e.g. --dense-n '' --hamming-n '' "
                        "--collection-n 1000 for the per-call overhead, keeps the full table's JSON)")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    faiss = None
    if "faiss" not in skip:
        try:
            import faiss
        except ImportError:
            print("  (faiss not installed: skipped)")
    rng = np.random.default_rng(0)
    nt = _backend._C.get_num_threads()
    rows = []

    def add(op, n, method, fn, calls=None):
        r = {"op": op, "n": n, "method": method, **per_call_us(fn, calls or args.calls)}
        rows.append(r)
        print(f"  {op} n={n} {method}: {r['median_us']} us", flush=True)

    for n in map(int, filter(None, args.dense_n.split(","))):
        db = rng.standard_normal((n, D), dtype=np.float32).astype(np.float16)
        q = rng.standard_normal(D, dtype=np.float32)
        calls = max(30, min(args.calls, int(3e7 / n)))
        add("dense f16 cosine", n, f"nestvec ({nt} threads)",
            lambda: ops.dense_topk(db, q, K, backend="cpu"), calls)
        add("dense f16 cosine", n, "nestvec (1 thread)",
            with_threads(1, lambda: ops.dense_topk(db, q, K, backend="cpu")), calls)
        db32n = db.astype(np.float32)
        db32n /= np.linalg.norm(db32n, axis=1, keepdims=True)
        if "numpy" not in skip:
            add("dense f16 cosine", n, "NumPy f32 (normalised copy)", lambda: numpy_cosine(db32n, q, K), calls)
        if faiss is not None:
            idx = faiss.IndexFlatIP(D)
            idx.add(db32n)
            qn = (q / np.linalg.norm(q))[None, :]
            add("dense f16 cosine", n, "FAISS IndexFlatIP f32 (normalised copy)", lambda: idx.search(qn, K), calls)

    for n in map(int, filter(None, args.hamming_n.split(","))):
        codes = rng.integers(0, 256, (n, BITS // 8), dtype=np.uint8)
        qc = rng.integers(0, 256, BITS // 8, dtype=np.uint8)
        calls = max(30, min(args.calls, int(1e8 / n)))
        add(f"hamming {BITS} bit", n, f"nestvec ({nt} threads)",
            lambda: ops.hamming_topk(codes, qc, K, backend="cpu"), calls)
        add(f"hamming {BITS} bit", n, "nestvec (1 thread)",
            with_threads(1, lambda: ops.hamming_topk(codes, qc, K, backend="cpu")), calls)
        if "numpy" not in skip:
            add(f"hamming {BITS} bit", n, "NumPy bitwise_count", lambda: numpy_hamming(codes, qc, K), calls)
        if faiss is not None:
            bidx = faiss.IndexBinaryFlat(BITS)
            bidx.add(codes)
            add(f"hamming {BITS} bit", n, "FAISS IndexBinaryFlat", lambda: bidx.search(qc[None, :], K), calls)

    if "collection" not in skip:
        for n in map(int, filter(None, args.collection_n.split(","))):
            x = rng.standard_normal((n, D), dtype=np.float32)
            q = rng.standard_normal(D, dtype=np.float32)
            calls = max(30, min(args.calls, int(3e7 / n)))
            with tempfile.TemporaryDirectory() as tmp:
                col = nv.Collection.create(str(Path(tmp) / "c"), dim=D)
                for a in range(0, n, 50000):
                    col.add(x[a:a + 50000])
                for mode in ("flat", "funnel"):
                    add("Collection.search", n, f"nestvec {mode}",
                        lambda mode=mode: col.search(q, k=K, mode=mode), calls)
                    s = col.searcher(k=K, mode=mode)  # arguments and plan kept, NumPy answer
                    add("Collection.searcher", n, f"nestvec {mode}", lambda s=s: s.search(q), calls)
                col.close()

    print(f"\nsingle-query latency, microseconds per call (median), k={K}; {H.machine().get('cpu')}, "
          f"{os.cpu_count()} cores")
    print(H.markdown_table(rows, ["op", "n", "method", "median_us", "min_us"]))
    path = H.save(args.name, rows, meta={"args": vars(args), "threads": nt, "nestvec": nv.__file__,
                                         "loadavg": os.getloadavg()})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
