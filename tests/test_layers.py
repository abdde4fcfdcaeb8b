"""The layers contract: scripts/check_layers.py on the real tree and on copies made to fail.

Standard library only and no import of kdbench itself, so these run in well under a second.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_layers.py"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


check_layers = _load_checker()


def run(root: Path, capsys) -> tuple[int, str]:
    status = check_layers.main(["--root", str(root)])
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the real tree's scanned packages (.py files only) and its pyproject.toml."""
    for package in ("bench", "methods"):
        for path in (ROOT / package).rglob("*.py"):
            target = tmp_path / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    shutil.copyfile(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def append(path: Path, text: str) -> int:
    """Append ``text`` to ``path``; returns the line number of its first line."""
    lines = path.read_text().count("\n")
    path.write_text(path.read_text() + textwrap.dedent(text))
    return lines + 1


def test_the_real_tree_keeps_its_layers():
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("check_layers: ok: ")
    assert " modules, " in done.stdout and " layers" in done.stdout


def test_an_upward_import_names_the_file_and_both_layers(tree, capsys):
    line = append(tree / "bench" / "api" / "types.py", "import bench.cli\n")
    status, out = run(tree, capsys)
    assert status == 1
    assert f"bench/api/types.py:{line}: upward import: bench.api.types (layer 'bench.api') " in out
    assert "imports bench.cli (layer 'bench.cli')" in out


def test_an_import_inside_a_function_or_for_type_checking_counts(tree, capsys):
    append(
        tree / "bench" / "registry.py",
        """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from bench.tracking import Tracker


        def _late():
            from bench.models import create_model
        """,
    )
    status, out = run(tree, capsys)
    assert status == 1
    assert "bench.registry (layer 'bench.registry') imports bench.tracking" in out
    assert "bench.registry (layer 'bench.registry') imports bench.models" in out


def test_a_cycle_inside_one_layer_is_named_with_its_imports(tree, capsys):
    line = append(
        tree / "bench" / "data" / "base.py",
        """
        def _late():
            from bench.data.splits import TensorSplit
        """,
    )
    status, out = run(tree, capsys)
    assert status == 1
    assert "import cycle among 3 modules: bench.data.augment, bench.data.base, " in out
    assert f"bench/data/base.py:{line + 2}: bench.data.base imports bench.data.splits" in out
    assert "bench/data/splits.py:" in out and "bench.data.splits imports bench.data.base" in out
    assert "upward import" not in out


def test_a_relative_import_resolves_to_the_module_it_names(tree, capsys):
    append(tree / "bench" / "trial" / "device.py", "from . import loop\n")
    status, out = run(tree, capsys)
    assert status == 1
    assert "bench.trial.device (layer 'bench.trial.device') imports bench.trial.loop" in out


def test_a_plugin_may_use_only_the_plugin_api(tree, capsys):
    (tree / "methods" / "x.py").write_text(
        "from bench.api import Method\nfrom bench.trial.loop import train_student\n"
    )
    status, out = run(tree, capsys)
    assert status == 1
    assert "methods/x.py:2: plugin import: methods.x imports bench.trial.loop" in out
    assert "methods/x.py:1" not in out


def test_siblings_of_one_layer_stay_independent(tree, capsys):
    append(tree / "bench" / "registry.py", "import bench.config\n")
    status, out = run(tree, capsys)
    assert status == 1
    assert (
        "sibling import: bench.registry (layer 'bench.registry') imports bench.config "
        "(layer 'bench.config')" in out
    )


def test_a_module_in_no_layer_and_a_missing_module_are_reported(tree, capsys):
    (tree / "bench" / "stray.py").write_text("from bench.no_such_module import thing\n")
    status, out = run(tree, capsys)
    assert status == 1
    assert "bench/stray.py: bench.stray is in no layer" in out
    assert "bench/stray.py:1: missing module: bench.stray imports bench.no_such_module" in out


def test_a_declared_prefix_without_modules_is_fine(tmp_path, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text('"""Only a docstring."""\n')
    (tmp_path / "pkg" / "low.py").write_text("X = 1\n")
    (tmp_path / "pkg" / "high.py").write_text("from pkg.low import X\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.kdbench.layers]\npackages = ["pkg"]\n'
        'order = ["pkg.high", "pkg.not_yet_moved", "pkg.low"]\n'
    )
    status, out = run(tmp_path, capsys)
    assert status == 0, out
    assert "3 modules, 1 edges (1 imports), 3 layers" in out


def test_an_allowed_import_is_exempt_and_a_stale_allowance_is_only_noted(tmp_path, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "low.py").write_text("import pkg.high\n")
    (tmp_path / "pkg" / "high.py").write_text("import pkg.low\n")
    (tmp_path / "pyproject.toml").write_text(
        '[tool.kdbench.layers]\npackages = ["pkg"]\norder = ["pkg.high", "pkg.low"]\n'
        'allow = ["pkg.low -> pkg.high", "pkg.* -> pkg.gone"]\n'
    )
    status, out = run(tmp_path, capsys)
    assert status == 0, out
    assert "note: allow entry 'pkg.* -> pkg.gone' exempts nothing any more" in out


def test_a_missing_layers_table_is_a_configuration_error(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    status, out = run(tmp_path, capsys)
    assert status == 2
    assert "has no [tool.kdbench.layers] table" in out
