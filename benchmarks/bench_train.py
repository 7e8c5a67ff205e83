"""Elastic depth and width from training: the 2D grid before / after distill_2d, and a
LOST-compressed encoder before / after recover (bundled MiniLM, BEIR MS MARCO subset).

    python benchmarks/bench_train.py [DIR] [--train-seconds 1800] [--recover-seconds 600]
        [--work FOLDER] [--retrain] [--max-docs N] [--speed-docs 512] [--quick]
        [--no-lock] [--out FOLDER] [--lr 2e-4] [--batching topic|length] [--default-weights]
        [--precision auto|float32|bfloat16] [--opt key=value ...]

DIR is a BEIR folder (default <repo>/../shared/data/beir-msmarco-subset). Training reads
its documents only (corpus.jsonl); queries and judgments serve the evaluation alone.

1. grid before: nDCG@10 and recall@100 of every exit (layers 2/3/4/6) x (dims
   64/128/256/384) of the bundled MiniLM (exact float16 search, prefix cosine at dim),
   queries and documents both at the exit; and the query-exit grid: queries at the
   exit against documents embedded at full depth (nestvec.Embedding(query_layers=));
2. nestvec.train.distill_2d on the documents for at most --train-seconds, then the
   grid again;
3. the FFN layers LOST-compressed (nestvec.nn.compress_model, rank 0.5 + 5% channels,
   as bench_quality's row), before and after nestvec.train.recover (--recover-seconds)
   with the uncompressed model as teacher;
4. encode speed (docs/s) of each exit, and of the original, compressed and recovered
   models, in alternating slices of --speed-docs documents; the median time to embed
   one query (batch 1) at each exit of the trained model.

Trained encoders are saved (Encoder.save) under --work (default
~/.cache/nestvec/bench_train) and reused unless --retrain. Heavy phases hold
/tmp/nestvec-cpu.lock shared, the timing phase exclusive (--no-lock when you hold it).
Writes bench_train.json and bench_train.png (heatmaps before / after) under
benchmarks/results/.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402
import beir  # noqa: E402
import bench_quality as bq  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LAYERS = (2, 3, 4, 6)
DIMS = (64, 128, 256, 384)
# The distill_2d run's settings, aimed at the targets (README, Train): lr 2e-4;
# the 3-layer exit weighs 2 (3 at full width), the full model 4 at full width (it must
# lose next to nothing), layer 2 0.5, the rest 1; topic batches (TAS-B's sampling);
# bfloat16 autocast where the CPU runs it natively.
WEIGHTS = {f"L{layer}/d{d}": {2: 0.5, 3: 2.0, 4: 1.0, 6: 1.0}[layer] for layer in LAYERS for d in DIMS}
WEIGHTS.update({"L3/d384": 3.0, "L6/d384": 4.0})
DEFAULT_WEIGHTS = {k: 4.0 if k == "L6/d384" else 1.0 for k in WEIGHTS}  # distill_2d's own
LR = 2e-4
LOCK = "/tmp/nestvec-cpu.lock"
_use_lock = True


@contextlib.contextmanager
def machine_lock(exclusive: bool):
    """The shared machine's lock: shared for heavy work, exclusive for timings."""
    if not _use_lock:
        yield
        return
    with open(LOCK, "a") as f:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"  waiting for {'exclusive' if exclusive else 'shared'} {LOCK} ...", flush=True)
            fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


# --------------------------------------------------------------------------- evaluation

