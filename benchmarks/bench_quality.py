"""Retrieval quality of every search width on real embeddings (bundled MiniLM).

    python benchmarks/bench_quality.py [DIR ...] [--max-docs N] [--out FOLDER]
        [--rank-ratio 0.5] [--sparsity 0.05] [--no-compressed]

DIR is any BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/test.tsv); default
<repo>/../shared/data/beir-*-subset. For each: nDCG@10 and recall@100 of
  flat (float32 / float16 storage), prefix dims 64 / 128 / 256 (Matryoshka truncation),
  binary only (Hamming on sign bits), funnel (Hamming shortlist of k*rescore, exact
  float16 cosine rescoring; rescore 4 and 10), early exit after 3 of 6 layers;
the `compressed` row: the same Encoder with its feed-forward layers LOST-compressed
(nestvec.nn.compress_model: rank 0.5 + 5% channels by default), nDCG@10 / recall@100
against the original, CPU encode docs/s of each (timed in alternating slices of the
corpus), parameter counts;
and beside them sentence-transformers' recipe on the same embeddings:
quantize_embeddings(precision="ubinary") + Hamming retrieval + rescoring of the
shortlist with the float query against the +-1 binary documents.
Until the Collection lands, search runs through nestvec.ops.hamming_topk / dense_topk.
Writes bench_quality.json and bench_quality.png (nDCG@10 against bytes scanned per
vector) under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402
import beir  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- search

def _dense(db, q, k, dim=None, candidates=None):
    import nestvec.ops as ops

    try:
        return ops.dense_topk(db, q, k, dim=dim, candidates=candidates)
    except RuntimeError:  # no compiled dense backend in this build: the NumPy reference
        return ops.dense_topk(db, q, k, dim=dim, candidates=candidates, backend="reference")


def search_flat(db, q, k, dim=None):
    return _dense(db, q, k, dim)[1]


def search_binary(codes, qcodes, k):
    import nestvec.ops as ops

    return ops.hamming_topk(codes, qcodes, k)[1]


def search_funnel(codes, qcodes, db, q, k, rescore, dim=None):
    """Hamming shortlist of k*rescore rows, exact cosine on their float vectors."""
    import nestvec.ops as ops

    _, cand = ops.hamming_topk(codes, qcodes, min(k * rescore, codes.shape[0]))
    return _dense(db, q, k, dim, candidates=cand)[1]


def search_ladder(col, q, k, rescore, ladder):
    """Collection funnel with a Matryoshka ladder: Hamming shortlist, exact rescoring at
    each prefix in `ladder` (shrinking), then at full width."""
    t = col.search(q, k=k, mode="funnel", rescore=rescore, ladder=ladder)
    out = np.full((q.shape[0], k), -1, dtype=np.int64)
    qi, ids = t.column("query").to_numpy(), t.column("id").to_numpy()
    for j in range(q.shape[0]):
        got = ids[qi == j]
        out[j, :len(got)] = got
    return out


def search_st_rescore(codes_st, qcodes_st, q, k, rescore):
    """sentence-transformers' binary rescoring: float query . (+-1 unpacked doc bits)."""
    import nestvec.ops as ops

    _, cand = ops.hamming_topk(codes_st, qcodes_st, min(k * rescore, codes_st.shape[0]))
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for i in range(q.shape[0]):
        c = cand[i][cand[i] >= 0]
        bits = np.unpackbits(codes_st[c], axis=1)[:, :q.shape[1]].astype(np.float32) * 2 - 1
        s = bits @ q[i]
        order = np.lexsort((c, -s))[:k]
        out[i, :len(order)] = c[order]
        out[i, len(order):] = -1
    return out


# --------------------------------------------------------------------------- embeddings

def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nestvec" / "bench_quality"


