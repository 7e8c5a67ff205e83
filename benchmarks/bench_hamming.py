"""Hamming top-k: nestvec against FAISS IndexBinaryFlat, USearch exact and NumPy on the
CPU; nestvec's CUDA and Triton kernels against torch (and CuPy) on a GPU.

    python benchmarks/bench_hamming.py [--n 1000000] [--repeats 5] [--isa all]
    FAISS_OPT_LEVEL=avx2 NESTVEC_ISA=avx2 python benchmarks/bench_hamming.py   # AVX2 only
    python benchmarks/bench_hamming.py --device cuda [--quick]                 # GPU

One table, every library in the same run on the same codes; medians after warm-up
(benchmarks/_harness.py: one provider loop, each provider's output checked once).
CPU: nestvec runs under every ISA given by --isa (default "all": each SIMD ISA this
CPU runs, so an AVX-512 machine gives an avx2 and an avx512 row); the baselines run
once. Batch-1 cases also show the floor: a bare read of the same bytes by the same
number of threads in the same minutes (benchmarks/read_floor.cpp).
GPU: 10M x 1024-bit codes (1M with --quick), CUDA-event timing; the baseline is
torch's xor + SWAR popcount + topk on int64 words.
Writes benchmarks/results/bench_hamming.json (bench_hamming_cuda.json on a GPU).
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
GPU_TARGETS = {1: 0.6, 16: 1.5}


def numpy_topk(codes, queries, k):
    dist, idx = [], []
    for q in queries:
        d = np.bitwise_count(np.bitwise_xor(codes, q)).sum(axis=1, dtype=np.int32)
        part = np.argpartition(d, k)[:k]
        part = part[np.lexsort((part, d[part]))]
        dist.append(d[part])
        idx.append(part)
    return np.stack(dist), np.stack(idx)


def _np(a):
    return a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a)


def same_topk(out, ref) -> str:
    """Distances and indices exactly the reference's (ties broken by index)."""
    d, i = out
    dr, ir = ref
    if not np.array_equal(_np(d), _np(dr)):
        return "distances differ"
    return "" if np.array_equal(_np(i), _np(ir)) else "indices differ"


def same_distances(out, ref) -> str:
    """Distances only: the baselines break ties in their own order."""
    return "" if np.array_equal(np.asarray(_np(out[0]), np.int64), _np(ref[0]).astype(np.int64)) \
        else "distances differ"


# --------------------------------------------------------------------------- CPU

