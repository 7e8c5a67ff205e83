"""Retrieval quality and CPU encode speed of LOST-compressed MiniLM against the original
(bench_quality's ``compressed`` row; see nestvec.nn.compressed_quality_row).

    python benchmarks/bench_lowrank_quality.py [--data ../shared/data/beir-msmarco-subset]
        [--rank-ratio 0.5] [--sparsity 0.05] [--max-docs N]

JSON: benchmarks/results/bench_lowrank_quality.json (one row per setting).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness as H  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                         / "beir-msmarco-subset"))
    p.add_argument("--rank-ratio", type=float, nargs="+", default=[0.5])
    p.add_argument("--sparsity", type=float, default=0.05)
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)

    from nestvec.nn import compressed_quality_row

    rows = []
    for rr in args.rank_ratio:
        row = compressed_quality_row(rank_ratio=rr, sparsity=args.sparsity, data_dir=args.data,
                                     max_docs=args.max_docs, batch_size=args.batch_size)
        rep = row.pop("report")
        row["params_ratio"] = rep["ratio"]
        rows.append(row)
        print(H.markdown_table([row], ["rank_ratio", "sparsity", "docs", "ndcg@10_original",
                                       "ndcg@10_compressed", "ndcg@10_delta", "docs_per_s_original",
                                       "docs_per_s_compressed", "speedup", "params_ratio",
                                       "mean_rel_error"]), flush=True)
    path = H.save("bench_lowrank_quality", rows, {"data": args.data, "include": "FFN "
                  "(intermediate.dense, output.dense; attention excluded)"})
    print("saved", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
