"""Every file kdbench reads is checked: a bad file the user gave is one message naming the
file, what is wrong and what to do (exit status 2, before any work, nothing recorded); a
damaged entry of kdbench's own caches is reported in one line and rebuilt; a teacher that does
not train is a clear failure with its whole reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.checkpoint import CheckpointError, read_state_dict
from bench.cli import main
from bench.config import Recipe, TeacherSpec, TrialConfig
from bench.models import create_model
from bench.teacher_cache import clear_memory
from bench.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]
# A tiny teacher and student on the digits at 8×8: a trial takes seconds.
TINY = ["--image-size", "8", "--epochs", "1", "--no-augment", "--quiet"]
PAIR = ["--student", "test_vgg", "--teacher", "test_vgg"]


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("KDBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One run store for the tests that must record nothing (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def train(capsys, store: str | None, *args: str) -> tuple[int, str, str]:
    """``kdbench train`` on the tiny pair, recording into ``store`` (None: nothing); returns
    the exit status, stdout and stderr (checked to hold no traceback)."""
    tracking = ["--tracking-uri", store] if store else ["--no-track"]
    code = main(["train", *PAIR, *TINY, *tracking, *args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def recorded(store: str) -> list:
    """Every run in the store, of any experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments)) if experiments else []


def teacher_weights(arch: str = "test_vgg", classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_model(arch, classes, image_size=8).state_dict()


# --------------------------------------------------------------------------------------------
# Checkpoints the user gives
# --------------------------------------------------------------------------------------------


def _write_random(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _write_truncated(path: Path) -> None:
    torch.save(teacher_weights(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _Payload:
    """Stands for any pickled object: loading it would need a full unpickling."""


BAD_CHECKPOINTS = {
    "random-bytes": (_write_random, "not a PyTorch checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "truncated": (_write_truncated, "damaged or truncated"),
    "other-architecture": (
        lambda p: torch.save(teacher_weights("test_resnet_narrow"), p),
        "does not fit",
    ),
    "other-classes": (lambda p: torch.save(teacher_weights(classes=7), p), "another shape"),
    "no-weights": (lambda p: torch.save({"epoch": 3, "best_acc": 0.5}, p), "no state dict"),
    "pickled-object": (lambda p: torch.save({"model": _Payload()}, p), "pickled Python object"),
    "nan-weights": (
        lambda p: torch.save({k: v * float("nan") for k, v in teacher_weights().items()}, p),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS), ids=list(BAD_CHECKPOINTS))
def test_a_bad_teacher_checkpoint_is_one_message_exit_2_and_nothing_recorded(
    case, tmp_path, store, capsys
):
    write, problem = BAD_CHECKPOINTS[case]
    path = tmp_path / f"{case}.pt"
    write(path)
    code, _, err = train(capsys, store, "--teacher-checkpoint", str(path))
    assert code == 2, err
    message = err.strip()
    assert message.count("\n") == 0, message  # one message
    assert f"teacher checkpoint {path}: " in message and problem in message, message
    assert "—" in message  # followed by what to do
    assert recorded(store) == []


def test_a_missing_teacher_checkpoint_is_named(tmp_path, store, capsys):
    code, _, err = train(capsys, store, "--teacher-checkpoint", str(tmp_path / "nope.pt"))
    assert code == 2 and f"{tmp_path / 'nope.pt'}: no such file" in err
    assert recorded(store) == []


def test_the_console_command_reports_a_broken_checkpoint_without_a_traceback(tmp_path):
    path = tmp_path / "broken.pt"
    _write_random(path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.cli",
            "train",
            *PAIR,
            *TINY,
            "--no-track",
            "--teacher-checkpoint",
            str(path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{path}: not a PyTorch checkpoint" in done.stderr


def _wrapped(form: str, weights: dict[str, torch.Tensor]) -> object:
    prefixed = {f"module.{k}": v for k, v in weights.items()}
    return {
        "model-and-epoch": {"model": weights, "epoch": 240, "optimizer": {"lr": 0.1}},
        "state_dict": {"state_dict": weights, "best_acc": torch.tensor(0.9)},
        "net-dataparallel": {"net": prefixed, "acc": 91.3},
        "student": {"student": weights, "epoch": 3},
        "dataparallel": prefixed,
    }[form]


@pytest.mark.parametrize(
    "form", ["model-and-epoch", "state_dict", "net-dataparallel", "student", "dataparallel"]
)
def test_wrapped_checkpoints_give_the_plain_weights(form, tmp_path):
    weights = teacher_weights()
    path = tmp_path / "wrapped.pt"
    torch.save(_wrapped(form, weights), path)
    loaded = read_state_dict(path)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)


def test_a_teacher_saved_by_a_training_script_trains_a_student(tmp_path, capsys):
    from bench.data import load_dataset
    from bench.trial.evaluate import labels_of, predict, topk_accuracy

    weights = teacher_weights()
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": weights, "epoch": 240}, path)
    code, out, err = train(capsys, None, "--teacher-checkpoint", str(path), "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    teacher = create_model("test_vgg", 10, image_size=8)
    teacher.load_state_dict(weights)
    test = load_dataset("digits", image_size=8).test
    cpu = torch.device("cpu")
    expected = topk_accuracy(predict(teacher, test, cpu), labels_of(test, cpu))
    assert result["status"] == "FINISHED"
    assert result["teacher_test_acc"] == pytest.approx(expected)


def student_config(checkpoint: Path) -> TrialConfig:
    recipe = Recipe(epochs=1, batch_size=64, augment=False, image_size=8)
    return TrialConfig(
        dataset="digits",
        student="test_vgg",
        method="ce",
        recipe=recipe,
        teacher=TeacherSpec(arch="test_vgg", recipe=recipe),
        student_checkpoint=str(checkpoint),
    )


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("random-bytes", "not a PyTorch checkpoint"),
        ("truncated", "damaged or truncated"),
        ("other-architecture", "outside the classifier are missing or have another shape"),
    ],
)
def test_a_bad_student_checkpoint_is_refused_before_anything_is_recorded(
    case, problem, tmp_path, store
):
    from bench.trial.compose import run_trial

    path = tmp_path / f"{case}.pt"
    BAD_CHECKPOINTS[case][0](path)
    with pytest.raises(CheckpointError) as raised:
        run_trial(student_config(path), tracker=Tracker(store))
    assert f"student_checkpoint {path}: " in str(raised.value)
    assert problem in str(raised.value)
    assert recorded(store) == []


def test_a_wrapped_student_checkpoint_starts_the_student(tmp_path):
    from bench.finetune import load_pretrained

    weights = teacher_weights()
    path = tmp_path / "student.pth"
    torch.save(_wrapped("net-dataparallel", weights), path)
    student = create_model("test_vgg", 10, image_size=8)
    assert load_pretrained(student, path) == []
    assert all(torch.equal(student.state_dict()[k], weights[k]) for k in weights)


# --------------------------------------------------------------------------------------------
# kdbench's own caches
# --------------------------------------------------------------------------------------------


def test_damaged_teacher_and_outputs_cache_entries_are_reported_and_rebuilt(private_home, capsys):
    code, out, err = train(capsys, None, "--method", "kd", "--json")
    assert code == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    [checkpoint] = (private_home / "teachers").glob("*/epoch_1.pt")
    [outputs] = (private_home / "teacher_outputs").glob("*.pt")
    _write_truncated(checkpoint)
    outputs.write_bytes(b"PK\x03\x04 not the rest of the archive")
    clear_memory()  # as in a new process: the entries are read from disk

    code, out, err = train(capsys, None, "--method", "kd", "--json")
    assert code == 0, err
    assert f"teacher cache: {checkpoint} is damaged" in err and "training the teacher again" in err
    assert f"teacher outputs cache: {outputs} is damaged" in err
    read_state_dict(checkpoint)  # rebuilt
    assert torch.load(outputs, weights_only=True)["format"] >= 1
    # The rebuilt entries are the ones built first: the trial ran again to the same numbers.
    second = json.loads(out.strip().splitlines()[-1])
    assert first["teacher_test_acc"] == second["teacher_test_acc"]
    assert first["test_acc"] == second["test_acc"]


def test_a_truncated_meta_json_is_reported_and_rebuilt(private_home, capsys):
    from bench.teachers import obtain_teacher

    spec = TeacherSpec(
        arch="test_vgg", recipe=Recipe(epochs=1, batch_size=64, augment=False, image_size=8)
    )
    first = obtain_teacher("digits", spec)
    [meta] = (private_home / "teachers").glob("*/meta.json")
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    capsys.readouterr()

    again = obtain_teacher("digits", spec)
    err = capsys.readouterr().err
    assert f"teacher cache: {meta} is damaged" in err
    assert again.test_acc == first.test_acc
    assert json.loads(meta.read_text())["test_acc"] == {"1": first.test_acc}


def test_a_damaged_saved_trial_state_is_reported_and_the_trial_starts_over(tmp_path, capsys):
    from bench.trial.resume import load_state

    path = tmp_path / "state.pt"
    _write_truncated(path)
    assert load_state(path) is None
    err = capsys.readouterr().err
    assert f"saved trial state {path} is damaged" in err and "first epoch" in err


def test_cache_files_are_written_whole_or_not_at_all(tmp_path):
    from bench import atomic

    path = tmp_path / "meta.json"
    atomic.write_json(path, {"a": 1})

    class Full(Exception):
        pass

    with pytest.raises(Full), atomic.replacing(path) as handle:
        handle.write(b'{"a": ')
        raise Full  # as a full disk or a kill would, mid-write
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["meta.json"]  # no temporary left


# --------------------------------------------------------------------------------------------
# Data files and tables
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "named", "problem"),
    [
        (np.arange(36) % 10, "train-labels-idx1-ubyte", "holds 36 labels, expected 60000 labels"),
        (np.arange(60_000) % 10 + 3, "train-labels-idx1-ubyte", "outside 0..9"),
    ],
    ids=["counts", "labels"],
)
def test_inconsistent_idx_files_are_named_with_the_problem(
    labels, named, problem, tmp_path, store, capsys, make_idx
):
    raw = make_idx(tmp_path / "data" / "MNIST" / "raw", labels={named: labels.astype(np.uint8)})
    code, _, err = train(
        capsys, store, "--dataset", "mnist", "--data-root", str(tmp_path / "data"), "--method", "ce"
    )
    assert code == 2, err
    assert str(raw / named) in err and problem in err and "replace it with the official" in err
    assert recorded(store) == []


def test_a_results_csv_that_is_not_utf8_is_named(tmp_path, capsys):
    path = tmp_path / "results.csv"
    path.write_bytes("run_key,method\nabc,café\n".encode("latin-1"))
    code = main(["leaderboard", "--from-csv", str(path), str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{path}: not UTF-8 text (byte 0xe9" in err and "iconv" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_suite_that_is_not_utf8_is_named(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_bytes("name: caf\xe9\n".encode("latin-1"))
    code = main(["sweep", str(suite), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{suite}: not UTF-8 text" in err and "Traceback" not in err


def test_an_image_that_cannot_be_decoded_is_named(tmp_path):
    from PIL import Image

    from bench.data import DataError, load_dataset

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for k in range(6):
                Image.new("RGB", (12, 12), (40 * k, 0, 0)).save(folder / f"{k}.png")
    broken = tmp_path / "train" / "dog" / "3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    bundle = load_dataset("imagefolder", root=tmp_path, image_size=8)
    with pytest.raises(DataError) as raised:
        for split in (bundle.train, bundle.val):
            for _ in split.batches(
                4, shuffle=False, generator=None, augment=False, device=torch.device("cpu")
            ):
                pass
    assert str(broken) in str(raised.value) and "delete or replace" in str(raised.value)


# --------------------------------------------------------------------------------------------
# A teacher that does not train
# --------------------------------------------------------------------------------------------


def test_a_diverging_teacher_is_a_clear_failure_with_its_reason(store, capsys):
    code, _, err = train(capsys, store, "--lr", "1e6")
    assert code == 1, err
    assert "teacher test_vgg did not train: non-finite loss" in err
    assert "smaller learning rate" in err
    assert recorded(store) == []


def test_a_sweep_reports_its_diverging_teachers_whole_reason(tmp_path, store, capsys, monkeypatch):
    import argparse

    from bench.sweep.cli import add_sweep_arguments, sweep_main

    monkeypatch.setenv("RAY_worker_niceness", "0")  # see test_cluster.py
    folder = tmp_path / "diverging"
    folder.mkdir()
    (folder / "suite.yaml").write_text(
        "name: diverging\n"
        "datasets: [digits]\n"
        "pairs: [{teacher: test_vgg, student: test_vgg}]\n"
        "methods: [kd]\n"
        "seeds: [0]\n"
        "recipe:\n"
        "  student: {epochs: 1, batch_size: 64, augment: false, image_size: 8}\n"
        "  teacher: {epochs: 1, batch_size: 64, augment: false, image_size: 8, lr: 1.0e+6}\n"
        "resources: {cpu: 1}\n"
    )
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    code = sweep_main(parser.parse_args([str(folder), "--tracking-uri", store]))
    err = capsys.readouterr().err
    assert code == 1, err
    failed = [line for line in err.splitlines() if line.strip().startswith("FAILED teacher")]
    assert len(failed) == 1, err
    assert "teacher test_vgg did not train: non-finite loss at epoch 0" in failed[0]
    assert failed[0].rstrip().endswith("try a smaller learning rate or loss weight."), failed[0]
    assert not [r for r in recorded(store) if "kdbench.run_key" in r.data.tags]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"available_node_types: [head", "not a Ray cluster launcher file"),
        ("cluster_name: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
        (b"available_node_types: {head: {resources: {CPU: lots}}}", "not a Ray cluster"),
    ],
    ids=["yaml", "encoding", "resources"],
)
def test_a_bad_cluster_launcher_file_is_named(content, problem, tmp_path):
    from bench.sweep.preflight import PreflightError, node_types_of

    path = tmp_path / "cluster.yaml"
    path.write_bytes(content)
    with pytest.raises(PreflightError) as raised:
        node_types_of(path)
    assert f"{path}: {problem}" in str(raised.value)
