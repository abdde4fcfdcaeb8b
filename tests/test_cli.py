"""The kdbench command line as users call it: ``python -m bench`` and its exit status, ``ls``
with its options before or after the filter, and method descriptions shown whole."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from bench.api import METHODS
from bench.cli import main
from bench.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def python_m_bench(*args: str) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` from the repository root, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_python_m_bench_exits_with_status_0_on_help_and_2_on_bad_input(tmp_path):
    shown = python_m_bench("--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: kdbench")
    extra = python_m_bench("ls", "models", "resnet8", "resnet20")
    assert extra.returncode == 2
    assert "unrecognized arguments: resnet20" in extra.stderr
    # bad input found by a command, not by the parser: one message, no traceback
    missing = python_m_bench("sweep", str(tmp_path / "no-suite"), "--dry-run")
    assert missing.returncode == 2
    assert "no such suite file (give a suite.yaml or its folder)" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_python_m_bench_exits_with_status_1_when_the_trial_is_refused(tmp_path):
    teacher = tmp_path / "resnet20.pt"
    torch.save(create_model("resnet20", 10, image_size=16).state_dict(), teacher)
    trained = python_m_bench(
        *("train", "--no-track", "--quiet", "--method", "ft", "--epochs", "1"),
        *("--student", "vit_tiny_patch16_224", "--image-size", "16"),
        *("--teacher", "resnet20", "--teacher-checkpoint", str(teacher)),
    )
    assert trained.returncode == 1, trained.stderr
    # the ViT's image is one 16-pixel patch: FT's deepest pair has a 1×1 map
    assert (
        "refused: ft does not support this pair: the stage pair s11 (1×1) → t3 (4×4) has a map "
        "smaller than 2×2, which carries no spatial knowledge"
    ) in trained.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "models", "--timm", "vit_tiny_patch16*"],
        ["ls", "models", "vit_tiny_patch16*", "--timm"],
        ["ls", "--timm", "models", "vit_tiny_patch16*"],
    ],
)
def test_ls_takes_its_options_before_or_after_the_filter(argv, capsys):
    assert main(argv) == 0
    listed = capsys.readouterr().out.split()
    assert "vit_tiny_patch16_224" in listed
    assert listed == timm.list_models("vit_tiny_patch16*")


def summary(cls: type) -> str:
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())


def test_ls_methods_shows_each_summary_whole_wrapped_to_the_terminal_width(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["ls", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines if not line.startswith("BROKEN")) <= 100
    # a wrapped description continues on indented lines right under its row
    text = " ".join(" ".join(line.split()) for line in lines)
    crd = (
        "Contrast each student embedding with the teacher's memory of many samples, and the "
        "reverse."
    )
    assert summary(METHODS.get("crd")) == crd and crd in text
    for name, cls in METHODS.items():
        assert summary(cls) in text, name


def test_ls_methods_into_a_pipe_puts_each_method_on_one_line(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["ls", "methods", "c*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["method", "cc", "ce", "crd"]
    assert lines[3].endswith(summary(METHODS.get("crd")))
