"""One harness for every benchmark: machine facts, timing, a printed table with the
baseline in the same run, JSON under benchmarks/results/."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "date": _dt.datetime.now().isoformat(timespec="seconds")}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import nestvec

        ni = nestvec.info()
        info["nestvec"] = ni["version"]
        info["isa"] = ni.get("isa_active")
    except Exception:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


# Other libraries' thread pools (OpenBLAS, OpenMP in FAISS / torch) keep spinning for
# tens to hundreds of milliseconds after a call, and an idle pause lets the VM's cores
# drop clock: both slow the first calls of the next method. Warm up with the method
# itself for at least WARM_S (never by sleeping).
WARM_S = 0.3


def timeit(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Wall-clock milliseconds: median and min over `repeats` after `warmup` calls
    (more warm-up calls while less than WARM_S has passed, at most 100)."""
    t_start = time.perf_counter()
    calls = 0
    while calls < warmup or (time.perf_counter() - t_start < WARM_S and calls < 100):
        fn()
        calls += 1
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "repeats": repeats}


def cuda_timeit(fn, repeats: int = 20, warmup: int = 3) -> dict:
    """GPU milliseconds from CUDA events, median over `repeats`."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return {"median_ms": statistics.median(ts), "min_ms": min(ts), "repeats": repeats}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        out.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(out)


def save(name: str, rows: list[dict], meta: dict | None = None, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "meta": meta or {}, "rows": rows}
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path
