"""The training loop behind nestvec.train: differentiable pooling, exit heads and their
initialisation, the per-exit loss, and the optimisation loop with its budgets."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- history


@dataclass
class TrainHistory:
    """What a training run did.

    ``exits``: the trained ``(layers, dim)`` pairs (dim resolved to an int);
    ``epochs``: one dict per (possibly partial) epoch: ``epoch``, ``steps``,
    ``seconds`` (since the run began), ``loss`` (mean loss of each exit, keyed
    ``"L{layers}/d{dim}"``, unweighted), ``total`` (mean weighted total);
    ``step_loss``: the weighted total of every step; ``init_seconds``: the time spent
    before the first step (teacher pass over the head-fitting sample); ``stopped``:
    ``"epochs"``, ``"max_steps"`` or ``"max_seconds"``; ``config``: the arguments."""

    method: str
    exits: list
    epochs: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    init_seconds: float = 0.0
    texts: int = 0
    stopped: str = "epochs"
    config: dict = field(default_factory=dict)

    def loss_per_exit(self) -> dict:
        """``{"L3/d64": [epoch 1 loss, epoch 2 loss, ...], ...}``."""
        return {exit_key(e): [ep["loss"][exit_key(e)] for ep in self.epochs] for e in self.exits}

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """The record an Encoder keeps (and save() writes): no per-step losses."""
        d = self.to_dict()
        d.pop("step_loss")
        return d


def exit_key(e) -> str:
    return f"L{e[0]}/d{e[1]}"


# ----------------------------------------------------------------------------- data

def crop(text: str, rng: np.random.Generator, lo: int, hi: int) -> str:
    """A random span of ``lo``..``hi`` words of ``text`` (the whole text when shorter)."""
    words = text.split()
    n = int(rng.integers(lo, hi + 1))
    if len(words) <= n:
        return text
    start = int(rng.integers(0, len(words) - n + 1))
    return " ".join(words[start:start + n])


def batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of index batches: shuffled, grouped by length within windows of 50
    batches (little padding), the batch order shuffled again."""
    perm = rng.permutation(len(lengths))
    out = []
    win = batch_size * 50
    for s in range(0, len(perm), win):
        w = perm[s:s + win]
        w = w[np.argsort(-lengths[w], kind="stable")]
        out += [w[i:i + batch_size] for i in range(0, len(w), batch_size)]
    return _shuffled(out, rng)


def _shuffled(out: list, rng: np.random.Generator) -> list:
    """The batches ``out`` in a random order, a trailing batch of one merged into the
    one before it (a batch of one has no in-batch pairs)."""
    if len(out) > 1 and len(out[-1]) < 2:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return [out[i] for i in rng.permutation(len(out))]


