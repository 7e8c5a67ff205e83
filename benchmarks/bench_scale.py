"""10M rows on one small machine: build, index, compact and search a collection of
10M x 384 float16 vectors with binary codes, measuring anonymous memory (RssAnon) and
mapped file pages (RssFile; the page cache) separately, per phase.

    python benchmarks/bench_scale.py --n 10000000 --d 384

Data: ``bench_collection.data_chunks`` (seed 0, 1,024 clusters), written once as a
float16 .npy in --data-dir and passed to ``add()`` as a ``numpy.memmap`` (the rows are
file pages, not process memory, like a dataset on disk). Phases, in one process:
``add`` (one call: the rows stream into segments of at most 1 GiB), ``index``
(``create_index("ivf")``: k-means on a sample, every row assigned, list files written,
nprobe tuned), ``delete`` 1% of the rows and ``compact`` (every segment rewritten
without them, streaming, lists carried over), ``search`` (1,000 single queries and 63
batches of 16, ivf defaults). A thread samples /proc/self/status every 20 ms; the
page cache the machine holds for the collection is /proc/meminfo's ``Cached``.
Results: benchmarks/results/bench_scale_<n>x<d>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402
from bench_ann import cpu_lock  # noqa: E402

import nestvec as nv  # noqa: E402

FIELDS = ("RssAnon", "RssFile", "RssShmem", "VmRSS")


def status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k = line.split(":")[0]
            if k in FIELDS:
                out[k] = int(line.split()[1]) * 1024
    return out


def cached() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Peak of each /proc/self/status field while a phase runs."""

    def __init__(self):
        self.peak, self._stop = {}, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for k, v in status().items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def make_data(n, d, path: Path):
    from bench_collection import data_chunks

    if path.exists():
        return
    tmp = path.with_suffix(".tmp.npy")
    x = np.lib.format.open_memmap(tmp, "w+", np.float16, (n, d))
    for ids, xs, _ in data_chunks(n, d, 200_000, clusters=1024):
        x[ids[0]:ids[-1] + 1] = xs
    x.flush()
    del x
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--data-dir", default="/tmp/nestvec-ann")
    p.add_argument("--keep", action="store_true", help="keep the collection")
    args = p.parse_args(argv)
    work = Path(args.data_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"scale-{args.n}x{args.d}.f16.npy"
    with cpu_lock(False):
        make_data(args.n, args.d, data)
    from bench_collection import data_chunks

    q = next(data_chunks(1000, args.d, 1000, clusters=1024, noise_seed=123))[1].astype(np.float32)
    x = np.load(data, mmap_mode="r")
    path = work / f"scale-{args.n}x{args.d}.nv"
    if path.exists():
        shutil.rmtree(path)
    phases, base = [], status()
    print(f"start: {json.dumps(base)}", flush=True)

    def phase(name, fn, exclusive=False):
        c0 = cached()
        with cpu_lock(exclusive), Sampler() as s:
            t0 = time.perf_counter()
            extra = fn() or {}
            secs = time.perf_counter() - t0
        row = {"phase": name, "seconds": round(secs, 1), **{f"peak_{k}_mb": round(v / 2**20, 1) for k, v in s.peak.items()},
               **{f"end_{k}_mb": round(v / 2**20, 1) for k, v in status().items()},
               "page_cache_delta_mb": round((cached() - c0) / 2**20, 1), **extra}
        phases.append(row)
        print(json.dumps(row), flush=True)

    col = nv.Collection.create(str(path), dim=args.d, dtype="float16", binary=True)
    phase("add", lambda: col.add(x) and {"segments": len(col._snap.segments)})
    phase("index", lambda: {"spec": col.create_index("ivf")})
    rng = np.random.default_rng(5)
    gone = rng.choice(args.n, args.n // 100, replace=False)
    phase("delete 1%", lambda: {"deleted": col.delete(ids=gone)})
    phase("compact", lambda: {"compact": col.compact(), "segments": len(col._snap.segments),
                              "indexed": col.indexes()["ivf"]["segments_indexed"]})

    def search():
        truth = []
        for a in range(0, 200, 50):  # exact answers of the first 200 queries, for recall
            t = col.search(q[a:a + 50], k=10, mode="flat")
            truth += [set(t.filter(t.column("query").to_numpy() == j).column("id").to_pylist()) for j in range(50)]
        got = [set(col.search(q[j], k=10, mode="ivf").column("id").to_pylist()) for j in range(200)]
        recall = float(np.mean([len(a & b) / 10 for a, b in zip(got, truth)]))
        t0 = time.perf_counter()
        for j in range(1000):
            col.search(q[j], k=10, mode="ivf")
        b1 = (time.perf_counter() - t0) / 1000
        t0 = time.perf_counter()
        for a in range(0, 1008, 16):
            col.search(q[a % 1000:a % 1000 + 16], k=10, mode="ivf")
        b16 = (time.perf_counter() - t0) / 63
        return {"recall10_vs_flat": round(recall, 4), "ms_b1": round(b1 * 1e3, 3), "ms_b16": round(b16 * 1e3, 3),
                "qps_b1": round(1 / b1, 1), "qps_b16": round(16 / b16, 1),
                "explain": col.explain(q[0], k=10, mode="ivf")}

    phase("search", search, exclusive=True)
    col.close()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    peak_anon = max(r["peak_RssAnon_mb"] for r in phases)
    print(f"peak RssAnon {peak_anon:.0f} MB (target < 6144 MB); collection {size / 2**30:.2f} GiB", flush=True)
    H.save(f"bench_scale_{args.n}x{args.d}", phases,
           meta={"n": args.n, "d": args.d, "collection_bytes": size, "peak_rss_anon_mb": peak_anon,
                 "start": base, "generator": "bench_collection.data_chunks seed 0, 1024 clusters"})
    if not args.keep:
        shutil.rmtree(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