def run_cpu(args) -> list[dict]:
    skip = set(filter(None, args.skip.split(",")))
    isas = H.cpu_isas(args.isa)
    rng = np.random.default_rng(0)
    k = args.k
    cases = []
    for bits in map(int, args.bits.split(",")):
        codes = rng.integers(0, 256, (args.n, bits // 8), dtype=np.uint8)
        for b in map(int, args.batches.split(",")):
            cases.append({"bits": bits, "batch": b, "n": args.n, "k": k, "_codes": codes,
                          "_q": rng.integers(0, 256, (b, bits // 8), dtype=np.uint8)})

    providers = [H.Provider("nestvec cpu", lambda c: lambda: ops.hamming_topk(c["_codes"], c["_q"], k),
                            isa=isa) for isa in isas]
    if "faiss" not in skip:
        try:
            import faiss

            built = {}

            def faiss_setup(c):
                key = id(c["_codes"])
                if key not in built:
                    built.clear()  # one index at a time
                    built[key] = faiss.IndexBinaryFlat(c["bits"])
                    built[key].add(c["_codes"])
                index = built[key]
                return lambda: index.search(c["_q"], k)

            providers.append(H.Provider("faiss IndexBinaryFlat", faiss_setup, compare=same_distances))
        except ImportError:
            print("  (faiss not installed: skipped)")
    if "usearch" not in skip:
        try:
            from usearch.index import MetricKind, ScalarKind, search

            providers.append(H.Provider(
                "usearch exact", lambda c: lambda: search(c["_codes"], c["_q"], k, MetricKind.Hamming,
                                                          exact=True, dtype=ScalarKind.B1), compare=False))
        except ImportError:
            print("  (usearch not installed: skipped)")
    if "numpy" not in skip and hasattr(np, "bitwise_count"):
        providers.append(H.Provider(
            "numpy bitwise_count", lambda c: (lambda: numpy_topk(c["_codes"], c["_q"], k)) if c["batch"] <= 16
            else None, compare=same_distances))

    def reps(c):
        return args.repeats if c["batch"] < 256 else max(3, args.repeats // 2 + 1)

    rows = []
    for c in cases:  # one case at a time, so the read floor is measured in the same minutes
        rows += H.run([c], providers, compare=same_topk, repeats=reps)
        if c["batch"] == 1 and "floor" not in skip:
            nbytes = c["bits"] // 8
            fl = H.read_floor(args.n, nbytes, [nbytes], offset=0)
            if fl:
                rows.append({"bits": c["bits"], "batch": 1, "n": args.n, "k": k,
                             "impl": "bare read of the same bytes", "median_ms": fl[nbytes]["median_ms"],
                             "min_ms": fl[nbytes]["best_ms"]})
    key = lambda r: (r["bits"], r["batch"])  # noqa: E731
    for name, col in (("faiss IndexBinaryFlat", "x_vs_faiss"), ("usearch exact", "x_vs_usearch"),
                      ("numpy bitwise_count", "x_vs_numpy")):
        H.ratios(rows, col, lambda r, n=name: r["impl"] == n, key=key)
    H.ratios(rows, "x_floor", lambda r: r["impl"].startswith("bare read"), key=key, over="row")
    for r in rows:
        if r["impl"] == "nestvec cpu":
            r["target_ms"] = TARGETS.get(key(r))
            r["meets_target"] = r["target_ms"] is not None and r["median_ms"] <= r["target_ms"]
        else:  # ratios belong to our rows
            for col in ("x_vs_faiss", "x_vs_usearch", "x_vs_numpy", "x_floor"):
                r.pop(col, None)
    return rows


# --------------------------------------------------------------------------- GPU

def torch_hamming(codes64, q64, k):
    """The baseline: xor on int64 words, SWAR popcount, sum, topk."""
    import torch

    x = codes64.unsqueeze(0) ^ q64.unsqueeze(1)  # [Q, N, W]
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    x = (x * 0x0101010101010101) >> 56
    return torch.topk(x.sum(-1), k, dim=1, largest=False)


def run_gpu(args, dev: str) -> list[dict]:
    import torch

    k = args.k
    n = 5000 if args.emulate else (1_000_000 if args.quick else 10_000_000)
    cases = []
    for nq in (1, 16):
        g = torch.Generator(device="cpu").manual_seed(nq)
        codes = torch.randint(0, 256, (n, 128), dtype=torch.uint8, generator=g).to(dev)
        cases.append({"bits": 1024, "batch": nq, "n": n, "k": k, "_codes": codes,
                      "_q": torch.randint(0, 256, (nq, 128), dtype=torch.uint8, generator=g).to(dev)})

    def nestvec_call(backend, c):
        return lambda: ops.hamming_topk(c["_codes"], c["_q"], k, backend=backend)

    def torch_setup(c):
        c64, q64 = c["_codes"].view(torch.int64), c["_q"].view(torch.int64)
        # the [Q, N, W] intermediate does not fit at once: four queries at a time
        return lambda: [torch.cat(p) for p in zip(*[torch_hamming(c64, q64[j:j + 4], k)
                                                     for j in range(0, q64.shape[0], 4)])]

    pdev = "cuda" if dev == "cuda" else "cpu"
    providers = H.gpu_providers(nestvec_call, dev) + [
        H.Provider("torch bit tricks", torch_setup, device=pdev, compare=same_distances)]
    try:
        import cupy as cp

        def cupy_setup(c):
            if c["batch"] != 1 or dev != "cuda":
                return None
            cc, cq = cp.asarray(c["_codes"]), cp.asarray(c["_q"])

            def call():
                d = cp.bitwise_count(cc ^ cq).sum(axis=1, dtype=cp.int32)
                part = cp.argpartition(d, k)[:k]
                return cp.sort(d[part])[None, :].get(), None
            return call

        providers.append(H.Provider("cupy bitwise_count", cupy_setup, device=pdev, compare=same_distances))
    except ImportError:
        pass

    def reference(c):
        from nestvec import reference as R

        if c["n"] > 1_000_000:  # the NumPy oracle takes too long: the first provider is it
            return None
        return R.hamming_topk(c["_codes"].cpu().numpy(), c["_q"].cpu().numpy(), k)

    rows = []
    for c in cases:
        ref = reference(c)
        rows += H.run([c], providers, reference=(lambda _c, r=ref: r) if ref is not None else None,
                      compare=same_topk, repeats=20, warmup=3, timed=not args.emulate)
        c.clear()
        H.free_gpu()
    H.ratios(rows, "speedup", lambda r: r["impl"] == "torch bit tricks", key=lambda r: r["batch"])
    for r in rows:
        if r["impl"] == "nestvec cuda":
            r["target_ms"] = GPU_TARGETS.get(r["batch"])
            r["meets_target"] = (r["median_ms"] <= r["target_ms"]) if r["median_ms"] else None
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--bits", default="1024,256")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.add_argument("--skip", default="", help="comma list of: faiss,usearch,numpy,floor")
    p.add_argument("--isa", default="all", help="nestvec CPU ISAs: all, auto, or a list (avx2,avx512)")
    H.add_device_args(p)
    args = p.parse_args(argv)
    if args.quick and args.device == "cpu":
        args.n, args.repeats = min(args.n, 100_000), min(args.repeats, 3)
    dev = H.gpu_device(args.emulate) if args.device == "cuda" else None  # before triton loads
    print(H.describe(), flush=True)
    if args.device == "cuda":
        if dev is None:
            print("bench_hamming --device cuda: no CUDA device (use --emulate to run the GPU path here)")
            return 0
        rows = run_gpu(args, dev)
        cols = ["bits", "batch", "n", "impl", "median_ms", "speedup", "target_ms", "meets_target", "ok", "detail"]
    else:
        rows = run_cpu(args)
        cols = ["bits", "batch", "impl", "isa", "median_ms", "min_ms", "x_vs_faiss", "x_vs_usearch",
                "x_vs_numpy", "x_floor", "target_ms", "meets_target", "ok"]
    print()
    print(f"k={args.k}, median ms after warm-up")
    print(H.describe())
    print(H.markdown_table(rows, cols))
    H.save_or_skip(args, "bench_hamming" + ("_cuda" if args.device == "cuda" else ""), rows, vars(args))
    return 1 if H.failed(rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
