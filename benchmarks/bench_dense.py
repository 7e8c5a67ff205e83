"""dense_topk on CPU against NumPy, FAISS and torch, one table from one run.

    python benchmarks/bench_dense.py [--n 1000000] [--repeats 3] [--batches 1,16,256]

Case "full": N x 768 stored float16, cosine, k=10. nestvec reads the float16 rows and
computes norms on the fly; the baselines search a normalised float32 copy (NumPy
matmul + argpartition, torch mm + topk, FAISS IndexFlatIP) or FAISS's own fp16
scalar-quantised copy (IndexScalarQuantizer QT_fp16, inner product).
Case "prefix256": the first 256 of the stored 768 values (Matryoshka). nestvec reads
the prefix in place; NumPy works on a slice view of the float32 copy and re-normalises
it per call; FAISS needs a normalised contiguous copy of the prefix, whose build time
is reported in the `build_s` column.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec.ops as ops  # noqa: E402
from nestvec import _backend

TARGETS = {("full", 1): 30, ("full", 16): 100, ("full", 256): 900,
           ("prefix256", 1): 12, ("prefix256", 16): 40}


def numpy_topk(x, q, k):
    s = q @ x.T
    part = np.argpartition(-s, k, axis=1)[:, :k]
    top = np.take_along_axis(s, part, 1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(top, order, 1), np.take_along_axis(part, order, 1)


def numpy_prefix_topk(xview, q, k):
    """Cosine on a strided prefix view: norms must be recomputed (no stored prefix norms)."""
    s = q @ xview.T
    s /= np.sqrt(np.einsum("ij,ij->i", xview, xview))[None, :]
    part = np.argpartition(-s, k, axis=1)[:, :k]
    return np.take_along_axis(s, part, 1), part


def recall(idx, ref):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(idx, ref)]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeats-large", type=int, default=2, help="repeats at batch >= 256")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--prefix-batches", default="1,16")
    p.add_argument("--skip", default="", help="comma list of baselines to skip: numpy,faiss,torch")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    n, d, k = args.n, args.d, args.k
    rng = np.random.default_rng(0)
    print(f"building {n} x {d} ...", flush=True)
    x32 = rng.standard_normal((n, d), dtype=np.float32)
    x16 = x32.astype(np.float16)
    x32 = x16.astype(np.float32)  # baselines see exactly the stored values
    xn = x32 / np.linalg.norm(x32, axis=1, keepdims=True)
    qs = {b: rng.standard_normal((b, d)).astype(np.float32) for b in
          sorted(set(map(int, args.batches.split(","))) | set(map(int, args.prefix_batches.split(","))))}
    rows = []

    def add(case, batch, impl, fn, ref=None, build_s=None):
        last = {}

        def run():
            last["out"] = fn()

        reps = args.repeats if batch < 256 else max(1, min(args.repeats, args.repeats_large))
        t = H.timeit(run, repeats=reps, warmup=1)
        out = last["out"]
        rec = recall(np.asarray(out[1]), ref) if ref is not None else None
        row = dict(case=case, batch=batch, impl=impl, median_ms=t["median_ms"], min_ms=t["min_ms"],
                   recall=rec, build_s=build_s, target_ms=TARGETS.get((case, batch)) if impl.startswith("nestvec") else None)
        rows.append(row)
        print(f"  {case:10s} b={batch:<4d} {impl:28s} {t['median_ms']:9.1f} ms (min {t['min_ms']:.1f})"
              + (f" recall {rec:.3f}" if rec is not None else ""), flush=True)
        return out

    faiss = None
    if "faiss" not in skip:
        try:
            import faiss
        except ImportError:
            print("  (faiss not installed: skipped)")
    torch = None
    if "torch" not in skip:
        try:
            import torch
        except ImportError:
            pass

    # ---- full width
    fidx = {}
    if faiss is not None:
        t0 = time.perf_counter()
        flat = faiss.IndexFlatIP(d)
        flat.add(xn)
        fidx["flat"] = (flat, time.perf_counter() - t0)
        t0 = time.perf_counter()
        sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        sq.train(xn[:1000])
        sq.add(xn)
        fidx["sq"] = (sq, time.perf_counter() - t0)
    xt = torch.from_numpy(xn) if torch is not None else None
    for b in map(int, args.batches.split(",")):
        q = qs[b]
        ref = add("full", b, "nestvec cpu f16", lambda: ops.dense_topk(x16, q, k, backend="cpu"))[1]
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        if "numpy" not in skip:
            add("full", b, "numpy f32 matmul+argpart", lambda: numpy_topk(xn, qn, k), ref)
        if torch is not None:
            qt = torch.from_numpy(qn)
            add("full", b, "torch f32 mm+topk", lambda: (lambda r: (r.values, r.indices.numpy()))(
                torch.topk(qt @ xt.T, k, dim=1)), ref)
        if faiss is not None:
            add("full", b, "faiss IndexFlatIP f32", lambda: fidx["flat"][0].search(qn, k), ref,
                build_s=fidx["flat"][1])
            add("full", b, "faiss SQ fp16", lambda: fidx["sq"][0].search(qn, k), ref,
                build_s=fidx["sq"][1])
    fidx.clear()

    # ---- prefix 256 of the stored 768
    dp = 256
    view = x32[:, :dp]
    fprefix = None
    if faiss is not None:
        t0 = time.perf_counter()
        cp = np.ascontiguousarray(view)
        cp /= np.linalg.norm(cp, axis=1, keepdims=True)
        fprefix = faiss.IndexFlatIP(dp)
        fprefix.add(cp)
        build = time.perf_counter() - t0
        del cp
    for b in map(int, args.prefix_batches.split(",")):
        q = qs[b]
        ref = add("prefix256", b, "nestvec cpu f16 (in place)",
                  lambda: ops.dense_topk(x16, q, k, dim=dp, backend="cpu"))[1]
        qp = q[:, :dp] / np.linalg.norm(q[:, :dp], axis=1, keepdims=True)
        if "numpy" not in skip:
            add("prefix256", b, "numpy f32 slice view", lambda: numpy_prefix_topk(view, qp, k), ref)
        if fprefix is not None:
            add("prefix256", b, "faiss FlatIP normalised copy", lambda: fprefix.search(qp, k), ref,
                build_s=build)
    fprefix = None

    cols = ["case", "batch", "impl", "median_ms", "min_ms", "target_ms", "recall", "build_s"]
    print()
    print(H.markdown_table(rows, cols))
    path = H.save("bench_dense", rows, {"n": n, "d": d, "k": k, "repeats": args.repeats,
                                        "threads": _backend._C.get_num_threads() if _backend._C else None})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
