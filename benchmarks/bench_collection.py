"""Collection benchmark: nestvec Collection vs LanceDB on the same synthetic clustered
data (default 1M x 384 float16, binary codes), in one run.

Reports open() time and resident-memory growth (mmap: opening must not read the
vectors; the open checks every file's size and structure, not its bytes), the first
search after open (it checks the id column's checksum), verify() (every checksum),
add throughput, search latency flat / binary / funnel at batch 1 and 16,
filtered flat search at 1% and 50% selectivity, with recall@10 against our exact
flat search; LanceDB flat (no index) and with a where filter beside ours.

    python benchmarks/bench_collection.py            # full size
    python benchmarks/bench_collection.py --n 100000 # reduced
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402
from nestvec import _backend

FILTERS = {"1%": ("cat", 7), "50%": ("half", True)}


# --------------------------------------------------------------------------- data


def data_chunks(n, d, chunk, seed=0, clusters=256, latent=32, noise_seed=None):
    """Embedding-like unit-norm float16 vectors + metadata, generated chunk by chunk:
    a cluster center, plus a point of a shared ``latent``-dim subspace (real embeddings
    have a low intrinsic dimension), plus isotropic noise. ``noise_seed`` draws other
    points of the same distribution (the queries)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, d)).astype(np.float32)
    basis = (rng.standard_normal((latent, d)) / np.sqrt(latent)).astype(np.float32)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centers[rng.integers(0, clusters, m)]
        x += rng.standard_normal((m, latent), dtype=np.float32) @ basis
        x += 0.3 * rng.standard_normal((m, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        meta = {"cat": rng.integers(0, 100, m).astype(np.int32), "half": rng.random(m) < 0.5}
        yield np.arange(start, start + m), x.astype(np.float16), meta


def queries(d, q=16, seed=123):
    return next(data_chunks(q, d, q, noise_seed=seed))[1].astype(np.float32)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- open probes (fresh process)

PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from bench_collection import rss_mb
kind, path = sys.argv[1], sys.argv[2]
if kind == "nestvec":
    import nestvec as nv
    import nestvec.collection  # module imports are not part of open()
    import numpy as np
    r0 = rss_mb(); t0 = time.perf_counter()
    c = nv.open(path, read_only=True)
    t1 = time.perf_counter(); r1 = rss_mb()
    c.search(np.ones(c.dim, np.float32), k=10, mode="flat")
    r2 = rss_mb()
    ts = time.perf_counter()  # a second search: the first also checked the id column
    c.search(np.ones(c.dim, np.float32), k=10, mode="flat")
    extra = {"first_search_ms": (ts - t1) * 1e3, "second_search_ms": (time.perf_counter() - ts) * 1e3}
    if hasattr(c, "verify"):
        tv = time.perf_counter(); c.verify(); extra["verify_ms"] = (time.perf_counter() - tv) * 1e3
else:
    import lancedb
    r0 = rss_mb(); t0 = time.perf_counter()
    tbl = lancedb.connect(path).open_table("t"); n = tbl.count_rows()
    t1 = time.perf_counter(); r1 = rss_mb()
    tbl.search([1.0] * tbl.schema.field("vector").type.list_size).select(["id", "_distance"]).limit(10).to_arrow()
    r2 = rss_mb()
    extra = {}
print(json.dumps({"open_ms": (t1 - t0) * 1e3, "rss_open_mb": r1 - r0, "rss_after_search_mb": r2 - r0, **extra}))
"""


def probe_open(kind, path):
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", PROBE, kind, path, here], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- ours


def build_ours(path, n, d, chunk):
    col = nv.Collection.create(path, dim=d, dtype="float16", metric="cosine", binary=True,
                               schema={"cat": "int32", "half": "bool"})
    t_add = 0.0
    for ids, x, meta in data_chunks(n, d, chunk):
        t0 = time.perf_counter()
        col.add(x, ids=ids, metadata=meta)
        t_add += time.perf_counter() - t0
    col.close()
    return t_add


def recall(got, exact, k=10):
    g = got.column("query").to_numpy(), got.column("id").to_numpy()
    e = exact.column("query").to_numpy(), exact.column("id").to_numpy()
    nq = int(e[0].max()) + 1
    return float(np.mean([len(set(g[1][g[0] == j][:k]) & set(e[1][e[0] == j][:k])) / k for j in range(nq)]))


def bench_ours(path, q, k, repeats):
    col = nv.open(path, read_only=True)
    rows = []
    for b in (1, 16):
        qb = q[:b]
        exact = col.search(qb, k=k, mode="flat")
        for mode in ("flat", "binary", "funnel"):
            fn = lambda: col.search(qb, k=k, mode=mode, rescore=10)  # noqa: E731
            r = H.timeit(fn, repeats=repeats)
            rows.append({"system": "nestvec", "case": mode, "batch": b, **r,
                         "recall@10": recall(fn(), exact, k)})
        for sel, (c, v) in FILTERS.items():
            sql = f"{c} = {str(v).lower() if isinstance(v, bool) else v}"
            for kind, flt in (("filter", nv.field(c) == v), ("SQL filter", sql)):
                # repeated calls reuse the filter's cached masks; the first call on a
                # filter evaluates it over every segment
                fn = lambda: col.search(qb, k=k, mode="flat", filter=flt)  # noqa: E731
                r = H.timeit(fn, repeats=repeats)
                rows.append({"system": "nestvec", "case": f"flat, {kind} {sel}", "batch": b, **r})
                rows.append({"system": "nestvec", "case": f"flat, {kind} {sel}, first call", "batch": b,
                             **cold(fn, col, repeats)})
    col.close()
    return rows


def cold(fn, col, repeats):
    """fn timed with the collection's filter-mask cache emptied before every call."""
    ts = []
    for _ in range(repeats):
        col._mask_cache.clear()
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": float(np.median(ts)), "min_ms": float(min(ts))}


# --------------------------------------------------------------------------- LanceDB


def build_lance(path, n, d, chunk):
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(path)
    tbl, t_add = None, 0.0
    for ids, x, meta in data_chunks(n, d, chunk):
        t = pa.table({"id": pa.array(ids), "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d),
                      "cat": pa.array(meta["cat"]), "half": pa.array(meta["half"])})
        t0 = time.perf_counter()
        if tbl is None:
            tbl = db.create_table("t", t)
        else:
            tbl.add(t)
        t_add += time.perf_counter() - t0
    return t_add


def bench_lance(path, q, k, repeats, ours_path):
    import lancedb

    tbl = lancedb.connect(path).open_table("t")
    col = nv.open(ours_path, read_only=True)
    rows = []
    for b in (1, 16):
        qb = q[:b]
        query = list(qb) if b > 1 else qb[0]

        def run(where=None):
            s = tbl.search(query).distance_type("cosine").select(["id", "_distance"]).limit(k)
            if where:
                s = s.where(where, prefilter=True)
            t = s.to_arrow()
            if "query_index" not in t.column_names:
                import pyarrow as pa

                t = t.append_column("query_index", pa.array(np.zeros(t.num_rows, np.int64)))
            return t.rename_columns(["query" if c == "query_index" else c for c in t.column_names])

        exact = col.search(qb, k=k, mode="flat")
        r = H.timeit(run, repeats=repeats)
        rows.append({"system": "lancedb", "case": "flat (no index)", "batch": b, **r,
                     "recall@10": recall(run(), exact, k)})
        for sel, (c, v) in FILTERS.items():
            where = f"{c} = {str(v).lower() if isinstance(v, bool) else v}"
            r = H.timeit(lambda: run(where), repeats=repeats)
            rows.append({"system": "lancedb", "case": f"flat, where {sel}", "batch": b, **r})
    col.close()
    return rows


# --------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--chunk", type=int, default=100_000, help="rows per add() call")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to build the data (default: a temp dir)")
    ap.add_argument("--no-lance", action="store_true")
    ap.add_argument("--open-only", action="store_true", help="build, then only the open probe")
    ap.add_argument("--name", default="collection")
    ap.add_argument("--note", default="", help="free text saved in the JSON meta")
    args = ap.parse_args(argv)

    root = args.dir or tempfile.mkdtemp(prefix="bench_collection_")
    ours, lance = os.path.join(root, "nestvec.nv"), os.path.join(root, "lance")
    for p in (ours, lance):
        shutil.rmtree(p, ignore_errors=True)
    q = queries(args.d)
    dense_backend = _backend.resolve("auto", np.zeros((1, 1), np.float16))
    rows = []
    try:
        t_add = build_ours(ours, args.n, args.d, args.chunk)
        rows.append({"system": "nestvec", "case": "add", "rows_per_s": args.n / t_add})
        for _ in range(3 if args.open_only else 1):  # the page cache is warm after the first
            rows.append({"system": "nestvec", "case": "open", **probe_open("nestvec", ours)})
        if not args.open_only:
            rows += bench_ours(ours, q, args.k, args.repeats)
        if not args.no_lance and not args.open_only:
            t_add = build_lance(lance, args.n, args.d, args.chunk)
            rows.append({"system": "lancedb", "case": "add", "rows_per_s": args.n / t_add})
            rows.append({"system": "lancedb", "case": "open", **probe_open("lancedb", lance)})
            rows += bench_lance(lance, q, args.k, args.repeats, ours)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    vec_mb = args.n * args.d * 2 / 2**20
    meta = {"n": args.n, "d": args.d, "k": args.k, "dtype": "float16", "binary": True, "chunk": args.chunk,
            "dense_backend": dense_backend, "vector_bytes_mb": vec_mb, "rescore": 10, "note": args.note}
    cols = ["system", "case", "batch", "median_ms", "min_ms", "recall@10", "rows_per_s", "open_ms",
            "rss_open_mb", "rss_after_search_mb", "first_search_ms", "second_search_ms", "verify_ms"]
    print(f"n={args.n} d={args.d} float16 (vectors {vec_mb:.0f} MiB), k={args.k}, dense backend: {dense_backend}")
    print(H.markdown_table(rows, cols))
    path = H.save(args.name, rows, meta)
    print(f"saved {path}")
    return rows


if __name__ == "__main__":
    main()
