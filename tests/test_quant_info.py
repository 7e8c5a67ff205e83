import json
import subprocess
import sys

import numpy as np
import pytest

import nestvec
from nestvec.quant import binarize


def test_binarize_numpy_order(rng):
    x = rng.standard_normal((5, 19)).astype(np.float32)
    np.testing.assert_array_equal(binarize(x), np.packbits(x > 0, axis=-1))
    np.testing.assert_array_equal(binarize(x, dim=8), np.packbits(x[:, :8] > 0, axis=-1))
    assert binarize(x[0]).shape == (3,)


def test_binarize_torch_matches_numpy(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 77)).astype(np.float32)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        t = torch.from_numpy(x).to(dt)
        ref = np.packbits(t.float().numpy() > 0, axis=-1)
        np.testing.assert_array_equal(binarize(t).numpy(), ref)
        np.testing.assert_array_equal(binarize(t, dim=33).numpy(), ref[:, :5] & np.array([255] * 4 + [128], np.uint8))


def test_binarize_matches_sentence_transformers_ubinary(rng):
    st = pytest.importorskip("sentence_transformers.quantization")
    x = rng.standard_normal((6, 64)).astype(np.float32)
    np.testing.assert_array_equal(binarize(x), st.quantize_embeddings(x, precision="ubinary"))


@pytest.mark.parametrize("bad,exc", [(dict(dim=0), ValueError), (dict(dim=100), ValueError),
                                     (dict(dim=2.0), TypeError)])
def test_binarize_bad_input(bad, exc, rng):
    with pytest.raises(exc, match="dim"):
        binarize(rng.standard_normal((2, 16)).astype(np.float32), **bad)
    with pytest.raises(TypeError, match="x"):
        binarize(np.zeros((2, 16), np.int32))


def test_info_reports_build():
    d = nestvec.info()
    for key in ("version", "isas_compiled", "isa_active", "cuda_compiled", "gpu_visible",
                "triton_available"):
        assert key in d
    assert d["isa_active"] in d["isas_compiled"]
    if d["native"]:  # the probe format follows the ISA in use (AVX512: its VNNI / BF16 dots)
        from nestvec.collection import hostcalls

        want = "int8" if hostcalls.probe_i8_available() else "bfloat16" if hostcalls.probe_bf16_available() \
            else "float16"
        assert d["ivf_probe_table"] == want
        assert want != "float16" or d["isa_active"] != "avx512"


def test_cli_info_subprocess():
    out = subprocess.run([sys.executable, "-m", "nestvec", "info", "--json"], capture_output=True,
                         text=True, check=True)
    d = json.loads(out.stdout)
    assert d["version"] == nestvec.__version__
    out = subprocess.run([sys.executable, "-m", "nestvec", "info"], capture_output=True, text=True,
                         check=True)
    assert "CUDA compiled" in out.stdout
