"""bench_ann.py's report: the recall-vs-QPS plot (PNG) and the README tables from the
saved JSON runs."""
from __future__ import annotations

import json
from pathlib import Path

RECALL_TARGET = 0.95


def frontier(points: list) -> list:
    """The (recall, qps) points no other point beats on both, by recall ascending: what
    a sweep can offer (ann-benchmarks plots the same), so a costlier parameter that
    gives less never draws the curve down."""
    best = []
    for r, q in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not best or q > best[-1][1]:
            best.append((r, q))
    return best[::-1]


def _styles(names) -> dict:
    """One colour and marker per method for every panel: ours solid and thick, the
    anchors dashed, so a method reads the same in each dataset's plots."""
    import matplotlib

    ours = sorted(n for n in names if n.startswith("ours"))
    anchors = sorted(n for n in names if not n.startswith("ours"))
    warm = ["#000000", "#7f7f7f", "#4daf4a", "#984ea3", "#ff7f00", "#e41a1c", "#a65628", "#f781bf"]
    cool = matplotlib.colormaps["tab10"].colors
    out = {n: dict(color=warm[i % len(warm)], marker="o", linestyle="-", linewidth=2.2, markersize=5)
           for i, n in enumerate(ours)}
    marks = "sv^<>Dph*X"
    out.update({n: dict(color=cool[i % len(cool)], marker=marks[i % len(marks)], linestyle="--",
                        linewidth=1.1, markersize=4) for i, n in enumerate(anchors)})
    return out


def plot(paths, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    style = _styles({r["method"] for run in runs for r in run["rows"] if "method" in r})
    fig, axes = plt.subplots(len(runs), 2, figsize=(12, 4.6 * len(runs)), squeeze=False)
    for row, run in zip(axes, runs):
        pts = [r for r in run["rows"] if "method" in r]
        for ax, b in zip(row, (1, 16)):
            for name in sorted({r["method"] for r in pts}):
                f = frontier([(r["recall10"], r[f"qps_b{b}"]) for r in pts if r["method"] == name])
                ax.plot([p[0] for p in f], [p[1] for p in f], label=name, **style[name])
            ax.axvline(RECALL_TARGET, color="grey", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xlim(0.5, 1.005)
            ax.set_xlabel("recall@10 vs exact")
            ax.set_ylabel(f"QPS, batch {b} (each method's best at a recall)")
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