def topic_batches(labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of index batches drawn topic by topic (TAS-B's topic-aware sampling):
    the clusters in a random order, each one's texts shuffled, cut into batches, the
    batch order shuffled. A batch then holds near neighbours, so the in-batch terms
    teach the ranking among similar texts that retrieval turns on, not only the easy
    separation of unrelated ones."""
    seq = []
    for c in rng.permutation(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        seq.append(members[rng.permutation(len(members))])
    perm = np.concatenate(seq)
    return _shuffled([perm[i:i + batch_size] for i in range(0, len(perm), batch_size)], rng)


TOPICS = 1024


def _nearest(x, c, rows: int = 65536):
    """Index of the nearest centre (largest dot product) of each row, in row blocks (an
    n x k score matrix at once would not fit for a large corpus)."""
    import torch

    return torch.cat([(x[s:s + rows] @ c.T).argmax(1) for s in range(0, len(x), rows)])


def spherical_kmeans(x, k: int, seed: int, iters: int = 20, seed_sample: int = 32768):
    """Cluster labels of the unit rows ``x`` (torch [n, D]) by cosine k-means; the
    centres are seeded on at most ``seed_sample`` rows."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    k = min(k, len(x))
    # Greedy k-means++ seeding (as scikit-learn's): a few candidates drawn with probability
    # ~ their squared distance to the nearest centre, the one that lowers the total most
    # kept. A random start merges close topics and splits others.
    xc = x.cpu()
    if len(xc) > seed_sample:
        xc = xc[torch.randperm(len(xc), generator=g)[:seed_sample]]
    first = int(torch.randint(len(xc), (1,), generator=g))
    chosen = [first]
    d2 = (2 - 2 * (xc @ xc[first])).clamp_min(0)
    tries = 2 + int(math.log(k))
    for _ in range(k - 1):
        p = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1 / len(d2))
        cand = torch.multinomial(p, tries, replacement=True, generator=g)
        new = torch.minimum(d2[None, :], (2 - 2 * (xc[cand] @ xc.T)).clamp_min(0))
        best = int(new.sum(1).argmin())
        chosen.append(int(cand[best]))
        d2 = new[best]
    c = xc[chosen].to(x.device)
    for _ in range(iters):
        labels = _nearest(x, c)
        c = torch.zeros_like(c).index_add_(0, labels, x)
        empty = c.norm(dim=1) == 0
        c[empty] = x[torch.randint(len(x), (int(empty.sum()),), generator=g).to(x.device)]
        c = torch.nn.functional.normalize(c, dim=1)
    return _nearest(x, c).cpu().numpy()


# ----------------------------------------------------------------------------- pooling

def pool_torch(hidden, mask, mode: str):
    """Differentiable pooling with the semantics of :func:`nestvec.pool` (before
    truncation and normalisation): float32 ``[B, H]``; a row with no tokens is zero."""
    import torch

    h = hidden.float()
    m = (mask != 0)
    if mode == "max":
        if not h.shape[1]:
            return h.new_zeros(h.shape[0], h.shape[2])
        x = h.masked_fill(~m[:, :, None], float("-inf")).amax(1)
        return torch.where(m.any(1, keepdim=True), x, torch.zeros_like(x))
    mf = m.to(h.dtype)
    if mode == "mean":
        w = mf
    elif mode == "weighted_mean":
        w = torch.cumsum(mf, 1) * mf
    elif mode in ("cls", "last"):
        pos = torch.arange(m.shape[1], device=m.device)
        if mode == "cls":
            at = torch.where(m, pos, m.shape[1]).amin(1)
        else:
            at = torch.where(m, pos, -1).amax(1)
        w = (pos[None, :] == at[:, None]).to(h.dtype)
    else:
        raise ValueError(f"mode: no pooling {mode!r}")
    tot = w.sum(1, keepdim=True)
    return torch.einsum("bt,bth->bh", w, h) / torch.where(tot > 0, tot, torch.ones_like(tot))


def apply_head(x, mask, head):
    """``head(x)`` with rows that had no tokens kept at zero (as Encoder.encode does)."""
    import torch

    if head is None:
        return x
    y = head(x)
    return torch.where((mask.sum(1) > 0)[:, None], y, torch.zeros_like(y))


def tokenize(enc, texts, max_length):
    batch = enc.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
    return {k: v.to(enc.device) for k, v in batch.items()}


def teacher_embed(teacher, texts, max_length):
    """The teacher's full-depth, full-width, normalised embeddings: float32 torch [n, D]."""
    import torch
    import torch.nn.functional as F

    batch = tokenize(teacher, texts, max_length)
    with torch.no_grad():
        h = teacher.model(**batch).last_hidden_state
        x = pool_torch(h, batch["attention_mask"], teacher.pooling)
        x = apply_head(x, batch["attention_mask"], teacher.head_for(teacher.num_layers))
        return F.normalize(x.float(), dim=1)


# ----------------------------------------------------------------------------- heads

def init_heads(student, teacher, texts, idx, exit_layers, rotate, max_length, batch_size, cache,
               cached, progress):
    """Fit the student's exit heads on the texts ``idx`` (teacher embeddings are
    cached on the way) and return the target rotation ``R`` [D, D] (float32 torch).

    ``R``: eigenvectors of the second moment of the teacher's embeddings, largest first
    (``rotate``), else the identity. Cosines at full width are unchanged by it; its
    prefixes are the teacher's principal components. The full-depth head is the
    teacher's head (or the identity) times ``R``: at full depth the student starts
    exactly at the rotated teacher. A shallower exit's head is the ridge least-squares
    map from its pooled states to the rotated teacher embeddings."""
    import torch

    from .embed import _make_heads

    D = teacher.hidden_size
    L = student.num_layers
    model = student.model  # a copy of the teacher's transformer: one pass serves both
    X = {v: [] for v in exit_layers if v != L}
    T = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(idx), desc="heads: teacher pass", unit="text", mininterval=1.0,
                   file=sys.stderr)
    with torch.no_grad():
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            batch = tokenize(student, [texts[i] for i in part], max_length)
            mask = batch["attention_mask"]
            out = model(**batch, output_hidden_states=bool(X))
            top = pool_torch(out.last_hidden_state, mask, teacher.pooling)
            top = apply_head(top, mask, teacher.head_for(teacher.num_layers))
            t = torch.nn.functional.normalize(top.float(), dim=1)
            cache[torch.as_tensor(part, device=cache.device)] = t
            cached[part] = True
            T.append(t.double())
            for v in X:
                X[v].append(pool_torch(out.hidden_states[v], mask, student.pooling).double())
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    T = torch.cat(T)
    if rotate:
        # Uncentred (second moment): the embeddings' common direction comes first, so a
        # prefix's cosines keep the offset the full cosines have.
        _, V = torch.linalg.eigh(T.T @ T / len(T))
        R = V.flip(1)
    else:
        R = torch.eye(D, dtype=torch.float64, device=T.device)
    target = T @ R
    heads = _make_heads(exit_layers, D).to(student.device)
    with torch.no_grad():
        for v in exit_layers:
            lin = heads[str(v)]
            if v == L:
                th = teacher.head_for(teacher.num_layers)
                W = th.weight.double().T if th is not None else torch.eye(D, dtype=torch.float64, device=T.device)
                b = th.bias.double() if th is not None else torch.zeros(D, dtype=torch.float64, device=T.device)
                W, b = W @ R, b @ R
            else:
                x = torch.cat(X[v])
                A = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
                G = A.T @ A
                lam = 1e-3 * float(torch.diagonal(G).mean())
                beta = torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype, device=G.device),
                                          A.T @ target)
                W, b = beta[:-1], beta[-1]
            lin.weight.copy_(W.T.float())
            lin.bias.copy_(b.float())
    student.heads = heads.eval()
    return R.float()


