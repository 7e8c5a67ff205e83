"""LOST low-rank + channel-sparse matmul on CPU: ours against dense and low-rank
baselines in the same run, forward and a training step (forward + backward).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_lowrank.py [--m 4096 --k 4096 --n 4096 --rank 512 --sparsity 0.05]
    python benchmarks/bench_lowrank.py --quick      # 1024-sized smoke run

A second table times few rows of x (M = 1..64, a query's tokens) through a MiniLM-sized
layer and the 4096² one, against torch and NumPy dense.

Each method is timed in blocks of back-to-back calls after a warm-up call, and the
set of blocks runs twice (see timed_blocks for why not one call of each in turn).
DESIGN target: f32 4096 x 4096, r=512, 5% channels, ours >= 3.0x faster than NumPy
dense (FLOP ideal 3.33x). The NumPy BLAS
kernel in use is recorded in the JSON (OPENBLAS_CORETYPE can force a slower one).
JSON: benchmarks/results/bench_lowrank.json.
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


def timed_blocks(fns: dict, rounds: int, warmup: int = 1, passes: int = 2) -> dict:
    """Blocks of back-to-back calls per method, the whole set of blocks `passes` times
    (median and min over every timed call). Not one call per method in turn: thread
    pools of the other libraries (OpenBLAS, torch's OpenMP/MKL) keep spinning for tens
    to hundreds of milliseconds after a call, and an idle pause before a call lets the
    VM's cores drop clock; either slowed our ~100 ms call by 20-70% depending on which
    library ran before it. Each block starts with untimed warm-up calls that absorb it."""
    ts = {k: [] for k in fns}
    for _ in range(passes):
        for k, f in fns.items():
            for _ in range(warmup):
                f()
            for _ in range(rounds):
                t0 = time.perf_counter()
                f()
                ts[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v)} for k, v in ts.items()}


def blas_info() -> list:
    try:
        from threadpoolctl import threadpool_info

        return [{k: i.get(k) for k in ("internal_api", "architecture", "num_threads", "version")}
                for i in threadpool_info()]
    except Exception as e:  # optional
        return [f"threadpoolctl unavailable: {e}"]


def make_layer(rng, K: int, N: int, r: int, c: int):
    """Factors A [r, K], B [N, r], S [c, K] (unit-variance outputs), sorted channels and
    the dense W = B·A + S on those channels."""
    A = (rng.standard_normal((r, K), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
    B = (rng.standard_normal((N, r), dtype=np.float32) / np.sqrt(r)).astype(np.float32)
    S = (rng.standard_normal((c, K), dtype=np.float32) / np.sqrt(K)).astype(np.float32)
    ch = np.sort(rng.permutation(N)[:c]).astype(np.int64)
    W = B @ A
    W[ch] += S
    return A, B, S, ch, W


def few_rows(ops, torch, sparsity) -> list:
    """M = 1..64 rows through a MiniLM-sized layer (384 -> 1536, rank 192) and the
    4096² one: the weights are read once per call, so packing them would cost as much
    as the product here (the op packs no weights up to 64 rows on AVX-512)."""
    rng = np.random.default_rng(1)
    out = []
    for K, N, r in ((384, 1536, 192), (4096, 4096, 512)):
        A, B, S, ch, W = make_layer(rng, K, N, r, int(round(sparsity * N)))
        Wt = torch.from_numpy(W)
        for M in (1, 8, 20, 32, 64):
            x = rng.standard_normal((M, K), dtype=np.float32)
            xt = torch.from_numpy(x)
            # H.timeit warms each method up for >= 0.3 s first: right after another
            # library's call its spinning pool threads (OpenBLAS, OpenMP) share the two
            # cores with ours, and a 0.1 ms call then takes ~1 ms
            fns = {"ours": lambda: ops.lowrank_sparse_matmul(x, A, B, S, ch),
                   "torch": lambda: torch.nn.functional.linear(xt, Wt),
                   "numpy": lambda: x @ W.T}
            us = {k: H.timeit(f, repeats=40 if K < 4096 else 15)["median_ms"] * 1e3 for k, f in fns.items()}
            out.append({"pass": "forward, few rows", "K": K, "N": N, "rank": r, "M": M,
                        "nestvec_us": us["ours"], "torch_dense_us": us["torch"],
                        "numpy_dense_us": us["numpy"], "x_vs_torch_dense": us["torch"] / us["ours"]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--rank", type=int, default=512)
    p.add_argument("--sparsity", type=float, default=0.05, help="fraction of output channels")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: all cores")
    p.add_argument("--quick", action="store_true", help="M=K=N=1024, r=128")
    p.add_argument("--no-train", action="store_true", help="skip the forward+backward rows")
    p.add_argument("--no-few-rows", action="store_true",
                   help="skip the few-rows table (M = 1..64: query-time encoding)")
    p.add_argument("--isa", default=None, help="force a CPU ISA (scalar/avx2/avx512)")
    args = p.parse_args(argv)
    if args.quick:
        args.m = args.k = args.n = 1024
        args.rank = 128

    import torch

    import nestvec.ops as ops

    from nestvec import _backend
    from nestvec.nn import LowRankSparseLinear

    if args.threads:
        _backend._C.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    if args.isa:
        _backend._C.set_isa(args.isa)
    M, K, N, r = args.m, args.k, args.n, args.rank
    c = int(round(args.sparsity * N))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K), dtype=np.float32)
    A, B, S, ch, W = make_layer(rng, K, N, r, c)
    flops_dense = 2.0 * M * N * K
    flops_lr = 2.0 * M * (K * (r + c) + r * N)

    def np_lowrank():
        y = (x @ A.T) @ B.T
        y[:, ch] += x @ S.T
        return y

    xt, At, Bt, St, cht, Wt = (torch.from_numpy(v) for v in (x, A, B, S, ch, W))

    def torch_lowrank():
        y = (xt @ At.T) @ Bt.T
        return y.index_add_(1, cht, xt @ St.T)

    # correctness of ours in this very run
    y = ops.lowrank_sparse_matmul(x, A, B, S, ch)
    ref = np_lowrank()
    rel = float(np.abs(y - ref).max() / np.abs(ref).max())

    # out= rows: the same calls writing into a reused buffer, for both sides. A fresh
    # 64 MB result costs its page faults (the kernel zeroes every page), ~8-10 ms of our
    # ~100 ms call and about as much of NumPy's ~290 ms one.
    y_out = np.empty((M, N), np.float32)
    y_np = np.empty((M, N), np.float32)
    fwd = timed_blocks({
        "nestvec lowrank_sparse (cpu)": lambda: ops.lowrank_sparse_matmul(x, A, B, S, ch),
        "numpy dense x·Wᵀ": lambda: x @ W.T,
        "nestvec lowrank_sparse (cpu), out=": lambda: ops.lowrank_sparse_matmul(x, A, B, S, ch,
                                                                                out=y_out),
        "numpy dense, out=": lambda: np.matmul(x, W.T, out=y_np),
        "numpy low-rank + index add": np_lowrank,
        "torch dense F.linear": lambda: torch.nn.functional.linear(xt, Wt),
        "torch low-rank + index_add_": torch_lowrank,
    }, args.rounds)
    rows = []
    for name, t in fwd.items():
        fl = flops_dense if "dense" in name else flops_lr
        # out= rows against NumPy's out= row, the others against the allocating one
        b = fwd["numpy dense, out=" if name.endswith("out=") else "numpy dense x·Wᵀ"]
        rows.append({"pass": "forward", "method": name, "median_ms": t["median_ms"], "min_ms": t["min_ms"],
                     "gflops": fl / t["median_ms"] / 1e6,
                     "speedup_vs_numpy_dense": b["median_ms"] / t["median_ms"],
                     "speedup_min_vs_min": b["min_ms"] / t["min_ms"]})

    if not args.no_train:
        dense = torch.nn.Linear(K, N, bias=True)
        with torch.no_grad():
            dense.weight.copy_(Wt)
        lr = LowRankSparseLinear(K, N, r, torch.from_numpy(ch))  # same factors as above
        with torch.no_grad():
            lr.A.copy_(At)
            lr.B.copy_(Bt)
            lr.S.copy_(St)
        xg = xt.clone()
        g = torch.randn(M, N)

        def step(mod):
            def f():
                mod.zero_grad(set_to_none=True)
                mod(xg).backward(g)
            return f

        class TorchLowRank(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.A, self.B, self.S = (torch.nn.Parameter(v.clone()) for v in (At, Bt, St))
                self.bias = torch.nn.Parameter(torch.zeros(N))

            def forward(self, v):
                return ((v @ self.A.T) @ self.B.T).index_add(1, cht, v @ self.S.T) + self.bias

        train = timed_blocks({
            "nestvec LowRankSparseLinear fwd+bwd": step(lr),
            "torch nn.Linear (dense) fwd+bwd": step(dense),
            "torch low-rank + index_add fwd+bwd": step(TorchLowRank()),
        }, max(2, args.rounds // 2))
        tbase = train["torch nn.Linear (dense) fwd+bwd"]["median_ms"]
        for name, t in train.items():
            rows.append({"pass": "forward+backward", "method": name, "median_ms": t["median_ms"],
                         "min_ms": t["min_ms"], "speedup_vs_torch_dense": tbase / t["median_ms"]})

    few = [] if args.no_few_rows else few_rows(ops, torch, args.sparsity)

    meta = {"M": M, "K": K, "N": N, "rank": r, "channels": c, "dtype": "float32",
            "ours_rel_error_vs_numpy": rel, "numpy_blas": blas_info(),
            "threads": _backend._C.get_num_threads(), "isa": _backend._C.get_isa(),
            "target": ">= 3.0x over numpy dense (forward)", "flop_ideal": flops_dense / flops_lr}
    print(f"M={M} K={K} N={N} r={r} c={c} f32, threads={meta['threads']}, isa={meta['isa']}, "
          f"numpy BLAS {meta['numpy_blas']}")
    print(f"ours vs numpy low-rank: max rel err {rel:.2e}; FLOP ideal {meta['flop_ideal']:.2f}x")
    print(H.markdown_table(rows, ["pass", "method", "median_ms", "min_ms", "gflops",
                                  "speedup_vs_numpy_dense", "speedup_min_vs_min", "speedup_vs_torch_dense"]))
    if few:
        print("\nfew rows of x (one query's tokens), microseconds per call, median:")
        print(H.markdown_table(few, ["K", "N", "rank", "M", "nestvec_us", "torch_dense_us",
                                     "numpy_dense_us", "x_vs_torch_dense"]))
    path = H.save("bench_lowrank", rows + few, meta)
    print("saved", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
