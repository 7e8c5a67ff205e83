r"""Training for elastic depth and width, on a CPU, from unlabeled text.

``distill_2d`` is 2D Matryoshka self-distillation: a frozen copy of the starting Encoder
(the teacher) embeds each text at full depth and width, and every chosen (layers, dim)
exit of the student learns to reproduce that embedding's geometry. ``recover`` is the
same loop for an encoder after ``nestvec.nn.compress_model``: only the low-rank and
sparse factors train (through nestvec's lowrank_sparse_matmul autograd), towards the
uncompressed teacher.

    import nestvec as nv
    from nestvec import train
    texts = train.read_texts("../shared/data/beir-msmarco-subset")   # documents only
    enc2d, hist = train.distill_2d(nv.Encoder(), texts, max_seconds=1800)
    enc2d.encode(["what is a matryoshka doll"], layers=3, dim=128)
    enc2d.save("minilm-2d")                                           # nv.Encoder("minilm-2d")

Each trained depth ends in an output head (``nn.Linear(H, H)`` after pooling, before
truncation and normalisation; ``heads="pca"``): the targets are the teacher's
embeddings ``t`` rotated onto their principal axes (``t R``; full-width cosines are
unchanged, and each prefix holds the most variance it can), the full-depth head starts
as exactly that rotation, the shallower ones as least-squares maps from their layer.

The loss, per exit ``(l, d)`` with student embeddings ``s`` (the first ``d`` values of
the layer-``l`` exit, L2-normalised), over a batch of documents plus one random word
span of each (a "crop": a short, query-like view of the same text):

* ``align``: ``1 - cos(s_i, normalise((t R)_i[:d]))``, per text: every exit towards the
  teacher's full embedding (2DMSE trains its shallow layers towards the last one);
* ``sim``: mean squared difference of the in-batch cosine matrices ``s sᵀ`` and
  ``t tᵀ`` (off the diagonal): a prefix learns the full embedding's geometry, not just
  the teacher's prefix (the Matryoshka-Adaptor's pairwise term);
* ``kl``: KL divergence between the rows of ``softmax(t tᵀ / τ)`` and
  ``softmax(s sᵀ / τ)`` (self excluded): which texts are nearest, the retrieval view
  (2DMSE's KL alignment of shallow layers to the last).

``exit loss = align_weight·align + sim_weight·sim + kl_weight·kl``, summed over exits
with per-exit weights. The token embeddings are frozen by default: words met only in
queries then keep the input vectors the rest of the vocabulary was trained with.
"""
from __future__ import annotations

import copy
import math
import numbers
import re
from pathlib import Path

from ._trainloop import TrainHistory, exit_key, fit, pool_torch

__all__ = ["distill_2d", "recover", "read_texts", "TrainHistory", "pool_torch"]


# ----------------------------------------------------------------------------- data

def read_texts(source, limit: int | None = None, chunk_words: int = 200) -> list[str]:
    """Unlabeled training texts from ``source``.

    * a BEIR folder (holding ``corpus.jsonl``): its documents' ``title: text`` (never
      its queries or judgments);
    * a ``.jsonl`` file: the ``text`` (with ``title``) of each line;
    * a folder of ``*.txt / *.md / *.rst`` files: each file, split into passages of at
      most ``chunk_words`` words (a transformer reads a few hundred tokens);
    * ``"stdlib"``: the Python standard library's docstrings (the demo corpus).

    ``limit`` keeps the first ``limit`` texts. Raises FileNotFoundError / ValueError
    (missing source, empty corpus)."""
    from ._corpus import read_source, stdlib_docstrings

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: expected a positive int or None, got {limit!r}")
    if isinstance(chunk_words, bool) or not isinstance(chunk_words, int) or chunk_words < 1:
        raise ValueError(f"chunk_words: expected a positive int, got {chunk_words!r}")
    if str(source) == "stdlib" and not Path("stdlib").exists():
        texts = [f"{r['name']}: {r['text']}" for r in stdlib_docstrings(limit=limit or 100_000)]
    else:
        p = Path(source)
        if p.is_dir() and (p / "corpus.jsonl").is_file():
            p = p / "corpus.jsonl"
        texts = []
        for r in read_source(p):
            words = r["text"].split()
            if p.is_dir() and len(words) > chunk_words:
                texts += [" ".join(words[i:i + chunk_words]) for i in range(0, len(words), chunk_words)]
            else:
                texts.append(r["text"])
    if not texts:
        raise ValueError(f"source: no texts in {str(source)!r}")
    return texts[:limit] if limit else texts


