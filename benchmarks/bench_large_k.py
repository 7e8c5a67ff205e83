"""Large k on the CPU: what k = 10,000 and 20,000 cost against the fused path's k = 4096
(and k = 10), for dense_topk and hamming_topk, with FAISS at the same k in the same run.

    python benchmarks/bench_large_k.py [--n 1000000] [--dim 384] [--repeats 5]

Dense: float16 rows, cosine; Hamming: sign codes of the same rows (dim bits). Above
k = 4096 the CPU kernels run in query slices (their selectors grow with k); batch 16
at k = 10,000 is one slice. Writes benchmarks/results/bench_large_k.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--ks", default="10,4096,10000,20000")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--no-collection", action="store_true",
                   help="skip the collection rows (funnel shortlists of 1,000 and 10,470)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    db = x.astype(np.float16)
    codes = np.packbits(x > 0, axis=1)
    del x
    faiss = None
    if not args.no_faiss:
        try:
            import faiss
        except ImportError:
            faiss = None
    flat = binflat = None
    if faiss is not None:
        xf = db.astype(np.float32)
        xf /= np.linalg.norm(xf, axis=1, keepdims=True)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(xf)
        del xf
        binflat = faiss.IndexBinaryFlat(args.dim)
        binflat.add(codes)
    rows = []
    for b in map(int, args.batches.split(",")):
        q = rng.standard_normal((b, args.dim), dtype=np.float32)
        qc = np.packbits(q > 0, axis=1)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        for k in map(int, args.ks.split(",")):
            row = {"n": args.n, "dim": args.dim, "batch": b, "k": k}
            row["dense_ms"] = H.timeit(lambda: nv.dense_topk(db, q, k), args.repeats)["median_ms"]
            row["hamming_ms"] = H.timeit(lambda: nv.hamming_topk(codes, qc, k), args.repeats)["median_ms"]
            if flat is not None:
                row["faiss_flatip_ms"] = H.timeit(lambda: flat.search(qn, k), args.repeats)["median_ms"]
                row["faiss_binary_ms"] = H.timeit(lambda: binflat.search(qc, k), args.repeats)["median_ms"]
            rows.append(row)
            print(row, flush=True)
    for r in rows:  # cost relative to the fused path's k = 4096 at the same batch
        base = next((s for s in rows if s["batch"] == r["batch"] and s["k"] == 4096), None)
        if base:
            r["dense_vs_k4096"] = r["dense_ms"] / base["dense_ms"]
            r["hamming_vs_k4096"] = r["hamming_ms"] / base["hamming_ms"]
    if not args.no_collection:
        rows += collection_rows(db, args, rng)
    cols = ["batch", "k", "dense_ms", "dense_vs_k4096", "faiss_flatip_ms", "hamming_ms", "hamming_vs_k4096",
            "faiss_binary_ms"]
    print(H.markdown_table([r for r in rows if "mode" not in r], cols))
    print(H.markdown_table([r for r in rows if "mode" in r], ["batch", "k", "rescore", "shortlist", "mode",
                                                            "search_ms"]))
    with open("/proc/loadavg") as f:
        load = f.read().strip()
    print("loadavg", load)
    path = H.save("bench_large_k", rows, {"args": vars(args), "loadavg": load,
                                          "threads": nv.get_num_threads()})
    print("wrote", path)


def collection_rows(db, args, rng) -> list:
    """Collection.search on the same rows (in memory, one segment): the funnel at the
    issue's k = 1047, rescore 10 (a shortlist of 10,470, beyond the fused k) against k =
    100 (shortlist 1,000), and exact flat search at both k."""
    col = nv.Collection.create(None, dim=args.dim, dtype="float16")
    col.add(db)
    out = []
    for b in map(int, args.batches.split(",")):
        q = rng.standard_normal((b, args.dim), dtype=np.float32)
        for k, mode in [(100, "funnel"), (1047, "funnel"), (100, "flat"), (1047, "flat")]:
            t = H.timeit(lambda: col.search(q, k=k, mode=mode, rescore=10), args.repeats)
            row = {"n": args.n, "dim": args.dim, "batch": b, "k": k, "rescore": 10,
                   "shortlist": k * 10 if mode == "funnel" else None, "mode": mode,
                   "search_ms": t["median_ms"]}
            out.append(row)
            print(row, flush=True)
    col.close()
    return out


if __name__ == "__main__":
    main()
