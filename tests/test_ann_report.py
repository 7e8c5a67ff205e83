"""bench_ann's report: the recall-vs-QPS plot draws each method's Pareto frontier (the
best QPS a sweep offers at a recall), in one style per method across the panels."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import ann_report  # noqa: E402


def test_frontier_keeps_only_undominated_points():
    pts = [(0.90, 100.0), (0.95, 120.0), (0.97, 80.0), (0.96, 50.0), (0.99, 60.0), (0.99, 40.0),
           (0.80, 90.0)]
    # (0.90, 100) and (0.80, 90) lose to (0.95, 120); (0.96, 50) to (0.97, 80); (0.99, 40) to (0.99, 60)
    assert ann_report.frontier(pts) == [(0.95, 120.0), (0.97, 80.0), (0.99, 60.0)]
    assert ann_report.frontier([(0.5, 1.0)]) == [(0.5, 1.0)]
    assert ann_report.frontier([]) == []


def test_plot_writes_png_with_one_style_per_method(tmp_path):
    pytest.importorskip("matplotlib")
    runs = []
    for i, methods in enumerate((["ours-ivf", "faiss-IVFFlat"], ["ours-ivf", "hnswlib-M32", "faiss-IVFFlat"])):
        rows = [{"method": m, "recall10": r, "qps_b1": q, "qps_b16": 4 * q, "params": {}, "build_s": 1.0,
                 "index_bytes": 1} for m in methods for r, q in ((0.9, 1000.0), (0.99, 300.0), (0.95, 200.0))]
        p = tmp_path / f"run{i}.json"
        p.write_text(json.dumps({"meta": {"dataset": f"d{i}"}, "rows": rows}))
        runs.append(p)
    out = tmp_path / "ann.png"
    ann_report.plot(runs, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    st = ann_report._styles({"ours-ivf", "ours-flat", "faiss-IVFFlat", "hnswlib-M32"})
    assert st["ours-ivf"]["linestyle"] == "-" and st["faiss-IVFFlat"]["linestyle"] == "--"
    assert len({(s["color"], s["marker"]) for s in st.values()}) == 4
