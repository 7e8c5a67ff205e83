r"""LOST layers: a linear map stored as ``W = B·A + S`` (low rank plus a few dense
output channels), its SVD initialisation from a dense layer, and whole-model
compression.

    layer = LowRankSparseLinear.from_dense(linear, rank=128, sparsity=0.05)
    layer.reconstruction_error      # ||W - (B·A + S)||_F / ||W||_F
    # a BERT encoder's feed-forward pair (not attention.output.dense):
    report = compress_model(model, rank_ratio=0.25, sparsity=0.05,
                            include=[r"intermediate\.dense$", r"layer\.\d+\.output\.dense$"])

The forward pass runs ``nestvec.lowrank_sparse_matmul`` (C++ on CPU, CUDA or Triton on
GPU, the NumPy reference in float64); the backward pass is plain torch matmuls in the
op's ``torch.autograd.Function`` (nestvec/ops/lowrank.py).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from . import _checks as ck
from .ops.lowrank import check_channel_ids, lowrank_sparse_linear

__all__ = ["LowRankSparseLinear", "lowrank_sparse_linear", "compress_model", "CompressionReport"]


def _check_fraction(name: str, value, lo_open: bool = False) -> float:
    """``value`` as a float in [0, 1] (``(0, 1]`` when ``lo_open``), else TypeError /
    ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    ok = (0.0 < value <= 1.0) if lo_open else (0.0 <= value <= 1.0)  # False for NaN too
    if not ok:
        rng = "0 < {0} <= 1" if lo_open else "0 <= {0} <= 1"
        raise ValueError(f"{name}: expected {rng.format(name)}, got {value}")
    return value


