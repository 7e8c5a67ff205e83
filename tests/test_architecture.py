"""The package's shape (docs/ARCHITECTURE.md): imports point one way (no circle among
nestvec's modules, lazy imports inside functions included), every op is reached through
the backend registry, and no module grows past ~600 lines without a stated reason."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nestvec import _backend

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "nestvec"
# relative path -> why it is longer than MAX_LINES
LONG_FILES: dict = {}
MAX_LINES = 600


def _modules() -> dict:
    """module name -> source file, for nestvec and nestvec.kernels (the kernels/ folder)."""
    out = {}
    for base, prefix in ((PKG, "nestvec"), (ROOT / "kernels", "nestvec.kernels")):
        for f in sorted(base.rglob("*.py")):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix] + parts)] = f
    out["nestvec._C"] = None  # the native module: imported, imports nothing of ours
    return out


def _imports(name: str, path: Path, known: set) -> set:
    """nestvec modules that ``name`` imports, anywhere in the file (lazy ones too)."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one, else a name
            # defined in pkg itself
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_import_graph_has_no_circle():
    mods = _modules()
    graph = {m: _imports(m, f, set(mods)) if f else set() for m, f in mods.items()}
    assert _cycles(graph) == []
    # the layers: public API -> ops -> backend -> native; nothing below imports above
    below = {"nestvec._backend", "nestvec._checks", "nestvec.reference", "nestvec._version"}
    for m in below:
        assert not {t for t in graph[m] if t.startswith("nestvec.ops")
                    or t.startswith("nestvec.collection")}, (m, graph[m])
    for m, targets in graph.items():
        if m.startswith("nestvec.ops"):
            assert not {t for t in targets if t.startswith("nestvec.collection")}, (m, targets)


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_op_has_every_backend_registered():
    for op in ("hamming_topk", "dense_topk", "pool", "lowrank_sparse_matmul"):
        assert _backend.registered(op) == _backend.BACKENDS, op
    with pytest.raises(RuntimeError, match="not implemented"):
        _backend.implementation("no_such_op", "cpu")


def test_no_module_past_the_line_limit_without_a_reason():
    long = {}
    for f in list(PKG.rglob("*.py")) + list((ROOT / "kernels").glob("*.py")):
        n = len(f.read_text().splitlines())
        rel = str(f.relative_to(ROOT))
        if n > MAX_LINES and rel not in LONG_FILES:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them, or say why in LONG_FILES): {long}"