def eval_grid(enc, data, layers=LAYERS, dims=DIMS, k=10, k_recall=100, tag=""):
    """{(layers, dim): (nDCG@k, recall@k_recall)} from one pass per text set: queries
    and documents both at the exit; and {("query", layers, dim): ...}: queries at the
    exit, documents at the deepest of ``layers`` (an index built at full depth)."""
    doc_ids, docs, qids, queries, qrels = data
    ids = np.asarray(doc_ids)
    t0 = time.perf_counter()
    E = enc.encode_exits(docs, layers=layers, progress=True)
    Q = enc.encode_exits(queries, layers=layers, progress=False)
    out = {}
    deep = E[max(layers)].astype(np.float16)
    for layer in layers:
        db16 = E[layer].astype(np.float16)
        for d in dims:
            d_ = None if d >= db16.shape[1] else d
            out[(layer, d)] = bq.evaluate_run(ids, qids, qrels, bq.search_flat(db16, Q[layer], k, d_),
                                              bq.search_flat(db16, Q[layer], k_recall, d_), k, k_recall)
            out[("query", layer, d)] = out[(layer, d)] if layer == max(layers) else bq.evaluate_run(
                ids, qids, qrels, bq.search_flat(deep, Q[layer], k, d_),
                bq.search_flat(deep, Q[layer], k_recall, d_), k, k_recall)
    print(f"  {tag} grid in {time.perf_counter() - t0:.0f} s (load {loadavg()})", flush=True)
    print_grid(out, layers, dims)
    if len(layers) > 1:
        print(f"    queries at the exit, documents at {max(layers)} layers:")
        print_grid(out, layers, dims, "query")
    return out


def print_grid(grid, layers=LAYERS, dims=DIMS, kind=None):
    print("    nDCG@10  " + " ".join(f"d{d:>6d}" for d in dims))
    for layer in layers:
        key = (lambda d: (layer, d)) if kind is None else (lambda d: (kind, layer, d))
        print(f"    L{layer}       " + " ".join(f"{grid[key(d)][0]:7.4f}" for d in dims))


def query_latency(enc, queries, layers=LAYERS, rounds=3):
    """Median ms to embed one query (batch 1) at each exit: the per-request cost a query
    exit cuts. Exits alternate within each round after a warm-up."""
    for layer in layers:
        enc.encode(queries[:8], layers=layer, batch_size=1, progress=False)
    ms = {layer: [] for layer in layers}
    for r in range(rounds):
        order = layers if r % 2 == 0 else tuple(reversed(layers))
        for q in queries:
            for layer in order:
                t0 = time.perf_counter()
                enc.encode([q], layers=layer, batch_size=1, progress=False)
                ms[layer].append((time.perf_counter() - t0) * 1e3)
    return {f"L{layer}": float(np.median(v)) for layer, v in ms.items()}


