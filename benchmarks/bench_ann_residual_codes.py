"""Residual sign codes against plain sign codes for the ivf funnel, same lists.

    python benchmarks/bench_ann_residual_codes.py --n 1000000 --d 768 --data-dir /tmp/s16/ann1m
    python benchmarks/bench_ann_residual_codes.py --n 10000000 --d 384 --data-dir /tmp/s16/ann10m --queries 200

A simulation of the funnel in NumPy over a collection bench_ann.py built (its data, its
ivf centroids): every row goes to its nearest centroid (FAISS, inner product over the
normalised centroid-width prefix, as the index assigns), a query probes its nprobe
nearest lists, the rows of those lists are ranked by Hamming distance (ties by row) and
the best k x rescore are rescored exactly (cosine), recall@10 against bench_ann's exact
top-10. Codes compared:

- plain: the sign bits of the row (the index's codes="sign");
- residual: over the centroid's prefix, the sign bits of the normalised prefix minus
  its list's centroid; beyond it, plain sign bits. The query gets one code per probed
  list (its own prefix minus that list's centroid), so a distance compares a row with
  the query's code for the row's list.

Writes benchmarks/results/bench_ann_residual_codes_<n>x<d>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402

K = 10
POP = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    H.add_ann_data_args(p)
    p.add_argument("--queries", type=int, default=300)
    args = p.parse_args(argv)
    import faiss

    work = Path(args.data_dir)
    base = work / f"synth-{args.n}x{args.d}-c{args.clusters}"
    x = np.load(f"{base}.x.npy", mmap_mode="r")
    q = np.load(f"{base}.q.npy").astype(np.float32)[:args.queries]
    gt = np.load(f"{base}.gt.npy")[:len(q)]
    col = nv.open(str(work / f"col-{args.n}x{args.d}.nv"), read_only=True)
    cent = np.ascontiguousarray(col.searcher(k=K, mode="ivf")._state[-1].cent.centroids, np.float32)
    nlist, width = cent.shape
    col.close()

    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(width)
    index.add(cent)
    n, chunk = len(x), 200_000
    lid = np.empty(n, np.int64)
    plain = np.empty((n, args.d // 8), np.uint8)
    resid = np.empty_like(plain)
    for a in range(0, n, chunk):
        v = np.asarray(x[a:a + chunk], np.float32)
        vp = v[:, :width] / np.linalg.norm(v[:, :width], axis=1, keepdims=True)
        lid[a:a + chunk] = index.search(vp, 1)[1][:, 0]
        bits = v > 0
        plain[a:a + chunk] = np.packbits(bits, axis=1)
        bits[:, :width] = (vp - cent[lid[a:a + chunk]]) > 0
        resid[a:a + chunk] = np.packbits(bits, axis=1)
    order = np.argsort(lid, kind="stable")
    offs = np.r_[0, np.cumsum(np.bincount(lid, minlength=nlist))]
    prep_s = time.perf_counter() - t0
    print(f"assigned and coded {n:,} rows to {nlist:,} lists ({width}-value centroids) in {prep_s:.0f} s", flush=True)

    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    qp = q[:, :width] / np.linalg.norm(q[:, :width], axis=1, keepdims=True)
    probe = index.search(qp, 16)[1]
    recall = {}
    print("| nprobe | rescore | plain | residual |\n|---|---|---|---|")
    for nprobe in (4, 8, 12, 16):
        for rescore in (5, 10, 20):
            got = {"plain": 0.0, "residual": 0.0}
            for j in range(len(q)):
                lists = probe[j, :nprobe]
                rows = np.concatenate([order[offs[l]:offs[l + 1]] for l in lists])
                owner = np.concatenate([np.full(offs[l + 1] - offs[l], i) for i, l in enumerate(lists)])
                qbits = np.tile(q[j] > 0, (nprobe, 1))
                qbits[:, :width] = (qp[j] - cent[lists]) > 0
                for name, codes, qc in (("plain", plain, np.packbits(q[j] > 0)[None]),
                                        ("residual", resid, np.packbits(qbits, axis=1)[owner])):
                    dist = POP[np.bitwise_xor(codes[rows], qc)].sum(axis=1, dtype=np.int32)
                    cand = np.sort(rows[np.lexsort((rows, dist))[:K * rescore]])
                    v = np.asarray(x[cand], np.float32)
                    top = cand[np.argsort(-(v @ qn[j]) / np.linalg.norm(v, axis=1), kind="stable")[:K]]
                    got[name] += len(set(top.tolist()) & set(gt[j].tolist())) / K
            key = f"nprobe {nprobe} rescore {rescore}"
            recall[key] = {m: round(v / len(q), 4) for m, v in got.items()}
            print(f"| {nprobe} | {rescore} | {recall[key]['plain']:.4f} | {recall[key]['residual']:.4f} |", flush=True)
    rows = [{"point": key, **v} for key, v in recall.items()]
    out = H.save(f"bench_ann_residual_codes_{args.n}x{args.d}", rows,
                 {"rows": args.n, "dim": args.d, "nlist": nlist, "centroid_width": width, "queries": len(q),
                  "prep_s": round(prep_s, 1)})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
