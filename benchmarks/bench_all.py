"""Run the benchmark suite and collect its results (what `nestvec bench` runs).

    python benchmarks/bench_all.py [--quick] [--only pool,quality] [--out FOLDER]

Runs every benchmarks/bench_*.py (and, when a CUDA GPU is visible, the per-op ones again
with --device cuda: <op>_cuda), each in its own process, then writes under the results folder (default
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


GPU_OPS = ("hamming", "dense", "pool", "lowrank")
EXTRA_ARGS: dict[str, list[str]] = {f"{op}_cuda": ["--device", "cuda"] for op in GPU_OPS}


def scripts() -> dict[str, Path]:
    out = {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py")) if p.stem != "bench_all"}
    try:
        import torch

        if torch.cuda.is_available():
            out.update({f"{op}_cuda": HERE / f"bench_{op}.py" for op in GPU_OPS})
    except Exception:
        pass
    return out


# Smaller sizes for --quick, for scripts that have no --quick flag of their own.
QUICK_ARGS = {"hamming": ["--n", "100000", "--repeats", "3"], "collection": ["--n", "100000"]}


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
    """Horizontal bars of every ``*_ms`` value per row (log scale), one colour each."""
    ms_keys = [k for k in _scalar_columns(rows) if k.endswith("_ms") and k not in ("target_ms", "min_ms")]
    if not ms_keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label_keys = [k for k in _scalar_columns(rows) if not k.endswith("_ms") and
                  not isinstance(rows[0].get(k), float) and k not in ("meets", "meets_target")][:4]
    bars = []  # (label, key, value)
    for r in rows:
        lab = " ".join(f"{r.get(k)}" for k in label_keys if r.get(k) is not None)
        for k in ms_keys:
            if isinstance(r.get(k), (int, float)):
                bars.append((lab, k, float(r[k])))
    if not bars:
        return False
    colours = {k: f"C{i}" for i, k in enumerate(ms_keys)}
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(bars) + 1.4))
    ax.barh(range(len(bars)), [b[2] for b in bars], color=[colours[b[1]] for b in bars])
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([f"{b[0]} | {b[1]}" for b in bars], fontsize=6)
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
    status, seen = {}, set()
    for name in names:
        script = available[name]
        cmd = [sys.executable, str(script)] + EXTRA_ARGS.get(name, [])
        if args.quick and _accepts(script, "--quick"):
            cmd.append("--quick")
        elif args.quick:
            cmd += QUICK_ARGS.get(name, [])
        if _accepts(script, "--out"):
            cmd += ["--out", str(out)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        # A script without --out writes into benchmarks/results/ itself: keep the results
        # there as they were unless this is a full run into that same folder.
        keep = {} if (_accepts(script, "--out") or (out == H.RESULTS and not args.quick)) else \
            {f: f.read_bytes() for f in H.RESULTS.glob("*.json")}
        t0 = time.time()
        rc = subprocess.call(cmd)
        fresh = []
        for f in sorted({f for d in (out, H.RESULTS) if d.is_dir() for f in d.glob("*.json")}):
            if f.stat().st_mtime < t0 or f.name in seen or f.name == "summary.json":
                continue
            dest = out / f.name
            if f.parent != out:
                dest.write_bytes(f.read_bytes())
            if f in keep:
                f.write_bytes(keep[f])
            elif keep and f.parent == H.RESULTS and out != H.RESULTS:
                f.unlink()
            seen.add(f.name)
            fresh.append(dest)
        status[name] = (rc, time.time() - t0, fresh)
        print(f"== {name}: exit {rc} in {time.time() - t0:.1f} s", flush=True)

    md = [f"# nestvec benchmarks\n\nmachine: {json.dumps(H.machine())}\n"]
    for name in names:
        rc, _, files = status[name]
        if not files:
            md.append(f"## {name}\n\n(no results: exit {rc})\n")
            continue
        for f in files:
            rows = json.loads(f.read_text()).get("rows", [])
            md.append(f"## {name}: {f.name}\n\n{H.markdown_table(rows, _scalar_columns(rows))}\n")
            png = out / f"{f.stem}.png"
            if name != "quality" and plot_timings(f.stem, rows, png):
                md.append(f"![{f.stem}]({png.name})\n")
            elif png.is_file():
                md.append(f"![{f.stem}]({png.name})\n")
    (out / "summary.md").write_text("\n".join(md))
    print(f"wrote {out / 'summary.md'}")
    return 0 if all(st[0] == 0 for st in status.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
