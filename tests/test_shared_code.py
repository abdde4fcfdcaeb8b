"""Shared helper modules are part of the run key of the methods that import them."""

from __future__ import annotations

import ast
import hashlib
import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.api import METHODS
from bench.config import TrialConfig, run_key
from bench.plugins import get_method, load_methods, shared_code

load_methods()
METHOD_NAMES = METHODS.names()
COMMON = "methods._common"


def _imports_common(source_file: Path) -> bool:
    """Whether a method file imports ``methods._common`` (absolutely or relatively)."""
    tree = ast.parse(source_file.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == COMMON for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module == COMMON:
                return True
            if node.level == 1 and (
                node.module == "_common" or any(a.name == "_common" for a in node.names)
            ):
                return True
    return False


def _source_file(name: str) -> Path:
    module = sys.modules[get_method(name).__module__]
    assert module.__file__, f"method {name!r} has no source file"
    return Path(module.__file__)


def test_the_shared_module_is_used_by_several_methods() -> None:
    users = [n for n in METHOD_NAMES if _imports_common(_source_file(n))]
    assert {"kd", "dkd", "ls", "fitnet"} <= set(users)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_shared_code_lists_the_shared_module_of_methods_importing_it(name: str) -> None:
    fingerprints = shared_code(get_method(name))
    if _imports_common(_source_file(name)):
        common_file = Path(importlib.import_module(COMMON).__file__ or "")
        expected = hashlib.sha256(common_file.read_bytes()).hexdigest()[:16]
        assert fingerprints[COMMON] == expected
    else:
        assert COMMON not in fingerprints


def test_a_method_without_helpers_has_no_shared_code() -> None:
    assert shared_code(get_method("ce")) == {}


METHOD_SOURCE = """
from bench.api import Method, register_method
{helper_import}


@register_method("{name}")
class Example(Method):
    knowledge = "none"
    uses_teacher = False
    version = 1

    class Params(Method.Params):
        pass

    def loss(self, batch, student, teacher):
        return {{}}
"""


@pytest.fixture
def helper_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A throw-away package with a helper module, one method that imports it and one that
    does not; yields the package's names and removes its methods and modules afterwards."""
    tag = uuid.uuid4().hex[:8]
    package = f"kdbench_shared_test_{tag}"
    names = {
        "package": package,
        "with_helper": f"shared_test_with_helper_{tag}",
        "without_helper": f"shared_test_without_helper_{tag}",
    }
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "_helpers.py").write_text("SCALE = 1.0\n")
    (root / "m.py").write_text(
        METHOD_SOURCE.format(
            name=names["with_helper"], helper_import=f"from {package}._helpers import SCALE"
        )
    )
    (root / "plain.py").write_text(
        METHOD_SOURCE.format(name=names["without_helper"], helper_import="")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        importlib.import_module(f"{package}.m")
        importlib.import_module(f"{package}.plain")
        yield names
    finally:
        METHODS.unregister(names["with_helper"])
        METHODS.unregister(names["without_helper"])
        for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[module]


def _key(name: str) -> str:
    cls = get_method(name)
    config = TrialConfig(dataset="digits", student="test_resnet_narrow", method=name)
    return run_key(config, cls.version, shared_code(cls))


def test_editing_a_helper_module_changes_the_run_key(
    helper_package: dict[str, str], tmp_path: Path
) -> None:
    with_helper, without_helper = helper_package["with_helper"], helper_package["without_helper"]
    helper_module = f"{helper_package['package']}._helpers"
    assert set(shared_code(get_method(with_helper))) == {helper_module}
    assert shared_code(get_method(without_helper)) == {}
    before = {name: _key(name) for name in (with_helper, without_helper)}

    helper_file = tmp_path / helper_package["package"] / "_helpers.py"
    helper_file.write_text("SCALE = 2.0\n")
    after = {name: _key(name) for name in (with_helper, without_helper)}

    assert after[with_helper] != before[with_helper]
    assert after[without_helper] == before[without_helper]
    # Restoring the helper's content restores the key: the key follows the content only.
    helper_file.write_text("SCALE = 1.0\n")
    assert _key(with_helper) == before[with_helper]
