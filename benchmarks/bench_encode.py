"""Encoder throughput on the CPU by texts per forward pass (``Encoder(batch_size=...)``).

The bundled MiniLM encodes passages of the BEIR MS MARCO subset (../shared/data) with
torch on 1 thread and on the machine's cores, at each batch size in ``--batch-sizes``;
the rounds alternate the batch sizes (the VM's speed drifts between minutes) and the
table reports the median docs/s and its ratio to batch 32 (the Encoder's default
before CPU_BATCH). ``--long`` joins three passages per text (longer sequences).

    python benchmarks/bench_encode.py                    # 1,024 passages, 3 rounds
    python benchmarks/bench_encode.py --long --texts 512
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness as H  # noqa: E402

CORPUS = os.path.join(H.ROOT.parent, "shared", "data", "beir-msmarco-subset", "corpus.jsonl")
LOCK = "/tmp/nestvec-cpu.lock"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batch-sizes", default="4,8,16,32,64")
    ap.add_argument("--threads", default=None, help="torch thread counts (default: 1 and the machine's cores)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--long", action="store_true", help="three passages per text")
    ap.add_argument("--corpus", default=CORPUS)
    ap.add_argument("--out", default="bench_encode")
    a = ap.parse_args(argv)

    import torch

    import nestvec as nv

    # split on newlines only: passages hold U+2028, which splitlines() breaks at
    docs = [json.loads(x)["text"] for x in open(a.corpus, encoding="utf-8").read().split("\n") if x.strip()]
    texts = [" ".join(docs[i:i + 3]) for i in range(0, 3 * a.texts, 3)] if a.long else docs[:a.texts]
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    threads = [int(x) for x in a.threads.split(",")] if a.threads else sorted({1, os.cpu_count() or 1})
    print(H.describe(), flush=True)
    enc = nv.Encoder(progress=False)
    enc.encode(texts[:64])  # warm
    rows = []
    lock = open(LOCK, "a+")
    for th in threads:
        torch.set_num_threads(th)
        secs = {b: [] for b in sizes}
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for r in range(a.rounds):
                for b in (sizes if r % 2 == 0 else sizes[::-1]):
                    t0 = time.perf_counter()
                    enc.encode(texts, batch_size=b)
                    secs[b].append(time.perf_counter() - t0)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        base = len(texts) / statistics.median(secs[32]) if 32 in secs else None
        for b in sizes:
            rate = len(texts) / statistics.median(secs[b])
            rows.append({"threads": th, "batch_size": b, "texts": len(texts), "long": a.long,
                         "docs_per_s": round(rate, 1), "min_docs_per_s": round(len(texts) / max(secs[b]), 1),
                         "max_docs_per_s": round(len(texts) / min(secs[b]), 1),
                         "vs_batch32": round(rate / base, 3) if base else None,
                         "default": b == nv.embed.CPU_BATCH})
    print(H.markdown_table(rows, ["threads", "batch_size", "docs_per_s", "min_docs_per_s", "max_docs_per_s",
                                  "vs_batch32", "default"]))
    print(f"saved {H.save(a.out, rows, {'argv': sys.argv[1:], 'rounds': a.rounds, 'torch': torch.__version__})}")


if __name__ == "__main__":
    main()
