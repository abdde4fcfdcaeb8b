"""Discovery of distillation methods: kdbench's own ``methods`` package, third-party packages
through the ``kdbench.methods`` entry-point group, and single files given with ``--plugins``.

A plugin that fails to import does not break kdbench: it is recorded as broken with its error,
listed by ``kdbench ls methods``, and fails only when selected.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
import traceback
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bench.api import METHODS, Method

ENTRY_POINT_GROUP = "kdbench.methods"
_loaded = False
_loaded_files: dict[Path, str] = {}


def _error_text(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _import_module(module_name: str, origin: str, broken_name: str) -> None:
    try:
        importlib.import_module(module_name)
    except Exception as exc:  # a broken plugin must not take kdbench down
        METHODS.mark_broken(broken_name, origin, _error_text(exc))


def load_methods() -> None:
    """Import kdbench's methods and every installed plugin package (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # _template.py and private helpers are not methods
        _import_module(f"methods.{info.name}", f"methods/{info.name}.py", info.name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _import_module(ep.value.split(":")[0], f"entry point {ep.name} = {ep.value}", ep.name)


def load_plugin_file(path: str | Path) -> str:
    """Import a method file given by path (``--plugins``); returns the module name.

    Raises:
        FileNotFoundError: the file does not exist.
        ImportError: the file failed to import (the message carries the original error).
    """
    load_methods()
    path = Path(path).resolve()
    if path in _loaded_files:
        return _loaded_files[path]
    if not path.is_file() or path.suffix != ".py":
        raise FileNotFoundError(f"--plugins {path}: not a .py file")
    module_name = f"kdbench_plugin_{path.stem}_{abs(hash(path)) % 10**8}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ImportError(f"--plugins {path} failed to import: {_error_text(exc)}") from exc
    _loaded_files[path] = module_name
    return module_name


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name`` (loads kdbench's methods and plugins).

    Raises:
        KeyError: an unknown name (the message suggests close ones and lists all).
    """
    load_methods()
    return METHODS.get(name)


def build_method(name: str, params: Mapping[str, Any] | None = None) -> Method:
    """Instantiate a registered method with (raw) params; raises ParamError on bad params."""
    cls = get_method(name)
    return cls(cls.Params.from_mapping(dict(params or {}), where=f"{name}.params"))


def shared_code(cls: type[Method]) -> dict[str, str]:
    """Content hashes of the private helper modules a method's file imports.

    A helper module is one beside the method's file whose name starts with ``_`` (kdbench's
    ``methods/_common.py``). Its code runs inside the method's loss without being part of the
    method's ``version``, so the run key carries these hashes: editing shared loss math gives
    every method that imports it new keys.

    Returns:
        Module name → first 16 hex digits of the SHA-256 of its source file; empty when the
        method imports no helper module.
    """
    module = sys.modules.get(cls.__module__)
    origin = getattr(module, "__file__", None)
    package = (getattr(module, "__package__", None) or "").strip(".")
    if origin is None or not package:
        return {}
    fingerprints = {}
    for name in sorted(_imported_modules(Path(origin), package)):
        if not name.rsplit(".", 1)[-1].startswith("_") or not name.startswith(package + "."):
            continue
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            digest = hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:16]
            fingerprints[name] = digest
    return fingerprints


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names
