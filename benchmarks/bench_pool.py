"""Pooling benchmark (CPU): nestvec.pool against the sentence-transformers recipe and
torch bmm with the mask, mean + L2 norm, side by side in one run.

    python benchmarks/bench_pool.py [--quick]

Target (DESIGN.md): B=64 T=256 H=384 float32 <= 0.5 ms cold. "cold" rotates over
enough input buffers that each call reads its hidden states from DRAM, not cache.
Writes benchmarks/results/bench_pool.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402


def st_recipe(hidden, mask):
    """sentence-transformers Pooling(mean) + Normalize, as in its modules."""
    import torch

    m = mask.unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
    s = torch.sum(hidden * m, 1)
    n = torch.clamp(m.sum(1), min=1e-9)
    return torch.nn.functional.normalize(s / n, p=2, dim=1)


def bmm_recipe(hidden, mask):
    """Masked mean as one batched matmul: [B,1,T] @ [B,T,H]."""
    import torch

    m = mask.to(hidden.dtype).unsqueeze(1)
    s = torch.bmm(m, hidden).squeeze(1).float() / mask.sum(1, keepdim=True).clamp(min=1).float()
    return torch.nn.functional.normalize(s, p=2, dim=1)


def _buffers(shape, dtype, nbytes_total, rng):
    """Enough distinct inputs that a round-robin over them is cache-cold (>= 256 MiB)."""
    import torch

    one = int(np.prod(shape)) * torch.tensor([], dtype=dtype).element_size()
    count = max(2, -(-nbytes_total // one))
    base = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)
    return [base + i * 1e-3 for i in range(count)]


def run(quick=False):
    import torch

    import nestvec.ops as ops

    from nestvec import _backend

    torch.set_num_threads(max(1, _backend._C.get_num_threads() if _backend._C else 1))
    rng = np.random.default_rng(0)
    rows = []
    cases = [(64, 256, 384, torch.float32, 0.5)]
    if not quick:
        cases += [(64, 256, 384, torch.bfloat16, None), (64, 256, 384, torch.float16, None),
                  (32, 512, 1024, torch.float32, None)]
    reps = 10 if quick else 30
    for B, T, Hd, dt, target in cases:
        bufs = _buffers((B, T, Hd), dt, (64 if quick else 256) << 20, rng)
        mask = torch.ones(B, T, dtype=torch.long)
        it = {"i": 0}

        def cold(fn):
            def call():
                it["i"] = (it["i"] + 1) % len(bufs)
                fn(bufs[it["i"]])
            return call

        case = f"B={B} T={T} H={Hd} {str(dt).replace('torch.', '')} mean+norm"
        res = {}
        res["nestvec cpu"] = H.timeit(cold(lambda h: ops.pool(h, mask)), repeats=reps)
        res["nestvec cpu (warm)"] = H.timeit(lambda: ops.pool(bufs[0], mask), repeats=reps)
        res["sentence-transformers recipe"] = H.timeit(cold(lambda h: st_recipe(h, mask)), repeats=reps)
        res["torch bmm"] = H.timeit(cold(lambda h: bmm_recipe(h, mask)), repeats=reps)
        ours = res["nestvec cpu"]["median_ms"]
        for impl, t in res.items():
            rows.append(dict(case=case, impl=impl, median_ms=t["median_ms"], min_ms=t["min_ms"],
                             vs_ours=t["median_ms"] / ours, target_ms=target if impl == "nestvec cpu" else None))
        # correctness of what was timed
        ref = st_recipe(bufs[0].float(), mask).numpy()
        np.testing.assert_allclose(ops.pool(bufs[0], mask).numpy(), ref, atol=1e-4)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    rows = run(args.quick)
    print(H.markdown_table(rows, ["case", "impl", "median_ms", "min_ms", "vs_ours", "target_ms"]))
    path = H.save("bench_pool", rows, {"quick": args.quick}, out_dir=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
