"""BERT inference without transformers' model code: the Encoder's fast start.

Importing transformers' BERT modules costs seconds of CPU (they pull in torch's
compiler, distributed and ONNX stacks), which every fresh process pays before its
first embedding: a CLI call, an ingestion's Encoder actors. A plain BERT checkpoint
(``model_type`` bert, absolute positions, GELU) is a few matrix products, so the
Encoder runs such a model here, on the CPU in float32, with the checkpoint's own
``tokenizer.json`` through ``tokenizers``. The embeddings equal transformers' (tested).
Anything else (saved nestvec encoders, other architectures, GPUs, half precision),
and any use of ``Encoder.model`` (training, compression, hooks), goes through
transformers.
"""
from __future__ import annotations

import json
from pathlib import Path

# HF's parameter names for our modules (``bert.``-prefixed checkpoints also load)
_LAYER_NAMES = (("q", "attention.self.query"), ("k", "attention.self.key"), ("v", "attention.self.value"),
                ("o", "attention.output.dense"), ("ln1", "attention.output.LayerNorm"),
                ("i", "intermediate.dense"), ("out", "output.dense"), ("ln2", "output.LayerNorm"))


def eligible(path: Path, saved: dict, device, dtype: str) -> bool:
    """Whether the model folder ``path`` can run here (see the module's docstring)."""
    if saved or str(device) != "cpu" or dtype != "float32":
        return False
    if not (path / "tokenizer.json").is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (cfg.get("model_type") == "bert" and cfg.get("position_embedding_type", "absolute") == "absolute"
            and cfg.get("hidden_act") == "gelu" and cfg.get("architectures", ["BertModel"]) == ["BertModel"]
            and not cfg.get("is_decoder", False))


def model_max_length(path: Path) -> int:
    """The tokenizer config's ``model_max_length``, as transformers reads it (512 if none)."""
    try:
        return json.loads((path / "tokenizer_config.json").read_text()).get("model_max_length", 512)
    except (OSError, ValueError):
        return 512


def hf_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _build(cfg: dict):
    """An untrained BERT of the config ``cfg`` (torch is imported here, not with nestvec)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    H, NH, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    eps = cfg.get("layer_norm_eps", 1e-12)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(H, eps=eps), nn.LayerNorm(H, eps=eps)
            self.i, self.out = nn.Linear(H, cfg["intermediate_size"]), nn.Linear(cfg["intermediate_size"], H)

        def forward(self, x, bias):
            B, T, _ = x.shape

            def heads(t):
                return t.view(B, T, NH, H // NH).transpose(1, 2)

            a = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                               attn_mask=bias)
            x = self.ln1(x + self.o(a.transpose(1, 2).reshape(B, T, H)))
            return self.ln2(x + self.out(F.gelu(self.i(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(cfg["vocab_size"], H)
            self.pos = nn.Embedding(cfg["max_position_embeddings"], H)
            self.typ = nn.Embedding(cfg["type_vocab_size"], H)
            self.ln = nn.LayerNorm(H, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(L))

        def forward(self, input_ids, attention_mask, token_type_ids, upto: int):
            """Hidden states ``[embeddings, layer 1, ..., layer upto]``."""
            T = input_ids.shape[1]
            x = self.word(input_ids) + self.typ(token_type_ids)  # transformers' order of the sums
            x = self.ln(x + self.pos.weight[:T])
            bias = attention_mask.bool()[:, None, None, :]
            out = [x]
            for layer in self.layers[:upto]:
                out.append(layer(out[-1], bias))
            return out

    return Bert().eval()


def _tokenizer(text: str, cfg: dict, max_length: int):
    import tokenizers

    tok = tokenizers.Tokenizer.from_str(text)
    tok.enable_truncation(max_length=int(max_length))
    pad = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=cfg.get("pad_token_id", 0) if pad is None else pad, pad_token="[PAD]")
    return tok


class FastBert:
    """A BERT checkpoint's model and tokenizer; pickles as its weights, config and
    tokenizer (a Ray actor on another machine needs no copy of the folder)."""

    def __init__(self, path: Path, max_length: int):
        from safetensors.torch import load_file

        self.cfg = json.loads((path / "config.json").read_text())
        self.max_length = int(max_length)
        names = {"word.weight": "embeddings.word_embeddings.weight",
                 "pos.weight": "embeddings.position_embeddings.weight",
                 "typ.weight": "embeddings.token_type_embeddings.weight",
                 "ln.weight": "embeddings.LayerNorm.weight", "ln.bias": "embeddings.LayerNorm.bias"}
        for li in range(self.cfg["num_hidden_layers"]):
            for ours, theirs in _LAYER_NAMES:
                for w in ("weight", "bias"):
                    names[f"layers.{li}.{ours}.{w}"] = f"encoder.layer.{li}.{theirs}.{w}"
        sd = load_file(str(path / "model.safetensors"))
        pre = "" if "embeddings.word_embeddings.weight" in sd else "bert."
        self.model = _build(self.cfg)
        self.model.load_state_dict({k: sd[pre + v] for k, v in names.items()})
        self.tok_json = (path / "tokenizer.json").read_text(encoding="utf-8")
        self.tok = _tokenizer(self.tok_json, self.cfg, self.max_length)

    def __getstate__(self):
        return {"cfg": self.cfg, "max_length": self.max_length, "tok_json": self.tok_json,
                "weights": self.model.state_dict()}

    def __setstate__(self, state):
        self.cfg, self.max_length, self.tok_json = state["cfg"], state["max_length"], state["tok_json"]
        self.model = _build(self.cfg)
        self.model.load_state_dict(state["weights"])
        self.tok = _tokenizer(self.tok_json, self.cfg, self.max_length)

    def __call__(self, texts, upto: int, max_length: int):
        """(hidden states [embeddings, layer 1 .. upto], the tokens' batch)."""
        if max_length != self.max_length:  # the Encoder's max_length was changed
            self.tok.enable_truncation(max_length=int(max_length))
            self.max_length = int(max_length)
        batch = tokenize(self.tok, texts)
        return self.model(**batch, upto=upto), batch


def tokenize(tok, texts) -> dict:
    """What transformers' ``tokenizer(texts, padding=True, truncation=True,
    return_tensors="pt")`` gives for a BERT tokenizer."""
    import torch

    enc = tok.encode_batch(list(texts))
    return {"input_ids": torch.tensor([e.ids for e in enc], dtype=torch.long),
            "token_type_ids": torch.tensor([e.type_ids for e in enc], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in enc], dtype=torch.long)}
