"""`builtin:python-docs`: English text that every Python installation carries.

Documents are the reference topics of `pydoc_data.topics` (one per topic) and, for each public
standard-library module, its docstring followed by the docstrings of the classes, functions and
methods it defines (one document per module). Importing ~300 modules has side effects (warnings,
prints, modules that open a browser or a window), so the walk runs in a child process
(`python -m lmforge.corpus.pydocs`) that writes one JSON string per line; the builder only reads.
"""

from __future__ import annotations

import inspect
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError

# Modules whose import has visible side effects, needs a display, or hangs on some systems.
SKIP = {"this", "antigravity", "idlelib", "tkinter", "turtle", "turtledemo", "readline", "test",
        "lib2to3", "ensurepip", "pydoc_data", "msilib", "winreg", "winsound", "msvcrt", "_winapi"}


def iter_python_docs() -> Iterator[str]:
    """Stream the documents from a child process (isolated from import side effects)."""
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this lmforge, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.corpus.pydocs"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            yield json.loads(line)
        if proc.wait() != 0:
            raise LmforgeError(f"builtin:python-docs: the documentation walk failed (exit {proc.returncode}) "
                               f"with {sys.executable}: check that this Python has its standard library")
    finally:  # also when the consumer stops early: end the child instead of leaving it blocked
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _module_names() -> list[str]:
    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP:
            continue
        names.append(top)
        names += _submodules(top)
    return names


def _submodules(package: str) -> list[str]:
    """Public submodules, recursively, without importing anything but packages' specs."""
    spec = _find(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    names = []
    for info in pkgutil.iter_modules(spec.submodule_search_locations, package + "."):
        last = info.name.rsplit(".", 1)[-1]
        if not last.startswith("_") and "test" not in last and last not in SKIP:
            names.append(info.name)
            if info.ispkg:
                names += _submodules(info.name)
    return names


def _find(name: str):
    import importlib.util

    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _module_document(name: str) -> str | None:
    import importlib

    try:
        module = importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - any failure (ImportError, SystemExit, ...) skips the module
        return None
    parts = [f"{name}\n\n{inspect.cleandoc(module.__doc__)}"] if module.__doc__ else []
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)) or not obj.__doc__:
            continue
        parts.append(f"{name}.{attr}\n\n{inspect.cleandoc(obj.__doc__)}")
        if inspect.isclass(obj):
            for meth, fn in sorted(vars(obj).items()):
                if not meth.startswith("_") and inspect.isroutine(fn) and fn.__doc__:
                    parts.append(f"{name}.{attr}.{meth}\n\n{inspect.cleandoc(fn.__doc__)}")
    return "\n\n".join(parts) or None


def _main() -> None:
    import contextlib
    import io
    import warnings
    from pydoc_data.topics import topics

    out = sys.stdout
    sys.stdin = io.StringIO()
    warnings.simplefilter("ignore")
    os.environ["DISPLAY"] = ""  # nothing may open a window
    for key in sorted(topics):
        out.write(json.dumps(topics[key].strip()) + "\n")
    sink = io.StringIO()
    for name in _module_names():
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            doc = _module_document(name)
        sink.seek(0)
        sink.truncate()
        if doc:
            out.write(json.dumps(doc) + "\n")
    out.flush()


if __name__ == "__main__":
    _main()
