"""LOST low-rank + channel-sparse matmul: ours against dense and low-rank baselines in
the same run; on the CPU forward and a training step (forward + backward), on a GPU
(--device cuda) the CUDA and Triton kernels against cuBLAS routes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/bench_lowrank.py [--m 4096 --k 4096 --n 4096 --rank 512 --sparsity 0.05]
    python benchmarks/bench_lowrank.py --quick      # 1024-sized smoke run
    python benchmarks/bench_lowrank.py --device cuda [--quick]   # GPU: bf16 M=8192 K=N=4096 r=1024

A second table times few rows of x (M = 1..64, a query's tokens) through a MiniLM-sized
layer and the 4096² one, against torch and NumPy dense.

Each method is timed in blocks of back-to-back calls after a warm-up call, and the
set of blocks runs twice (see timed_blocks for why not one call of each in turn).
DESIGN target: f32 4096 x 4096, r=512, 5% channels, ours >= 3.0x faster than NumPy
dense (FLOP ideal 3.33x). The NumPy BLAS
kernel in use is recorded in the JSON (OPENBLAS_CORETYPE can force a slower one).
JSON: benchmarks/results/bench_lowrank.json (bench_lowrank_cuda.json on a GPU).
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


def timed_blocks(fns: dict, rounds: int, warmup: int = 1, passes: int = 2, reference=None,
                 compare=None) -> list[dict]:
    """The harness's provider loop over one case: blocks of back-to-back calls per method,
    the whole set of blocks `passes` times (median and min over every timed call). Not
    one call per method in turn: thread pools of the other libraries (OpenBLAS, torch's
    OpenMP/MKL) keep spinning for tens to hundreds of milliseconds after a call, and an
    idle pause before a call lets the VM's cores drop clock; either slowed our ~100 ms
    call by 20-70% depending on which library ran before it. Each block starts with
    untimed warm-up calls that absorb it. fns: name -> call, or (call, isa)."""
    providers = []
    for name, f in fns.items():
        f, isa = f if isinstance(f, tuple) else (f, None)
        providers.append(H.Provider(name, lambda c, f=f: f, isa=isa))
    return H.run([{}], providers, reference=reference, compare=compare, repeats=rounds,
                 warmup=warmup, passes=passes)


def rel_error(out, ref) -> str:
    """max |y - ref| over max |ref|, float32 accumulation."""
    y = out.detach().float().cpu().numpy() if hasattr(out, "detach") else np.asarray(out, np.float32)
    r = ref.detach().float().cpu().numpy() if hasattr(ref, "detach") else np.asarray(ref, np.float32)
    err = float(np.abs(y - r).max() / max(float(np.abs(r).max()), 1e-6))
    return ("" if err <= 1e-4 else f"rel error {err:.3g}"), {"rel_error": err}


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
            # the harness warms each method up for >= 0.3 s first: right after another
            # library's call its spinning pool threads (OpenBLAS, OpenMP) share the two
            # cores with ours, and a 0.1 ms call then takes ~1 ms
            fns = {"ours": lambda: ops.lowrank_sparse_matmul(x, A, B, S, ch),
                   "torch": lambda: torch.nn.functional.linear(xt, Wt),
                   "numpy": lambda: x @ W.T}
            reps = 40 if K < 4096 else 15
            got = H.run([{}], [H.Provider(k, lambda c, f=f: f) for k, f in fns.items()],
                        compare=lambda o, r: rel_error(o, r)[0], repeats=reps, passes=1)
            us = {r["impl"]: r["median_ms"] * 1e3 for r in got}
            out.append({"pass": "forward, few rows", "K": K, "N": N, "rank": r, "M": M,
                        "nestvec_us": us["ours"], "torch_dense_us": us["torch"],
                        "numpy_dense_us": us["numpy"], "x_vs_torch_dense": us["torch"] / us["ours"],
                        "ok": not H.failed(got)})
    return out


# --------------------------------------------------------------------------- GPU

def run_gpu(args, dev: str) -> list[dict]:
    """bf16 M=8192 K=N=4096 r=1024, 5% channels (M=2048 with --quick): nestvec's CUDA and
    Triton kernels against the same weight dense (x·Wᵀ, cuBLAS) and torch's low-rank +
    index_add_; a few Triton block configs; and the product through cuBLAS GEMMs by part
    (x·[A;S]ᵀ, then ·Bᵀ with a scatter, or with the channels folded into [B | P]), so one
    GPU run tells whether the Triton pair or a cuBLAS route should back LOST on the card.
    [A;S] (zero-padded to a multiple of 128) and [B | P] (P one-hot on the channels) are
    weight-side, built once per layer, not timed."""
    import torch

    import nestvec.ops as ops

    M, K, N, r = (64, 256, 256, 32) if args.emulate else ((2048 if args.quick else 8192), 4096, 4096, 1024)
    c = round(0.05 * N)
    g = torch.Generator(device="cpu").manual_seed(11)
    cast = lambda v: v.to(device=dev, dtype=torch.bfloat16)  # noqa: E731
    x = cast(torch.randn(M, K, generator=g))
    A = cast(torch.randn(r, K, generator=g) / K ** 0.5)
    B = cast(torch.randn(N, r, generator=g) / r ** 0.5)
    S = cast(torch.randn(c, K, generator=g) / K ** 0.5)
    ch = torch.randperm(N, generator=g)[:c].to(dev)
    W = (B @ A).index_add_(0, ch, S).contiguous()  # the same weight, dense
    pad = -(r + c) % 128
    W1 = torch.cat([A, S]).contiguous()
    W1p = torch.cat([W1, W1.new_zeros(pad, K)]).contiguous()
    P = B.new_zeros(N, c)
    P[ch, torch.arange(c, device=B.device)] = 1
    B2 = torch.cat([B, P, B.new_zeros(N, pad)], 1).contiguous()
    t = x @ W1p.t()
    tr = t[:, :r].contiguous()
    y0 = x.new_zeros(M, N)

    def torch_lowrank():
        return ((x @ A.t()) @ B.t()).index_add_(1, ch, x @ S.t())

    def pair_scatter():
        tt = x @ W1p.t()
        return (tt[:, :r] @ B.t()).index_add_(1, ch, tt[:, r:r + c])

    pdev = "cuda" if dev == "cuda" else "cpu"
    full = {"torch dense matmul": lambda: x @ W.t(), "torch low-rank+index_add": torch_lowrank,
            "cublas pair + index_add": pair_scatter, "cublas pair, folded": lambda: (x @ W1p.t()) @ B2.t()}
    parts = {  # not the product: timed, not checked
        "x·[A;S]ᵀ (N=r+c)": lambda: x @ W1.t(),
        f"x·[A;S]ᵀ padded (N={r + c + pad})": lambda: x @ W1p.t(),
        "x·Aᵀ (N=r)": lambda: x @ A.t(),
        "t·Bᵀ (K=r)": lambda: tr @ B.t(),
        f"t·[B|P]ᵀ folded (K={r + c + pad})": lambda: t @ B2.t(),
        "index_add_ of the x·Sᵀ columns into y": lambda: y0.index_add_(1, ch, t[:, r:r + c]),
    }
    # Triton first: a faulting CUDA kernel would poison the context for everything after.
    providers = H.gpu_providers(lambda b, _c: lambda: ops.lowrank_sparse_matmul(x, A, B, S, ch, backend=b),
                                dev, backends=("triton", "cuda"))
    if not args.emulate:  # a few Triton block configs (the interpreter would take minutes)
        from nestvec.kernels import lowrank_sparse as tk

        for cfg in [(128, 256, 64, 8, 8, 4), (128, 128, 64, 8, 4, 4), (256, 128, 64, 8, 8, 3),
                    (128, 128, 32, 8, 4, 5)]:
            providers.append(H.Provider(f"nestvec triton cfg={cfg}", lambda _c, cfg=cfg: lambda: (
                tk.lowrank_sparse_matmul(x, A, B, S, ch, None, config=cfg)), device=pdev))
    providers += [H.Provider(name, lambda _c, f=f: f, device=pdev) for name, f in full.items()]
    providers += [H.Provider(name, lambda _c, f=f: f, device=pdev, compare=False) for name, f in parts.items()]

    def reference(_c):
        return (x.float() @ W.float().t()).cpu()

    def close(out, ref):
        err = float((out.float().cpu() - ref).abs().max() / ref.abs().max())
        return ("" if err <= 3e-2 else f"rel error {err:.3g}"), {"rel_error": err}

    case = {"case": f"M={M} K=N={K} r={r} c={c} bf16"}
    rows = H.run([case], providers, reference=reference, compare=close, repeats=20, warmup=3,
                 timed=not args.emulate)
    flops_lr = 2 * M * (K * (r + c) + r * N)
    H.ratios(rows, "speedup_vs_dense", lambda r_: r_["impl"] == "torch dense matmul")
    H.ratios(rows, "speedup_vs_torch_lowrank", lambda r_: r_["impl"] == "torch low-rank+index_add")
    dense = next((r_["median_ms"] for r_ in rows if r_["impl"] == "torch dense matmul"), None)
    for r_ in rows:
        if r_["impl"].startswith("nestvec") and r_["median_ms"]:
            r_["tflops"] = round(flops_lr / r_["median_ms"] / 1e9, 1)
        if r_["impl"] in ("nestvec cuda", "nestvec triton") and dense:
            r_["target_ms"] = dense / 1.5  # >= 1.5x faster than dense, measured in this run
            r_["meets_target"] = (r_["median_ms"] <= r_["target_ms"]) if r_["median_ms"] else None
    del x, A, B, S, W, W1, W1p, B2, t, tr, y0
    H.free_gpu()
    return rows


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
    p.add_argument("--isa", default="all", help="nestvec CPU ISAs: all (each SIMD ISA this CPU runs), "
                   "auto, or a list (avx2,avx512); the first one also runs the few-rows and training rows")
    H.add_device_args(p)
    args = p.parse_args(argv)
    if args.device == "cuda":
        dev = H.gpu_device(args.emulate)  # before triton loads
        print(H.describe(), flush=True)
        if dev is None:
            print("bench_lowrank --device cuda: no CUDA device (use --emulate to run the GPU path here)")
            return 0
        rows = run_gpu(args, dev)
        print(H.markdown_table(rows, ["case", "impl", "median_ms", "tflops", "speedup_vs_dense",
                                      "speedup_vs_torch_lowrank", "target_ms", "meets_target", "rel_error",
                                      "ok", "detail"]))
        print(H.describe())
        H.save_or_skip(args, "bench_lowrank_cuda", rows, {"quick": args.quick})
        return 1 if H.failed(rows) else 0
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
    isas = H.cpu_isas(args.isa)
    _backend._C.set_isa(isas[0])
    print(H.describe(), flush=True)
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
    ours = {}
    for isa in isas:
        ours[f"nestvec lowrank_sparse (cpu) [{isa}]"] = (lambda: ops.lowrank_sparse_matmul(x, A, B, S, ch), isa)
        ours[f"nestvec lowrank_sparse (cpu) [{isa}], out="] = (
            lambda: ops.lowrank_sparse_matmul(x, A, B, S, ch, out=y_out), isa)
    fwd = timed_blocks({
        **ours,
        "numpy dense x·Wᵀ": lambda: x @ W.T,
        "numpy dense, out=": lambda: np.matmul(x, W.T, out=y_np),
        "numpy low-rank + index add": np_lowrank,
        "torch dense F.linear": lambda: torch.nn.functional.linear(xt, Wt),
        "torch low-rank + index_add_": torch_lowrank,
    }, args.rounds, reference=lambda c: ref, compare=rel_error)
    _backend._C.set_isa(isas[0])
    fwd = {r["impl"]: r for r in fwd}
    rows = []
    for name, t in fwd.items():
        fl = flops_dense if "dense" in name else flops_lr
        # out= rows against NumPy's out= row, the others against the allocating one
        b = fwd["numpy dense, out=" if name.endswith("out=") else "numpy dense x·Wᵀ"]
        rows.append({"pass": "forward", "method": name, "median_ms": t["median_ms"], "min_ms": t["min_ms"],
                     "ok": t["ok"], "rel_error": t.get("rel_error"),
                     "gflops": fl / t["median_ms"] / 1e6,
                     "speedup_vs_numpy_dense": b["median_ms"] / t["median_ms"],
                     "speedup_min_vs_min": b["min_ms"] / t["min_ms"],
                     "meets_target": (b["median_ms"] / t["median_ms"] >= 3.0) if name.startswith("nestvec") else None})

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
        train = {r["impl"]: r for r in train}
        tbase = train["torch nn.Linear (dense) fwd+bwd"]["median_ms"]
        for name, t in train.items():
            rows.append({"pass": "forward+backward", "method": name, "median_ms": t["median_ms"],
                         "min_ms": t["min_ms"], "speedup_vs_torch_dense": tbase / t["median_ms"]})

    few = [] if args.no_few_rows else few_rows(ops, torch, args.sparsity)

    meta = {"M": M, "K": K, "N": N, "rank": r, "channels": c, "dtype": "float32",
            "ours_rel_error_vs_numpy": rel, "numpy_blas": blas_info(),
            "threads": _backend._C.get_num_threads(), "isa": _backend._C.get_isa(), "isas": isas,
            "target": ">= 3.0x over numpy dense (forward)", "flop_ideal": flops_dense / flops_lr}
    print(f"M={M} K={K} N={N} r={r} c={c} f32, threads={meta['threads']}, isa={meta['isa']}, "
          f"numpy BLAS {meta['numpy_blas']}")
    print(f"ours vs numpy low-rank: max rel err {rel:.2e}; FLOP ideal {meta['flop_ideal']:.2f}x")
    print(H.markdown_table(rows, ["pass", "method", "median_ms", "min_ms", "gflops",
                                  "speedup_vs_numpy_dense", "speedup_min_vs_min", "meets_target",
                                  "speedup_vs_torch_dense"]))
    print(H.describe())
    if few:
        print("\nfew rows of x (one query's tokens), microseconds per call, median:")
        print(H.markdown_table(few, ["K", "N", "rank", "M", "nestvec_us", "torch_dense_us",
                                     "numpy_dense_us", "x_vs_torch_dense"]))
    H.save_or_skip(args, "bench_lowrank", rows + few, meta)
    return 1 if H.failed(rows) or not all(f["ok"] for f in few) else 0


if __name__ == "__main__":
    raise SystemExit(main())
