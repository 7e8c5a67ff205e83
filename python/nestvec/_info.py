"""Build and runtime facts: what was compiled, what runs."""
from __future__ import annotations

import numbers

from . import __version__


def info() -> dict:
    """Version, CPU ISAs compiled and in use, CUDA compiled / GPU visible, Triton."""
    from . import ops

    out = {"version": __version__, "native": ops._C is not None}
    if ops._C is not None:
        bi = ops._C.build_info()
        out.update(isas_compiled=list(bi["isas_compiled"]), isa_detected=bi["isa_detected"],
                   isa_active=bi["isa_active"], cpu_threads=bi["num_threads"],
                   cuda_compiled=bool(bi["cuda_compiled"]),
                   dense_bf16_pass=bool(ops._C.dense_bf16_enabled()) and bi["isa_active"] == "avx512")
    else:
        out.update(isas_compiled=[], isa_active=None, cuda_compiled=False,
                   native_error=str(ops._C_ERROR))
    gpu = 0
    if out["cuda_compiled"]:
        gpu = ops._C.cuda_device_count()
    else:
        try:
            import torch

            gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            gpu = 0
    out["gpu_visible"] = gpu > 0
    out["gpu_count"] = gpu
    out["triton_available"] = ops.triton_available()
    try:
        import triton

        out["triton_version"] = triton.__version__
    except Exception:
        pass
    return out


def format_info(d: dict) -> str:
    yn = lambda b: "yes" if b else "no"  # noqa: E731
    lines = [
        f"nestvec {d['version']}",
        f"  native module     : {yn(d['native'])}",
        f"  CPU ISAs compiled : {', '.join(d.get('isas_compiled') or []) or '-'}",
        f"  CPU ISA in use    : {d.get('isa_active') or '-'} (detected {d.get('isa_detected', '-')})",
        f"  dense bf16 pass   : {yn(d.get('dense_bf16_pass'))} (large CPU batches; NESTVEC_DENSE_BF16=0 turns it off)",
        f"  CUDA compiled     : {yn(d['cuda_compiled'])}",
        f"  GPU visible       : {yn(d['gpu_visible'])} ({d['gpu_count']})",
        f"  Triton available  : {yn(d['triton_available'])}"
        + (f" ({d['triton_version']})" if d.get("triton_version") else ""),
    ]
    return "\n".join(lines)


def get_num_threads() -> int:
    """Threads the CPU ops use (``NESTVEC_NUM_THREADS``, else every core); 1 without
    the native extension."""
    from . import ops

    return ops._C.get_num_threads() if ops._C is not None else 1


def set_num_threads(n: int) -> None:
    """Threads for the CPU ops from now on, process-wide (``n >= 1``). The workers are
    persistent: one call at a time uses them, a concurrent call gets threads of its own."""
    from . import ops

    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"n: expected an int, got {type(n).__name__}")
    if not 1 <= n <= 4096:
        raise ValueError(f"n: expected 1 <= n <= 4096 threads, got {n}")
    if ops._C is not None:
        ops._C.set_num_threads(int(n))
