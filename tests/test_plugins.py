"""Third-party methods: an installed package through the ``kdbench.methods`` entry-point group,
a single file through ``--plugins``, a plugin that fails to import, duplicate names.

The example package (``tests/plugin_pkg``) is built and installed by pip, non-editable, into a
private target folder that the ``kdbench`` subprocesses get on ``PYTHONPATH``: entry points
are found through the installed metadata exactly as in a virtual environment, while the shared
environment other processes use stays untouched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.api import METHODS
from bench.cli import main
from bench.conformance.fixtures import one_thread
from bench.plugins import load_plugin_file

PLUGIN_PKG = Path(__file__).parent / "plugin_pkg"
KDBENCH = Path(sys.executable).parent / "kdbench"
TINY_TRIAL = [
    "--student",
    "test_resnet_narrow",
    "--teacher",
    "test_resnet_wide",
    "--epochs",
    "1",
    "--json",
    "--no-track",
    "--quiet",
]

FILE_PLUGIN = '''
"""A method given as a file with --plugins."""
import torch.nn.functional as F
from bench.api import Method, register_method


@register_method("plugin_test_file_mse")
class FileMSE(Method):
    """Mean squared error between student and teacher logits."""

    class Params(Method.Params):
        weight: float = 0.1

    def loss(self, batch, student, teacher):
        return {"mse": self.params.weight * F.mse_loss(student.logits, teacher.logits)}
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed by pip (non-editable) into a private target folder."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "kdbench-example-plugin"
    shutil.copytree(
        PLUGIN_PKG, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (site / "kdbench_example_plugin" / "my_method.py").is_file()
    return site


@pytest.fixture
def cli_env(plugin_site: Path, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(plugin_site), env.get("PYTHONPATH")])),
        KDBENCH_HOME=str(tmp_path / "home"),
        HF_HUB_OFFLINE="1",
        # Tiny models gain nothing from a second thread, and lose much on a busy machine.
        OMP_NUM_THREADS="1",
    )
    return env


def kdbench(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(KDBENCH), *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_installed_and_file_plugins_are_listed_with_the_broken_one(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    plugin_file = tmp_path / "file_mse.py"
    plugin_file.write_text(textwrap.dedent(FILE_PLUGIN))
    listed = kdbench(["ls", "methods", "--plugins", str(plugin_file)], cli_env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert rows["example_cosine"].split()[1:4] == ["logits", "offline", "1"]
    assert "plugin_test_file_mse" in rows
    assert "kd" in rows  # kdbench's own methods are still there
    broken = [line for line in listed.stdout.splitlines() if line.startswith("BROKEN")]
    assert len(broken) == 1, listed.stdout
    assert broken[0].startswith("BROKEN example_broken (entry point example_broken = ")
    assert "ModuleNotFoundError" in broken[0]
    assert "kdbench_example_missing_dependency" in broken[0]
    assert str(Path("kdbench_example_plugin") / "broken.py") in broken[0]


def test_an_installed_plugin_trains_beside_a_broken_one(cli_env: dict[str, str]) -> None:
    trained = kdbench(["train", "--method", "example_cosine", *TINY_TRIAL], cli_env)
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary["status"] == "FINISHED"
    assert math.isfinite(summary["final_loss"]) and summary["final_loss"] > 0


def test_a_broken_plugin_fails_only_when_selected(cli_env: dict[str, str]) -> None:
    selected = kdbench(["train", "--method", "example_broken", *TINY_TRIAL], cli_env)
    assert selected.returncode == 2
    error = selected.stderr.strip().splitlines()[-1]
    assert error.startswith("kdbench: error: method 'example_broken'")
    assert "ModuleNotFoundError" in error and "kdbench_example_missing_dependency" in error
    assert str(Path("kdbench_example_plugin") / "broken.py") in error
    assert "Traceback" not in selected.stderr


def test_a_plugin_file_trains_with_the_plugins_option(tmp_path: Path, capsys) -> None:
    plugin_file = tmp_path / "file_mse.py"
    plugin_file.write_text(textwrap.dedent(FILE_PLUGIN))
    try:
        with one_thread():
            args = ["--plugins", str(plugin_file), "--method", "plugin_test_file_mse"]
            code = main(["train", *args, *TINY_TRIAL])
    finally:
        METHODS.unregister("plugin_test_file_mse")
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "FINISHED"
    assert math.isfinite(summary["final_loss"])


def test_a_duplicate_name_raises_naming_both_files(tmp_path: Path) -> None:
    source = textwrap.dedent(
        """
        from bench.api import Method, register_method


        @register_method("{name}")
        class Again(Method):
            class Params(Method.Params):
                pass
        """
    )
    first, second, shadow = (tmp_path / f"{n}.py" for n in ("first", "second", "shadow"))
    first.write_text(source.format(name="plugin_test_twice"))
    second.write_text(source.format(name="plugin_test_twice"))
    shadow.write_text(source.format(name="kd"))
    try:
        load_plugin_file(first)
        with pytest.raises(ImportError) as twice:
            load_plugin_file(second)
        with pytest.raises(ImportError) as builtin:
            load_plugin_file(shadow)
    finally:
        METHODS.unregister("plugin_test_twice")
    message = str(twice.value)
    assert "'plugin_test_twice' is registered twice" in message
    assert f"{first}:" in message and f"{second}:" in message
    message = str(builtin.value)
    assert str(Path("methods") / "kd.py") in message and f"{shadow}:" in message
    assert "kd" in METHODS  # the built-in keeps its name