def speed(encoders, docs, batch_size, slices=8):
    """docs/s of each ``(name, encoder, layers)``: alternating slices after a warm-up."""
    for _, enc, layers in encoders:
        enc.encode(docs[:batch_size], layers=layers, batch_size=batch_size, progress=False)
    secs = [[] for _ in encoders]
    bounds = np.linspace(0, len(docs), slices + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        order = range(len(encoders)) if i % 2 == 0 else reversed(range(len(encoders)))
        for j in order:
            _, enc, layers = encoders[j]
            t0 = time.perf_counter()
            enc.encode(docs[a:b], layers=layers, batch_size=batch_size, progress=False)
            secs[j].append(time.perf_counter() - t0)
    sizes = np.diff(bounds)
    return {name: {"docs_per_s": float(len(docs) / sum(s)),
                   "docs_per_s_best": float(np.max(sizes / np.asarray(s))),
                   "slice_s": [round(x, 3) for x in s]} for (name, _, _), s in zip(encoders, secs)}


# --------------------------------------------------------------------------- training

def _load_or_train(work: Path, name: str, retrain: bool, fn, want: dict):
    """A trained encoder saved under ``work`` by an earlier run with the same settings
    (``want``: training config entries), else ``fn()`` trained and saved now."""
    from nestvec.embed import Encoder

    path = work / name
    if path.is_dir() and not retrain:
        enc = Encoder(path)
        have = (enc.training_info or {}).get("config", {})
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if not diff:
            print(f"  {name}: reusing {path} (--retrain to train again)", flush=True)
            return enc, enc.training_info
        print(f"  {name}: the encoder saved at {path} was trained otherwise {diff}; training again",
              flush=True)
    enc, hist = fn()
    if path.exists():
        import shutil

        shutil.rmtree(path)
    enc.save(path)
    return enc, hist.summary()


def plot(before, after, path, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = before[(max(LAYERS), max(DIMS))][0]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4), gridspec_kw={"wspace": 0.3})
    for ax, grid, kind, title in ((axes[0], before, (), "before (bundled all-MiniLM-L6-v2)"),
                                  (axes[1], after, (), "after distill_2d"),
                                  (axes[2], after, ("query",), "after: queries at the exit,\n"
                                   "documents at 6 layers")):
        m = np.array([[grid[kind + (layer, d)][0] for d in DIMS] for layer in LAYERS])
        im = ax.imshow(m, vmin=0.3, vmax=0.82, cmap="viridis", origin="lower")
        for i, layer in enumerate(LAYERS):
            for j, d in enumerate(DIMS):
                v = m[i, j]
                ax.text(j, i, f"{v:.3f}\n{v / full:.2f}x", ha="center", va="center", fontsize=8,
                        color="white" if v < 0.7 else "black")
        ax.set_xticks(range(len(DIMS)), [str(d) for d in DIMS])
        ax.set_yticks(range(len(LAYERS)), [f"{layer} of 6" for layer in LAYERS])
        ax.set_xlabel("dims (prefix)")
        ax.set_ylabel("layers run" if not kind else "layers run for the query")
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="nDCG@10")
    fig.suptitle(f"nDCG@10 per exit, BEIR MS MARCO subset ({meta['docs']} docs, {meta['queries']} "
                 f"queries); ratio to the full model before; training {meta['train_s']:.0f} s, "
                 f"{meta['train_steps']} steps", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _want(kw: dict) -> dict:
    """The training config entries a saved encoder must match to be reused."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()
            if k != "progress" and (k != "weights" or isinstance(v, dict))}


def _parse_opts(items):
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = json.loads(v)
    return out


def main(argv=None):
    global _use_lock
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", default=None, help="BEIR folder")
    p.add_argument("--train-seconds", type=float, default=1800)
    p.add_argument("--recover-seconds", type=float, default=600)
    p.add_argument("--epochs", type=int, default=100, help="upper bound; the budget usually ends first")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=LR)
    p.add_argument("--batching", default="topic", choices=("topic", "length"))
    p.add_argument("--default-weights", action="store_true",
                   help="distill_2d's default exit weights instead of this benchmark's (WEIGHTS)")
    p.add_argument("--precision", default="auto", choices=("float32", "bfloat16", "auto"),
                   help="distill_2d's precision (auto: bfloat16 autocast where the CPU has bfloat16 "
                   "instructions); recover keeps float32 unless --recover-opt says otherwise")
    p.add_argument("--max-docs", type=int, default=None, help="cap the corpus (judged docs kept)")
    p.add_argument("--speed-docs", type=int, default=512)
    p.add_argument("--work", default=None, help="trained encoders (default ~/.cache/nestvec/bench_train)")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--quick", action="store_true", help="1,000+ docs, 120 s + 30 s of training, length batches: a smoke run")
    p.add_argument("--no-lock", action="store_true", help=f"do not take {LOCK}")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads while training and evaluating (default torch's; on a loaded "
                   "machine 1 can be faster); the timings use the default")
    p.add_argument("--out", default=None)
    p.add_argument("--opt", action="append", default=[], help="distill_2d option key=JSON")
    p.add_argument("--recover-opt", action="append", default=[], help="recover option key=JSON")
    args = p.parse_args(argv)
    _use_lock = not args.no_lock
    if args.quick:
        # a smoke run: length batches (topic batches embed every document before the first
        # step) and a smaller head-fitting pass, so the budget leaves room for steps
        args.max_docs, args.train_seconds, args.recover_seconds = 1000, 120, 30
        args.speed_docs, args.batching = 128, "length"
        args.opt = ["head_texts=256", *args.opt]
    path = args.dir or next(iter(d for d in beir.default_dirs() if "msmarco" in d), None)
    if path is None:
        print("bench_train: no BEIR folder given and none found under ../shared/data", file=sys.stderr)
        return 2
    if not bq.encoder_available():
        print("bench_train: needs the bundled model and transformers (pip install 'nestvec[embed]')",
              file=sys.stderr)
        return 2
    import torch

    default_threads = torch.get_num_threads()
    from nestvec import train
    from nestvec.embed import Encoder
    from nestvec.nn import compress_model

    work = Path(args.work or Path.home() / ".cache" / "nestvec" / "bench_train")
    suffix = f"-{args.max_docs}" if args.max_docs else ""
    work.mkdir(parents=True, exist_ok=True)
    data = beir.load(path, max_docs=args.max_docs)
    docs = data[1]
    print(f"{Path(path).name}: {len(docs)} docs (training: documents only), {len(data[2])} judged "
          f"queries; torch threads {torch.get_num_threads()}", flush=True)
    teacher = Encoder(batch_size=args.batch_size)
    rows, meta = [], {"dataset": Path(path).name, "docs": len(docs), "queries": len(data[2])}

    with machine_lock(False):
        if args.threads:
            torch.set_num_threads(args.threads)
        before = eval_grid(teacher, data, tag="before")
        opts = _parse_opts(args.opt)
        precision = args.precision
        if precision == "auto":  # resolved here, so that a saved encoder's config can match it
            precision = "bfloat16" if train._bf16_is_native(teacher.device) else "float32"
        kw = dict(epochs=args.epochs, batch_size=args.batch_size, max_seconds=args.train_seconds,
                  lr=args.lr, precision=precision, batching=args.batching,
                  weights=DEFAULT_WEIGHTS if args.default_weights else WEIGHTS)
        kw.update(opts)
        print(f"  distill_2d for at most {args.train_seconds:.0f} s", flush=True)
        t0 = time.perf_counter()
        trained, info = _load_or_train(work, f"minilm-2d{suffix}", args.retrain,
                                       lambda: train.distill_2d(teacher, docs, **kw), _want(kw))
        meta["train_wall_s"] = time.perf_counter() - t0
        meta["distill_2d"] = info
        print(f"  trained: {info['steps']} steps, {len(info['epochs'])} epoch(s) "
              f"({info['steps'] * args.batch_size / len(docs):.2f} passes over the documents), "
              f"{info['seconds']:.0f} s, stopped by {info['stopped']}", flush=True)
        after = eval_grid(trained, data, tag="after")

        comp = teacher._with_model(__import__("copy").deepcopy(teacher.model))
        rep = compress_model(comp.model, 0.5, 0.05, include=list(bq.FFN_LAYERS))
        meta["compression"] = {"params_before": rep.params_before, "params_after": rep.params_after,
                               "layers": len(rep.layers)}
        comp_grid = eval_grid(comp, data, layers=(6,), dims=(384,), tag="compressed")
        rkw = dict(epochs=args.epochs, batch_size=args.batch_size, max_seconds=args.recover_seconds,
                   **_parse_opts(args.recover_opt))
        print(f"  recover for at most {args.recover_seconds:.0f} s", flush=True)
        t0 = time.perf_counter()
        recovered, rinfo = _load_or_train(work, f"minilm-lost-recovered{suffix}", args.retrain,
                                          lambda: train.recover(comp, teacher, docs, **rkw), _want(rkw))
        meta["recover_wall_s"] = time.perf_counter() - t0
        meta["recover"] = rinfo
        rec_grid = eval_grid(recovered, data, layers=(6,), dims=(384,), tag="recovered")

    torch.set_num_threads(default_threads)
    sp = {}
    if not args.skip_speed:
        sdocs = docs[:args.speed_docs]
        with machine_lock(True):
            print(f"  encode speed on {len(sdocs)} docs (exclusive lock; load {loadavg()})", flush=True)
            sp = speed([(f"L{layer}", trained, layer) for layer in LAYERS] +
                       [("original", teacher, 6), ("compressed", comp, 6), ("recovered", recovered, 6)],
                       sdocs, args.batch_size)
            meta["query_ms"] = query_latency(trained, data[3])
            meta["speed_load"] = loadavg()
    full = before[(6, 384)][0]
    for layer in LAYERS:
        for d in DIMS:
            b, a = before[(layer, d)], after[(layer, d)]
            qb, qa = before[("query", layer, d)], after[("query", layer, d)]
            rows.append(dict(config=f"L{layer}/d{d}", layers=layer, dim=d, ndcg10_before=b[0],
                             ndcg10_after=a[0], recall100_before=b[1], recall100_after=a[1],
                             ratio_before=b[0] / full, ratio_after=a[0] / full,
                             query_exit_ndcg10_before=qb[0], query_exit_ndcg10_after=qa[0],
                             query_exit_recall100_after=qa[1], query_exit_ratio_after=qa[0] / full,
                             query_ms=meta.get("query_ms", {}).get(f"L{layer}"),
                             docs_per_s=sp.get(f"L{layer}", {}).get("docs_per_s"),
                             speedup=(sp[f"L{layer}"]["docs_per_s"] / sp["original"]["docs_per_s"]) if sp else None))
    for name, g in (("compressed", comp_grid), ("recovered", rec_grid)):
        rows.append(dict(config=f"LOST {name} L6/d384", layers=6, dim=384, ndcg10_after=g[(6, 384)][0],
                         recall100_after=g[(6, 384)][1], ndcg10_before=full,
                         recall100_before=before[(6, 384)][1], delta=g[(6, 384)][0] - full,
                         docs_per_s=sp.get(name, {}).get("docs_per_s"),
                         speedup=(sp[name]["docs_per_s"] / sp["original"]["docs_per_s"]) if sp else None))
    meta["speed"] = sp
    targets = {
        "L3_full_ratio>=0.95": after[(3, 384)][0] / full >= 0.95,
        "full_depth_prefixes>=0.98": all(after[(6, d)][0] / full >= 0.98 for d in DIMS),
        "full_model_loss<=0.005": full - after[(6, 384)][0] <= 0.005,
        "recovered_within_0.005": full - rec_grid[(6, 384)][0] <= 0.005,
    }
    if sp:
        targets["recovered_keeps_speedup"] = (sp["recovered"]["docs_per_s"] / sp["original"]["docs_per_s"]
                                              >= 0.95 * sp["compressed"]["docs_per_s"] / sp["original"]["docs_per_s"])
    meta["targets"] = targets
    print()
    print(H.markdown_table(rows, ["config", "ndcg10_before", "ndcg10_after", "recall100_before",
                                  "recall100_after", "ratio_after", "docs_per_s", "speedup", "delta"]))
    print()
    print("queries at the exit, documents at full depth:")
    print(H.markdown_table([r for r in rows if "query_exit_ndcg10_after" in r],
                           ["config", "query_exit_ndcg10_before", "query_exit_ndcg10_after",
                            "query_exit_recall100_after", "query_exit_ratio_after", "query_ms"]))
    print("targets:", json.dumps(targets))
    out = Path(args.out) if args.out else H.RESULTS
    res = H.save("bench_train", rows, meta, out_dir=out)
    plot(before, after, out / "bench_train.png",
         dict(docs=len(docs), queries=len(data[2]), train_s=info["seconds"], train_steps=info["steps"]))
    print(f"wrote {res} and {out / 'bench_train.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
