"""Run the benchmark suite and collect its results (what `nestvec bench` runs).

    python benchmarks/bench_all.py [--quick] [--only pool,quality] [--out FOLDER]

Runs every benchmarks/bench_*.py (and gpu_suite.py when a CUDA GPU is visible), each
in its own process, then writes under the results folder (default
benchmarks/results/): <name>.json from each script, summary.md with one markdown
table per benchmark, and a PNG plot per timing benchmark (<name>.png; the quality
benchmark draws its own quality-vs-bytes plot).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _harness as H  # noqa: E402


def scripts() -> dict[str, Path]:
    out = {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py")) if p.stem != "bench_all"}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu_suite"] = HERE / "gpu_suite.py"
    except Exception:
        pass
    return out


def _accepts(script: Path, flag: str) -> bool:
    return f'"{flag}"' in script.read_text()


def _scalar_columns(rows):
    cols = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and (v is None or isinstance(v, (str, int, float, bool))):
                cols.append(k)
    return cols


def plot_timings(name, rows, path) -> bool:
    """Horizontal bars of milliseconds per (case, implementation)."""
    key = "median_ms" if any("median_ms" in r for r in rows) else "ours_ms" if any("ours_ms" in r for r in rows) else None
    if key is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, vals = [], []
    for r in rows:
        if isinstance(r.get(key), (int, float)):
            labels.append(f"{r.get('case', '')} | {r.get('impl', '')}")
            vals.append(r[key])
            if key == "ours_ms" and isinstance(r.get("baseline_ms"), (int, float)):
                labels.append(f"{r.get('case', '')} | {r.get('baseline', 'baseline')}")
                vals.append(r["baseline_ms"])
    if not vals:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(vals) + 1.2))
    ax.barh(range(len(vals)), vals, color="tab:blue")
    ax.set_yticks(range(len(vals)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale, lower is better)")
    ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="", help="comma-separated names: " + ", ".join(scripts()))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    available = scripts()
    names = [n for n in args.only.split(",") if n] or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"bench: unknown benchmark(s) {unknown}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve() if args.out else H.RESULTS
    out.mkdir(parents=True, exist_ok=True)
    status = {}
    for name in names:
        script = available[name]
        cmd = [sys.executable, str(script)]
        if args.quick and _accepts(script, "--quick"):
            cmd.append("--quick")
        if _accepts(script, "--out"):
            cmd += ["--out", str(out)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd)
        status[name] = (rc, time.time() - t0)
        print(f"== {name}: exit {rc} in {time.time() - t0:.1f} s", flush=True)

    md = [f"# nestvec benchmarks\n\nmachine: {json.dumps(H.machine())}\n"]
    for name in names:
        stem = "gpu_suite" if name == "gpu_suite" else f"bench_{name}"
        f = out / f"{stem}.json"
        if not f.is_file():
            md.append(f"## {name}\n\n(no results: exit {status[name][0]})\n")
            continue
        data = json.loads(f.read_text())
        rows = data.get("rows", [])
        md.append(f"## {name}\n\n{H.markdown_table(rows, _scalar_columns(rows))}\n")
        if name != "quality" and plot_timings(name, rows, out / f"{stem}.png"):
            md.append(f"![{name}]({stem}.png)\n")
        elif (out / f"{stem}.png").is_file():
            md.append(f"![{name}]({stem}.png)\n")
    (out / "summary.md").write_text("\n".join(md))
    print(f"wrote {out / 'summary.md'}")
    return 0 if all(rc == 0 for rc, _ in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
