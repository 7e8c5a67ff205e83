"""The nestvec command, through subprocess (as a user runs it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nestvec

REPO = Path(__file__).resolve().parent.parent


def nv(*args, cwd=None, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "nestvec", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=timeout)


def test_info():
    r = nv("info", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["version"] == nestvec.__version__ and "cuda_compiled" in d


def test_help_lists_commands():
    r = nv("--help")
    assert r.returncode == 0
    for cmd in ("demo", "index", "search", "bench", "info"):
        assert cmd in r.stdout


def test_index_missing_path(tmp_path):
    r = nv("index", tmp_path / "nope", "--out", tmp_path / "c.nv")
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_index_empty_corpus(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "empty.txt").write_text("  \n")
    r = nv("index", tmp_path / "docs", "--out", tmp_path / "c.nv")
    assert r.returncode == 2 and "empty corpus" in r.stderr
    (tmp_path / "e.jsonl").write_text("\n")
    r = nv("index", tmp_path / "e.jsonl", "--out", tmp_path / "c.nv")
    assert r.returncode == 2 and "empty corpus" in r.stderr


def test_search_missing_dir(tmp_path):
    r = nv("search", tmp_path / "nope", "query")
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.fixture
def corpus(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    texts = {"cats.txt": "Cats are small domesticated felines that purr.",
             "vectors.md": "Vector databases index embeddings for similarity search.",
             "bread.rst": "Knead the dough, let it rise, then bake the bread at 220 degrees.",
             "python.txt": "Python is a programming language with dynamic typing."}
    for name, t in texts.items():
        (docs / name).write_text(t)
    lines = [{"_id": f"d{i}", "text": t, "lang": "en" if i % 2 else "de", "year": 2000 + i}
             for i, t in enumerate(texts.values())]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    return tmp_path


def test_index_search_folder(corpus):
    out = corpus / "docs.nv"
    ann = ("--ann", "ivf") if _have_faiss() else ()
    r = nv("index", corpus / "docs", "--out", out, "--quiet", *ann)
    assert r.returncode == 0, r.stderr
    assert "indexed 4 documents" in r.stdout
    if ann:  # 4 rows: below min_rows, searched exhaustively
        assert "ivf index over 0 rows" in r.stdout and "ivf" in nestvec.open(out, read_only=True).indexes()
    r = nv("search", out, "kitten", "-k", "2", *(("--mode", "ivf") if ann else ()))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[2] == "cats.txt"
    r = nv("search", out, "baking", "-k", "1", "--dim", "128", "--mode", "flat", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["id"] == "bread.rst"
    r = nv("search", out, "baking bread", "-k", "1", "--mode", "flat", "--query-layers", "5", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["id"] == "bread.rst", r.stderr
    r = nv("search", out, "baking", "--query-layers", "7")
    assert r.returncode == 2 and "--query-layers: expected 1 <= L <= 6" in r.stderr


@pytest.mark.slow  # seven more CLI processes, each loading the model (~8 s apiece)
def test_index_append_and_jsonl(corpus):
    out = corpus / "docs.nv"
    assert nv("index", corpus / "docs", "--out", out, "--quiet").returncode == 0
    # an existing collection: refused without --append, dimension checked, upsert with it
    r = nv("index", corpus / "docs", "--out", out, "--quiet")
    assert r.returncode == 2 and "--append" in r.stderr
    r = nv("index", corpus / "docs", "--out", out, "--append", "--dim", "128", "--quiet")
    assert r.returncode == 2 and "dimension mismatch" in r.stderr
    r = nv("index", corpus / "docs", "--out", out, "--append", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "(4 rows" in r.stdout

    out2 = corpus / "j.nv"
    r = nv("index", corpus / "c.jsonl", "--out", out2, "--quiet")
    assert r.returncode == 0, r.stderr
    r = nv("search", out2, "cats", "-k", "4", "--filter", "lang = 'de' AND year >= 2001", "--json")
    assert r.returncode == 0, r.stderr
    assert {x["id"] for x in json.loads(r.stdout)} == {"d2"}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["flat", "binary", "funnel"])
def test_search_modes(corpus, mode):
    out = corpus / "docs.nv"
    assert nv("index", corpus / "docs", "--out", out, "--quiet").returncode == 0
    r = nv("search", out, "baking", "-k", "1", "--mode", mode, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["id"] == "bread.rst"


def test_demo_small():
    r = nv("demo", "--limit", "150", "--no-bench", "--query", "parse command line arguments")
    assert r.returncode == 0, r.stderr
    assert "collected 150 docstrings" in r.stdout
    assert "query: 'parse command line arguments'" in r.stdout
    assert "demo finished" in r.stdout


def test_bench_pool_quick(tmp_path):
    r = nv("bench", "--quick", "--only", "pool", "--out", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads((tmp_path / "bench_pool.json").read_text())
    assert {row["impl"] for row in data["rows"]} >= {"nestvec cpu", "torch bmm"}
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "bench_pool.png").is_file()
    r = nv("bench", "--only", "nope", "--out", tmp_path)
    assert r.returncode == 2


def _have_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


@pytest.mark.slow
@pytest.mark.parametrize("ann", ["ivf", "hnsw"])
def test_index_ann_and_search_mode(corpus, ann):
    pytest.importorskip("faiss")
    pytest.importorskip("hnswlib")
    out = corpus / f"{ann}.nv"
    r = nv("index", corpus / "docs", "--out", out, "--quiet", "--ann", ann)
    assert r.returncode == 0, r.stderr
    assert f"{ann} index over 0 rows" in r.stdout  # 4 rows: below min_rows, searched exhaustively
    assert ann in nestvec.open(out, read_only=True).indexes()
    r = nv("search", out, "baking", "-k", "1", "--mode", ann, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["id"] == "bread.rst"
    r = nv("search", out, "baking", "--mode", "hnsw" if ann == "ivf" else "ivf")
    assert r.returncode == 2 and "no " in r.stderr and "index" in r.stderr