# ----------------------------------------------------------------------------- loss

def exit_losses(outs, t, R, exits, tau):
    """Per exit ``(align, sim, kl)`` for the student's exit outputs ``outs[l]`` [n, H]
    (pooled, through the head, not normalised) against the teacher's normalised
    embeddings ``t`` [n, D] and the target rotation ``R``."""
    import torch
    import torch.nn.functional as F

    n = t.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=t.device)
    st = t @ t.T
    log_pt = F.log_softmax((st / tau).masked_fill(eye, -1e4), dim=1)
    tr = t @ R
    targets = {}
    out = {}
    for layer, d in exits:
        if d not in targets:
            targets[d] = F.normalize(tr[:, :d], dim=1)
        s = F.normalize(outs[layer][:, :d], dim=1)
        ss = s @ s.T
        align = (1.0 - (s * targets[d]).sum(1)).mean()
        sim = (ss - st).masked_fill(eye, 0.0).pow(2).sum() / max(n * (n - 1), 1)
        log_ps = F.log_softmax((ss / tau).masked_fill(eye, -1e4), dim=1)
        kl = F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean")
        out[(layer, d)] = (align, sim, kl)
    return out


# ----------------------------------------------------------------------------- loop

def checkpoint_layers(student, on: bool):
    """Recompute each transformer layer's activations in the backward pass instead of
    keeping them (less memory, about a third more compute); ``on=False`` undoes it.
    Done on our side so that it works alike across transformers versions (and with
    dropout off: the recomputation then equals the first pass)."""
    from torch.utils.checkpoint import checkpoint

    for layer in student.model.get_submodule(student._layer_path):
        if on:
            fwd = layer.forward
            layer.forward = (lambda f: lambda *a, **k: checkpoint(f, *a, use_reentrant=False, **k))(fwd)
        elif "forward" in layer.__dict__:
            del layer.forward


