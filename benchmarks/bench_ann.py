"""Sub-linear search: nestvec ivf / hnsw against the ANN libraries, same data, same run.

    python benchmarks/bench_ann.py --n 1000000 --d 768            # synthetic, every method
    python benchmarks/bench_ann.py --n 1000000 --d 768 --only ours-ivf,hnswlib-M16
    python benchmarks/bench_ann.py --n 200000 --d 768 --only ours-ivf-searcher,faiss-IVFFlat
    python benchmarks/bench_ann.py --msmarco                      # nDCG@10 of ivf / hnsw defaults vs flat
    python benchmarks/bench_ann.py --report                       # table + PNG from the saved runs

Data: ``bench_collection.data_chunks`` (clustered, embedding-like: a cluster centre out
of ``--clusters``, a point of a shared 32-dim latent subspace and isotropic noise, unit
norm, float16; seed 0; queries: other points of the same distribution, seed 123), plus
an int ``cat`` column uniform in 0..99 for the filtered runs. Kept in ``--data-dir``
(default /tmp/nestvec-ann) with its exact top-10 (nestvec flat search, float16 rows).

Each method is tuned over its own parameter sweep; every point reports recall@10
against exact search (1,000 queries), QPS at batch 1 and batch 16, build time and
index memory. Anchors get float32 copies of the same float16 rows (normalised;
inner product = cosine). Builds hold a shared lock on /tmp/nestvec-cpu.lock and every
timed loop an exclusive one (other jobs share the machine). Results:
benchmarks/results/bench_ann_<n>x<d>.json (one file per dataset), bench_ann.png.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402

import nestvec as nv  # noqa: E402
from ann_anchors import K, LOCK, Faiss, Hnswlib, Method, USearch, cpu_lock, normalised_f32  # noqa: E402,F401
from ann_report import RECALL_TARGET, plot, report_tables, summary  # noqa: E402,F401

NQ = 1000
# when this invocation started: each row names its run (a dataset's JSON gathers the rows
# of several runs, one method rerun at a time)
RUN = time.strftime("%Y-%m-%dT%H:%M:%S")
TIME_B1_S = 1.5  # each timed point: every query, and at least this long, after a warm-up


def status_kb(field: str, pid="self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- data


def dataset(n: int, d: int, clusters: int, data_dir: Path):
    """(memmapped float16 rows [n, d], queries float32 [NQ, d], cat [n], exact top-10
    [NQ, 10], filtered exact top-10 {percent: [NQ, 10]}); generated once."""
    from bench_collection import data_chunks

    base = data_dir / f"synth-{n}x{d}-c{clusters}"
    files = {k: Path(f"{base}.{k}.npy") for k in ("x", "q", "cat", "gt", "gt1", "gt10", "gt50")}
    if not all(f.exists() for f in files.values()):
        data_dir.mkdir(parents=True, exist_ok=True)
        with cpu_lock(False):
            x = np.lib.format.open_memmap(files["x"], "w+", np.float16, (n, d))
            cat = np.empty(n, np.int32)
            for ids, xs, meta in data_chunks(n, d, 100_000, clusters=clusters):
                x[ids[0]:ids[-1] + 1] = xs
                cat[ids[0]:ids[-1] + 1] = meta["cat"]
            x.flush()
            q = next(data_chunks(NQ, d, NQ, clusters=clusters, noise_seed=123))[1].astype(np.float32)
            np.save(files["q"], q)
            np.save(files["cat"], cat)
            for key, allow in (("gt", None), ("gt1", cat < 1), ("gt10", cat < 10), ("gt50", cat < 50)):
                gt = np.concatenate([nv.dense_topk(x, q[a:a + 50], K, allow=allow)[1] for a in range(0, NQ, 50)])
                np.save(files[key], gt)
            del x
    x = np.load(files["x"], mmap_mode="r")
    out = {k: np.load(v) for k, v in files.items() if k != "x"}
    return x, out["q"], out["cat"], out["gt"], {1: out["gt1"], 10: out["gt10"], 50: out["gt50"]}


def recall_at(got: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b[b >= 0].tolist())) / max(1, min(K, (b >= 0).sum()))
                          for a, b in zip(got, gt)]))


# --------------------------------------------------------------------------- timing


def measure(search, q, gt):
    """search(q_batch) -> ids [B, K]. recall over all queries (batch 16), QPS at batch 1
    and 16 (every query, and at least TIME_B1_S each, after a warm-up), under the
    exclusive lock."""
    with cpu_lock(True):
        got = np.concatenate([search(q[a:a + 16]) for a in range(0, len(q), 16)])
        out = {"recall10": round(recall_at(got, gt), 4)}
        for b in (1, 16):
            t_end = time.perf_counter() + H.WARM_S
            i = 0
            while time.perf_counter() < t_end:
                search(q[i % len(q):i % len(q) + b])
                i += b
            # every query once, and round again until TIME_B1_S: one pass of a fast
            # method took ~0.25 s, short enough for this VM's drift to move it 20%
            n, t0, stop = 0, time.perf_counter(), len(q) - len(q) % b
            while n < stop or time.perf_counter() - t0 < TIME_B1_S:
                a = n % stop
                search(q[a:a + b])
                n += b
            out[f"qps_b{b}"] = round(n / (time.perf_counter() - t0), 1)
        out["load"] = os.getloadavg()[0]
    return out


# --------------------------------------------------------------------------- methods


class Ours(Method):
    family = "nestvec"

    def __init__(self, mode, index=None, opts=None, sweep=None, variant="", api="search", segment_gib=None):
        self.mode, self.index, self.opts, self._sweep = mode, index, opts or {}, sweep
        self.name = f"ours-{mode}" + (f"-{variant}" if variant else "")
        # segment_gib: the same collection compacted under a larger segment cap (fewer,
        # longer list ranges per probe); a copy beside the default one
        self.segment_gib = segment_gib
        # "search": Collection.search (checks, plan and an Arrow table per call);
        # "searcher": Collection.searcher(...).search (NumPy ids, the plan kept)
        self.api = api
        self._searchers = {}

    def build(self, x, cat, work):
        path = work / f"col-{len(x)}x{x.shape[1]}.nv"
        t0 = time.perf_counter()
        if not (path / "LATEST").exists():
            with cpu_lock(False):
                col = nv.Collection.create(str(path), dim=x.shape[1], schema={"cat": "int32"})
                step = 1 << 20
                for a in range(0, len(x), step):
                    col.add(x[a:a + step], metadata={"cat": cat[a:a + step]})
                col.compact()
                col.close()
        if self.segment_gib:
            path = self._layout(path)
        self.col = nv.open(str(path))
        self.add_s = time.perf_counter() - t0
        self.build_s = 0.0
        self.path = path
        if self.index:
            have = self.col.indexes().get(self.index)
            if have is None or any(have.get(k) != v for k, v in self.opts.items()):
                if have is not None:
                    self.col.drop_index(self.index)
                with cpu_lock(False):
                    t0 = time.perf_counter()
                    self.col.create_index(self.index, **self.opts)
                    self.build_s = time.perf_counter() - t0
                self.col.compact()
            spec = self.col.indexes()[self.index]
            self.build_s = self.build_s or spec.get("build_s", 0.0)
            self.spec = spec
        return self

    def _layout(self, path: Path) -> Path:
        """A copy of the collection at ``path`` compacted into segments of at most
        segment_gib GiB (its index carried over), made once."""
        import shutil

        from nestvec.collection import TieredMergePolicy

        out = path.with_name(f"{path.stem}-seg{self.segment_gib}g.nv")
        if not (out / "LATEST").exists():
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(path, out)
            with cpu_lock(False):
                col = nv.open(str(out), merge_policy=TieredMergePolicy(max_segment_bytes=int(self.segment_gib * (1 << 30))))
                col.compact()
                col.close()
        return out

    def sweep(self):
        return self._sweep or [{}]

    def search(self, q, **p):
        if self.api == "searcher":
            key = tuple(sorted(p.items()))
            s = self._searchers.get(key)
            if s is None:
                s = self._searchers[key] = self.col.searcher(k=K, mode=self.mode, **p)
            return s.search(q)[0]
        t = self.col.search(q, k=K, mode=self.mode, **p)
        out = np.full((len(q), K), -1, np.int64)
        qi = t.column("query").to_numpy()
        ids = t.column("id").to_numpy()
        pos = np.arange(len(qi)) - np.searchsorted(qi, qi)
        out[qi, pos] = ids
        return out

    def close(self):
        # one writer per collection: the next mode reopens it
        self._searchers.clear()
        self.col.close()

    def memory(self):
        if not self.index:
            return 0
        m = self.col._snap.manifest
        return sum(e[self.index]["bytes"] for e in m["segments"] if e.get(self.index)) + \
            (m["indexes"]["ivf"]["centroids"]["bytes"] if self.index == "ivf" else 0)


def methods(n: int, d: int) -> list:
    nlist_old = 2 ** round(np.log2(1.5 * np.sqrt(n)))  # the default before 4 sqrt(N)
    ivf_sweep = [{}] + [{"nprobe": p, "rescore": r} for p in (1, 2, 3, 4, 8, 16) for r in (3, 5, 10, 20)]
    hnsw_sweep = [{}] + [{"ef": e} for e in (16, 32, 64, 128, 256)]
    return [
        Ours("flat"),
        Ours("funnel", sweep=[{"rescore": r} for r in (10, 20, 40)]),
        Ours("ivf", "ivf", {}, ivf_sweep),
        Ours("hnsw", "hnsw", {}, hnsw_sweep),
        # the same indexes through Collection.searcher (NumPy answers, plan kept)
        Ours("ivf", "ivf", {}, ivf_sweep, variant="searcher", api="searcher"),
        Ours("hnsw", "hnsw", {}, hnsw_sweep, variant="searcher", api="searcher"),
        # variants (replace the collection's ivf index; run them with --only)
        Ours("ivf", "ivf", {"dim": d}, ivf_sweep, variant=f"dim{d}"),
        Ours("ivf", "ivf", {"codes": "centred"}, ivf_sweep, variant="centred"),
        Ours("ivf", "ivf", {"nlist": nlist_old}, ivf_sweep, variant=f"nlist{nlist_old}"),
        # the searcher over the same rows in segments of up to 4 GiB (the default cap is
        # 1 GiB): a probe reads one range per list per segment (run it with --only)
        Ours("ivf", "ivf", {}, ivf_sweep, variant="searcher-seg4g", api="searcher", segment_gib=4),
        Hnswlib(16), Hnswlib(32),
        Faiss("IVFFlat"), Faiss("IVFPQ+refine"), Faiss("BinaryIVF"), Faiss("HNSWFlat"),
        USearch("f16"), USearch("b1"),
    ]


# --------------------------------------------------------------------------- runs


def run_method(m, x, q, cat, gt, work: Path) -> list:
    rss0 = status_kb("RssAnon")
    m.build(x, cat, work)
    rss1 = status_kb("RssAnon")
    rows = []
    for p in m.sweep():
        r = measure(lambda b: m.search(b, **p), q, gt)
        if isinstance(m, Ours) and m.index and not p:
            spec = m.spec
            p = {"default": True, **{k: spec[k] for k in ("nprobe", "rescore", "ef") if k in spec}}
        row = {"method": m.name, "family": m.family, "params": p, **r, "build_s": round(getattr(m, "build_s", 0), 2),
               "index_bytes": int(m.memory()), "build_rss_anon_mb": round((rss1 - rss0) / 1024, 1), "run": RUN}
        rows.append(row)
        print(f"  {m.name:22s} {json.dumps(p):44s} recall {r['recall10']:.4f}  qps b1 {r['qps_b1']:8.1f}  "
              f"b16 {r['qps_b16']:8.1f}  build {row['build_s']:.1f} s", flush=True)
    return rows


def filtered(col_method, q, gt_f, base_params) -> list:
    """Our modes under 1 / 10 / 50 % filters: recall against exact filtered search and
    batch-1 latency against the same mode unfiltered, through the method's API
    (``search`` or a ``searcher`` per filter), timed alternately query by query."""
    rows = []
    col = col_method.col
    for mode in ("ivf", "hnsw", "auto"):
        if mode != "auto" and mode not in col.indexes():
            continue
        fns = {}
        for pct in [None] + list(gt_f):
            flt = None if pct is None else nv.field("cat") < pct
            if col_method.api == "searcher":
                fns[pct] = col.searcher(k=K, mode=mode, filter=flt).search
            else:
                fns[pct] = (lambda f: lambda x: col.search(x, k=K, mode=mode, filter=f))(flt)
        with cpu_lock(True):
            lat = _latencies(fns, q)
            for pct, gt in gt_f.items():
                flt = nv.field("cat") < pct
                got = np.concatenate([_ids(col.search(q[a:a + 16], k=K, mode=mode, filter=flt), 16)
                                      for a in range(0, len(q), 16)])
                rows.append({"mode": mode, "api": col_method.api, "selectivity_pct": pct,
                             "recall10": round(recall_at(got, gt), 4), "latency_ms_b1": round(lat[pct], 4),
                             "unfiltered_ms_b1": round(lat[None], 4), "ratio": round(lat[pct] / lat[None], 3),
                             "plan": col.explain(q[:1], k=K, mode=mode, filter=flt), "run": RUN})
                print(f"  filtered {mode:5s} {pct:3d}%  recall {rows[-1]['recall10']:.4f}  {lat[pct]:.3f} ms "
                      f"({rows[-1]['ratio']:.2f}x unfiltered {lat[None]:.3f} ms)", flush=True)
    return rows


def _ids(t, nq):
    out = np.full((nq, K), -1, np.int64)
    qi = t.column("query").to_numpy()
    pos = np.arange(len(qi)) - np.searchsorted(qi, qi)
    out[qi, pos] = t.column("id").to_numpy()
    return out


def _latencies(fns: dict, q) -> dict:
    """Median ms of one query through each of ``fns``, called in turn on every query
    (the machine's drift falls on all of them alike), after an untimed pass of each
    over every query: at 10M rows the collection's pages may not all be in the page
    cache, and the first mode timed paid the disk reads (a warm-up of 50 queries
    left the 10% filter at 5x the unfiltered search, 1.2x once warm)."""
    for j in range(len(q)):
        for f in fns.values():
            f(q[j])
    t = {key: [] for key in fns}
    n, t0 = 0, time.perf_counter()
    while n < len(q) and (time.perf_counter() - t0 < TIME_B1_S * len(fns) or n < 50):
        for key, f in fns.items():
            a = time.perf_counter()
            f(q[n])
            t[key].append(time.perf_counter() - a)
        n += 1
    return {key: float(np.median(v)) * 1e3 for key, v in t.items()}


def resident(path: str, q_path: str, mode: str) -> dict:
    """In a fresh process: open the collection, run 1,000 single-query searches, report
    what is resident (smaps Rss per mapped file kind, and RssAnon)."""
    code = f"""
import json, os, numpy as np, nestvec as nv
col = nv.open({path!r}, read_only=True)
q = np.load({q_path!r})
anon0 = int([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])
for j in range(len(q)):
    col.search(q[j], k=10, mode={mode!r})
anon1 = int([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])
rss, cur = {{}}, None
for line in open('/proc/self/smaps'):
    parts = line.split()
    if len(parts) >= 6 and '-' in parts[0] and len(parts[0]) > 8:
        cur = parts[5] if len(parts) >= 6 else None
    elif line.startswith('Rss:') and cur and {path!r} in cur:
        kind = 'lists' if cur.endswith('.ivf.arrow') else 'centroids' if cur.endswith('.ivfc.arrow') else \\
            'spans' if cur.endswith('.ivfs.arrow') else 'graph' if cur.endswith('.hnsw') else 'segments'
        rss[kind] = rss.get(kind, 0) + int(parts[1]) * 1024
print(json.dumps({{"rss_file_bytes": rss, "rss_anon_delta_bytes": (anon1 - anon0) * 1024,
                  "rows": col.count(), "dim": col.dim}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def msmarco(out_rows: list) -> dict:
    """nDCG@10 on the MS MARCO subset (bundled MiniLM): flat vs ivf / hnsw at their
    defaults, the defaults a user gets (segments below min_rows are searched
    exhaustively, so at 5,000 rows an index changes nothing) and with every segment
    indexed (min_rows=0)."""
    import beir
    from bench_quality import embed_corpus

    from nestvec.embed import Encoder

    path = beir.default_dirs()[0]
    doc_ids, docs, qids, queries, qrels = beir.load(path)
    emb, _ = embed_corpus(path, docs, 6, None, 32)
    q = Encoder().encode(queries)
    ids = np.asarray(doc_ids)
    res = {}
    for label, opts in (("defaults", {}), ("indexed (min_rows=0)", {"min_rows": 0})):
        col = nv.Collection.create(None, dim=emb.shape[1])
        col.add(emb.astype(np.float16))
        for kind in ("ivf", "hnsw"):
            col.create_index(kind, **opts)
        for mode in ("flat", "funnel", "ivf", "hnsw"):
            t = col.search(q, k=100, mode=mode)
            run10 = {qid: [] for qid in qids}
            run100 = {qid: [] for qid in qids}
            for qi, i in zip(t.column("query").to_numpy(), t.column("id").to_numpy()):
                run100[qids[qi]].append(ids[i])
                if len(run10[qids[qi]]) < 10:
                    run10[qids[qi]].append(ids[i])
            ev = beir.evaluate(run10, qrels, 10, 100)
            ev100 = beir.evaluate(run100, qrels, 10, 100)
            res[f"{label}: {mode}"] = {"ndcg10": round(ev["ndcg@10"], 4), "recall100": round(ev100["recall@100"], 4),
                                       "index": col.indexes().get(mode)}
            print(f"  msmarco {label:22s} {mode:6s} nDCG@10 {ev['ndcg@10']:.4f}", flush=True)
    out_rows.append({"msmarco": res})
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--data-dir", default="/tmp/nestvec-ann")
    p.add_argument("--only", default="", help="comma list of method names")
    p.add_argument("--skip", default="", help="comma list of method names")
    p.add_argument("--build-only", action="store_true", help="build and save every index, time nothing")
    p.add_argument("--msmarco", action="store_true", help="only the MS MARCO quality check")
    p.add_argument("--report", action="store_true", help="only the PNG and summary from saved runs")
    args = p.parse_args(argv)
    out_dir = H.RESULTS
    if args.report:
        paths = sorted(out_dir.glob("bench_ann_*x*.json"))
        # the plot: the issue's datasets (not reruns of one method or the small smoke runs)
        main_runs = [q for q in paths if re.fullmatch(r"bench_ann_(\d+)x\d+\.json", q.name)
                     and int(re.match(r"bench_ann_(\d+)", q.name).group(1)) >= 100_000]
        plot(main_runs, out_dir / "bench_ann.png")
        for path in main_runs:  # (the others are reruns and checks in formats of their own)
            print(path.name)
            print(report_tables(json.loads(path.read_text())["rows"]))
        return 0
    if args.msmarco:
        rows = []
        res = msmarco(rows)
        H.save("bench_ann_msmarco", rows, meta={"results": res})
        return 0
    work = Path(args.data_dir)
    x, q, cat, gt, gt_f = dataset(args.n, args.d, args.clusters, work)
    name = f"bench_ann_{args.n}x{args.d}"
    prev = out_dir / f"{name}.json"
    rows = json.loads(prev.read_text())["rows"] if prev.exists() else []
    only = set(filter(None, args.only.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    todo = methods(args.n, args.d)
    while todo:
        # popped, so that a finished method's index is freed before the next is built
        # (at 10M x 384 one float32 anchor holds 15 GB)
        m = todo.pop(0)
        # replaces the collection's index, or copies the collection
        variant = isinstance(m, Ours) and (bool(m.opts) or bool(m.segment_gib))
        if (only and m.name not in only) or m.name in skip or (variant and not only):
            continue
        print(f"{m.name}:", flush=True)
        if args.build_only:
            m.build(x, cat, work)
            print(f"  built in {m.build_s:.1f} s", flush=True)
            m.close()
            del m
            gc.collect()
            continue
        new = run_method(m, x, q, cat, gt, work)
        rows = [r for r in rows if r.get("method") != m.name and not (r.get("filtered_by") == m.name)] + new
        if isinstance(m, Ours) and m.index:
            for r in filtered(m, q, gt_f, {}):
                rows.append({"filtered_by": m.name, **r})
        if isinstance(m, Ours) and m.index and m.api == "search":
            res = resident(str(m.col.path), str(work / f"synth-{args.n}x{args.d}-c{args.clusters}.q.npy"), m.mode)
            res["bytes_per_row"] = {k: round(v / res["rows"], 2) for k, v in res["rss_file_bytes"].items()}
            res["target_bytes_per_row"] = args.d / 8 + 16
            rows.append({"resident_of": m.name, **res})
            print(f"  resident after 1,000 searches: {res}", flush=True)
        H.save(name, rows, meta={"dataset": f"synthetic {args.n:,} x {args.d} float16, {args.clusters} clusters",
                                 "k": K, "queries": NQ, "generator": "bench_collection.data_chunks seed 0 / 123"})
        m.close()
        del m
        gc.collect()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