def embed_corpus(path, texts, layers, max_docs, batch_size):
    """float32 [N, 384] (normalised) from the bundled encoder, cached on disk."""
    from nestvec.embed import Encoder, default_model_path

    p = Path(path)
    stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in (p / "corpus.jsonl",)]
    key = hashlib.sha1(json.dumps([str(p.resolve()), stamp, layers, max_docs, len(texts),
                                   default_model_path()]).encode()).hexdigest()[:16]
    cache = _cache_dir() / f"{p.name}-L{layers}-{key}.npy"
    meta = cache.with_suffix(".json")
    if cache.is_file() and meta.is_file():
        return np.load(cache), json.loads(meta.read_text())["seconds"]
    enc = Encoder(layers=layers, batch_size=batch_size)
    t0 = time.perf_counter()
    emb = enc.encode(texts, progress=True)
    secs = time.perf_counter() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, emb)
    meta.write_text(json.dumps({"seconds": secs, "n": len(texts)}))
    return emb, secs


def evaluate_run(ids, qids, qrels, idx_at_k, idx_at_k_recall, k=10, k_recall=100):
    """nDCG@k and recall@k_recall of row-index results (-1 = no hit) against qrels."""
    run_k = {q: [ids[j] for j in r if j >= 0] for q, r in zip(qids, idx_at_k)}
    run_r = {q: [ids[j] for j in r if j >= 0] for q, r in zip(qids, idx_at_k_recall)}
    return (beir.evaluate(run_k, qrels, k, k_recall)[f"ndcg@{k}"],
            beir.evaluate(run_r, qrels, k, k_recall)[f"recall@{k_recall}"])


# --------------------------------------------------------------------------- compressed encoder

# A BERT encoder's feed-forward pair; "output.dense" alone would also take
# attention.output.dense.
FFN_LAYERS = (r"intermediate\.dense$", r"layer\.\d+\.output\.dense$")


def encoder_available() -> bool:
    """The bundled model and transformers are installed (the Encoder can load)."""
    import importlib.util

    from nestvec.embed import default_model_path

    try:
        default_model_path()
    except ImportError:
        return False
    return importlib.util.find_spec("transformers") is not None


