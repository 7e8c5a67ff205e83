"""dense_topk on CPU against NumPy, FAISS and torch, one table from one run.

    python benchmarks/bench_dense.py [--n 1000000] [--repeats 3] [--batches 1,16,256] [--isa all]
    FAISS_OPT_LEVEL=avx2 NESTVEC_ISA=avx2 python benchmarks/bench_dense.py   # AVX2 only

nestvec runs under every ISA given by --isa (default "all": each SIMD ISA this CPU runs,
so an AVX-512 machine gives avx2 and avx512 rows); the baselines run once. Batch-1 cases
also get a "bare read" row: a read of the same bytes (whole rows, or the prefix of each)
by the same number of threads in the same minutes (benchmarks/read_floor.cpp), the floor
a memory-bound scan can reach.

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
    p.add_argument("--skip", default="", help="comma list of baselines to skip: numpy,faiss,torch,floor")
    p.add_argument("--isa", default="all", help="nestvec CPU ISAs: all, auto, or a list (avx2,avx512)")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    isas = H.cpu_isas(args.isa)
    print(H.describe(), flush=True)
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
                   isa=_backend._C.get_isa() if impl.startswith("nestvec") else None,
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
    def ours(case, b, impl, fn):
        """nestvec under each ISA; the first one's indices are the others' reference. Where
        the ISA has a two-pass route (bf16 / int16 first pass) and the batch takes it,
        also the float32 scan alone (NESTVEC_DENSE_BF16=0)."""
        ref = None
        for isa in isas:
            with H.using_isa(isa):
                two = getattr(_backend._C, "dense_two_pass", lambda: "")()
                tag = f" (two-pass, {two})" if two and b >= 16 else ""
                out = add(case, b, f"{impl} [{isa}]{tag}", fn, ref)
                ref = out[1] if ref is None else ref
                if tag:
                    _backend._C.set_dense_bf16(False)
                    try:
                        add(case, b, f"{impl} [{isa}] (float32 scan only)", fn, ref)
                    finally:
                        _backend._C.set_dense_bf16(True)
        return ref

    def floor(case, b, nbytes):
        """The bare read of the same bytes (batch 1: the scan's floor), and our ratio to it."""
        if b != 1 or "floor" in skip:
            return
        fl = H.read_floor(n, d * 2, [nbytes])
        if not fl:
            return
        ms = fl[nbytes]["median_ms"]
        rows.append(dict(case=case, batch=b, impl=f"bare read of the same bytes ({nbytes} B/row)",
                         median_ms=ms, min_ms=fl[nbytes]["best_ms"]))
        for r in rows:
            if r["case"] == case and r["batch"] == b and r["impl"].startswith("nestvec"):
                r["x_floor"] = r["median_ms"] / ms
        print(f"  {case:10s} b={b:<4d} {'bare read':28s} {ms:9.1f} ms", flush=True)

    for b in map(int, args.batches.split(",")):
        q = qs[b]
        ref = ours("full", b, "nestvec cpu f16", lambda: ops.dense_topk(x16, q, k, backend="cpu"))
        floor("full", b, d * 2)
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
        ref = ours("prefix256", b, "nestvec cpu f16 (in place)",
                   lambda: ops.dense_topk(x16, q, k, dim=dp, backend="cpu"))
        floor("prefix256", b, dp * 2)
        qp = q[:, :dp] / np.linalg.norm(q[:, :dp], axis=1, keepdims=True)
        if "numpy" not in skip:
            add("prefix256", b, "numpy f32 slice view", lambda: numpy_prefix_topk(view, qp, k), ref)
        if fprefix is not None:
            add("prefix256", b, "faiss FlatIP normalised copy", lambda: fprefix.search(qp, k), ref,
                build_s=build)
    fprefix = None

    for r in rows:  # ratios to the FAISS FlatIP row of the same case and batch
        fl = [x for x in rows if x["case"] == r["case"] and x["batch"] == r["batch"]
              and x["impl"].startswith("faiss") and "FlatIP" in x["impl"]]
        if fl and r["impl"].startswith("nestvec"):
            r["x_vs_faiss_flat"] = fl[0]["median_ms"] / r["median_ms"]
    cols = ["case", "batch", "impl", "median_ms", "min_ms", "x_vs_faiss_flat", "x_floor", "target_ms",
            "recall", "build_s"]
    print()
    print(H.describe())
    print(H.markdown_table(rows, cols))
    path = H.save("bench_dense", rows, {"n": n, "d": d, "k": k, "repeats": args.repeats,
                                        "threads": _backend._C.get_num_threads() if _backend._C else None})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
