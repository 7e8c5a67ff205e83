"""Build and runtime facts: what was compiled, what runs."""
from __future__ import annotations

from . import _backend as be
from . import _checks as ck
from ._version import __version__


def info() -> dict:
    """Version, CPU ISAs compiled and in use, CUDA compiled / GPU visible, Triton."""
    C = be._C
    out = {"version": __version__, "native": C is not None}
    if C is not None:
        bi = C.build_info()
        out.update(isas_compiled=list(bi["isas_compiled"]), isa_detected=bi["isa_detected"],
                   isa_active=bi["isa_active"], cpu_threads=bi["num_threads"],
                   cuda_compiled=bool(bi["cuda_compiled"]),
                   dense_two_pass=(C.dense_two_pass() or None) if C.dense_bf16_enabled() else None)
        out["dense_bf16_pass"] = out["dense_two_pass"] == "bf16"
        # the format a large ivf index's centroid table is probed in on this CPU
        # (collection/indexes/ivf.py: IvfCentroids.probe_table; int8 for ip probes)
        out["ivf_probe_table"] = "int8" if C.probe_i8_available() else \
            "bfloat16" if C.probe_bf16_available() else "float16"
    else:
        out.update(isas_compiled=[], isa_active=None, cuda_compiled=False,
                   native_error=str(be._C_ERROR))
    gpu = 0
    if out["cuda_compiled"]:
        gpu = C.cuda_device_count()
    else:
        try:
            import torch

            gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:
            gpu = 0
    out["gpu_visible"] = gpu > 0
    out["gpu_count"] = gpu
    out["triton_available"] = be.triton_available()
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
        f"  dense two-pass    : {d.get('dense_two_pass') or 'no'} (large CPU batches; NESTVEC_DENSE_BF16=0 turns it off)",
        f"  ivf probe table   : {d.get('ivf_probe_table') or '-'} (indexes of >= 2^19 centroid values)",
        f"  CUDA compiled     : {yn(d['cuda_compiled'])}",
        f"  GPU visible       : {yn(d['gpu_visible'])} ({d['gpu_count']})",
        f"  Triton available  : {yn(d['triton_available'])}"
        + (f" ({d['triton_version']})" if d.get("triton_version") else ""),
    ]
    return "\n".join(lines)


def get_num_threads() -> int:
    """Threads the CPU ops use (``NESTVEC_NUM_THREADS``, else every core); 1 without
    the native extension."""
    return be._C.get_num_threads() if be._C is not None else 1


def set_num_threads(n: int) -> None:
    """Threads for the CPU ops from now on, process-wide (``n >= 1``). The workers are
    persistent: one call at a time uses them, a concurrent call gets threads of its own."""
    n = ck.check_int(n, "n", lo=1, hi=4096)
    if be._C is not None:
        be._C.set_num_threads(n)
