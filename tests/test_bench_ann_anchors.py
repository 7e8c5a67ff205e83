"""bench_ann's graph anchors build in checkpointed steps: a build killed part-way resumes
from its last checkpoint (not from row 0) and ends with every row in a working index."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, {bench!r})
    import ann_anchors as A
    A.LOCK = {lock!r}
    A.CHECKPOINT_S = 0  # a checkpoint after every step
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float16)
    m = {{"hnswlib": lambda: A.Hnswlib(16), "faiss": lambda: A.Faiss("HNSWFlat"),
          "usearch": lambda: A.USearch("f16")}}[{which!r}]()
    m.chunk = 500
    if {kill_at}:
        add = m.add_rows
        def add_rows(x, a, b):
            if a >= {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)
            add(x, a, b)
        m.add_rows = add_rows
    m.build(x, None, Path({work!r}))
    q = rng.standard_normal((20, 16)).astype(np.float32)
    xn = x.astype(np.float32) / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)
    exact = np.argsort(-(q @ xn.T), axis=1, kind="stable")[:, :A.K]
    got = m.search(q, ef=200)
    print(json.dumps({{"recall": float(np.mean([len(set(a) & set(b)) / A.K for a, b in zip(got, exact)])),
                      "meta": json.loads(m.path.with_suffix(".json").read_text())}}))
""")


def _run(which, work, lock, kill_at=0):
    code = SCRIPT.format(bench=str(BENCH), lock=str(lock), which=which, kill_at=kill_at, work=str(work))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("which,module", [("hnswlib", "hnswlib"), ("faiss", "faiss"), ("usearch", "usearch")])
def test_graph_build_resumes_after_a_kill(tmp_path, which, module):
    pytest.importorskip(module)
    work, lock = tmp_path / "work", tmp_path / "lock"
    work.mkdir()
    killed = _run(which, work, lock, kill_at=1500)
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = json.loads(next(work.glob("*.part.json")).read_text())
    assert state["rows"] == 1500 and state["resumes"] == 0
    assert "checkpoint at row 1,500" in killed.stdout
    done = _run(which, work, lock)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed at row 1,500" in done.stdout
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["meta"]["resumes"] == 1 and out["meta"]["built_in_steps_of"] == 500
    assert out["meta"]["build_s"] > 0
    assert out["recall"] >= 0.9
    assert not list(work.glob("*.part*")), "the checkpoint files outlive a finished build"
    assert np.isfinite(out["meta"]["build_s"])