def _check_texts(texts) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts: expected a list of str, got a single string")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts: expected a list of str, got {type(texts).__name__}") from None
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts: expected a list of str, found a {type(bad).__name__}")
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise ValueError(f"texts: expected at least 2 non-empty texts (the loss compares texts "
                         f"within a batch), got {len(texts)}")
    return texts


# ----------------------------------------------------------------------------- checks

def _check_pos(name: str, value, integer: bool = False, allow_none: bool = False, zero: bool = False):
    if value is None and allow_none:
        return None
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type:
        kind = "an int" if integer else "a number"
        raise TypeError(f"{name}: expected {kind}{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__}")
    v = int(value) if integer else float(value)
    if not (math.isfinite(v) and (v >= 0 if zero else v > 0)):
        raise ValueError(f"{name}: expected a finite value {'>= 0' if zero else '> 0'}, got {value!r}")
    return v


def _check_exits(enc, layers, dims) -> list[tuple[int, int]]:
    def as_list(name, v):
        if v is None or isinstance(v, (numbers.Integral, str)):
            return [v]
        try:
            return list(v)
        except TypeError:
            raise TypeError(f"{name}: expected an int or a list of them, got {type(v).__name__}") from None

    L, H = enc.num_layers, enc.hidden_size
    ls, ds = set(), set()
    for v in as_list("layers", layers):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= L:
            raise ValueError(f"layers: expected ints with 1 <= layers <= {L} (the model has {L} "
                             f"layers), got {v!r}")
        ls.add(int(v))
    for v in as_list("dims", dims):
        if v is None:
            v = H
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= v <= H:
            raise ValueError(f"dims: expected ints with 1 <= dim <= {H} (the embedding width) or "
                             f"None (full width), got {v!r}")
        ds.add(int(v))
    if not ls or not ds:
        raise ValueError("layers, dims: expected at least one of each")
    return [(a, b) for a in sorted(ls) for b in sorted(ds)]


FULL_EXIT_WEIGHT = 4.0  # the full model's exit: it should lose next to nothing


def _exit_weights(exits, weights, H, L) -> dict:
    out = {e: 1.0 for e in exits}
    if (L, H) in out:
        out[(L, H)] = FULL_EXIT_WEIGHT
    if weights is None:
        return out
    if callable(weights):
        items = {e: weights(e[0], e[1]) for e in exits}
    elif isinstance(weights, dict):
        items = {}
        for k, w in weights.items():
            e = k
            if isinstance(k, str):  # "L3/d128" (the history's keys), "L3/dfull"
                m = re.fullmatch(r"L(\d+)/d(\d+|full)", k.strip())
                if not m:
                    raise ValueError(f"weights: a str key looks like 'L3/d128' or 'L6/dfull', got {k!r}")
                e = (int(m.group(1)), None if m.group(2) == "full" else int(m.group(2)))
            if not (isinstance(e, tuple) and len(e) == 2):
                raise TypeError(f"weights: keys are (layers, dim) pairs or 'L3/d128', got {k!r}")
            e = (e[0], H if e[1] is None else e[1])
            if e not in out:
                raise ValueError(f"weights: {k!r} is not one of the trained exits {exits}")
            items[e] = w
    else:
        raise TypeError(f"weights: expected a dict {{(layers, dim): weight}} or a callable, "
                        f"got {type(weights).__name__}")
    for e, w in items.items():
        out[e] = _check_pos(f"weights[{e}]", w, zero=True)
    if not any(out.values()):
        raise ValueError("weights: every exit has weight 0")
    return out


_DEFAULTS = dict(align_weight=1.0, sim_weight=10.0, kl_weight=1.0, temperature=0.05,
                 crops=True, crop_words=(4, 24), warmup=0.05, weight_decay=0.0, grad_clip=1.0,
                 gradient_checkpointing=False, precision="float32", batching=None)


