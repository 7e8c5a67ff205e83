"""nestvec.train on a tiny randomly initialised BERT (built from a transformers config
and a word-level vocabulary written here: nothing is downloaded)."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from nestvec import train  # noqa: E402
from nestvec.embed import Encoder, default_dim  # noqa: E402

WORDS = ("the a of to and in is it for on with as by at from that this are be or an was "
         "vector index search query embedding matryoshka layer width depth model train text "
         "document binary code prefix cosine kernel fast slow small large python torch data "
         "doll nest shelf store memory disk file folder result score rank recall quality "
         "apple banana cherry river mountain ocean forest desert city village road bridge").split()


def _corpus(n=48, seed=0):
    rng = np.random.default_rng(seed)
    topics = [WORDS[i::6] for i in range(6)]  # six overlapping vocabularies: some structure
    out = []
    for i in range(n):
        t = topics[i % 6]
        out.append(" ".join(rng.choice(t, size=int(rng.integers(6, 20)))))
    return out


def make_tiny_model(path, layers=4, hidden=32, seed=0, init=0.02):
    """A random BERT with a word-level WordPiece vocabulary, saved as a HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True)  # positional: v4 and v5 names differ
    tok.model_max_length = 64
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=64,
                     initializer_range=init)
    BertModel(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread (two OpenMP threads on a loaded 2-core machine spend
    most of each small op waiting for each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "bert", init=0.1)


FAST = dict(epochs=4, batch_size=8, lr=1e-3, progress=False, layers=(1, 2, 4), dims=(8, 16, None))


def test_distill_2d_exit_losses_fall(tiny):
    """The transformer alone (no heads): every exit but the teacher's own learns."""
    enc = Encoder(tiny)
    before = enc.encode(_corpus()[:4])
    # length batches: the same mix of texts every epoch, so each exit's epoch mean is
    # comparable (a topic batch's loss depends on how close its topic's texts are)
    student, hist = train.distill_2d(enc, _corpus(), heads=None, batching="length", **FAST)
    assert hist.steps == 4 * 6 and len(hist.epochs) == 4 and hist.stopped == "epochs"
    assert [tuple(e) for e in hist.exits] == [(a, b) for a in (1, 2, 4) for b in (8, 16, 32)]
    per_exit = hist.loss_per_exit()
    for key, losses in per_exit.items():
        if key == "L4/d32":  # the teacher's own exit starts at loss 0 and stays near it
            assert losses[-1] < 0.05, (key, losses)
        else:
            assert losses[-1] < losses[0], (key, losses)
    assert hist.epochs[-1]["total"] < hist.epochs[0]["total"]
    # the input encoder (the teacher) is unchanged; the student changed
    np.testing.assert_array_equal(enc.encode(_corpus()[:4]), before)
    assert not np.array_equal(student.encode(_corpus()[:4]), before)
    assert student.training_info["method"] == "distill_2d"
    assert not any(p.requires_grad for p in student.model.parameters())
    # token embeddings are frozen by default
    torch.testing.assert_close(student.model.embeddings.word_embeddings.weight,
                               enc.model.embeddings.word_embeddings.weight, rtol=0, atol=0)


def test_pca_heads_start_at_the_rotated_teacher(tiny):
    """Full depth starts as the teacher rotated onto its principal axes: the same
    full-width cosines, prefixes = the teacher's leading components; shallower exits
    get least-squares heads (better than none); the heads are saved and loaded."""
    enc = Encoder(tiny)
    x = _corpus()
    student, hist = train.distill_2d(enc, x, **dict(FAST, lr=1e-12), max_steps=1)
    assert sorted(student.heads) == ["1", "2", "4"]
    t, s = enc.encode(x), student.encode(x)
    np.testing.assert_allclose(s @ s.T, t @ t.T, atol=1e-5)
    R = student.heads["4"].weight.detach().numpy().T
    np.testing.assert_allclose(R.T @ R, np.eye(32), atol=1e-5)  # a rotation
    var = (s ** 2).mean(0)
    assert var[:8].sum() > var[8:16].sum() > var[16:24].sum()  # leading components first
    # layer 1 is closer to its full depth through its head (both in their own space)
    shallow = [float(np.mean((m.encode(x, layers=1) * full).sum(1))) for m, full in ((enc, t), (student, s))]
    assert shallow[1] > shallow[0]
    untrained, _ = train.distill_2d(enc, x, **dict(FAST, lr=1e-12), max_steps=1, heads=None)
    assert untrained.heads is None


def test_deterministic_with_seed(tiny):
    enc = Encoder(tiny)
    kw = dict(FAST, epochs=1)
    a, ha = train.distill_2d(enc, _corpus(), seed=3, **kw)
    b, hb = train.distill_2d(enc, _corpus(), seed=3, **kw)
    c, _ = train.distill_2d(enc, _corpus(), seed=4, **kw)
    assert ha.step_loss == hb.step_loss
    x = _corpus()[:5]
    np.testing.assert_array_equal(a.encode(x, layers=2), b.encode(x, layers=2))
    assert not np.array_equal(a.encode(x, layers=2), c.encode(x, layers=2))


def test_gradient_checkpointing_same_result(tiny):
    enc = Encoder(tiny)
    kw = dict(FAST, epochs=1, max_steps=2)
    a, ha = train.distill_2d(enc, _corpus(), **kw)
    b, hb = train.distill_2d(enc, _corpus(), gradient_checkpointing=True, **kw)
    np.testing.assert_allclose(ha.step_loss, hb.step_loss, rtol=1e-5)
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        torch.testing.assert_close(v, v2, rtol=1e-4, atol=1e-6)
    assert "forward" not in b.model.encoder.layer[0].__dict__  # undone after training


def test_bfloat16_autocast_trains_and_keeps_float32_weights(tiny):
    """precision="bfloat16" runs the student's forward under autocast: the losses track
    the float32 run's and fall, and the weights, heads and saved model stay float32."""
    enc = Encoder(tiny)
    kw = dict(FAST, epochs=3)
    a, ha = train.distill_2d(enc, _corpus(), **kw)
    b, hb = train.distill_2d(enc, _corpus(), precision="bfloat16", **kw)
    assert hb.config["precision"] == "bfloat16" and ha.config["precision"] == "float32"
    assert hb.epochs[-1]["total"] < hb.epochs[0]["total"]
    np.testing.assert_allclose(hb.step_loss[:3], ha.step_loss[:3], rtol=0.05)
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    assert all(p.dtype == torch.float32 for p in b.heads.parameters())
    x = _corpus()[:6]
    assert b.encode(x, layers=2).dtype == np.float32
    # same direction of travel as float32: the exits of the two runs stay close
    cos = (a.encode(x, layers=2) * b.encode(x, layers=2)).sum(1)
    assert cos.min() > 0.9, cos
    # the attention implementation switched for training is restored
    assert b.model.config._attn_implementation == enc.model.config._attn_implementation
    # "auto" resolves to one of the two and records which
    _, hc = train.distill_2d(enc, _corpus(), precision="auto", **dict(FAST, epochs=1), max_steps=1)
    assert hc.config["precision"] in ("float32", "bfloat16")
    # recover's low-rank + sparse factors train under autocast too
    enc2, comp = _compressed(tiny)
    _, hr = train.recover(comp, enc2, _corpus(), epochs=3, batch_size=8, lr=3e-3, progress=False,
                          precision="bfloat16")
    losses = hr.loss_per_exit()["L4/d32"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_topic_batches_cover_every_text_once_and_group_neighbours():
    from nestvec._trainloop import spherical_kmeans, topic_batches

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((6, 16))
    x = np.repeat(centres, 40, axis=0) + 0.05 * rng.standard_normal((240, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = spherical_kmeans(torch.as_tensor(x, dtype=torch.float32), 6, seed=0)
    truth = np.repeat(np.arange(6), 40)
    # the clustering recovers the six groups (up to their names)
    assert all(len(set(labels[truth == g])) == 1 for g in range(6))
    for bs in (7, 32, 239, 240, 500):
        out = topic_batches(labels, bs, np.random.default_rng(1))
        flat = np.concatenate(out)
        assert sorted(flat.tolist()) == list(range(240))
        assert all(len(b) >= 2 for b in out)
    out = topic_batches(labels, 20, np.random.default_rng(1))
    assert all(len(set(truth[b])) == 1 for b in out)  # 40-text topics cut into 20s: pure batches
    # a corpus larger than the seeding sample, assigned in row blocks: the same groups
    from nestvec._trainloop import _nearest

    xt = torch.as_tensor(x, dtype=torch.float32)
    big = spherical_kmeans(xt, 6, seed=0, seed_sample=60)
    assert all(len(set(big[truth == g])) == 1 for g in range(6))
    c = xt[::40]
    assert torch.equal(_nearest(xt, c, rows=7), (xt @ c.T).argmax(1))


def test_length_batches_cover_every_text_once():
    """Regression: a trailing batch of one used to be merged into the wrong slot (a batch
    lost, another doubled) and, with two batches, raised IndexError."""
    from nestvec._trainloop import batches

    rng = np.random.default_rng(0)
    for n, bs in ((33, 32), (65, 32), (97, 8), (1025, 32), (2, 2), (7, 3)):
        out = batches(rng.integers(1, 100, n), bs, np.random.default_rng(n))
        assert sorted(np.concatenate(out).tolist()) == list(range(n)), (n, bs)
        assert all(len(b) >= 2 for b in out), (n, bs)


def test_topic_batching_trains(tiny):
    enc = Encoder(tiny)
    _, h = train.distill_2d(enc, _corpus(), **FAST)  # distill_2d's default
    assert h.config["batching"] == "topic" and h.steps == 4 * 6
    assert h.epochs[-1]["total"] < h.epochs[0]["total"]
    a, _ = train.distill_2d(enc, _corpus(), batching="topic", seed=2, **dict(FAST, epochs=1))
    b, _ = train.distill_2d(enc, _corpus(), batching="topic", seed=2, **dict(FAST, epochs=1))
    x = _corpus()[:5]
    np.testing.assert_array_equal(a.encode(x, layers=2), b.encode(x, layers=2))


def test_budget_stops_the_run(tiny):
    enc = Encoder(tiny)
    _, h = train.distill_2d(enc, _corpus(), **dict(FAST, epochs=50), max_steps=3)
    assert h.steps == 3 and h.stopped == "max_steps"
    _, h = train.distill_2d(enc, _corpus(), **dict(FAST, epochs=10_000), max_seconds=1.0)
    assert h.stopped == "max_seconds" and h.seconds < 5.0 and h.steps >= 1


def test_training_pool_matches_encode_pool(tiny):
    """The loss trains what encode() computes: the torch pooling equals nestvec.pool."""
    import nestvec as nv

    rng = np.random.default_rng(0)
    h = torch.from_numpy(rng.standard_normal((5, 7, 16)).astype(np.float32))
    m = torch.from_numpy(np.array([[1] * 7, [1] * 3 + [0] * 4, [0] * 7, [0] * 2 + [1] * 5,
                                   [1, 0, 1, 1, 0, 0, 0]], dtype=np.int64))
    for mode in ("mean", "weighted_mean", "cls", "last", "max"):
        ref = nv.pool(h, m, mode, normalize=True)
        got = torch.nn.functional.normalize(train.pool_torch(h, m, mode), dim=1)
        torch.testing.assert_close(got, torch.as_tensor(ref), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(tiny, tmp_path):
    enc = Encoder(tiny, layers=2, dim=16, pooling="cls", max_length=32)
    student, _ = train.distill_2d(enc, _corpus(), **dict(FAST, epochs=1))
    out = student.save(tmp_path / "trained")
    back = Encoder(out)
    assert (back.layers, back.dim, back.pooling, back.max_length) == (2, 16, "cls", 32)
    assert default_dim(out) == 16  # the saved default width, read without loading
    assert back.training_info["method"] == "distill_2d"
    x = _corpus()[:6] + ["text with unknown words zzz"]
    for L, d in ((None, None), (4, None), (1, 8), (4, 32)):
        np.testing.assert_array_equal(back.encode(x, layers=L, dim=d), student.encode(x, layers=L, dim=d))
    with pytest.raises(FileExistsError, match="path"):
        student.save(out)
    # an uncompressed save is also a plain Hugging Face folder
    hf = transformers.AutoModel.from_pretrained(out, local_files_only=True)
    for (k, v), (k2, v2) in zip(hf.state_dict().items(), student.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def _compressed(tiny):
    from nestvec.nn import compress_model

    enc = Encoder(tiny)
    comp = enc._with_model(__import__("copy").deepcopy(enc.model))
    rep = compress_model(comp.model, rank_ratio=0.25, sparsity=0.1,
                         include=[r"intermediate\.dense$", r"layer\.\d+\.output\.dense$"])
    assert len(rep.layers) == 8
    return enc, comp


def test_recover_updates_only_the_factors(tiny, tmp_path):
    from nestvec.nn import LowRankSparseLinear

    enc, comp = _compressed(tiny)
    before = {k: v.clone() for k, v in comp.model.state_dict().items()}
    rec, hist = train.recover(comp, enc, _corpus(), epochs=3, batch_size=8, lr=3e-3, progress=False)
    assert hist.config["batching"] == "length"  # recover's default
    assert hist.loss_per_exit()["L4/d32"][-1] < hist.loss_per_exit()["L4/d32"][0]
    factors = {f"{n}.{p}" for n, m in rec.model.named_modules() if isinstance(m, LowRankSparseLinear)
               for p in ("A", "B", "S")}
    after = rec.model.state_dict()
    for k, v in after.items():
        if k in factors:
            assert not torch.equal(v, before[k]), f"{k} did not train"
        else:
            assert torch.equal(v, before[k]), f"{k} changed but is not a factor"
    # the input is untouched; the recovered model is closer to its teacher
    assert all(torch.equal(v, before[k]) for k, v in comp.model.state_dict().items())
    x = _corpus(seed=9)
    t = enc.encode(x)
    err = [float(np.mean(1 - (e.encode(x) * t).sum(1))) for e in (comp, rec)]
    assert err[1] < err[0], err
    # save / load keeps the compressed structure and the embeddings
    back = Encoder(rec.save(tmp_path / "rec"))
    assert sum(isinstance(m, LowRankSparseLinear) for m in back.model.modules()) == 8
    np.testing.assert_array_equal(back.encode(x), rec.encode(x))


def test_bad_input(tiny):
    enc = Encoder(tiny)
    x = _corpus()

    def bad(exc, match, texts=x, fn=train.distill_2d, **over):
        kw = dict(progress=False, max_steps=1, layers=(4,), dims=(None,))
        kw.update(over)
        with pytest.raises(exc, match=match):
            fn(enc, texts, **kw) if fn is train.distill_2d else fn(enc, enc, texts, **kw)

    bad(ValueError, "texts", texts=[])
    bad(ValueError, "texts", texts=["  ", "only one"])
    bad(TypeError, "texts", texts="a single string")
    bad(TypeError, "texts", texts=["ok", 3])
    bad(ValueError, r"layers.*<= 4", layers=(2, 6))
    bad(ValueError, r"layers.*<= 4", layers=(0,))
    bad(ValueError, r"dims.*<= 32", dims=(64,))
    bad(ValueError, "lr", lr=-1e-4)
    bad(ValueError, "lr", lr=float("nan"))
    bad(TypeError, "lr", lr="fast")
    bad(ValueError, "batch_size", batch_size=1)
    bad(ValueError, "epochs", epochs=0)
    bad(ValueError, "max_seconds", max_seconds=-1)
    bad(ValueError, "weights", weights={(3, None): 1.0})
    bad(ValueError, "weights", weights={(4, None): 0.0})
    bad(ValueError, "heads", heads="random")
    bad(ValueError, "warmup", warmup=1.0)
    bad(ValueError, "crop_words", crop_words=(5, 2))
    bad(ValueError, "precision", precision="float16")
    bad(ValueError, "batching", batching="random")
    bad(TypeError, "unexpected keyword", temprature=0.1)
    with pytest.raises(TypeError, match="encoder"):
        train.distill_2d(enc.model, x, progress=False)
    bad(ValueError, "LowRankSparseLinear", fn=train.recover)
    bad(ValueError, "train", fn=train.recover, train="everything")
    with pytest.raises(TypeError, match="teacher_encoder"):
        _, comp = _compressed(tiny)
        train.recover(comp, "teacher", x, progress=False)


def test_read_texts(tmp_path):
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text('{"_id": "1", "title": "T", "text": "doc one"}\n'
                                       '{"_id": "2", "text": "doc two"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q", "text": "never read"}\n')
    assert train.read_texts(beir) == ["T: doc one", "doc two"]
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text(" ".join(f"w{i}" for i in range(25)))
    got = train.read_texts(folder, chunk_words=10)
    assert [len(t.split()) for t in got] == [10, 10, 5]
    assert len(train.read_texts("stdlib", limit=5)) == 5
    with pytest.raises(FileNotFoundError):
        train.read_texts(tmp_path / "missing")


def test_cli_train_2d_and_compress(tiny, tmp_path, capsys):
    from nestvec.cli import main
    from nestvec.nn import LowRankSparseLinear

    src = tmp_path / "texts.jsonl"
    src.write_text("\n".join('{"text": "%s"}' % t for t in _corpus()))
    out = tmp_path / "enc2d"
    common = ["--texts", str(src), "--model", str(tiny)]
    assert main(["train-2d", *common, "--out", str(out), "--layers", "1,2,4", "--dims", "8,full",
                 "--epochs", "1", "--train-batch-size", "16", "--quiet", "--batching", "topic",
                 "--precision", "bfloat16"]) == 0
    enc = Encoder(out)
    assert enc.training_info["method"] == "distill_2d" and sorted(enc.heads) == ["1", "2", "4"]
    assert enc.training_info["config"]["batching"] == "topic"
    assert enc.training_info["config"]["precision"] == "bfloat16"
    assert enc.encode("vector search", layers=2, dim=8).shape == (8,)
    # compress, then recover on the same texts
    comp = tmp_path / "lost"
    assert main(["compress", *common, "--out", str(comp), "--rank-ratio", "0.25", "--epochs", "1",
                 "--train-batch-size", "16", "--quiet"]) == 0
    c = Encoder(comp)
    assert c.training_info["method"] == "recover"
    assert sum(isinstance(m, LowRankSparseLinear) for m in c.model.modules()) == 8
    # errors: clear messages, exit status 2, nothing written
    capsys.readouterr()
    assert main(["train-2d", *common, "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["train-2d", *common, "--out", str(tmp_path / "x"), "--layers", "2,9"]) == 2
    assert "layers" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["train-2d", "--texts", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert "--texts" in capsys.readouterr().err
