"""The ``nestvec`` command: ``nestvec demo | index | search | train-2d | compress | bench | info``.

  nestvec demo                         index the Python stdlib's docstrings, search, benchmark
  nestvec index SOURCE --out DIR       embed a folder of text files or a .jsonl file
                                       (--ann ivf|hnsw: and build a sub-linear index)
  nestvec search DIR "query" -k 10     search a collection built by `nestvec index`
  nestvec train-2d --texts SRC --out DIR   2D Matryoshka self-distillation of an encoder
  nestvec compress --out DIR           LOST-compress an encoder (--texts SRC: and recover)
  nestvec bench                        run the benchmark suite (JSON, markdown, PNG plots)
  nestvec info                         build and runtime facts
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ENCODER_FILE = "encoder.json"  # beside the collection's files: how its vectors were made
DEMO_QUERIES = (
    "parse command line options and arguments",
    "compress and extract zip archives",
    "compute a cryptographic hash of bytes",
    "run functions concurrently in a pool of threads",
    "find all matches of a regular expression",
    "serialize Python objects to a byte stream",
    "format dates and times as strings",
)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _collection_api():
    import nestvec

    return nestvec.Collection, nestvec.open


def _encoder(args, **over):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from .embed import Encoder
    except ImportError as e:
        raise CLIError(f"embedding needs torch and transformers (pip install 'nestvec[embed]'): {e}") from None
    kw = dict(model=getattr(args, "model", None), pooling=getattr(args, "pooling", None),
              dim=getattr(args, "dim", None), layers=getattr(args, "layers", None),
              batch_size=getattr(args, "batch_size", None), device=getattr(args, "device", "cpu"),
              max_length=getattr(args, "max_length", None))
    kw.update(over)
    try:
        return Encoder(**kw)
    except ImportError as e:
        raise CLIError(str(e)) from None


def _write_collection(out, vecs, ids, meta: dict, schema: dict, append: bool, enc_info: dict):
    """Create (or, with append, extend) the collection at ``out``; returns it open."""
    Collection, nv_open = _collection_api()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        try:
            col = nv_open(out)
        except Exception as e:  # noqa: BLE001 - not a collection, locked, ...
            raise CLIError(f"--out {str(out)!r} exists and is not a nestvec collection we can open ({e}); "
                           "choose a new folder") from None
        if not append:
            col.close()
            raise CLIError(f"--out {str(out)!r} already holds a collection; pass --append to add to it, "
                           "or choose a new folder")
        if col.dim != vecs.shape[1]:
            d = col.dim
            col.close()
            raise CLIError(f"dimension mismatch: the collection at {str(out)!r} stores {d}-dim vectors "
                           f"but this encoder gives {vecs.shape[1]} (check --dim / --model)")
        old = _read_encoder_info(out)
        if old and (old.get("model"), old.get("pooling"), old.get("layers")) != \
                (enc_info["model"], enc_info["pooling"], enc_info["layers"]):
            col.close()
            raise CLIError(f"the collection at {str(out)!r} was built with {old}; index with the same "
                           "--model / --pooling / --layers to append")
    else:
        col = Collection.create(out, dim=vecs.shape[1], dtype="float16", metric="cosine",
                                binary=True, schema=schema)
    try:
        # appending re-indexes documents whose id is already there (upsert)
        (col.upsert if append else col.add)(vecs, ids=ids, metadata=meta)
    except (ValueError, TypeError) as e:
        col.close()
        raise CLIError(str(e)) from None
    (out / ENCODER_FILE).write_text(json.dumps(enc_info, indent=2))
    return col


def _read_encoder_info(path) -> dict | None:
    f = Path(path) / ENCODER_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def _enc_info(enc) -> dict:
    return {"model": enc.model_path, "name": enc.name, "pooling": enc.pooling, "dim": enc.dim,
            "layers": enc.layers, "num_layers": enc.num_layers, "normalize": enc.normalize, "max_length": enc.max_length}


# --------------------------------------------------------------------------- index

def _existing_dim(out: Path, append: bool):
    """Width of the collection already at ``out`` (None: nothing there yet)."""
    if not (out.exists() and any(out.iterdir())):
        return None
    _, nv_open = _collection_api()
    try:
        col = nv_open(out, read_only=True)
    except Exception as e:  # noqa: BLE001 - not a collection, damaged, ...
        raise CLIError(f"--out {str(out)!r} exists and is not a nestvec collection we can open ({e}); "
                       "choose a new folder") from None
    dim = col.dim
    col.close()
    if not append:
        raise CLIError(f"--out {str(out)!r} already holds a collection; pass --append to add to it, "
                       "or choose a new folder")
    return dim


def _cmd_index(args) -> int:
    from ._corpus import read_source

    try:
        recs = read_source(args.source)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(str(e)) from None
    _collection_api()  # fail before the slow part
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file; expected a folder for the collection")
    existing = _existing_dim(out, args.append)  # before the slow part: clear errors first
    enc = _encoder(args)
    if existing is not None and existing != enc.dim:
        raise CLIError(f"dimension mismatch: the collection at {str(out)!r} stores {existing}-dim vectors "
                       f"but this encoder gives {enc.dim} (check --dim / --model)")
    t0 = time.perf_counter()
    vecs = enc.encode([r["text"] for r in recs], progress=None if not args.quiet else False)
    t_enc = time.perf_counter() - t0
    extra = sorted({k for r in recs for k in r} - {"id", "text"})
    schema = {"text": "string"}
    meta = {"text": [r["text"][:1000] for r in recs]}
    for key in extra:  # jsonl metadata: strings, or numbers when every value is one
        vals = [r.get(key) for r in recs]
        num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals if v is not None)
        ints = num and all(isinstance(v, int) for v in vals if v is not None)
        schema[key] = "int64" if ints else "float64" if num else "string"
        meta[key] = [v if (num or v is None) else str(v) for v in vals]
    col = _write_collection(out, vecs, [r["id"] for r in recs], meta, schema, args.append,
                            _enc_info(enc))
    n = len(col)
    ann = ""
    if args.ann and args.ann not in col.indexes():
        try:
            spec = col.create_index(args.ann)
        except (ImportError, ValueError, TypeError) as e:
            col.close()
            raise CLIError(f"--ann {args.ann}: {e}") from None
        ann = (f", {args.ann} index over {spec['rows_indexed']} rows in {spec['segments_indexed']} segment(s)"
               f" (segments below {spec['min_rows']} rows are searched exhaustively)")
    col.close()
    print(f"indexed {len(recs)} documents from {args.source} into {out} ({n} rows, "
          f"{vecs.shape[1]}-dim, binary codes{ann}) in {t_enc:.1f} s")
    return 0


# --------------------------------------------------------------------------- search

def _cmd_search(args) -> int:
    _, nv_open = _collection_api()
    path = Path(args.dir)
    if not path.exists():
        raise CLIError(f"DIR {str(path)!r} does not exist (build one with: nestvec index SOURCE --out DIR)")
    try:
        col = nv_open(path, read_only=True)
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"{str(path)!r} is not a nestvec collection ({e})") from None
    info = _read_encoder_info(path) or {}
    model = args.model or info.get("model")
    enc = _encoder(args, model=model, pooling=info.get("pooling", "mean"), dim=info.get("dim"),
                   layers=info.get("layers"), max_length=args.max_length or info.get("max_length"))
    if enc.dim != col.dim:
        raise CLIError(f"dimension mismatch: the collection stores {col.dim}-dim vectors, the query "
                       f"encoder gives {enc.dim} (pass the --model the collection was built with)")
    if args.query_layers is not None and not 1 <= args.query_layers <= enc.num_layers:
        raise CLIError(f"--query-layers: expected 1 <= L <= {enc.num_layers} (the encoder's layers), "
                       f"got {args.query_layers}")
    q = enc.encode([args.query], layers=args.query_layers, progress=False)
    cols = [c for c in ("text",) if c in col.schema.names]
    try:
        hits = col.search(q, k=args.k, dim=args.dim, mode=args.mode, rescore=args.rescore,
                          filter=args.filter, columns=cols)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    rows = hits.to_pylist()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        for rank, r in enumerate(rows, 1):
            text = " ".join(str(r.get("text", "")).split())
            print(f"{rank:3d}. {r['score']:.4f}  {r['id']}  {text[:100]}")
        if not rows:
            print("(no matches)")
    col.close()
    return 0


# --------------------------------------------------------------------------- demo

def _cmd_demo(args) -> int:
    from ._corpus import stdlib_docstrings

    Collection, _ = _collection_api()
    t_start = time.perf_counter()
    print(f"nestvec demo: semantic search over the docstrings of Python {sys.version.split()[0]}'s "
          f"standard library (at most {args.limit} docstrings; --limit changes it)")
    recs = stdlib_docstrings(limit=args.limit)
    n_mod = len({r["module"] for r in recs})
    print(f"  collected {len(recs)} docstrings from {n_mod} modules")
    enc = _encoder(args, max_length=args.max_length or 128)
    print(f"  encoder: {enc.name} ({enc.layers} layers, {enc.dim}-dim, {enc.pooling} pooling, "
          f"fused nestvec.pool) on {enc.device}")
    t0 = time.perf_counter()
    vecs = enc.encode([f"{r['name']}: {r['text']}" for r in recs], progress=True)
    t_enc = time.perf_counter() - t0
    tmp = None
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="nestvec-demo-")) / "stdlib.nv"
    if not args.out:
        tmp = out.parent
    try:
        if out.exists():
            raise CLIError(f"--out {str(out)!r} already exists; the demo builds a new collection")
        col = Collection.create(out, dim=vecs.shape[1], dtype="float16", metric="cosine", binary=True,
                                schema={"name": "string", "kind": "string", "module": "string",
                                        "text": "string"})
        col.add(vecs, metadata={k: [r[k] for r in recs] for k in ("name", "kind", "module", "text")})
        print(f"  embedded {len(recs)} docstrings in {t_enc:.1f} s ({len(recs) / t_enc:.0f}/s); "
              f"collection at {out} (float16 vectors + 48-byte binary codes)")
        queries = list(args.query) or list(DEMO_QUERIES)
        qv = enc.encode(queries, progress=False)
        t0 = time.perf_counter()
        hits = col.search(qv, k=args.k, mode="funnel", rescore=10, columns=["name", "text"]).to_pylist()
        t_search = time.perf_counter() - t0
        print()
        for qi, query in enumerate(queries):
            print(f"query: {query!r}")
            for rank, h in enumerate([h for h in hits if h["query"] == qi], 1):
                print(f"  {rank}. {h['score']:.3f}  {h['name']:<34s} {h['text'][:70]}")
        print(f"\n  {len(queries)} queries, funnel search (binary shortlist, float16 rescoring): "
              f"{1e3 * t_search / len(queries):.2f} ms/query")
        if not args.no_bench:
            _demo_bench(col, qv, vecs)
        col.close()
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp is not None:
            print(f"  kept the collection at {out}")
    print(f"\ndemo finished in {time.perf_counter() - t_start:.1f} s")
    return 0


def _demo_bench(col, qv, vecs):
    """A short kernel table: nestvec ops next to the obvious NumPy / torch code."""
    import numpy as np

    from . import ops
    from .quant import binarize

    def best(fn, reps=7):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return 1e3 * min(ts)

    rows = []
    rng = np.random.default_rng(0)
    B, T, Hd = 64, 256, 384
    h = rng.standard_normal((B, T, Hd)).astype(np.float32)
    m = np.ones((B, T), np.int64)
    m[:, 200:] = 0
    ours = best(lambda: ops.pool(h, m))

    def np_pool():
        s = np.einsum("bt,btd->bd", m.astype(np.float32), h) / m.sum(1, keepdims=True)
        return s / np.linalg.norm(s, axis=1, keepdims=True)

    rows.append(("pool mean+L2 B=64 T=256 H=384 f32", ours, "numpy einsum", best(np_pool)))
    n = 200_000
    codes = rng.integers(0, 256, (n, 48), dtype=np.uint8)
    qc = binarize(qv[:1])
    ours = best(lambda: ops.hamming_topk(codes, qc, 10))
    base = best(lambda: np.argpartition(np.bitwise_count(codes ^ qc).sum(1), 10)[:10]
                if hasattr(np, "bitwise_count") else np.unpackbits(codes ^ qc, axis=1).sum(1).argsort()[:10])
    rows.append((f"hamming top-10, {n // 1000}k x 384-bit codes", ours, "numpy xor+popcount", base))
    ours = best(lambda: col.search(qv[:1], k=10, mode="funnel"))
    flat = best(lambda: col.search(qv[:1], k=10, mode="flat"))
    rows.append((f"collection search k=10, {len(col)} rows", ours, "flat (exact) mode", flat))
    print("\nkernel benchmark (best of 7, ms; this machine, other load included):")
    print(f"  {'case':<44s} {'nestvec':>9s}   {'baseline':<22s} {'ms':>9s}")
    for case, a, bname, b in rows:
        print(f"  {case:<44s} {a:9.3f}   {bname:<22s} {b:9.3f}")


# --------------------------------------------------------------------------- train-2d / compress

def _int_list(name: str, text: str, full_ok: bool = False) -> list:
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if full_ok and part.lower() in ("full", "none", ""):
            out.append(None)
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise CLIError(f"{name}: expected comma-separated integers{' (or full)' if full_ok else ''}, "
                           f"got {text!r}") from None
    return out


def _check_out(out: Path):
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CLIError(f"--out {str(out)!r} exists and is not an empty folder; choose a new one")


def _train_texts(args):
    from .train import read_texts

    try:
        texts = read_texts(args.texts, limit=args.max_texts)
    except (FileNotFoundError, ValueError) as e:
        raise CLIError(f"--texts: {e}") from None
    print(f"  {len(texts)} training texts from {args.texts}")
    return texts


def _train_kw(args) -> dict:
    kw = dict(epochs=args.epochs, batch_size=args.train_batch_size, max_seconds=args.max_seconds,
              seed=args.seed, progress=not args.quiet)
    if args.lr is not None:
        kw["lr"] = args.lr
    kw["precision"] = args.precision
    if args.batching is not None:
        kw["batching"] = args.batching
    return kw


def _print_history(hist):
    last = hist.epochs[-1]["loss"]
    print(f"  {hist.steps} steps in {hist.seconds:.0f} s ({len(hist.epochs)} epoch(s), stopped by "
          f"{hist.stopped}); last epoch's loss per exit:")
    print("    " + "  ".join(f"{k} {v:.4f}" for k, v in last.items()))


def _cmd_train2d(args) -> int:
    from . import train

    out = Path(args.out)
    _check_out(out)
    layers = _int_list("--layers", args.layers)
    dims = _int_list("--dims", args.dims, full_ok=True)
    texts = _train_texts(args)
    enc = _encoder(args, dim=None, layers=None, pooling=args.pooling)
    print(f"  teacher and student: {enc.name} ({enc.num_layers} layers, {enc.hidden_size}-dim); "
          f"exits layers {layers} x dims {[d or enc.hidden_size for d in dims]}")
    try:
        trained, hist = train.distill_2d(enc, texts, layers=layers, dims=dims, **_train_kw(args))
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    _print_history(hist)
    trained.save(out)
    print(f"saved the trained encoder to {out} (use it with --model {out})")
    return 0


def _cmd_compress(args) -> int:
    import copy

    from .nn import compress_model

    out = Path(args.out)
    _check_out(out)
    texts = _train_texts(args) if args.texts else None
    enc = _encoder(args, dim=None, layers=None)
    comp = enc._with_model(copy.deepcopy(enc.model))
    include = args.include or [r"intermediate\.dense$", r"layer\.\d+\.output\.dense$"]
    try:
        rep = compress_model(comp.model, args.rank_ratio, args.sparsity, include=include)
    except (ValueError, TypeError) as e:
        raise CLIError(str(e)) from None
    print(f"  {len(rep.layers)} layers compressed: {rep.params_before:,} -> {rep.params_after:,} "
          f"parameters ({rep.ratio:.3f}x)")
    if texts is not None:
        from . import train

        try:
            comp, hist = train.recover(comp, enc, texts, **_train_kw(args))
        except (ValueError, TypeError) as e:
            raise CLIError(str(e)) from None
        _print_history(hist)
    comp.save(out)
    print(f"saved the compressed encoder to {out} (use it with --model {out})")
    return 0


# --------------------------------------------------------------------------- bench / info

def _benchmarks_dir() -> Path:
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "benchmarks", Path.cwd() / "benchmarks"):
        if (cand / "bench_all.py").is_file():
            return cand
    raise CLIError("nestvec bench runs the scripts in the benchmarks/ folder of a source checkout; "
                   "none was found (run it from the repository)")


def _cmd_bench(args) -> int:
    import subprocess

    script = _benchmarks_dir() / "bench_all.py"
    argv = (["--quick"] if args.quick else []) + (["--only", args.only] if args.only else [])
    argv += ["--out", args.out] if args.out else []
    # its own process: the benchmark scripts import each other from their folder, which
    # must not go on this interpreter's sys.path
    return subprocess.run([sys.executable, str(script), *argv]).returncode


def _cmd_info(args) -> int:
    from ._info import format_info, info

    d = info()
    print(json.dumps(d, indent=2) if args.json else format_info(d))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestvec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    from ._version import __version__

    p.add_argument("--version", action="version", version=f"nestvec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def encoder_opts(sp, dim=True):
        sp.add_argument("--model", default=None, help="local Hugging Face model folder "
                        "(default: the bundled all-MiniLM-L6-v2)")
        if dim:
            sp.add_argument("--dim", type=int, default=None, help="Matryoshka truncation of the vectors")
            sp.add_argument("--layers", type=int, default=None, help="early exit: run only the first L layers")
            sp.add_argument("--pooling", default=None, help="mean | weighted_mean | cls | last | max "
                            "(default mean, or what a saved encoder uses)")
        sp.add_argument("--batch-size", type=int, default=None,
                        help="texts per forward pass (default: the Encoder's, 8 on the CPU, 32 on a GPU)")
        sp.add_argument("--max-length", type=int, default=None, help="tokens per text")
        sp.add_argument("--device", default="cpu", help="cpu or cuda")

    pd = sub.add_parser("demo", help="index the Python stdlib's docstrings, search them, benchmark")
    pd.add_argument("--limit", type=int, default=2000, help="at most this many docstrings (default 2000)")
    pd.add_argument("--query", action="append", default=[], help="a query to run (repeatable)")
    pd.add_argument("-k", type=int, default=3, help="hits per query (default 3)")
    pd.add_argument("--out", default=None, help="keep the collection in this new folder")
    pd.add_argument("--keep", action="store_true", help="keep the temporary collection")
    pd.add_argument("--no-bench", action="store_true", help="skip the kernel benchmark table")
    encoder_opts(pd, dim=False)
    pd.set_defaults(func=_cmd_demo)

    px = sub.add_parser("index", help="embed a folder of text files or a .jsonl file into a collection")
    px.add_argument("source", help="a folder (*.txt, *.md, *.rst) or a .jsonl file ({'text': ...} per line)")
    px.add_argument("--out", required=True, help="collection folder (created)")
    px.add_argument("--append", action="store_true",
                    help="add to an existing collection (documents with an existing id are replaced)")
    px.add_argument("--quiet", action="store_true", help="no progress bar")
    px.add_argument("--ann", choices=("ivf", "hnsw"), default=None,
                    help="also build a sub-linear index (search it with --mode ivf / hnsw, or auto)")
    encoder_opts(px)
    px.set_defaults(func=_cmd_index)

    ps = sub.add_parser("search", help="search a collection built by `nestvec index`")
    ps.add_argument("dir", help="collection folder")
    ps.add_argument("query", help="query text")
    ps.add_argument("-k", type=int, default=10, help="results (default 10)")
    ps.add_argument("--dim", type=int, default=None, help="search on the first DIM values (Matryoshka)")
    ps.add_argument("--mode", default="auto", choices=("auto", "flat", "binary", "funnel", "ivf", "hnsw"))
    ps.add_argument("--rescore", type=int, default=None,
                    help="funnel / ivf shortlist = k * rescore (default: the index's, else 10)")
    ps.add_argument("--filter", default=None, help="SQL WHERE condition on metadata columns")
    ps.add_argument("--json", action="store_true", help="print JSON rows")
    ps.add_argument("--query-layers", type=int, default=None,
                    help="embed the query with the encoder's first L layers (an encoder trained by "
                    "`nestvec train-2d`; documents keep the depth they were indexed at)")
    encoder_opts(ps, dim=False)
    ps.set_defaults(func=_cmd_search)

    def train_opts(sp, required: bool):
        sp.add_argument("--texts", required=required, default=None,
                        help="training texts: a BEIR folder (its documents), a folder of text files, "
                        "a .jsonl file, or 'stdlib' (the standard library's docstrings)")
        sp.add_argument("--out", required=True, help="folder for the encoder (created)")
        sp.add_argument("--max-texts", type=int, default=None, help="use at most this many texts")
        sp.add_argument("--epochs", type=int, default=1)
        sp.add_argument("--train-batch-size", type=int, default=32, help="texts per training step")
        sp.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW)")
        sp.add_argument("--max-seconds", type=float, default=None, help="training time budget")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--precision", choices=("float32", "bfloat16", "auto"), default="float32",
                        help="bfloat16: autocast (faster where the CPU has bfloat16 instructions); "
                        "auto: bfloat16 where native")
        sp.add_argument("--batching", choices=("length", "topic"), default=None,
                        help="topic (train-2d's default): each batch from one cluster of the teacher's "
                        "embeddings; length (compress's default): random batches grouped by length")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        encoder_opts(sp, dim=False)

    pt = sub.add_parser("train-2d", help="2D Matryoshka self-distillation: early exits and short "
                        "prefixes that keep their quality")
    train_opts(pt, required=True)
    pt.add_argument("--layers", default="2,3,4,6", help="exits to train: layer counts (default 2,3,4,6)")
    pt.add_argument("--dims", default="64,128,256,full", help="exits to train: widths (default 64,128,256,full)")
    pt.add_argument("--pooling", default=None, help="mean | weighted_mean | cls | last | max")
    pt.set_defaults(func=_cmd_train2d)

    pc = sub.add_parser("compress", help="LOST-compress an encoder's feed-forward layers; with --texts, "
                        "recover its quality by training the factors")
    train_opts(pc, required=False)
    pc.add_argument("--rank-ratio", type=float, default=0.5, help="rank / min(in, out) (default 0.5)")
    pc.add_argument("--sparsity", type=float, default=0.05, help="fraction of dense output channels")
    pc.add_argument("--include", action="append", default=None,
                    help="regex of layer names to compress (repeatable; default the FFN pair)")
    pc.set_defaults(func=_cmd_compress)

    pb = sub.add_parser("bench", help="run the benchmark suite; JSON, markdown and PNG under benchmarks/results/")
    pb.add_argument("--quick", action="store_true", help="smaller sizes")
    pb.add_argument("--only", default="", help="comma-separated benchmark names (pool, quality, ...)")
    pb.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    pb.set_defaults(func=_cmd_bench)

    pi = sub.add_parser("info", help="build and runtime facts")
    pi.add_argument("--json", action="store_true", help="print JSON")
    pi.set_defaults(func=_cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"nestvec {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
