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

from bench.api import METHODS, Method, coerce_value
from bench.config import TrialConfig, run_key

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


def method_code(cls: type[Method]) -> dict[str, str]:
    """Content hashes of the code a method's results depend on besides the harness: its own
    source file and the private helper modules it imports.

    A helper module is one of the method's package whose name starts with ``_`` (kdbench's
    ``methods/_common.py``), found through the file's imports and, in turn, the helpers'
    own. Neither the file's edits nor the helpers' are covered by the method's ``version``,
    so the run key carries these hashes: editing a method file, or loss math several methods
    share, gives every method concerned new keys.

    Returns:
        Name → first 16 hex digits of the SHA-256 of its source: the method's own file under
        its module name (its file name for a file loaded with ``--plugins``, whose module
        name differs between processes), each helper under its module name. Empty for a
        class without a source file.
    """
    module = sys.modules.get(cls.__module__)
    origin = getattr(module, "__file__", None)
    if origin is None or not Path(origin).is_file():
        return {}
    package = (getattr(module, "__package__", None) or "").strip(".")
    own = cls.__module__ if package else Path(origin).name
    return {own: _source_hash(Path(origin)), **shared_code(cls)}


def shared_code(cls: type[Method]) -> dict[str, str]:
    """Content hashes of the private helper modules a method's file imports (directly or
    through another helper); see :func:`method_code`.

    Returns:
        Module name → first 16 hex digits of the SHA-256 of its source file; empty when the
        method imports no helper module.
    """
    module = sys.modules.get(cls.__module__)
    origin = getattr(module, "__file__", None)
    package = (getattr(module, "__package__", None) or "").strip(".")
    if origin is None or not package:
        return {}
    fingerprints: dict[str, str] = {}
    pending = [(Path(origin), package)]
    while pending:
        path, within = pending.pop()
        for name in sorted(_imported_modules(path, within)):
            if name in fingerprints or not _is_helper(name, package):
                continue
            spec = _find_spec(name)
            if spec is not None and spec.origin and Path(spec.origin).is_file():
                fingerprints[name] = _source_hash(Path(spec.origin))
                inner = name if spec.submodule_search_locations is not None else None
                pending.append((Path(spec.origin), inner or name.rsplit(".", 1)[0]))
    return dict(sorted(fingerprints.items()))


def _find_spec(name: str) -> Any:
    """The module spec of ``name``; None for a name that is no module (``from m import _x``
    names an attribute ``_x`` of ``m``)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _is_helper(name: str, package: str) -> bool:
    return name.startswith(package + ".") and name.rsplit(".", 1)[-1].startswith("_")


def _source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def resolved_params(cls: type[Method], params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Every hyperparameter of ``cls`` as the trial uses it: the given values parsed, the
    others at their defaults, each in its field's type (``4`` for a float field is ``4.0``),
    sorted by name. Run keys and records hold these, so naming a default and leaving it out
    are the same trial, and a changed default is a different one.

    Raises:
        ParamError: An unknown name or a value of the wrong type.
    """
    where = f"{cls.name or cls.__name__} params"
    given = cls.Params.from_mapping(dict(params), where=where)
    types = cls.Params.fields()
    return tuple(
        (name, coerce_value(getattr(given, name), types[name], where=f"{where}.{name}"))
        for name in sorted(types)
    )


def keyed_trial(config: TrialConfig) -> tuple[TrialConfig, str]:
    """The trial with its params resolved (:func:`resolved_params`) and without a teacher
    when the method uses none (``kdbench train`` names one by default; a suite does not),
    and its run key.

    Every run key of kdbench comes from here: a sweep's plan and dry run, ``kdbench train``
    and a worker running the trial compute the same key for the same trial.

    Raises:
        KeyError: An unknown method.
        ParamError: Bad params.
        FileNotFoundError: A checkpoint file the trial names does not exist.
    """
    cls = get_method(config.method)
    resolved = config.with_changes(
        params=resolved_params(cls, config.params_dict),
        teacher=config.teacher if cls.uses_teacher else None,
    )
    return resolved, run_key(resolved, cls.version, method_code(cls))


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