def _train_attention(model, device_type: str):
    """On a CPU, train with the eager (matmul) attention: PyTorch's CPU kernel behind
    SDPA is fast forward but its backward is not (under bfloat16 autocast it took a
    fifth of a MiniLM step). Returns the implementation to restore afterwards, or None
    when nothing was changed (a GPU, or a transformers without the switch)."""
    cur = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if device_type != "cpu" or cur != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return None
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError, NotImplementedError):
        return None
    return cur


def fit(method, student, teacher, texts, exits, params, *, epochs, batch_size, lr, max_seconds,
        max_steps, weights, align_weight, sim_weight, kl_weight, temperature, crops, crop_words,
        max_length, seed, warmup, weight_decay, grad_clip, progress, config, heads, head_texts,
        gradient_checkpointing=False, precision="float32", batching="length"):
    """Train ``params`` (of ``student.model`` and ``student.heads``) in place; returns
    the TrainHistory. ``heads``: ``"pca"`` / ``"linear"`` fit fresh exit heads first (with /
    without the PCA rotation of the targets), ``None`` keeps the student's as they are."""
    import torch

    t_start = time.perf_counter()
    dev = student.device
    layers_used = sorted({e[0] for e in exits})
    many = len(layers_used) > 1
    if many and not student.hidden_states_are_exits():
        raise ValueError("layers: this model's hidden states are not its exits (a final norm after "
                         "the layers?); train one depth at a time, or a BERT/RoBERTa-style encoder")
    forward = student._model_for(max(layers_used))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    steps_per_epoch = len(batches(lengths, batch_size, np.random.default_rng(0)))
    planned = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    cache = torch.zeros(len(texts), teacher.hidden_size, device=dev)
    cached = np.zeros(len(texts), dtype=bool)
    hist = TrainHistory(method, [tuple(e) for e in exits], texts=len(texts), config=config)
    show = progress if progress is not None else True
    R = torch.eye(teacher.hidden_size, device=dev)
    if heads is not None:
        idx = np.sort(rng.permutation(len(texts))[:head_texts])
        R = init_heads(student, teacher, texts, idx, layers_used, heads == "pca", max_length,
                       batch_size, cache, cached, show).to(dev)
        params = list(params) + list(student.heads.parameters())
        for p in student.heads.parameters():
            p.requires_grad_(True)
    labels = None
    if batching == "topic":
        todo = np.flatnonzero(~cached)
        tbar = None
        if show and len(todo):
            from tqdm.auto import tqdm

            tbar = tqdm(total=len(todo), desc="topics: teacher pass", unit="text", mininterval=1.0,
                        file=sys.stderr)
        for s in range(0, len(texts), batch_size):
            part = np.arange(s, min(s + batch_size, len(texts)))
            part = part[~cached[part]]
            if len(part):
                cache[torch.as_tensor(part, device=dev)] = teacher_embed(
                    teacher, [texts[i] for i in part], max_length)
                cached[part] = True
                if tbar is not None:
                    tbar.update(len(part))
        if tbar is not None:
            tbar.close()
        # Topics of about a batch each, at most TOPICS of them: a large corpus gets broad
        # topics (a batch is then a random draw from one) and the clustering stays cheap.
        labels = spherical_kmeans(cache, min(TOPICS, max(1, len(texts) // batch_size)), seed)

    def epoch_batches(r):
        return batches(lengths, batch_size, r) if labels is None else topic_batches(labels, batch_size, r)

    hist.init_seconds = time.perf_counter() - t_start
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def progress_frac(step):
        f = (step + 1) / max(planned, 1)
        if max_seconds:
            f = max(f, (time.perf_counter() - t_start) / max_seconds)
        return min(f, 1.0)

    def lr_at(step):
        # Warm-up then linear decay to 0, both on the run's progress: steps, or the
        # clock when max_seconds ends the run first.
        f = progress_frac(step)
        if warmup and f < warmup:
            return lr * f / warmup
        return lr * max(0.0, 1.0 - f) / (1.0 - warmup)

    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=planned, desc=method, unit="step", mininterval=1.0, file=sys.stderr)
    student.model.eval()  # no dropout: the student's full exit starts equal to its teacher
    # bfloat16 autocast runs the student's matmuls in bfloat16 (weights, optimizer state,
    # the teacher's targets and the loss stay float32).
    amp = dict(device_type=torch.device(dev).type, dtype=torch.bfloat16,
               enabled=precision == "bfloat16")
    attn = _train_attention(student.model, torch.device(dev).type)
    step, step_time = 0, 0.0
    if gradient_checkpointing:
        checkpoint_layers(student, True)
    try:
        for epoch in range(1, epochs + 1):
            sums = {e: 0.0 for e in exits}
            tot_sum, n_steps = 0.0, 0
            for idx in epoch_batches(rng):
                if max_steps is not None and step >= max_steps:
                    hist.stopped = "max_steps"
                    break
                if max_seconds is not None and time.perf_counter() - t_start + step_time > max_seconds:
                    hist.stopped = "max_seconds"
                    break
                t0 = time.perf_counter()
                need = idx[~cached[idx]]
                if len(need):
                    cache[torch.as_tensor(need, device=dev)] = teacher_embed(
                        teacher, [texts[i] for i in need], max_length)
                    cached[need] = True
                groups = [[texts[i] for i in idx]]
                targets = [cache[torch.as_tensor(idx, device=dev)]]
                if crops:
                    views = [crop(texts[i], rng, crop_words[0], crop_words[1]) for i in idx]
                    groups.append(views)
                    targets.append(teacher_embed(teacher, views, max_length))
                outs = {}
                for g in groups:
                    batch = tokenize(student, g, max_length)
                    mask = batch["attention_mask"]
                    with torch.autocast(**amp):
                        out = forward(**batch, output_hidden_states=many)
                        for layer in layers_used:
                            h = out.hidden_states[layer] if many else out.last_hidden_state
                            x = apply_head(pool_torch(h, mask, student.pooling), mask, student.head_for(layer))
                            outs.setdefault(layer, []).append(x.float())
                outs = {k: torch.cat(v) for k, v in outs.items()}
                losses = exit_losses(outs, torch.cat(targets), R, exits, temperature)
                total = 0.0
                for e, (align, sim, kl) in losses.items():
                    le = align_weight * align + sim_weight * sim + kl_weight * kl
                    sums[e] += float(le.detach())
                    total = total + weights[e] * le
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                opt.zero_grad(set_to_none=True)
                total.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                tv = float(total.detach())
                if not math.isfinite(tv):
                    raise FloatingPointError(f"{method}: the loss became {tv} at step {step + 1}; "
                                             "lower lr")
                hist.step_loss.append(tv)
                tot_sum += tv
                n_steps += 1
                step += 1
                dt = time.perf_counter() - t0
                step_time = dt if step == 1 else 0.9 * step_time + 0.1 * dt
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{tv:.4f}", lr=f"{lr_at(step):.1e}", refresh=False)
            if n_steps:
                hist.epochs.append({"epoch": epoch, "steps": n_steps,
                                    "seconds": round(time.perf_counter() - t_start, 2),
                                    "loss": {exit_key(e): sums[e] / n_steps for e in exits},
                                    "total": tot_sum / n_steps})
            if hist.stopped != "epochs":
                break
    finally:
        if bar is not None:
            bar.close()
        if gradient_checkpointing:
            checkpoint_layers(student, False)
        if attn is not None:
            student.model.set_attn_implementation(attn)
        student.model.eval()
        for p in params:
            p.requires_grad_(False)
    hist.steps = step
    hist.seconds = time.perf_counter() - t_start
    if not hist.epochs:
        raise ValueError(f"max_seconds: {max_seconds} s ran out before the first step (the "
                         "teacher's pass and one step need more); raise it")
    return hist
