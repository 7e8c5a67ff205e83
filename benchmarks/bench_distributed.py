"""Scale-out benchmark: a ShardedCollection on a local Ray against one Collection
holding the same rows, and Ray Data ingestion against a single-process Encoder loop.

Search (synthetic clustered data, default 1M x 384 float16 + binary codes, k=10):
for 1, 2 and 4 shards, batch-1 latency (median over distinct queries) and batch-16
throughput, flat and funnel (both funnels: per-shard and two-round, with recall@10
against exact flat search), beside the single Collection in the same run; the
fan-out overhead is the sharded median minus the single one.

Ingestion (the BEIR MS MARCO subset in /work/shared/data, bundled MiniLM): the
texts through ``nestvec.distributed.ingest`` (Ray Data, an actor pool of Encoders,
shard segments, one commit) against one process that encodes them in batches and
adds them to a Collection; docs/s and the ratio.

Timed loops hold /tmp/nestvec-cpu.lock exclusively (the machine is shared), one
case at a time; builds and warm-ups do not. Or run the whole script under
``flock -x /tmp/nestvec-cpu.lock`` with ``--no-lock``: one hold for every case.

    python benchmarks/bench_distributed.py                 # 1M rows, 1/2/4 shards
    python benchmarks/bench_distributed.py --n 200000      # reduced
    python benchmarks/bench_distributed.py --skip-search   # ingestion only
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402
from bench_collection import data_chunks, queries, recall  # noqa: E402

import nestvec as nv  # noqa: E402

LOCK = "/tmp/nestvec-cpu.lock"
NO_LOCK = False  # --no-lock: a smoke run, figures not for reporting
CORPUS = os.path.join(H.ROOT.parent, "shared", "data", "beir-msmarco-subset", "corpus.jsonl")


@contextlib.contextmanager
def exclusive(how=fcntl.LOCK_EX):
    """The machine's CPU lock: exclusive while a case is timed, shared for builds (run
    this script outside any flock of that file)."""
    if NO_LOCK:
        yield
        return
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def per_call(fn, calls: int, base=None) -> dict:
    """Median / p90 ms of fn(i) over `calls` calls (a different query each), after warm-up.
    ``base``: the single collection's call, timed in turn with each call of ``fn`` on the
    same query (``base_median_ms``), so the overhead compares calls that saw the same
    load (the machine is shared: load drifts over a run)."""
    for i in range(min(5, calls)):
        fn(i)
        if base:
            base(i)
    ts, bs = [], []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        ts.append((time.perf_counter() - t0) * 1e3)
        if base:
            t0 = time.perf_counter()
            base(i)
            bs.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    out = {"median_ms": statistics.median(ts), "p90_ms": ts[int(0.9 * (len(ts) - 1))], "calls": calls}
    if base:
        out["base_median_ms"] = statistics.median(bs)
    return out


def build(path, n, d, chunk, shards):
    """The same rows, in the same order, into one Collection (shards=0) or S shards."""
    from nestvec.distributed import ShardedCollection

    schema = {"cat": "int32", "half": "bool"}
    if shards == 0:
        col = nv.Collection.create(path, dim=d, dtype="float16", metric="cosine", binary=True, schema=schema)
    else:
        col = ShardedCollection.create(path, shards=shards, dim=d, dtype="float16", metric="cosine",
                                       binary=True, schema=schema)
    t0 = time.perf_counter()
    for ids, x, meta in data_chunks(n, d, chunk):
        col.add(x, ids=ids, metadata=meta)
    seconds = time.perf_counter() - t0
    col.close()
    return seconds


def bench_search(base, n, d, shard_counts, calls, repeats, chunk, keep, layouts="all"):
    from nestvec.distributed import ShardedCollection

    q = queries(d, q=max(calls, 16), seed=123)
    rows, builds = [], {}
    for s in [0] + list(shard_counts):
        path = os.path.join(base, "single" if s == 0 else f"s{s}")
        if not os.path.exists(path):
            with exclusive(fcntl.LOCK_SH):
                builds[s] = build(path, n, d, chunk, s)
            print(f"built {'single' if s == 0 else f'{s} shards'}: {n:,} rows in {builds[s]:.1f} s", flush=True)
    single = nv.open(os.path.join(base, "single"), read_only=True)
    exact16 = single.search(q[:16], k=10, mode="flat")
    # (mode, funnel, shards per reader actor: None = the default, one actor per node,
    # the fan-out through a Ray compiled graph: last, as its actors poll their
    # channels, a core busy while the graph lives)
    cases = [("flat", None, None, False), ("funnel", "per_shard", None, False), ("funnel", "two_round", 1, False),
             ("funnel", "per_shard", 2, False), ("flat", None, 1, False), ("funnel", "per_shard", 1, False),
             ("flat", None, None, True), ("funnel", "per_shard", None, True)]
    if layouts == "default":
        cases = [c for c in cases if c[2] is None and not c[3]]
    base_ms = {}
    for s in [0] + list(shard_counts):
        handles = {}
        for mode, funnel, spr, compiled in cases:
            if s == 0 and (spr or compiled):
                continue
            if spr and spr >= s:
                continue  # as many shards per actor as shards: the default layout
            if s == 0:
                col = single
            else:
                if (spr, compiled) not in handles:
                    handles[(spr, compiled)] = ShardedCollection.open(
                        os.path.join(base, f"s{s}"), read_only=True, shards_per_reader=spr, compiled_graph=compiled)
                col = handles[(spr, compiled)]
            kw = {"mode": mode, "k": 10, "rescore": 10}
            if s and funnel:
                kw["funnel"] = funnel
            name = mode if not funnel or s == 0 else f"{mode} ({funnel})"
            if spr:
                name += f", {spr} shard{'s' if spr > 1 else ''} per reader actor"
            if compiled:
                name += ", compiled graph"
            fn1 = lambda i: col.search(q[i:i + 1], **kw)  # noqa: E731
            fn16 = lambda: col.search(q[:16], **kw)  # noqa: E731
            fn16()
            single_kw = {k: v for k, v in kw.items() if k != "funnel"}
            base1 = None if s == 0 else (lambda i: single.search(q[i:i + 1], **single_kw))  # noqa: E731
            with exclusive():
                load = open("/proc/loadavg").read().split()[0]
                b1 = per_call(fn1, calls, base1)
                b16 = H.timeit(fn16, repeats=repeats)
            got = fn16()
            r = {"shards": s or "single", "case": name, "shards_per_reader": spr, "compiled_graph": compiled,
                 "batch1_median_ms": b1["median_ms"],
                 "batch1_p90_ms": b1["p90_ms"], "batch16_ms": b16["median_ms"],
                 "batch16_qps": 16e3 / b16["median_ms"], "recall@10": recall(got, exact16, 10),
                 "load1": float(load)}
            if s == 0:
                base_ms[mode] = b1["median_ms"]
            else:
                # against the single collection's calls interleaved with these (same load)
                r["single_interleaved_ms"] = b1["base_median_ms"]
                r["overhead_ms"] = b1["median_ms"] - b1["base_median_ms"]
                r["overhead_vs_single_row_ms"] = b1["median_ms"] - base_ms[mode]
                if mode == "flat":  # exact: ids and scores equal the single collection's
                    want = single.search(q[:16], k=10, mode="flat")
                    r["equal_to_single"] = bool(got.column("id").equals(want.column("id")) and np.allclose(
                        got.column("score").to_numpy(), want.column("score").to_numpy()))
            rows.append(r)
            print(json.dumps(r), flush=True)
        for h in handles.values():
            h.close()
    single.close()
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
    return rows, {str(k): v for k, v in builds.items()}


def bench_ingest(base, docs, shards, batch_size, repeats=3):
    """``repeats`` alternating rounds (one process, then ``ingest``): the VM's speed
    moves by several percent between minutes, so each ratio pairs neighbours, and
    the summary is the median round. The first ingestion also starts Ray Data's own
    actors (stats, autoscaling); later ones find them running."""
    from nestvec.distributed import ingest

    # split on newlines only: passages hold U+2028 and other characters splitlines() breaks at
    lines = [x for x in open(CORPUS, encoding="utf-8").read().split("\n") if x.strip()][:docs]
    src = os.path.join(base, "corpus.jsonl")
    with open(src, "w") as f:
        f.write("\n".join(lines) + "\n")
    texts = [json.loads(x)["text"] for x in lines]
    ids = [str(json.loads(x)["_id"]) for x in lines]
    rows = []
    enc = nv.Encoder()
    enc.encode(texts[:64], progress=False)  # warm
    for r in range(repeats):
        with exclusive():
            load = float(open("/proc/loadavg").read().split()[0])
            t0 = time.perf_counter()
            col = nv.Collection.create(os.path.join(base, f"one{r}"), dim=enc.dim, dtype="float16",
                                       metric="cosine", binary=True)
            for i in range(0, len(texts), batch_size):
                col.add(enc.encode(texts[i:i + batch_size], progress=False), ids=ids[i:i + batch_size])
            col.close()
            one_s = time.perf_counter() - t0
        shutil.rmtree(os.path.join(base, f"one{r}"), ignore_errors=True)
        rows.append({"case": "one process: Encoder loop + Collection.add", "round": r, "docs": len(texts),
                     "seconds": one_s, "docs_per_s": len(texts) / one_s, "load1": load})
        print(json.dumps(rows[-1]), flush=True)
        with exclusive():
            load = float(open("/proc/loadavg").read().split()[0])
            t0 = time.perf_counter()
            sc = ingest(src, os.path.join(base, f"sharded{r}"), text_column="text", id_column="_id",
                        encoder=nv.Encoder, shards=shards, batch_size=batch_size)
            ray_s = time.perf_counter() - t0
        info = dict(sc.last_ingest)
        assert sc.count() == len(texts)
        sc.close()
        shutil.rmtree(os.path.join(base, f"sharded{r}"), ignore_errors=True)
        steady = info.get("encode_rows_per_s")
        rows.append({"case": f"Ray Data ingest ({info['actors']} Encoder actor(s), {shards} shards)", "round": r,
                     "docs": len(texts), "seconds": ray_s, "docs_per_s": len(texts) / ray_s,
                     "pipeline_seconds": info["seconds"], "actor_busy_seconds": info.get("encode_seconds"),
                     "actor_start_seconds": info.get("actor_start_seconds"),
                     "prepare_seconds": info.get("prepare_seconds"), "commit_seconds": info.get("commit_seconds"),
                     "steady_docs_per_s": steady, "ratio_vs_one_process": one_s / ray_s,
                     "steady_ratio_vs_one_process": steady / (len(texts) / one_s) if steady else None,
                     "load1": load})
        print(json.dumps(rows[-1]), flush=True)
    pairs = [x for x in rows if x["case"].startswith("Ray")]
    ratios = sorted(x["ratio_vs_one_process"] for x in pairs)
    rows.append({"case": f"median of {repeats} rounds", "docs": len(texts),
                 "ratio_vs_one_process": statistics.median(ratios),
                 "ratio_min": ratios[0], "ratio_max": ratios[-1],
                 "steady_ratio_vs_one_process": statistics.median(
                     x["steady_ratio_vs_one_process"] for x in pairs if x["steady_ratio_vs_one_process"])})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--calls", type=int, default=100, help="batch-1 calls per case (distinct queries)")
    ap.add_argument("--repeats", type=int, default=10, help="batch-16 repeats per case")
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--docs", type=int, default=5000, help="MS MARCO documents to ingest")
    ap.add_argument("--ingest-shards", type=int, default=2)
    ap.add_argument("--ingest-repeats", type=int, default=3, help="alternating rounds (one process, ingest)")
    ap.add_argument("--batch-size", type=int, default=512, help="rows per batch, both sides (ingest()'s default)")
    ap.add_argument("--cpus", type=int, default=None, help="local Ray's CPUs (default: the machine's)")
    ap.add_argument("--dir", default=None, help="where the collections go (kept; default: a temp dir)")
    ap.add_argument("--layouts", choices=("all", "default"), default="all",
                    help="search cases: every reader layout and the compiled graph, or the default layout only")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--out", default="bench_distributed")
    ap.add_argument("--no-lock", action="store_true",
                    help="take no CPU lock per case: a smoke run, or the whole run under an outer "
                         "`flock -x /tmp/nestvec-cpu.lock` (one hold, no other job between the cases)")
    a = ap.parse_args(argv)
    global NO_LOCK
    NO_LOCK = a.no_lock

    import ray

    ray.init(num_cpus=a.cpus, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(H.describe(), flush=True)
    base = a.dir or tempfile.mkdtemp(prefix="nv_dist_")
    os.makedirs(base, exist_ok=True)
    meta = {"n": a.n, "d": a.d, "k": 10, "rescore": 10, "ray": ray.__version__,
            "ray_cpus": ray.cluster_resources().get("CPU"), "argv": sys.argv[1:]}
    search_rows, ingest_rows = [], []
    if not a.skip_search:
        search_rows, meta["build_seconds"] = bench_search(os.path.join(base, f"n{a.n}"), a.n, a.d,
                                                          [int(s) for s in a.shards.split(",")], a.calls,
                                                          a.repeats, a.chunk, keep=a.dir is not None,
                                                          layouts=a.layouts)
        print(H.markdown_table(search_rows, ["shards", "case", "batch1_median_ms", "single_interleaved_ms",
                                             "overhead_ms", "batch1_p90_ms",
                                             "batch16_qps", "recall@10", "equal_to_single"]))
        H.save(a.out, [{"part": "search", **r} for r in search_rows], meta)  # kept if ingestion fails
    if not a.skip_ingest:
        if os.path.exists(CORPUS):
            ingest_rows = bench_ingest(tempfile.mkdtemp(prefix="nv_ingest_", dir=base), a.docs, a.ingest_shards,
                                       a.batch_size, a.ingest_repeats)
            print(H.markdown_table(ingest_rows, ["case", "round", "docs", "seconds", "docs_per_s",
                                                 "ratio_vs_one_process",
                                                 "actor_start_seconds", "actor_busy_seconds",
                                                 "steady_docs_per_s",
                                                 "steady_ratio_vs_one_process"]))
        else:
            print(f"no {CORPUS}: ingestion skipped")
    path = H.save(a.out, [{"part": "search", **r} for r in search_rows] + [{"part": "ingest", **r}
                                                                           for r in ingest_rows], meta)
    print(f"saved {path}")
    if a.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