def encode_alternating(encoders, texts, batch_size, slices=20):
    """(embeddings of ``texts`` from each encoder, each one's per-slice seconds, the
    slices' sizes).

    One warm-up batch each; then the texts in ``slices`` consecutive slices, every slice
    encoded by every encoder, the order reversed from one slice to the next, so that
    drift in the machine's speed (other processes, the VM's clock) falls on all alike."""
    for enc in encoders:
        enc.encode(texts[:batch_size], batch_size=batch_size, progress=False)
    embs = [np.zeros((len(texts), enc.dim), np.float32) for enc in encoders]
    secs, sizes = [[] for _ in encoders], []
    bounds = np.linspace(0, len(texts), slices + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if a == b:
            continue
        sizes.append(b - a)
        order = range(len(encoders)) if i % 2 == 0 else reversed(range(len(encoders)))
        for j in order:
            t0 = time.perf_counter()
            embs[j][a:b] = encoders[j].encode(texts[a:b], batch_size=batch_size, progress=False)
            secs[j].append(time.perf_counter() - t0)
    return embs, secs, np.asarray(sizes)


def compressed_row(path, max_docs=None, batch_size=32, rank_ratio=0.5, sparsity=0.05,
                   include=FFN_LAYERS, k=10, k_recall=100, slices=20):
    """The ``compressed`` row: the bundled MiniLM through nestvec's Encoder (its
    tokenizer, transformer and fused pooling) against a copy whose ``include`` layers
    went through nestvec.nn.compress_model; both on the CPU in float32.

    Returns (row, report): the row has nDCG@k / recall@k_recall of each (exact search on
    float16 embeddings, as the ``flat float16`` row); docs/s of each over the whole corpus
    and in its fastest slice (``*_best``, the least disturbed); ``speedup``, the median
    over slices of the two models' time ratio on the same texts (``speedup_total``: from
    the summed times; each slice's seconds are kept too); parameter counts. The report is
    the CompressionReport as a dict."""
    import torch

    from nestvec.embed import Encoder
    from nestvec.nn import compress_model

    doc_ids, docs, qids, queries, qrels = beir.load(path, max_docs=max_docs)
    ids = np.asarray(doc_ids)
    orig, comp = Encoder(batch_size=batch_size), Encoder(batch_size=batch_size)
    report = compress_model(comp.model, rank_ratio, sparsity, include=list(include))
    print(f"  compressed: {report.params_before:,} -> {report.params_after:,} parameters, "
          f"{len(report.layers)} layers; encoding {len(docs)} docs with each", flush=True)
    (e_orig, e_comp), (s_orig, s_comp), sizes = encode_alternating([orig, comp], docs, batch_size,
                                                                   slices)
    D = e_orig.shape[1]
    out = {}
    for tag, enc, emb in (("original", orig, e_orig), ("compressed", comp, e_comp)):
        db16, q = emb.astype(np.float16), enc.encode(queries, progress=False)
        out[tag] = evaluate_run(ids, qids, qrels, search_flat(db16, q, k),
                                search_flat(db16, q, k_recall), k, k_recall)
    n = len(docs)
    dps_orig, dps_comp = n / sum(s_orig), n / sum(s_comp)
    # The median of paired ratios: a burst of load from another process that lands on
    # one model in a slice or two moves it little, the summed times a lot.
    per_slice = sorted(a / b for a, b in zip(s_orig, s_comp))
    errs = [d["rel_error"] for d in report.layers]
    row = dict(dataset=Path(path).name,
               config=f"LOST-compressed MiniLM (FFN rank {rank_ratio:g} + {sparsity:.0%} channels)",
               family="nestvec", ndcg10=out["compressed"][0], recall100=out["compressed"][1],
               bytes_scanned=2 * D, bytes_stored=2 * D,
               ndcg10_original=out["original"][0], recall100_original=out["original"][1],
               ndcg10_delta=out["compressed"][0] - out["original"][0],
               docs_per_s_original=dps_orig, docs_per_s_compressed=dps_comp,
               docs_per_s_original_best=float(np.max(sizes / np.asarray(s_orig))),
               docs_per_s_compressed_best=float(np.max(sizes / np.asarray(s_comp))),
               speedup=float(np.median(per_slice)), speedup_total=dps_comp / dps_orig,
               speedup_slices_min=per_slice[0], speedup_slices_max=per_slice[-1],
               params_original=report.params_before, params_compressed=report.params_after,
               params_ratio=report.ratio, layers_compressed=len(report.layers),
               mean_rel_error=float(np.mean(errs)) if errs else 0.0,
               rank_ratio=rank_ratio, sparsity=sparsity, docs=n, queries=len(queries),
               batch_size=batch_size, slices=len(s_orig), threads=torch.get_num_threads(),
               slice_s_original=[round(t, 3) for t in s_orig],
               slice_s_compressed=[round(t, 3) for t in s_comp])
    print(f"  {row['config']:38s} nDCG@10 {row['ndcg10']:.4f} (original {row['ndcg10_original']:.4f}); "
          f"{dps_orig:.1f} -> {dps_comp:.1f} docs/s (median ratio {row['speedup']:.2f}x); "
          f"params {row['params_ratio']:.3f}x", flush=True)
    return row, report.to_dict()


# --------------------------------------------------------------------------- benchmark

def run_dataset(path, max_docs=None, batch_size=32, k=10, k_recall=100):
    from nestvec.embed import Encoder
    from nestvec.quant import binarize

    doc_ids, docs, qids, queries, qrels = beir.load(path, max_docs=max_docs)
    print(f"{Path(path).name}: {len(docs)} docs, {len(queries)} judged queries", flush=True)
    ids = np.asarray(doc_ids)
    rows = []

    def add(name, family, idx_at_10, idx_at_100, bytes_scanned, bytes_stored, **extra):
        ndcg, recall = evaluate_run(ids, qids, qrels, idx_at_10, idx_at_100, k, k_recall)
        row = dict(dataset=Path(path).name, config=name, family=family, ndcg10=ndcg, recall100=recall,
                   bytes_scanned=bytes_scanned, bytes_stored=bytes_stored, **extra)
        rows.append(row)
        print(f"  {name:38s} nDCG@10 {row['ndcg10']:.4f}  recall@100 {row['recall100']:.4f}", flush=True)
        return row

    results = {}
    for layers in (6, 3):
        emb, secs = embed_corpus(path, docs, layers, max_docs, batch_size)
        q = Encoder(layers=layers).encode(queries)
        results[layers] = (emb, q, secs)
    emb, q, secs6 = results[6]
    n, D = emb.shape
    db16 = emb.astype(np.float16)
    codes, qcodes = binarize(emb), binarize(q)

    flat10, flat100 = search_flat(db16, q, k), search_flat(db16, q, k_recall)
    add("flat float32", "nestvec", search_flat(emb, q, k), search_flat(emb, q, k_recall), 4 * D, 4 * D)
    base = add("flat float16", "nestvec", flat10, flat100, 2 * D, 2 * D)

    def overlap(idx):  # recall@10 of a method against exact float16 search
        return float(np.mean([len(set(a[a >= 0]) & set(b)) / k for a, b in zip(idx, flat10)]))

    for d in (256, 128, 64):
        i10 = search_flat(db16, q, k, dim=d)
        add(f"prefix dim {d} (flat)", "nestvec", i10, search_flat(db16, q, k_recall, dim=d),
            2 * d, 2 * D, recall10_vs_flat=overlap(i10))
    b10 = search_binary(codes, qcodes, k)
    add("binary only (hamming)", "nestvec", b10, search_binary(codes, qcodes, k_recall),
        D // 8, D // 8 + 2 * D, recall10_vs_flat=overlap(b10))
    for r in (4, 10):
        f10 = search_funnel(codes, qcodes, db16, q, k, r)
        add(f"funnel rescore {r}", "nestvec", f10, search_funnel(codes, qcodes, db16, q, k_recall, r),
            D // 8, D // 8 + 2 * D, recall10_vs_flat=overlap(f10), rescore=r)
    import nestvec as nv

    col = nv.Collection.create(None, dim=D, dtype="float16", binary=True)
    col.add(emb, ids=np.arange(len(emb)))
    for lad in ((128,), (64, 192)):
        l10 = search_ladder(col, q, k, 10, lad)
        add(f"funnel rescore 10, ladder {'/'.join(map(str, lad))}", "nestvec", l10,
            search_ladder(col, q, k_recall, 10, lad), D // 8, D // 8 + 2 * D,
            recall10_vs_flat=overlap(l10), rescore=10)
    emb3, q3, secs3 = results[3]
    add("early exit: 3 of 6 layers (flat f16)", "nestvec", search_flat(emb3.astype(np.float16), q3, k),
        search_flat(emb3.astype(np.float16), q3, k_recall), 2 * D, 2 * D,
        encode_s=secs3, encode_s_full=secs6)

    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        try:
            from sentence_transformers.quantization import quantize_embeddings
        except ImportError:
            quantize_embeddings = None
    if quantize_embeddings is not None:
        cst = quantize_embeddings(emb, precision="ubinary")
        qst = quantize_embeddings(q, precision="ubinary")
        assert np.array_equal(cst, codes), "nestvec codes differ from sentence-transformers ubinary"
        for r in (4, 10):
            add(f"sentence-transformers ubinary + rescore {r}", "sentence-transformers",
                search_st_rescore(cst, qst, q, k, r), search_st_rescore(cst, qst, q, k_recall, r),
                D // 8, D // 8, rescore=r)
    meta = dict(docs=n, queries=len(queries), dim=D, encode_s_layers6=secs6,
                encode_s_layers3=results[3][2], flat_ndcg10=base["ndcg10"])
    return rows, meta


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 5.2))
    fig.subplots_adjust(left=0.07, right=0.68, bottom=0.11, top=0.9)
    for fam, marker in (("nestvec", "o"), ("sentence-transformers", "s")):
        rs = [r for r in rows if r["family"] == fam]
        if rs:
            ax.scatter([r["bytes_scanned"] for r in rs], [r["ndcg10"] for r in rs], marker=marker,
                       label=fam, zorder=3)
    # numbered points, names in a key beside the axes (labels of close points collide)
    key, groups = [], []  # groups: [x, y, [numbers]] of points that (nearly) coincide
    for n, r in enumerate(rows, 1):
        x, y = r["bytes_scanned"], r["ndcg10"]
        for g in groups:
            if g[0] == x and abs(g[1] - y) < 0.012:
                g[2].append(str(n))
                break
        else:
            groups.append([x, y, [str(n)]])
        key.append(f"{n:2d}  {r['config']}: {y:.3f}")
    for x, y, ns in groups:
        ax.annotate(",".join(ns), (x, y), fontsize=7, xytext=(5, 3), textcoords="offset points")
    fig.text(0.70, 0.5, "\n".join(key), fontsize=7, va="center", family="monospace")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes scanned per stored vector (log scale)")
    ax.set_ylabel("nDCG@10")
    ds = sorted({r["dataset"] for r in rows})
    ax.set_title("nDCG@10 vs bytes per vector, all-MiniLM-L6-v2, " + ", ".join(ds), fontsize=10)
    ax.grid(alpha=0.3)
    lo = min(r["ndcg10"] for r in rows)
    ax.set_ylim(lo - 0.03, max(r["ndcg10"] for r in rows) + 0.02)
    ax.set_xlim(right=max(r["bytes_scanned"] for r in rows) * 2)
    ax.legend(loc="center right")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="*", help="BEIR folders (default ../shared/data/beir-*-subset)")
    p.add_argument("--max-docs", type=int, default=None, help="cap the corpus (judged docs kept)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--rank-ratio", type=float, default=0.5, help="compressed row: rank / min(in, out)")
    p.add_argument("--sparsity", type=float, default=0.05, help="compressed row: channel fraction")
    p.add_argument("--no-compressed", action="store_true", help="skip the compressed row")
    args = p.parse_args(argv)
    dirs = args.dirs or beir.default_dirs()
    if not dirs:
        print("bench_quality: no BEIR folder given and none found under ../shared/data", file=sys.stderr)
        return 2
    compressed = not args.no_compressed and encoder_available()
    if not args.no_compressed and not compressed:
        print("bench_quality: no compressed row (the bundled model or transformers is missing)",
              file=sys.stderr)
    rows, meta = [], {}
    for d in dirs:
        r, m = run_dataset(d, args.max_docs, args.batch_size)
        if compressed:
            row, m["compressed_report"] = compressed_row(d, args.max_docs, args.batch_size,
                                                         args.rank_ratio, args.sparsity)
            r.append(row)
        rows += r
        meta[Path(d).name] = m
    print()
    print(H.markdown_table(rows, ["dataset", "config", "ndcg10", "recall100", "recall10_vs_flat",
                                  "bytes_scanned", "bytes_stored"]))
    for name, m in meta.items():
        gap = [r for r in rows if r["dataset"] == name and r["config"] == "funnel rescore 10"][0]
        print(f"\n{name}: funnel@10 - flat f16 nDCG@10 = {gap['ndcg10'] - m['flat_ndcg10']:+.4f} "
              f"(target within 0.005); corpus encode {m['encode_s_layers6']:.1f} s with 6 layers, "
              f"{m['encode_s_layers3']:.1f} s with 3 ({1 - m['encode_s_layers3'] / m['encode_s_layers6']:.0%} saved)")
    for r in rows:
        if "speedup" in r:
            print(f"{r['dataset']}: {r['config']}: nDCG@10 {r['ndcg10']:.4f} vs {r['ndcg10_original']:.4f} "
                  f"({r['ndcg10_delta']:+.4f}); CPU encode {r['docs_per_s_original']:.1f} -> "
                  f"{r['docs_per_s_compressed']:.1f} docs/s whole corpus, {r['docs_per_s_original_best']:.1f} -> "
                  f"{r['docs_per_s_compressed_best']:.1f} in the fastest slice; speed ratio {r['speedup']:.2f}x "
                  f"(median over slices, range {r['speedup_slices_min']:.2f}-{r['speedup_slices_max']:.2f}x, "
                  f"totals {r['speedup_total']:.2f}x); parameters "
                  f"{r['params_original']:,} -> {r['params_compressed']:,} ({r['params_ratio']:.3f}x)")
    out = Path(args.out) if args.out else H.RESULTS
    path = H.save("bench_quality", rows, meta, out_dir=out)
    plot(rows, out / "bench_quality.png")
    print(f"wrote {path} and {out / 'bench_quality.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