class LowRankSparseLinear(nn.Module):
    """A drop-in ``nn.Linear`` whose weight is ``B·A + S``.

    Parameters: ``A [rank, in]``, ``B [out, rank]``, ``S [c, in]`` (rows of the sparse
    part for output channels ``channels``, a buffer of unique int64 ids) and an
    optional ``bias [out]``. ``backend`` is passed to the op (``auto`` picks by device).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, channels=None,
                 bias: bool = True, device=None, dtype=None, backend: str = "auto"):
        super().__init__()
        in_features = ck.check_int(in_features, "in_features")
        out_features = ck.check_int(out_features, "out_features")
        rank = ck.check_int(rank, "rank")
        if in_features < 0 or out_features < 0:
            raise ValueError(f"in_features, out_features: expected >= 0, got {in_features}, "
                             f"{out_features}")
        if rank < 0 or rank > min(in_features, out_features):
            raise ValueError(f"rank: expected 0 <= rank <= min(in, out) = "
                             f"{min(in_features, out_features)}, got {rank}")
        kw = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.register_buffer("channels", self._check_channels(channels, out_features, device))
        self.A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.S = nn.Parameter(torch.zeros(self.channels.numel(), in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.backend = backend
        self.reconstruction_error: float | None = None
        bound = 1.0 / math.sqrt(max(in_features, 1))
        nn.init.uniform_(self.A, -bound, bound)
        nn.init.uniform_(self.B, -1.0 / math.sqrt(max(rank, 1)), 1.0 / math.sqrt(max(rank, 1)))

    @staticmethod
    def _check_channels(channels, out_features: int, device) -> torch.Tensor:
        """Unique int64 ids in [0, out_features) as a 1-D tensor on ``device``. Checked
        here, not at the first forward, and never truncated from floats."""
        if channels is None:
            return torch.empty(0, dtype=torch.int64, device=device)
        try:
            t = torch.as_tensor(channels)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"channels: expected a 1-D sequence of integer ids, got "
                            f"{type(channels).__name__} ({e})") from None
        if t.ndim != 1:
            raise ValueError(f"channels: expected a 1-D sequence of ids, got shape "
                             f"{tuple(t.shape)}")
        if t.numel() == 0:  # torch.as_tensor([]) is float32: nothing to truncate
            return torch.empty(0, dtype=torch.int64, device=device)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"channels: expected integer ids, got dtype {t.dtype}")
        # uint64 ids past int64 wrap negative and fail the range check
        t = t.to(device="cpu", dtype=torch.int64)
        check_channel_ids(t, out_features, "out_features")
        return t.to(device)

    def forward(self, x):
        return lowrank_sparse_linear(x, self.A, self.B, self.S, self.channels, self.bias,
                                     self.backend)

    def dense_weight(self) -> torch.Tensor:
        """``B·A + S`` as a dense ``[out, in]`` tensor (for checks and export)."""
        W = self.B @ self.A
        if self.channels.numel():
            W = W.index_add(0, self.channels, self.S)
        return W

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, channels={self.channels.numel()}, bias={self.bias is not None}")

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int, sparsity: float = 0.0,
                   backend: str = "auto") -> "LowRankSparseLinear":
        """Initialise from a dense layer (or a ``[out, in]`` weight tensor).

        Keeps the top-``rank`` singular components as ``B·A`` (split ``U√s`` / ``√s Vᵀ``)
        and turns the residual ``W - B·A`` into dense rows for the
        ``round(sparsity * out)`` output channels whose residual rows have the largest
        norm. Sets ``.reconstruction_error`` = ``‖W - (B·A + S)‖_F / ‖W‖_F`` with the
        factors as stored in the layer's dtype (their rounding included).

        Raises TypeError / ValueError naming ``linear``, ``rank`` or ``sparsity``.
        """
        if isinstance(linear, nn.Linear):
            weight, bias = linear.weight, linear.bias
        elif isinstance(linear, torch.Tensor) and linear.ndim == 2:
            weight, bias = linear, None
        else:
            raise TypeError(f"linear: expected an nn.Linear or a 2-D weight tensor, got "
                            f"{type(linear).__name__}")
        sparsity = _check_fraction("sparsity", sparsity)
        rank = ck.check_int(rank, "rank")
        out_f, in_f = weight.shape
        if not 0 <= rank <= min(out_f, in_f):
            raise ValueError(f"rank: expected 0 <= rank <= {min(out_f, in_f)}, got {rank}")
        W = weight.detach().to(torch.float64)
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        root = s[:rank].sqrt()
        B = U[:, :rank] * root
        A = root[:, None] * Vh[:rank]
        R = W - B @ A
        c = int(round(sparsity * out_f))
        norms = R.norm(dim=1)
        channels = torch.sort(torch.topk(norms, c).indices).values if c else \
            torch.empty(0, dtype=torch.int64, device=W.device)
        S = R.index_select(0, channels)
        layer = cls(in_f, out_f, rank, channels.cpu(), bias=bias is not None,
                    device=weight.device, dtype=weight.dtype, backend=backend)
        with torch.no_grad():
            layer.A.copy_(A.to(weight.dtype))
            layer.B.copy_(B.to(weight.dtype))
            layer.S.copy_(S.to(weight.dtype))
            if bias is not None:
                layer.bias.copy_(bias.detach())
            # From the factors as stored: in float16 / bfloat16 the rounding of A, B and
            # S, not the truncated spectrum, can dominate the error.
            Wq = layer.B.to(torch.float64) @ layer.A.to(torch.float64)
            if channels.numel():
                Wq = Wq.index_add(0, layer.channels, layer.S.to(torch.float64))
            total = float(W.norm())
            err = float((W - Wq).norm())
        layer.reconstruction_error = err / total if total > 0 else 0.0
        return layer


# ------------------------------------------------------------------------------ compress_model

@dataclass
class CompressionReport:
    """What compress_model did: parameter counts and per-layer reconstruction error."""

    params_before: int
    params_after: int
    layers: list = field(default_factory=list)    # dicts: name, in, out, rank, channels, ...
    skipped: list = field(default_factory=list)   # dicts: name, reason

    @property
    def ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict:
        return asdict(self) | {"ratio": self.ratio}

    def __str__(self) -> str:
        lines = [f"params {self.params_before:,} -> {self.params_after:,} ({self.ratio:.3f}x); "
                 f"{len(self.layers)} layers compressed, {len(self.skipped)} skipped",
                 f"{'layer':48s} {'in':>5s} {'out':>5s} {'rank':>5s} {'ch':>4s} {'rel_err':>8s}"]
        for d in self.layers:
            lines.append(f"{d['name'][:48]:48s} {d['in']:5d} {d['out']:5d} {d['rank']:5d} "
                         f"{d['channels']:4d} {d['rel_error']:8.4f}")
        return "\n".join(lines)


def _matcher(arg: str, pats) -> Callable[[str, nn.Module], bool]:
    if pats is None:
        return lambda name, mod: True
    if callable(pats):
        return pats
    if isinstance(pats, str):
        pats = [pats]
    try:
        pats = list(pats)
    except TypeError:
        raise TypeError(f"{arg}: expected a regex, a list of them or a predicate, got "
                        f"{type(pats).__name__}") from None
    compiled = []
    for p in pats:
        if not isinstance(p, str):
            raise TypeError(f"{arg}: expected regular expressions (str), got {type(p).__name__}")
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{arg}: invalid regular expression {p!r}: {e}") from None
    return lambda name, mod: any(c.search(name) for c in compiled)


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def compress_model(model: nn.Module, rank_ratio: float, sparsity: float = 0.05,
                   include: Iterable[str] | str | Callable | None = None,
                   exclude: Iterable[str] | str | Callable | None = None,
                   only_if_smaller: bool = True, backend: str = "auto") -> CompressionReport:
    """Replace chosen ``nn.Linear`` layers of ``model`` in place by LowRankSparseLinear.

    Args:
        model: a module that contains the layers (not an nn.Linear itself: for a single
            layer use ``LowRankSparseLinear.from_dense``).
        rank_ratio: in (0, 1]; rank = max(1, round(rank_ratio * min(in, out))) per layer.
        sparsity: in [0, 1]; fraction of each layer's output channels that keep a dense
            residual row.
        include / exclude: regular expressions searched in the module's qualified name
            (``"encoder.layer.0.intermediate.dense"``), a list of them, or a predicate
            ``f(name, module) -> bool`` (called on nn.Linear modules and on already
            compressed LowRankSparseLinear ones). Default: every nn.Linear.
        only_if_smaller: skip a layer whose compressed form has no fewer parameters.

    Only modules of type exactly ``nn.Linear`` are replaced. Included subclasses (such as
    ``nn.MultiheadAttention.out_proj``, whose owner reads ``.weight`` directly) and
    layers that are already LowRankSparseLinear are listed in ``skipped``, so compressing
    twice changes nothing.

    Returns:
        CompressionReport (parameters before / after, per-layer relative Frobenius error
        ``‖W - (B·A + S)‖ / ‖W‖``, skipped layers with the reason).

    Raises:
        TypeError / ValueError naming ``model``, ``rank_ratio``, ``sparsity``,
        ``include`` or ``exclude``; ValueError when ``include`` matches no nn.Linear
        (nor an already compressed layer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Linear):
        # Its name is "": there is no parent attribute to replace it through.
        raise ValueError("model: is itself an nn.Linear, which compress_model cannot replace in "
                         "place; use LowRankSparseLinear.from_dense(layer, rank, sparsity)")
    rank_ratio = _check_fraction("rank_ratio", rank_ratio, lo_open=True)
    sparsity = _check_fraction("sparsity", sparsity)
    inc = _matcher("include", include)
    exc = _matcher("exclude", exclude) if exclude is not None else None
    before = _nparams(model)
    report = CompressionReport(before, before)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    done = [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankSparseLinear)]
    chosen = [(n, m) for n, m in linears if inc(n, m)]
    if include is not None and not chosen and not any(inc(n, m) for n, m in done):
        names = [n for n, _ in linears]
        avail = (", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
                 if names else "none")
        raise ValueError(f"include: {include!r} matches no nn.Linear layer of the model "
                         f"(nn.Linear layers: {avail})")
    for name, m in done:
        if inc(name, m) and not (exc and exc(name, m)):
            report.skipped.append({"name": name, "reason": "already a LowRankSparseLinear"})
    targets = []
    for name, lin in chosen:
        if exc and exc(name, lin):
            continue
        if type(lin) is not nn.Linear:
            report.skipped.append({"name": name, "reason": f"{type(lin).__name__} is a subclass of "
                                   "nn.Linear; its owner may rely on it (nn.MultiheadAttention "
                                   "reads out_proj.weight directly), so it is kept"})
            continue
        targets.append((name, lin))
    for name, lin in targets:
        out_f, in_f = lin.weight.shape
        rank = max(1, int(round(rank_ratio * min(in_f, out_f))))
        c = int(round(sparsity * out_f))
        new_params = rank * (in_f + out_f) + c * in_f + (out_f if lin.bias is not None else 0)
        old_params = _nparams(lin)
        if only_if_smaller and new_params >= old_params:
            report.skipped.append({"name": name, "reason": f"rank {rank} + {c} channels would "
                                   f"not save parameters ({new_params} >= {old_params})"})
            continue
        layer = LowRankSparseLinear.from_dense(lin, rank, sparsity, backend=backend)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, layer)
        report.layers.append({"name": name, "in": in_f, "out": out_f, "rank": rank,
                              "channels": c, "params_before": old_params,
                              "params_after": _nparams(layer),
                              "rel_error": float(layer.reconstruction_error)})
    report.params_after = _nparams(model)
    return report
