"""dense_topk against NumPy, FAISS and torch on the CPU (or, with --device cuda,
nestvec's CUDA and Triton kernels against torch on a GPU), one table from one run.

    python benchmarks/bench_dense.py [--n 1000000] [--repeats 3] [--batches 1,16,256] [--isa all]
    FAISS_OPT_LEVEL=avx2 NESTVEC_ISA=avx2 python benchmarks/bench_dense.py   # AVX2 only
    python benchmarks/bench_dense.py --device cuda [--quick]                # GPU

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
GPU (--device cuda): 10M x 768 float16 (1M with --quick), cosine, k=10, at 1 / 128 /
1024 queries, and the 256-prefix (elastic) at 1 / 128; baselines torch mm + topk on a
normalised copy (norms precomputed: favours it) and, for the prefix, torch on the view
re-normalised per call. Results: bench_dense.json (bench_dense_cuda.json on a GPU).
"""
from __future__ import annotations

import argparse
import contextlib
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


def _np(a):
    return a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)


def same_rows(out, ref):
    """The reference's rows (recall 1 up to near-ties); the recall goes in the row."""
    r = recall(_np(out[1]), _np(ref[1]))
    return ("" if r >= 0.99 else f"recall {r:.3f}"), {"recall": r}


def run_cpu(args) -> list[dict]:
    skip = set(filter(None, args.skip.split(",")))
    isas = H.cpu_isas(args.isa)
    n, d, k = args.n, args.d, args.k
    rng = np.random.default_rng(0)
    print(f"building {n} x {d} ...", flush=True)
    x32 = rng.standard_normal((n, d), dtype=np.float32)
    x16 = x32.astype(np.float16)
    x32 = x16.astype(np.float32)  # baselines see exactly the stored values
    xn = x32 / np.linalg.norm(x32, axis=1, keepdims=True)
    qs = {b: rng.standard_normal((b, d)).astype(np.float32) for b in
          sorted(set(map(int, args.batches.split(","))) | set(map(int, args.prefix_batches.split(","))))}

    faiss = torch = None
    if "faiss" not in skip:
        try:
            import faiss
        except ImportError:
            print("  (faiss not installed: skipped)")
    if "torch" not in skip:
        try:
            import torch
        except ImportError:
            pass

    def two_pass(b) -> str:
        """The two-pass route (bf16 / int16 first pass) the active ISA takes at batch b."""
        two = getattr(_backend._C, "dense_two_pass", lambda: "")()
        least = getattr(_backend._C, "dense_two_pass_min_batch", lambda: 16)()
        return f" (two-pass, {two})" if two and least and b >= least else ""

    @contextlib.contextmanager
    def f32_scan_only():
        _backend._C.set_dense_bf16(False)
        try:
            yield
        finally:
            _backend._C.set_dense_bf16(True)

    def ours(label, dim=None):
        """nestvec under each ISA (the first is the others' reference) and, where the ISA
        has a two-pass route and the batch takes it, the float32 scan alone."""
        out = []
        for isa in isas:
            call = lambda c: lambda: ops.dense_topk(x16, c["_q"], k, dim=dim, backend="cpu")  # noqa: E731
            out += [H.Provider(f"{label} [{isa}]", call, isa=isa),
                    H.Provider(f"{label} [{isa}] (float32 scan only)",
                               lambda c, f=call: f(c) if two_pass(c["batch"]) else None,
                               isa=isa, context=f32_scan_only)]
        return out

    def reps(c):
        return args.repeats if c["batch"] < 256 else max(1, min(args.repeats, args.repeats_large))

    def floor(case, b, nbytes):
        """The bare read of the same bytes (batch 1: the scan's floor)."""
        if b != 1 or "floor" in skip:
            return []
        fl = H.read_floor(n, d * 2, [nbytes])
        if not fl:
            return []
        return [dict(case=case, batch=b, impl=f"bare read of the same bytes ({nbytes} B/row)",
                     median_ms=fl[nbytes]["median_ms"], min_ms=fl[nbytes]["best_ms"])]

    rows = []
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

    def unit(q):
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    full = ours("nestvec cpu f16")
    if "numpy" not in skip:
        full.append(H.Provider("numpy f32 matmul+argpart", lambda c: (lambda qn: lambda: numpy_topk(xn, qn, k))(
            unit(c["_q"]))))
    if torch is not None:
        full.append(H.Provider("torch f32 mm+topk", lambda c: (lambda qt: lambda: (
            lambda r: (r.values, r.indices.numpy()))(torch.topk(qt @ xt.T, k, dim=1)))(
            torch.from_numpy(unit(c["_q"])))))
    for key, name in (("flat", "faiss IndexFlatIP f32"), ("sq", "faiss SQ fp16")):
        if key in fidx:
            full.append(H.Provider(name, lambda c, key=key: (lambda qn: lambda: fidx[key][0].search(qn, k))(
                unit(c["_q"])), extra={"build_s": fidx[key][1]}))
    for b in map(int, args.batches.split(",")):
        rows += H.run([{"case": "full", "batch": b, "_q": qs[b]}], full, compare=same_rows, repeats=reps)
        rows += floor("full", b, d * 2)
    fidx.clear()

    # ---- prefix 256 of the stored 768
    dp = 256
    view = x32[:, :dp]
    prefix = ours("nestvec cpu f16 (in place)", dim=dp)

    def unit_prefix(q):
        return q[:, :dp] / np.linalg.norm(q[:, :dp], axis=1, keepdims=True)

    if "numpy" not in skip:
        prefix.append(H.Provider("numpy f32 slice view", lambda c: (
            lambda qp: lambda: numpy_prefix_topk(view, qp, k))(unit_prefix(c["_q"]))))
    if faiss is not None:
        t0 = time.perf_counter()
        cp = np.ascontiguousarray(view)
        cp /= np.linalg.norm(cp, axis=1, keepdims=True)
        fprefix = faiss.IndexFlatIP(dp)
        fprefix.add(cp)
        del cp
        prefix.append(H.Provider("faiss FlatIP normalised copy", lambda c: (
            lambda qp: lambda: fprefix.search(qp, k))(unit_prefix(c["_q"])),
            extra={"build_s": time.perf_counter() - t0}))
    for b in map(int, args.prefix_batches.split(",")):
        rows += H.run([{"case": "prefix256", "batch": b, "_q": qs[b]}], prefix, compare=same_rows,
                      repeats=reps)
        rows += floor("prefix256", b, dp * 2)

    for r in rows:
        if r["impl"].startswith("nestvec"):
            if not r["impl"].endswith("(float32 scan only)"):
                with H.using_isa(r["isa"]):
                    r["impl"] += two_pass(r["batch"])
            r["target_ms"] = TARGETS.get((r["case"], r["batch"]))
    key = lambda r: (r["case"], r["batch"])  # noqa: E731
    H.ratios(rows, "x_vs_faiss_flat", lambda r: r["impl"].startswith("faiss") and "FlatIP" in r["impl"], key=key)
    H.ratios(rows, "x_floor", lambda r: r["impl"].startswith("bare read"), key=key, over="row")
    for r in rows:
        if not r["impl"].startswith("nestvec"):
            r.pop("x_vs_faiss_flat", None)
            r.pop("x_floor", None)
    return rows


