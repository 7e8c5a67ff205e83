"""Our ivf searcher against FAISS IndexBinaryIVF + float rescoring, call by call in turn.

bench_ann.py times each method in its own minutes; on a VM whose speed drifts between
minutes (the 10M runs: the same searcher at 2,580 and 2,253 QPS an hour apart) the
closest pair is timed here alternating, so both see the same machine. Each call then
follows the others' passes over their own memory (neither keeps its caches warm), so
both run slower than in their own sweep; each method starts at its own point of the
query set, so no call follows another's on the same query (the two searchers of one
collection share its rows: the second would find the first's rescored rows in cache). Reads the dataset, collection and BinaryIVF
index that bench_ann.py built in --data-dir.

    python benchmarks/bench_ann_alternating.py --n 10000000 --d 384 --data-dir /tmp/ann10m

Writes benchmarks/results/bench_ann_<n>x<d>_same_minutes.json. Run it with
OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1: two libraries' thread pools take turns in
one process here, and a pool whose threads spin after a call (FAISS's OpenMP threads
after a batch, NumPy's BLAS threads after the anchor's rescoring) holds the core the
next call splits over (on 2 cores, our batch of 16 fell to ~3,900 QPS in some runs
without them, ~6,800-7,100 with).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402
from ann_anchors import K, Faiss  # noqa: E402

import nestvec as nv  # noqa: E402


def _per_segment(searcher):
    """The searcher with its shortlist rescored one segment at a time (the native switch
    flipped around each call)."""
    from nestvec import _backend as be

    def run(z):
        be._C.set_multiseg_one_call_rescore(False)
        try:
            return searcher.search(z)[0]
        finally:
            be._C.set_multiseg_one_call_rescore(True)
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    H.add_ann_data_args(p, n=10_000_000, d=384)
    p.add_argument("--anchor", default="16:20,16:40", help="BinaryIVF nprobe:rescore points")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--layout", action="append", default=[], metavar="LABEL=PATH",
                   help="the same rows in another collection (e.g. compacted into larger segments): "
                        "its searcher is timed in the same turns; repeatable")
    p.add_argument("--per-segment-lists", action="store_true",
                   help="also time the default collection's searcher without its ivf spans (one list "
                        "range per segment and probed list: the layout before spans)")
    p.add_argument("--per-segment-rescoring", action="store_true",
                   help="also time each collection's searcher with its shortlist rescored one segment at "
                        "a time (set_multiseg_one_call_rescore(False) around each call)")
    args = p.parse_args(argv)
    work = Path(args.data_dir)
    stem = f"synth-{args.n}x{args.d}-c{args.clusters}"
    x = np.load(work / f"{stem}.x.npy", mmap_mode="r")
    q = np.load(work / f"{stem}.q.npy")
    gt = np.load(work / f"{stem}.gt.npy")
    col = nv.open(str(work / f"col-{args.n}x{args.d}.nv"), read_only=True)
    s = col.searcher(k=K, mode="ivf")
    spec = col.indexes()["ivf"]
    b = Faiss("BinaryIVF").build(x, None, work)
    nseg = len(col._snapshot().segments)
    fns = {f"ours-ivf-searcher ({nseg} segments; default nprobe {spec['nprobe']} rescore {spec['rescore']})":
           lambda z: s.search(z)[0]}
    if args.per_segment_lists:
        from nestvec.collection.indexes import plan

        plan.SPANS = False  # the searcher keeps the call it plans now
        sp = col.searcher(k=K, mode="ivf")
        sp.search(q[:1])
        plan.SPANS = True
        fns[f"ours-ivf-searcher ({nseg} segments, per-segment lists)"] = lambda z: sp.search(z)[0]
    if args.per_segment_rescoring:
        fns[f"ours-ivf-searcher ({nseg} segments, per-segment rescoring)"] = _per_segment(s)
    for lay in args.layout:
        label, path = lay.split("=", 1)
        other = nv.open(path, read_only=True)
        so = other.searcher(k=K, mode="ivf")
        name = f"ours-ivf-searcher {label} ({len(other._snapshot().segments)} segments)"
        fns[name] = (lambda t: lambda z: t.search(z)[0])(so)
        if args.per_segment_rescoring:
            fns[f"{name}, per-segment rescoring"] = _per_segment(so)
    for pt in args.anchor.split(","):
        npb, rs = (int(v) for v in pt.split(":"))
        fns[f"faiss-BinaryIVF nprobe {npb} rescore {rs}"] = (lambda a, c: lambda z: b.search(z, nprobe=a, rescore=c))(npb, rs)
    out = {}
    for name, fn in fns.items():
        got = np.concatenate([fn(q[a:a + 16]) for a in range(0, len(q), 16)])
        out[name] = {"recall10": round(float(np.mean([len(set(r.tolist()) & set(g.tolist())) / K
                                                     for r, g in zip(got, gt)])), 4)}
    for bsz in (1, 16):
        t = {n: [] for n in fns}
        stop = len(q) - len(q) % bsz
        # each method takes the queries from its own starting point, so no call follows
        # another method's call on the same query (whose rows that one left in cache)
        shift = {n: (i * (stop // len(fns)) // bsz) * bsz for i, n in enumerate(fns)}
        for _ in range(args.rounds):
            for a in range(0, stop, bsz):
                for n, fn in fns.items():
                    z = (a + shift[n]) % stop
                    t0 = time.perf_counter()
                    fn(q[z:z + bsz])
                    t[n].append(time.perf_counter() - t0)
        for n in fns:  # the first quarter warms the caches and the page cache
            out[n][f"qps_b{bsz}"] = round(bsz / float(np.median(t[n][len(t[n]) // 4:])), 1)
    anchors = [n for n in out if n.startswith("faiss")]
    for n, r in out.items():
        print(f"{n:64s} recall {r['recall10']:.4f}  QPS b1 {r['qps_b1']:8.1f}  b16 {r['qps_b16']:8.1f}", flush=True)
    for n, r in out.items():  # each layout of ours against each anchor point
        if n in anchors:
            continue
        for a in anchors:
            r.setdefault("vs", {})[a] = [round(r["qps_b1"] / out[a]["qps_b1"], 2),
                                         round(r["qps_b16"] / out[a]["qps_b16"], 2)]
            print(f"  {n} / {a}: {r['vs'][a][0]:.2f}x batch 1, {r['vs'][a][1]:.2f}x batch 16", flush=True)
    H.save(f"bench_ann_{args.n}x{args.d}_same_minutes", [{"method": n, **r} for n, r in out.items()],
           meta={"openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "rounds": args.rounds,
                 "timing": "call by call alternating; median of the last three quarters"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