def _check_encoder(name: str, enc):
    from .embed import Encoder

    if not isinstance(enc, Encoder):
        raise TypeError(f"{name}: expected a nestvec.Encoder, got {type(enc).__name__}")
    if enc.dtype != "float32":
        raise ValueError(f"{name}: training needs float32 weights, this Encoder holds {enc.dtype} "
                         "(load it with dtype='float32')")


def _bf16_is_native(device) -> bool:
    """Whether bfloat16 matmuls run natively here: a CUDA GPU that supports them, or a CPU
    with AVX512-BF16 (x86) / the BF16 extension (aarch64), as the native module detects."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    from . import _backend as be

    if be._C is None:
        return False
    feats = set(be._C.build_info()["cpu_features"].split())
    return bool(feats & {"avx512bf16", "bf16"})


def _run(method, student_src, teacher, texts, layers, dims, *, epochs, batch_size, lr,
         max_seconds, max_steps, weights, seed, max_length, progress, params_fn, heads,
         head_texts, opts):
    """Checks every argument, then trains a copy of ``student_src``'s transformer (and
    exit heads) against ``teacher``; returns (trained Encoder, TrainHistory)."""
    import torch

    if teacher.device != student_src.device:
        raise ValueError(f"teacher: on {teacher.device}, the encoder on {student_src.device}; "
                         "put both on one device")
    if teacher.hidden_size != student_src.hidden_size:
        raise ValueError(f"teacher: width {teacher.hidden_size} differs from the student's "
                         f"{student_src.hidden_size}")
    texts = _check_texts(texts)
    exits = _check_exits(student_src, layers, dims)
    epochs = _check_pos("epochs", epochs, integer=True)
    batch_size = _check_pos("batch_size", batch_size, integer=True)
    if batch_size < 2:
        raise ValueError(f"batch_size: expected >= 2 (the loss compares texts within a batch), "
                         f"got {batch_size}")
    lr = _check_pos("lr", lr)
    max_seconds = _check_pos("max_seconds", max_seconds, allow_none=True)
    max_steps = _check_pos("max_steps", max_steps, integer=True, allow_none=True)
    seed = _check_pos("seed", seed, integer=True, zero=True)
    max_length = _check_pos("max_length", max_length, integer=True, allow_none=True) or student_src.max_length
    head_texts = _check_pos("head_texts", head_texts, integer=True)
    o = dict(_DEFAULTS)
    unknown = set(opts) - set(o)
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword argument(s) {sorted(unknown)}")
    o.update(opts)
    for k in ("align_weight", "sim_weight", "kl_weight", "weight_decay", "grad_clip", "warmup"):
        o[k] = _check_pos(k, o[k], zero=True)
    if o["warmup"] >= 1:
        raise ValueError(f"warmup: expected a fraction of the run in [0, 1), got {o['warmup']}")
    o["temperature"] = _check_pos("temperature", o["temperature"])
    for k in ("crops", "gradient_checkpointing"):
        if not isinstance(o[k], bool):
            raise TypeError(f"{k}: expected True or False, got {o[k]!r}")
    if o["batching"] is None:  # distill_2d: topic batches (README, Train); recover: length
        o["batching"] = "topic" if method == "distill_2d" else "length"
    if o["batching"] not in ("length", "topic"):
        raise ValueError(f"batching: expected 'length' or 'topic', got {o['batching']!r}")
    if o["precision"] not in ("float32", "bfloat16", "auto"):
        raise ValueError(f"precision: expected 'float32', 'bfloat16' or 'auto', got {o['precision']!r}")
    if o["precision"] == "auto":
        o["precision"] = "bfloat16" if _bf16_is_native(student_src.device) else "float32"
    cw = o["crop_words"]
    if not (isinstance(cw, (tuple, list)) and len(cw) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in cw) and 1 <= cw[0] <= cw[1]):
        raise ValueError(f"crop_words: expected (lo, hi) with 1 <= lo <= hi, got {cw!r}")
    o["crop_words"] = (int(cw[0]), int(cw[1]))
    if not (o["align_weight"] or o["sim_weight"] or o["kl_weight"]):
        raise ValueError("align_weight, sim_weight, kl_weight: all are 0; nothing to train")
    w = _exit_weights(exits, weights, student_src.hidden_size, student_src.num_layers)
    config = dict(method=method, exits=[list(e) for e in exits], epochs=epochs, batch_size=batch_size,
                  lr=lr, max_seconds=max_seconds, max_steps=max_steps, seed=seed, max_length=max_length,
                  heads=heads, head_texts=head_texts, weights={exit_key(e): v for e, v in w.items()},
                  **{k: (list(v) if isinstance(v, tuple) else v) for k, v in o.items()})

    student = student_src._with_model(copy.deepcopy(student_src.model))
    for p in student.model.parameters():
        p.requires_grad_(False)
    if student.heads is not None:
        for p in student.heads.parameters():
            p.requires_grad_(False)
    params = params_fn(student.model)
    for p in params:
        p.requires_grad_(True)
    teacher.model.eval()
    with torch.random.fork_rng(devices=[]):
        hist = fit(method, student, teacher, texts, exits, params, epochs=epochs,
                   batch_size=batch_size, lr=lr, max_seconds=max_seconds, max_steps=max_steps,
                   weights=w, seed=seed, max_length=max_length, progress=progress, config=config,
                   heads=heads, head_texts=head_texts, **o)
    student.training_info = hist.summary()
    return student, hist


# ----------------------------------------------------------------------------- public

_EMBEDDINGS = re.compile(r"(^|\.)embeddings\.|(^|\.)(wte|wpe|embed_tokens)\.")


def distill_2d(encoder, texts, layers=(2, 3, 4, 6), dims=(64, 128, 256, None), epochs: int = 1,
               batch_size: int = 32, lr: float = 1e-4, max_seconds: float | None = None, *,
               weights=None, heads: str | None = "pca", head_texts: int = 2048,
               max_steps: int | None = None, seed: int = 0, max_length: int | None = None,
               train_embeddings: bool = False, progress: bool | None = None, **options):
    """2D Matryoshka self-distillation: returns ``(trained Encoder, TrainHistory)``.

    A frozen copy of ``encoder`` is the teacher; a copy of its transformer (and the
    exit heads) is trained so that every exit ``(l, d)``, ``l`` in ``layers`` and ``d``
    in ``dims`` (``None``: full width), reproduces the teacher's full embeddings (loss in
    the module docstring). ``encoder`` itself is not changed. The model needs at least
    ``max(layers)`` layers (the default's 6 fits MiniLM-L6; pass others for other depths).

    Args:
        texts: unlabeled texts (``read_texts`` reads folders, JSONL, BEIR corpora).
        epochs, batch_size (documents per step; each adds a crop), lr (AdamW; linear
            warm-up, then linear decay to 0 at the end of the run).
        max_seconds: stop before a step would pass this budget (counted from the call,
            the head-fitting pass included); the learning-rate schedule then follows
            the clock, so the run depends on the machine's speed. Without it the run is
            deterministic for a ``seed`` (on one machine and thread count).
        weights: ``{(layers, dim): weight}`` (dim ``None`` = full width; or keys as
            ``"L6/d384"``, ``"L6/dfull"``) or a callable ``f(layers, dim) -> weight``.
            Default (and for exits a dict does not name): 4 for the full model's exit
            (all layers, full width: it should lose next to nothing), 1 for the others.
        heads: ``"pca"`` (default): each trained depth gets an output head
            (``nn.Linear(H, H)`` after pooling, saved with the encoder); the targets are
            the teacher's embeddings rotated onto their principal axes, so a prefix holds
            the most variance while full-width cosines are unchanged; the full-depth head
            starts as exactly that rotation, the others as least-squares maps from their
            layer to it (fitted on ``head_texts`` texts). ``"linear"``: heads without the
            rotation. ``None``: no heads, the transformer alone.
        max_steps: stop after this many optimizer steps.
        max_length: token limit per text (default the encoder's).
        train_embeddings: also train the token embeddings (default frozen).
        progress: tqdm bars (default on).
        options: ``align_weight`` (1), ``sim_weight`` (10), ``kl_weight`` (1),
            ``temperature`` (0.05), ``crops`` (True), ``crop_words`` ((4, 24)),
            ``warmup`` (0.05 of the run), ``weight_decay`` (0), ``grad_clip`` (1.0),
            ``gradient_checkpointing`` (False: a small model's activations fit; True
            recomputes each layer's in the backward pass, for long texts or big models),
            ``precision`` (``"float32"``; ``"bfloat16"`` runs the student's forward and
            backward under bfloat16 autocast while weights, optimizer state, targets and
            the loss stay float32: faster where the CPU has bfloat16 instructions
            (AVX512-BF16, aarch64 BF16) or on a GPU, slower where it emulates them;
            ``"auto"``: bfloat16 where it is native, else float32; the history's config
            records the choice), ``batching`` (``"topic"``, distill_2d's default: the
            teacher embeds every text first, spherical k-means cuts them into
            ``len(texts) // batch_size`` topics (at most 1,024) and each batch is drawn
            from one topic, so the in-batch terms rank near neighbours, as TAS-B's
            topic-aware sampling does; ``"length"``, recover's default: random batches
            grouped by length, less padding).

    Raises:
        TypeError / ValueError naming the argument: no texts, a layer beyond the model,
        a dim above the width, lr <= 0, ...
    """
    _check_encoder("encoder", encoder)
    if heads not in ("pca", "linear", None):
        raise ValueError(f"heads: expected 'pca', 'linear' or None, got {heads!r}")

    def params(model):
        return [p for n, p in model.named_parameters() if train_embeddings or not _EMBEDDINGS.search(n)]

    return _run("distill_2d", encoder, encoder, texts, layers, dims, epochs=epochs,
                batch_size=batch_size, lr=lr, max_seconds=max_seconds, max_steps=max_steps,
                weights=weights, seed=seed, max_length=max_length, progress=progress,
                params_fn=params, heads=heads, head_texts=head_texts, opts=options)


def recover(compressed_encoder, teacher_encoder, texts, layers=None, dims=None, epochs: int = 1,
            batch_size: int = 32, lr: float = 1e-4, max_seconds: float | None = None, *,
            train: str = "factors", weights=None, max_steps: int | None = None, seed: int = 0,
            max_length: int | None = None, progress: bool | None = None, **options):
    """Recovery fine-tuning of an encoder after ``nestvec.nn.compress_model``: returns
    ``(recovered Encoder, TrainHistory)``; ``compressed_encoder`` is not changed.

    The loop and loss of :func:`distill_2d`, with ``teacher_encoder`` (the uncompressed
    model) as the frozen teacher and no new heads. ``train="factors"`` (default) trains
    only the ``A``, ``B`` and ``S`` factors of the LowRankSparseLinear layers (their
    channels, ranks and every other weight stay as they are, so the compressed encoder
    keeps its size and speed); ``"factors+bias"`` adds those layers' biases. ``layers``
    / ``dims`` default to the full depth and width (pass distill_2d's to keep a
    2D-trained model's exits). Other arguments as :func:`distill_2d`.
    """
    from .nn import LowRankSparseLinear

    _check_encoder("compressed_encoder", compressed_encoder)
    _check_encoder("teacher_encoder", teacher_encoder)
    if train not in ("factors", "factors+bias"):
        raise ValueError(f"train: expected 'factors' or 'factors+bias', got {train!r}")
    if not any(isinstance(m, LowRankSparseLinear) for m in compressed_encoder.model.modules()):
        raise ValueError("compressed_encoder: has no LowRankSparseLinear layer (run "
                         "nestvec.nn.compress_model on its .model first)")
    if layers is None:
        layers = compressed_encoder.num_layers

    def params(model):
        out = []
        for mod in model.modules():
            if isinstance(mod, LowRankSparseLinear):
                out += [mod.A, mod.B, mod.S]
                if train == "factors+bias" and mod.bias is not None:
                    out.append(mod.bias)
        return out

    return _run("recover", compressed_encoder, teacher_encoder, texts, layers, dims, epochs=epochs,
                batch_size=batch_size, lr=lr, max_seconds=max_seconds, max_steps=max_steps,
                weights=weights, seed=seed, max_length=max_length, progress=progress,
                params_fn=params, heads=None, head_texts=1, opts=options)
