"""Packaging: the repo's top-level kernels/ folder never shadows Hugging Face's `kernels`
(transformers imports it), whatever the working directory; the package carries no test
machinery; the sdist is complete and builds a wheel that installs into an empty venv."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import nestvec

ROOT = Path(__file__).resolve().parents[1]


def run_py(args, cwd=ROOT, env_extra=None, timeout=300):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.fixture
def fake_hf_kernels(tmp_path):
    """A stand-in for Hugging Face's `kernels` on PYTHONPATH, which sys.path puts after the
    working directory: exactly the order that let the repo's folder win before."""
    pkg = tmp_path / "site" / "kernels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("WHO = 'hugging face'\nfrom .layer import CUDAProperties\n")
    (pkg / "layer.py").write_text("class CUDAProperties:\n    pass\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}


def test_top_level_kernels_from_repo_root_is_the_other_package(fake_hf_kernels):
    code = ("import kernels; from kernels import CUDAProperties; import kernels.layer; "
            "print(kernels.WHO, kernels.__file__)")
    r = run_py(["-c", code], env_extra=fake_hf_kernels)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hugging face") and str(ROOT / "kernels") not in r.stdout


def test_top_level_kernels_absent_is_module_not_found():
    """No other `kernels` anywhere (-S: no site-packages): the repo's folder still does not
    import as `kernels`; the import fails the way a missing module does."""
    code = ("import sys; sys.path.insert(0, '')\n"
            "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n"
            "    print('missing', e.name, 'kernels' in sys.modules)\n"
            "else:\n    print('imported', kernels.__file__)")
    r = run_py(["-S", "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "missing kernels False"


def test_real_hf_kernels_and_transformers_from_repo_root():
    """Today's failure (transformers 5 importing Hugging Face's kernels from the repo root),
    where both are installed."""
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed (the fake-package test covers it)")
    r = run_py(["-c", "import kernels; print(kernels.__file__)"])
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip().startswith(str(ROOT / "kernels")), r.stdout
    try:
        import transformers.integrations.hub_kernels  # noqa: F401
    except ImportError:
        return  # a transformers without the hub-kernels integration
    r = run_py(["-c", "import transformers.integrations.hub_kernels"])
    assert r.returncode == 0, r.stderr[-2000:]


def test_python_m_nestvec_from_repo_root(fake_hf_kernels):
    r = run_py(["-m", "nestvec", "info"], env_extra=fake_hf_kernels)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"nestvec {nestvec.__version__}")
    r = run_py(["-m", "nestvec", "--version"], env_extra=fake_hf_kernels)
    assert r.returncode == 0 and r.stdout.strip() == f"nestvec {nestvec.__version__}", r.stderr


def test_nestvec_kernels_is_the_package_name():
    import nestvec.kernels as nk

    assert callable(nk.device_guard)
    r = run_py(["-c", "import sys; sys.path.insert(0, '.'); import importlib; "
                      "importlib.import_module('kernels.hamming')"], cwd=ROOT, timeout=60,
               env_extra={"PYTHONPATH": ""})
    assert r.returncode != 0  # never importable as top-level kernels, submodules included


def test_package_has_no_test_machinery():
    pkg = Path(nestvec.__file__).parent
    assert not list(pkg.glob("_nvemu*")), "the CUDA emulator ships in the package"
    for src in pkg.rglob("*.py"):
        text = src.read_text()
        for word in ("nvemu", "NESTVEC_CUDA_EMU"):
            assert word not in text, f"{src} mentions {word}"
    kernels = ROOT / "kernels"
    for src in kernels.glob("*.py"):
        assert "nvemu" not in src.read_text(), src


def _sdist(tmp_path) -> Path:
    out = tmp_path / "dist"
    r = run_py(["-m", "build", "--sdist", "-o", str(out), str(ROOT)], timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (sdist,) = out.glob("nestvec-*.tar.gz")
    return sdist


@pytest.mark.slow
def test_sdist_builds_a_wheel_that_installs_into_an_empty_venv(tmp_path):
    """sdist -> wheel (CPU kernels only, a clean CMake build) -> an empty venv: imports and
    searches, from a directory outside the checkout; no emulator inside."""
    pytest.importorskip("build")
    sdist = _sdist(tmp_path)
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for need in ("CMakeLists.txt", "LICENSE", "README.md", "setup.py", "pyproject.toml",
                 "csrc/bindings.cpp", "csrc/cpu/dispatch.cpp", "csrc/include/nestvec/dense.h",
                 "csrc/cuda/hamming.cu", "kernels/__init__.py", "kernels/dense.py",
                 "python/nestvec/__init__.py", "python/nestvec/collection/collection.py"):
        assert need in names, f"the sdist lacks {need}"
    wheels = tmp_path / "wheels"
    r = run_py(["-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(sdist)],
               env_extra={"NESTVEC_CUDA": "OFF"}, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = wheels.glob("nestvec-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        files = zf.namelist()
    assert any(f.startswith("nestvec/_C") for f in files)
    assert "nestvec/kernels/dense.py" in files
    assert not any("nvemu" in f for f in files), [f for f in files if "nvemu" in f]
    assert not any(f.startswith(("kernels/", "tests/", "csrc/")) for f in files)
    assert any(f.endswith(".dist-info/licenses/LICENSE") for f in files)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    code = ("import numpy as np, nestvec as nv; x = np.arange(64, dtype=np.uint8).reshape(8, 8); "
            "d, i = nv.hamming_topk(x, x[:2], k=3); assert i[:, 0].tolist() == [0, 1]; "
            "import nestvec.kernels; print(nv.__file__, nv.info()['native'])")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert str(venv) in r.stdout and r.stdout.strip().endswith("True"), r.stdout
