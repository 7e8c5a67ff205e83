"""Collection search on a CUDA device: same answers as the host path, device cache
invalidated on commit. Runs only where CUDA is available (gpu marker)."""
from __future__ import annotations

import numpy as np
import pytest

import nestvec as nv
import nestvec.ops as ops

from collection_helpers import clustered

pytestmark = pytest.mark.gpu
D = 64


def _dense_on_gpu() -> bool:
    return any(b in ops._DENSE_BACKENDS for b in ("cuda", "triton"))


@pytest.fixture
def col(tmp_path):
    c = nv.Collection.create(str(tmp_path / "g"), dim=D, schema={"lang": "string"})
    x = clustered(3000, D, 3)
    for a in range(0, 3000, 1000):
        c.add(x[a:a + 1000], ids=np.arange(a, a + 1000), metadata={"lang": ["en", "fr"] * 500})
    yield c
    c.close()


def test_cuda_matches_host(col):
    import torch

    q = clustered(5, D, 4)
    qt = torch.from_numpy(q).cuda()
    modes = ["binary"] + (["flat", "funnel"] if _dense_on_gpu() else [])
    for mode in modes:
        for flt in (None, nv.field("lang") == "fr"):
            assert col.search(qt, k=10, mode=mode, filter=flt).equals(col.search(q, k=10, mode=mode, filter=flt))
            assert col.search(q, k=10, mode=mode, filter=flt, device="cuda").equals(
                col.search(q, k=10, mode=mode, filter=flt))
    if not _dense_on_gpu():
        with pytest.raises(RuntimeError, match="mode='binary'"):
            col.search(qt, k=10, mode="flat")


def test_cuda_cache_invalidated_on_commit(col):
    import torch

    q = torch.from_numpy(clustered(2, D, 5)).cuda()
    col.search(q, k=5, mode="binary")
    cache = col._caches[str(q.device)]
    n = cache.transfers
    col.search(q, k=5, mode="binary")
    assert cache.transfers == n
    top = col.search(q, k=1, mode="binary").column("id").to_pylist()
    col.delete(ids=top)
    got = col.search(q, k=5, mode="binary")
    assert not set(top) & set(got.column("id").to_pylist())
    assert got.equals(col.search(q.cpu().numpy(), k=5, mode="binary"))
