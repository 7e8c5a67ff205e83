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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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


def read_floor(rows: int, stride: int, nbytes: list[int], offset: int = 16, copies: int = 1,
               small_pages: bool = False) -> dict | None:
    """Median ms of a bare read, by as many threads as nestvec uses, of `b` bytes of
    each of `rows` rows `stride` bytes apart, for each b in nbytes: the floor of a
    batch-1 scan (benchmarks/read_floor.cpp, built here on first use). None without g++.
    `offset`: where the table starts in a cache line (NumPy's large arrays: 16 bytes).
    `copies` > 1 reads that many copies in turn (cache-cold when they exceed the LLC);
    `small_pages`: 4 KiB pages, as torch's CPU allocator gives (NumPy: 2 MiB)."""
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
    extra = ["--copies", str(copies)] + (["--small-pages"] if small_pages else [])
    out = subprocess.run([str(exe), "--threads", str(threads), "--offset", str(offset), *extra, str(rows),
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


# --------------------------------------------------------------------------- providers

@dataclass
class Provider:
    """One implementation in a benchmark table.

    name: the row's `impl` ("nestvec cpu", "nestvec cuda", "torch bmm", ...).
    setup(case): untimed preparation for one case (convert inputs, build an index);
      returns the call to time (no arguments), or None where this provider does not
      run the case.
    device: "cuda" times with CUDA events around each call; anything else wall clock.
    isa: nestvec's CPU ISA forced while this provider runs (None: leave as is).
    compare(out, ref) -> str: '' when `out` agrees with the case's reference, else why
      not (or (why, {column: value}) to add columns, e.g. a recall); None uses run()'s
      `compare`; False: not checked (no comparable output).
    context: a context manager factory entered around this provider's set-up and calls
      (a switch of nestvec's, say).
    repeats: this provider's timed calls, instead of run()'s.
    extra: columns copied into each of this provider's rows.
    """
    name: str
    setup: Callable[[Any], Callable[[], Any] | None]
    device: str = "cpu"
    isa: str | None = None
    compare: Callable[[Any, Any], Any] | None | bool = None
    context: Callable[[], Any] | None = None
    repeats: int | None = None
    extra: dict = field(default_factory=dict)


def _timed(fn, device: str, repeats: int) -> list[float]:
    if device == "cuda":
        import torch

        ts = []
        for _ in range(repeats):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        return ts
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def _warm(fn, device: str, warmup: int, timed: bool):
    """The first call's output, then warm-up: `warmup` calls, and on the CPU more while
    less than WARM_S has passed (see WARM_S). Smoke runs (timed=False) call once."""
    out = fn()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    if not timed:
        return out
    t_start, calls = time.perf_counter(), 1
    while calls < warmup or (device != "cuda" and time.perf_counter() - t_start < WARM_S
                             and calls < 100):
        fn()
        calls += 1
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    return out


def run(cases: list, providers: list[Provider], *, reference: Callable[[Any], Any] | None = None,
        compare: Callable[[Any, Any], str] | None = None, repeats: int | Callable[[Any], int] = 5,
        warmup: int = 1, passes: int = 1, label: Callable[[Any], dict] | None = None,
        timed: bool = True, on_error: str = "record") -> list[dict]:
    """Every provider on every case: set up, warm up, time, check the output once.

    cases: anything; `label(case)` gives the columns that name it in the rows (default:
      a dict case's items whose keys do not start with "_" (inputs ride along under
      "_" keys), else {"case": str(case)}).
    reference(case): the expected output; None (or reference=None) takes the first
      provider's output on that case as the reference of the others.
    compare(out, ref) -> '' or a reason: the default check (a provider's own wins).
    repeats: timed calls per provider and pass (or a function of the case).
    passes: the set of providers runs `passes` times per case, each time warmed up
      again, median and min over every timed call: other libraries' thread pools keep
      spinning after their calls and an idle pause drops the clock, so one block of
      calls per method, twice, is fairer than one call of each in turn.
    timed=False: one call each, no timing (a smoke run: the code paths, not the speed).
    on_error: "record" puts a failing provider's error in its row and goes on;
      "raise" re-raises.
    Returns one row per (case, provider that ran it): the label columns, impl, isa,
    device, median_ms, min_ms, repeats, ok (True / False / None: not checked), detail.
    """
    rows = []
    for case in cases:
        cols = label(case) if label else (
            {k: v for k, v in case.items() if not str(k).startswith("_")} if isinstance(case, dict)
            else {"case": str(case)})
        ref = reference(case) if reference else None
        have_ref = reference is not None
        times: dict[int, list[float]] = {}
        results: dict[int, dict] = {}
        calls = {}
        for j, p in enumerate(providers):
            try:
                with _provider_context(p):
                    fn = p.setup(case)
            except Exception as e:  # noqa: BLE001
                if on_error == "raise":
                    raise
                results[j] = {"ok": False, "detail": f"setup: {type(e).__name__}: {e}"[:300]}
                continue
            if fn is not None:
                calls[j] = (p, fn)
        reps = repeats(case) if callable(repeats) else repeats
        broken = set()
        for pass_no in range(passes if timed else 1):
            for j, (p, fn) in calls.items():
                if j in broken:
                    continue
                out = None
                try:
                    with _provider_context(p):
                        out = _warm(fn, p.device, warmup, timed)
                        if pass_no == 0:
                            results[j] = _check(p, out, ref, have_ref, compare)
                            if not have_ref and p.compare is not False:
                                ref, have_ref = out, True
                        if timed:
                            times.setdefault(j, []).extend(_timed(fn, p.device, p.repeats or reps))
                except Exception as e:  # noqa: BLE001
                    if on_error == "raise":
                        raise
                    results[j] = {"ok": False, "detail": f"{type(e).__name__}: {e}"[:300]}
                    times.pop(j, None)
                    broken.add(j)
                del out
        del ref
        for j, p in enumerate(providers):
            if j not in results:
                continue
            ts = times.get(j)
            row = dict(cols, impl=p.name, isa=p.isa, device=p.device,
                       median_ms=statistics.median(ts) if ts else None,
                       min_ms=min(ts) if ts else None, repeats=len(ts) if ts else 0,
                       **results[j], **p.extra)
            rows.append(row)
            print("  " + " ".join(f"{k}={v}" for k, v in cols.items()) + f"  {p.name}"
                  + (f" [{p.isa}]" if p.isa else "")
                  + (f"  {row['median_ms']:.3f} ms" if ts else "")
                  + ("" if row["ok"] is None else "  ok" if row["ok"] else f"  FAIL {row['detail']}"),
                  flush=True)
        del calls
    return rows


@contextlib.contextmanager
def _provider_context(p: Provider):
    with contextlib.ExitStack() as stack:
        if p.isa is not None:
            stack.enter_context(using_isa(p.isa))
        if p.context is not None:
            stack.enter_context(p.context())
        yield


def _check(p: Provider, out, ref, have_ref: bool, compare) -> dict:
    cmp = compare if p.compare is None else p.compare
    if cmp is False or cmp is None or not have_ref:
        return {"ok": None, "detail": ""}
    why = cmp(out, ref)
    why, cols = why if isinstance(why, tuple) else (why, {})
    return {"ok": not why, "detail": why or "", **cols}


def ratios(rows: list[dict], column: str, base: Callable[[dict], bool],
           key: Callable[[dict], Any] = lambda r: r.get("case"), over: str = "base") -> None:
    """rows[column] = base row's median / this row's median, the base row being the one
    of the same key for which base(row) holds (over="base": >1 means faster than it), or
    this row's / the base's (over="row": >1 means slower)."""
    bases = {key(r): r["median_ms"] for r in rows if base(r) and r.get("median_ms")}
    for r in rows:
        b = bases.get(key(r))
        if b and r.get("median_ms"):
            r[column] = b / r["median_ms"] if over == "base" else r["median_ms"] / b


def failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("ok") is False]


# --------------------------------------------------------------------------- --device cuda

def gpu_device(emulate: bool) -> str | None:
    """Where a `--device cuda` run puts its tensors: "cuda"; or, with `emulate`, "cpu" with
    the CUDA kernels on the tests' CPU emulator (tests/nvemu) behind backend="cuda" and
    Triton through its interpreter, so that the GPU code paths of a benchmark run here
    (toy sizes; timings mean nothing). None: no CUDA device and no emulation."""
    if emulate:
        os.environ["TRITON_INTERPRET"] = "1"  # read when triton is first imported
        if "triton" in sys.modules:
            raise RuntimeError("--emulate must be set up before triton is imported")
        sys.path.insert(0, str(ROOT / "tests"))
        import nvemu

        nvemu.install()
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None


def gpu_providers(make_call: Callable[[str, Any], Callable[[], Any] | None], device: str,
                  backends=("cuda", "triton")) -> list[Provider]:
    """"nestvec cuda" / "nestvec triton" providers; make_call(backend, case) -> the call."""
    from nestvec import _backend

    dev = "cuda" if device == "cuda" else "cpu"
    out = []
    for b in backends:
        if b == "cuda" and device == "cuda" and not _backend.cuda_compiled():
            print("  (nestvec cuda: this build has no CUDA kernels; skipped)")
            continue
        out.append(Provider(f"nestvec {b}", (lambda bb: lambda case: make_call(bb, case))(b), device=dev))
    return out


def add_device_args(p) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: nestvec's C++ kernels against CPU libraries; cuda: nestvec's "
                        "CUDA and Triton kernels against GPU baselines")
    p.add_argument("--emulate", action="store_true",
                   help="with --device cuda and no GPU: CPU tensors, the CUDA kernels on the "
                        "tests' emulator, Triton interpreted; toy sizes, one untimed call "
                        "each, nothing saved (checks that the GPU path itself runs)")


def add_ann_data_args(p, n: int | None = None, d: int | None = None) -> None:
    """--n / --d / --clusters / --data-dir: a dataset (and collection) bench_ann.py built."""
    p.add_argument("--n", type=int, default=n, required=n is None)
    p.add_argument("--d", type=int, default=d, required=d is None)
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--data-dir", required=True, help="bench_ann.py's --data-dir (its data and collection)")


def save_or_skip(args, name: str, rows: list[dict], meta: dict, out_dir=None) -> None:
    """JSON under benchmarks/results/ (or out_dir) and, on a GPU run, $OUT; an emulated run
    saves nothing."""
    if getattr(args, "emulate", False):
        print("(emulated run: nothing saved)")
        return
    print(f"wrote {save(name, rows, meta, out_dir=out_dir)}")
    if getattr(args, "device", "cpu") == "cuda" and os.environ.get("OUT"):
        print(f"wrote {save(name, rows, meta, out_dir=Path(os.environ['OUT']))}")


def free_gpu():
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


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