# --------------------------------------------------------------------------- GPU

GPU_TARGETS = {("full", 1): 5.2, ("full", 128): 6.5, ("full", 1024): 30.0,
               ("prefix256", 1): 2.0, ("prefix256", 128): 4.0}


def run_gpu(args, dev: str) -> list[dict]:
    import torch

    k, D, dp = args.k, 768, 256
    n = 600 if args.emulate else (1_000_000 if args.quick else 10_000_000)
    g = torch.Generator(device="cpu").manual_seed(0)
    if dev == "cuda":
        db = torch.randn(n, D, dtype=torch.float16, device=dev, generator=torch.Generator(dev).manual_seed(0))
    else:
        db = torch.randn(n, D, generator=g).half()
    dbn = db / torch.linalg.vector_norm(db, dim=1, keepdim=True, dtype=torch.float32).half()
    view = db[:, :dp]
    pdev = "cuda" if dev == "cuda" else "cpu"

    def torch_full(c, chunk=256):
        qn = (c["_q"] / c["_q"].norm(dim=1, keepdim=True)).half()

        def call():
            parts = [torch.topk((qn[j:j + chunk] @ dbn.T).float(), k, dim=1) for j in range(0, qn.shape[0], chunk)]
            return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])
        return call if c["case"] == "full" else None

    def torch_prefix(c):
        q = c["_q"]

        def call():
            qn = (q[:, :dp] / q[:, :dp].norm(dim=1, keepdim=True)).half()
            s = (qn @ view.T).float()
            s /= torch.linalg.vector_norm(view, dim=1, dtype=torch.float32)
            return torch.topk(s, k, dim=1)
        return call if c["case"] == "prefix256" else None

    def nestvec_call(backend, c):
        dim = dp if c["case"] == "prefix256" else None
        return lambda: ops.dense_topk(db, c["_q"], k, dim=dim, backend=backend)

    providers = H.gpu_providers(nestvec_call, dev)
    for p in providers:
        p.repeats = 3 if p.name == "nestvec triton" else None
    providers += [H.Provider("torch mm+topk", torch_full, device=pdev, repeats=5),
                  H.Provider("torch view+renorm+topk", torch_prefix, device=pdev, repeats=5)]
    batches = (1, 17) if args.emulate else (1, 128, 1024)
    cases = [{"case": "full", "batch": b} for b in batches]
    cases += [{"case": "prefix256", "batch": b} for b in batches[:2]]
    rows = []
    for c in cases:
        c["n"] = n
        c["_q"] = torch.randn(c["batch"], D, generator=g).to(dev)
        rows += H.run([c], providers, compare=same_rows, repeats=10 if c["batch"] < 1024 else 5,
                      warmup=2, timed=not args.emulate)
        H.free_gpu()
    del db, dbn, view
    H.free_gpu()
    key = lambda r: (r["case"], r["batch"])  # noqa: E731
    H.ratios(rows, "speedup", lambda r: r["impl"].startswith("torch"), key=key)
    for r in rows:
        if r["impl"] == "nestvec cuda":
            r["target_ms"] = GPU_TARGETS.get(key(r))
            r["meets_target"] = (r["median_ms"] <= r["target_ms"]) if r["target_ms"] and r["median_ms"] else None
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeats-large", type=int, default=2, help="repeats at batch >= 256")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--prefix-batches", default="1,16")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--skip", default="", help="comma list of baselines to skip: numpy,faiss,torch,floor")
    p.add_argument("--isa", default="all", help="nestvec CPU ISAs: all, auto, or a list (avx2,avx512)")
    H.add_device_args(p)
    args = p.parse_args(argv)
    if args.quick and args.device == "cpu":
        args.n, args.batches = min(args.n, 100_000), "1,16"
    dev = H.gpu_device(args.emulate) if args.device == "cuda" else None  # before triton loads
    print(H.describe(), flush=True)
    if args.device == "cuda":
        if dev is None:
            print("bench_dense --device cuda: no CUDA device (use --emulate to run the GPU path here)")
            return 0
        rows = run_gpu(args, dev)
        cols = ["case", "batch", "n", "impl", "median_ms", "speedup", "target_ms", "meets_target", "recall", "ok",
                "detail"]
    else:
        rows = run_cpu(args)
        cols = ["case", "batch", "impl", "median_ms", "min_ms", "x_vs_faiss_flat", "x_floor", "target_ms",
                "recall", "build_s"]
    print()
    print(H.describe())
    print(H.markdown_table(rows, cols))
    H.save_or_skip(args, "bench_dense" + ("_cuda" if args.device == "cuda" else ""), rows,
                   {"n": args.n, "d": args.d, "k": args.k, "repeats": args.repeats, "device": args.device,
                    "threads": _backend._C.get_num_threads() if _backend._C else None})
    return 1 if H.failed(rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
