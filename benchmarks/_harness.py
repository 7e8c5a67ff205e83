"""One harness for every benchmark: machine facts, timing, a printed table with the
baseline in the same run, JSON under benchmarks/results/."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


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
        import nestvec.ops as ops
        from nestvec import _backend

        ni = nestvec.info()
        info["nestvec"] = ni["version"]
        info["isa"] = ni.get("isa_active")
        if _backend._C is not None:
            bi = _backend._C.build_info()
            info["isa_detected"] = bi.get("isa_detected")
            info["cpu_features"] = bi.get("cpu_features")
    except Exception:
        pass
    faiss = sys.modules.get("faiss")
    if faiss is not None:  # which of its builds FAISS loaded (FAISS_OPT_LEVEL picks one)
        info["faiss"] = getattr(faiss, "__version__", "?")
        try:
            info["faiss_opt"] = faiss.get_compile_options()
        except Exception:
            pass
    try:
        with open("/proc/loadavg") as f:
            info["loadavg"] = f.read().split()[:3]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def cpu_isas(spec: str | None) -> list[str]:
    """The CPU ISAs to run nestvec under: a comma list ("avx2,avx512"), "all" (every
    SIMD ISA this CPU runs, e.g. both avx2 and avx512 on an AVX-512 machine), or
    None / "auto" (the one in use)."""
    import nestvec.ops as ops
    from nestvec import _backend

    if _backend._C is None:
        return []
    if not spec or spec == "auto":
        return [_backend._C.get_isa()]
    compiled = _backend._C.build_info()["isas_compiled"]
    if spec == "all":
        simd = [i for i in compiled if i != "scalar" and _backend._C.isa_supported(i)]
        return simd or ["scalar"]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in compiled or not _backend._C.isa_supported(n)]
    if bad:
        ok = [i for i in compiled if _backend._C.isa_supported(i)]
        raise SystemExit(f"--isa {','.join(bad)}: not available here (this CPU runs {', '.join(ok)})")
    return names


@contextlib.contextmanager
def using_isa(name: str):
    """nestvec's CPU kernels forced to ISA `name` inside the block."""
    import nestvec.ops as ops
    from nestvec import _backend

    prev = _backend._C.get_isa()
    _backend._C.set_isa(name)
    try:
        yield
    finally:
        _backend._C.set_isa(prev)


def describe() -> str:
    """One line for the top of a benchmark's output: machine, ISA, load."""
    m = machine()
    return (f"machine: {m.get('cpu')} x{m.get('cpu_count')}; nestvec ISA {m.get('isa')} "
            f"(detected {m.get('isa_detected')}; {m.get('cpu_features')}); load average "
            f"{' '.join(m.get('loadavg', []))}" + (f"; FAISS {m['faiss']} [{m.get('faiss_opt')}]"
                                                   if "faiss" in m else ""))


def read_floor(rows: int, stride: int, nbytes: list[int], offset: int = 16) -> dict | None:
    """Median ms of a bare read, by as many threads as nestvec uses, of `b` bytes of
    each of `rows` rows `stride` bytes apart, for each b in nbytes: the floor of a
    batch-1 scan (benchmarks/read_floor.cpp, built here on first use). None without g++.
    `offset`: where the table starts in a cache line (NumPy's large arrays: 16 bytes)."""
    src = Path(__file__).resolve().parent / "read_floor.cpp"
    exe = ROOT / "build" / "read_floor"
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([cxx, "-O2", "-pthread", str(src), "-o", str(exe)], check=True)
    try:
        import nestvec.ops as ops
        from nestvec import _backend

        threads = _backend._C.get_num_threads() if _backend._C is not None else os.cpu_count()
    except Exception:
        threads = os.cpu_count()
    out = subprocess.run([str(exe), "--threads", str(threads), "--offset", str(offset), str(rows),
                          str(stride), *map(str, nbytes)], capture_output=True, text=True, check=True)
    res = {}
    for line in out.stdout.splitlines():
        if line.strip().startswith("{"):
            r = json.loads(line)
            res[r["bytes"]] = r
    return res


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
