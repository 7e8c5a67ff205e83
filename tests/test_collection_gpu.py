"""Collection search through the GPU path (device cache, GPU kernels): same answers as
the host path, device cache invalidated on commit. Runs on a CUDA device where there is
one (gpu marker), and everywhere through nvemu: CPU torch tensors in a "cpu" device
cache with the cuda backend forced (NESTVEC_BACKEND=cuda, tests/nvemu behind it)."""
from __future__ import annotations

import numpy as np
import pytest

import nestvec as nv
from nestvec import _backend

from collection_helpers import clustered, per_query
import nvemu
from conftest import require_nvemu

D = 64


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu), "emulated"])
def target(request):
    torch = pytest.importorskip("torch")
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")
        return torch.device("cuda", torch.cuda.current_device())
    require_nvemu()
    return torch.device("cpu")


def gpu_search(col, q, target, monkeypatch, as_device_arg=False, **kw):
    """col.search on the GPU path: a query tensor on the device, or host queries with
    device=... (as_device_arg)."""
    import torch

    if target.type == "cuda":
        if as_device_arg:
            return col.search(np.asarray(q), device="cuda", **kw)
        return col.search(torch.as_tensor(q).to(target), **kw)
    with monkeypatch.context() as m:
        m.setenv("NESTVEC_BACKEND", "cuda")
        nvemu.use(m, require_nvemu())
        return col.search(np.asarray(q) if as_device_arg else torch.as_tensor(q), device="cpu",
                          **kw)


def _dense_on_gpu() -> bool:
    return any(b in _backend.registered("dense_topk") for b in ("cuda", "triton"))


@pytest.fixture
def col(tmp_path):
    c = nv.Collection.create(str(tmp_path / "g"), dim=D, schema={"lang": "string"})
    x = clustered(3000, D, 3)
    for a in range(0, 3000, 1000):
        c.add(x[a:a + 1000], ids=np.arange(a, a + 1000), metadata={"lang": ["en", "fr"] * 500})
    yield c
    c.close()


def _same(col, got, want, q, mode, flt=None, tol=2e-3):
    """binary: Hamming distances are exact, tables equal. flat / funnel: the GPU kernels
    round the unit query to float16 for the tensor cores (and sum in another order), so
    scores match the host's within the GPU tolerance of test_dense (2e-3 for float16),
    and where an id differs (a near-tie, possibly across the k-th place) the GPU's row
    must be eligible and its exact cosine within tol of the host score there."""
    if mode == "binary":
        assert got.equals(want)
        return
    assert got.column("query").equals(want.column("query"))
    tab = col.to_table(columns=["id", "vector"], filter=flt)  # the eligible rows
    pos = {v: i for i, v in enumerate(tab.column("id").to_pylist())}
    vec = np.asarray(tab.column("vector").to_pylist(), np.float64)
    for (gi, gs), (wi, ws), qv in zip(per_query(got), per_query(want), np.asarray(q, np.float64)):
        assert len(gi) == len(wi) and len(set(gi.tolist())) == len(gi)
        np.testing.assert_allclose(gs, ws, atol=tol, rtol=0)
        for j in np.flatnonzero(gi != wi):
            assert gi[j] in pos, f"row {gi[j]} is not eligible"
            x = vec[pos[gi[j]]]
            exact = x @ qv / (np.linalg.norm(x) * np.linalg.norm(qv))
            assert abs(exact - ws[j]) <= tol, (j, gi, wi)


def test_gpu_path_matches_host(col, target, monkeypatch):
    q = clustered(5, D, 4)
    modes = ["binary"] + (["flat", "funnel"] if _dense_on_gpu() else [])
    for mode in modes:
        for flt in (None, nv.field("lang") == "fr"):
            want = col.search(q, k=10, mode=mode, filter=flt)
            for as_arg in (False, True):
                got = gpu_search(col, q, target, monkeypatch, k=10, mode=mode, filter=flt,
                                 as_device_arg=as_arg)
                _same(col, got, want, q, mode, flt)
    # device="cuda" and a cuda:N tensor share one device cache (one copy of the segments)
    assert list(col._caches) == [str(target)]
    if not _dense_on_gpu() and target.type == "cuda":
        with pytest.raises(RuntimeError, match="mode='binary'"):
            gpu_search(col, q, target, monkeypatch, k=10, mode="flat")


def test_gpu_cache_invalidated_on_commit(col, target, monkeypatch):
    q = clustered(2, D, 5)
    gpu_search(col, q, target, monkeypatch, k=5, mode="binary")
    cache = col._caches[str(target)]
    n = cache.transfers
    gpu_search(col, q, target, monkeypatch, k=5, mode="binary")
    assert cache.transfers == n
    top = gpu_search(col, q, target, monkeypatch, k=1, mode="binary").column("id").to_pylist()
    col.delete(ids=top)
    got = gpu_search(col, q, target, monkeypatch, k=5, mode="binary")
    assert not set(top) & set(got.column("id").to_pylist())
    assert got.equals(col.search(q, k=5, mode="binary"))
    if _dense_on_gpu():  # the dense modes read the cached vectors + the new live mask
        for mode in ("flat", "funnel"):
            got = gpu_search(col, q, target, monkeypatch, k=5, mode=mode)
            assert not set(top) & set(got.column("id").to_pylist())
            _same(col, got, col.search(q, k=5, mode=mode), q, mode)
