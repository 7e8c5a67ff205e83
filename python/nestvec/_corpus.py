"""Document sources for the CLI: the Python standard library's docstrings (the demo
corpus, present on every machine), a folder of text files, or a JSON-lines file."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import sys
import warnings
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text", ".markdown")
# Modules whose import has side effects (a browser, a GUI, printing), is slow, or
# only re-exports other modules' docs.
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip",
         "pydoc_data", "test", "unittest.test", "xxlimited", "xxsubtype", "msilib", "winreg",
         "winsound", "_msi", "nt", "msvcrt", "webbrowser", "venv", "distutils", "idle"}


def _first_paragraph(doc: str, max_chars: int) -> str:
    para = inspect.cleandoc(doc).strip().split("\n\n", 1)[0]
    para = " ".join(para.split())
    return para[:max_chars]


def stdlib_docstrings(limit: int = 2000, per_module: int = 20, min_chars: int = 24,
                      max_chars: int = 320) -> list[dict]:
    """Docstrings of the standard library's public modules, classes and functions.

    One record per object: ``name`` ("json.dumps"), ``kind`` (module / class /
    function), ``module`` and ``text`` (the docstring's first paragraph, at most
    ``max_chars``). Deterministic: modules in name order, at most ``per_module``
    records each, ``limit`` in all."""
    names = sorted(getattr(sys, "stdlib_module_names", ()) or _fallback_module_names())
    out: list[dict] = []
    for mod_name in names:
        if len(out) >= limit:
            break
        if mod_name.startswith("_") or mod_name in _SKIP:
            continue
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(mod_name)
        except BaseException:  # noqa: BLE001 - platform modules, missing C libraries
            continue
        recs = []
        if mod.__doc__ and len(mod.__doc__.strip()) >= min_chars:
            recs.append(dict(name=mod_name, kind="module", module=mod_name,
                             text=_first_paragraph(mod.__doc__, max_chars)))
        public = getattr(mod, "__all__", None)
        members = sorted(public) if isinstance(public, (list, tuple)) else sorted(vars(mod))
        for attr in members:
            if len(recs) >= per_module:
                break
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
                continue
            if getattr(obj, "__module__", None) not in (mod_name, "_" + mod_name):
                continue  # re-exported from elsewhere: indexed where it is defined
            doc = inspect.getdoc(obj) if inspect.isclass(obj) else obj.__doc__
            if not doc or len(doc.strip()) < min_chars:
                continue
            recs.append(dict(name=f"{mod_name}.{attr}", kind="class" if inspect.isclass(obj) else "function",
                             module=mod_name, text=_first_paragraph(doc, max_chars)))
        out.extend(recs[:max(0, limit - len(out))])
    return out


def _fallback_module_names():  # Python < 3.10
    import pkgutil
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    return sorted({m.name for m in pkgutil.iter_modules([stdlib])} | set(sys.builtin_module_names))


def read_source(source) -> list[dict]:
    """Records ``{id, text, title?, ...}`` from a folder of text files or a .jsonl file.

    Folder: every ``*.txt / *.md / *.rst`` file below it is one document, id = its
    relative path. JSON lines: one object per line with ``text`` (and optionally
    ``_id``/``id`` and ``title``; other scalar fields become metadata columns).

    Raises FileNotFoundError for a missing path and ValueError for an empty corpus."""
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"SOURCE {str(p)!r} does not exist (expected a folder of text files "
                                "or a .jsonl file)")
    recs: list[dict] = []
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES:
                text = f.read_text(errors="replace").strip()
                if text:
                    recs.append({"id": str(f.relative_to(p)), "text": text})
        where = f"no non-empty {'/'.join('*' + s for s in TEXT_SUFFIXES)} files under {str(p)!r}"
    else:
        with open(p, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise ValueError(f"{p}:{n}: expected an object with a 'text' string")
                rec = {"id": str(obj.get("_id", obj.get("id", n - 1)))}
                title = obj.get("title")
                rec["text"] = (f"{title}: {obj['text']}" if title else obj["text"]).strip()
                for key, val in obj.items():
                    if key not in ("_id", "id", "text") and isinstance(val, (str, int, float, bool)):
                        rec[key] = val
                if rec["text"]:
                    recs.append(rec)
        where = f"no lines with a non-empty 'text' in {str(p)!r}"
    if not recs:
        raise ValueError(f"empty corpus: {where}")
    return recs
