"""bench_ann.py's report: the recall-vs-QPS plot (PNG) and the README tables from the
saved JSON runs."""
from __future__ import annotations

import json
from pathlib import Path

RECALL_TARGET = 0.95


def plot(paths, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 4.5 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        pts = [r for r in run["rows"] if "method" in r]
        for ax, b in zip(row, (1, 16)):
            for name in sorted({r["method"] for r in pts}):
                rs = sorted([r for r in pts if r["method"] == name], key=lambda r: r["recall10"])
                ours = name.startswith("ours")
                ax.plot([r["recall10"] for r in rs], [r[f"qps_b{b}"] for r in rs], "o-" if ours else ".--",
                        label=name, linewidth=2 if ours else 1)
            ax.axvline(RECALL_TARGET, color="grey", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xlim(0.5, 1.005)
            ax.set_xlabel("recall@10 vs exact")
            ax.set_ylabel(f"QPS, batch {b}")
            ax.set_title(f"{run['meta'].get('dataset', '')}, batch {b}")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def summary(rows: list) -> list:
    """Per method: the fastest point at recall >= RECALL_TARGET (batch 1 and 16)."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows if "method" in r):
        rs = [r for r in rows if r.get("method") == name]
        ok = [r for r in rs if r["recall10"] >= RECALL_TARGET]
        best1 = max(ok, key=lambda r: r["qps_b1"], default=None)
        best16 = max(ok, key=lambda r: r["qps_b16"], default=None)
        out.append({"method": name, "best_b1": best1 and {k: best1[k] for k in ("params", "recall10", "qps_b1")},
                    "best_b16": best16 and {k: best16[k] for k in ("params", "recall10", "qps_b16")},
                    "max_recall": max(r["recall10"] for r in rs), "build_s": rs[0]["build_s"],
                    "index_bytes": rs[0]["index_bytes"]})
    return out


def _point(best, b):
    if not best:
        return "–"
    p = {k: v for k, v in best["params"].items() if k != "default"}
    tag = ("default " if best["params"].get("default") else "") + " ".join(f"{k} {v}" for k, v in p.items())
    return f"{best[f'qps_b{b}']:,.0f} ({best['recall10']:.3f}; {tag or '–'})"


def report_tables(rows: list) -> str:
    """The README's tables: per method the fastest point at recall@10 >= RECALL_TARGET
    (batch 1 and 16), build time, index size; then the filtered runs."""
    out = ["| method | build s | index MB | QPS batch 1 (recall; params) | QPS batch 16 (recall; params) "
           "| max recall |", "|---|---|---|---|---|---|"]
    for s in summary(rows):
        out.append(f"| {s['method']} | {s['build_s']:.1f} | {s['index_bytes'] / 2**20:.0f} | "
                   f"{_point(s['best_b1'], 1)} | {_point(s['best_b16'], 16)} | {s['max_recall']:.4f} |")
    filt = [r for r in rows if "filtered_by" in r]
    if filt:
        out += ["", "| index built | mode | filter | recall@10 vs exact filtered | ms batch 1 | x unfiltered | route |",
                "|---|---|---|---|---|---|---|"]
        for r in filt:
            out.append(f"| {r['filtered_by']} | {r['mode']} | {r['selectivity_pct']}% | {r['recall10']:.4f} | "
                       f"{r['latency_ms_b1']:.3f} | {r['ratio']:.2f} | {r['plan'].get('mode')}: "
                       f"{r['plan'].get('route', '')} |")
    return "\n".join(out)
