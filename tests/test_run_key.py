"""One run key, one result: every ingredient of a trial's result changes its key, ``kdbench
train`` records a key once, and what defined a run is recorded with it."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench.api import METHODS, Method, register_method
from bench.cli import main
from bench.config import Compute, ConfigError, Recipe, TeacherSpec, TrialConfig
from bench.filehash import cache_file, file_sha256
from bench.leaderboard.runs import read_results_csv, runs_from_mlflow, write_results_csv
from bench.models import create_model
from bench.plugins import keyed_trial, method_code
from bench.suite.expand import plan_trials
from bench.suite.load import parse_suite
from bench.tracking import REPLICATE_OF_TAG, REPLICATE_TAG, RUN_KEY_TAG
from bench.trial.compose import identify_trial
from bench.trial.device import fast_compute

STUDENT, TEACHER = "test_resnet_narrow", "test_resnet_wide"
#: A trial on digits whose recipe the tests vary; its teacher is a checkpoint file.
RECIPE = Recipe(epochs=1, batch_size=128, augment=False)
CPU1 = Compute(device="cpu", threads=1)


def key_of(config: TrialConfig) -> str:
    return keyed_trial(config)[1]


def ce_config(**changes) -> TrialConfig:
    base = TrialConfig(dataset="digits", student=STUDENT, method="ce", recipe=RECIPE, compute=CPU1)
    return base.with_changes(**changes)


def differs(before: str, after: str, what: str) -> None:
    assert before != after, f"changing {what} kept the run key {before}; expected a new key"


def same(before: str, after: str, what: str) -> None:
    assert before == after, f"{what} changed the run key from {before} to {after}; expected none"


def aged(path: Path, seconds: float = 3600.0) -> None:
    """Move a file's mtime into the past: a file just written is never taken from the cache."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - int(seconds * 1e9)))


def teacher_file(path: Path, seed: int) -> Path:
    """A (untrained) teacher state dict for digits: same architecture, so same size, for any
    seed; the bytes differ with the seed."""
    torch.manual_seed(seed)
    torch.save(create_model(TEACHER, 10, image_size=8).state_dict(), path)
    return path


# --------------------------------------------------------------------------------------------
# Each ingredient of the key
# --------------------------------------------------------------------------------------------


def test_the_thread_count_is_part_of_the_key():
    differs(key_of(ce_config()), key_of(ce_config(compute=Compute("cpu", threads=2))), "threads")


def test_the_device_and_its_precision_are_part_of_the_key():
    cuda = Compute("cuda", threads=1)
    assert (CPU1.precision, cuda.precision) == ("fp32", "bf16")
    differs(
        key_of(ce_config()), key_of(ce_config(compute=cuda)), "the device (cpu fp32 → cuda bf16)"
    )
    bf16 = Compute("cpu", precision="bf16", threads=1)
    differs(key_of(ce_config()), key_of(ce_config(compute=bf16)), "the precision (fp32 → bf16)")
    with pytest.raises(ConfigError, match=r"compute\.precision 'fp16' is not one of"):
        Compute("cpu", precision="fp16")  # type: ignore[arg-type]


def test_the_memory_format_is_part_of_the_key():
    channels_last = Compute("cpu", threads=1, memory_format="channels_last")
    assert CPU1.memory_format == "contiguous"
    differs(key_of(ce_config()), key_of(ce_config(compute=channels_last)), "the memory format")
    with pytest.raises(ConfigError, match=r"compute\.memory_format 'nhwc' is not one of"):
        Compute("cpu", memory_format="nhwc")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_a_trial_keyed_for_cuda_does_not_run_on_the_cpu_instead():
    from bench.trial.compose import prepare_trial

    with pytest.raises(ConfigError, match=r"computes on cuda .* torch sees no CUDA device here"):
        prepare_trial(ce_config(compute=Compute("cuda", threads=1)))


def test_overwriting_a_checkpoint_file_in_place_changes_the_key(tmp_path):
    teacher = teacher_file(tmp_path / "teacher.pt", seed=0)
    student = tmp_path / "student.pt"
    student.write_bytes(b"a" * 64)
    aged(teacher), aged(student)
    spec = TeacherSpec(arch=TEACHER, recipe=RECIPE, checkpoint=str(teacher))
    kd = ce_config(method="kd", teacher=spec)
    transfer = ce_config(student_checkpoint=str(student))
    before = {"teacher": key_of(kd), "student": key_of(transfer)}
    size = teacher.stat().st_size

    teacher_file(teacher, seed=1)  # another teacher, same architecture: same size
    student.write_bytes(b"b" * 64)
    assert teacher.stat().st_size == size
    differs(before["teacher"], key_of(kd), "the teacher checkpoint's bytes")
    differs(before["student"], key_of(transfer), "the student checkpoint's bytes")
    # The key holds the content, not the path: a copy elsewhere is the same trial.
    copy = tmp_path / "copy.pt"
    copy.write_bytes(teacher.read_bytes())
    moved = kd.with_changes(teacher=dataclasses.replace(spec, checkpoint=str(copy)))
    same(key_of(kd), key_of(moved), "moving the teacher checkpoint")


@pytest.fixture
def method_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A throw-away package: a method file importing a private helper module."""
    tag = uuid.uuid4().hex[:8]
    package, name = f"kdbench_key_test_{tag}", f"key_test_{tag}"
    root = tmp_path / package
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "_helpers.py").write_text("SCALE = 1.0\n")
    (root / "m.py").write_text(
        f"from bench.api import Method, register_method\n"
        f"from {package}._helpers import SCALE\n\n\n"
        f'@register_method("{name}")\n'
        "class Example(Method):\n"
        '    knowledge = "none"\n'
        "    uses_teacher = False\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        importlib.import_module(f"{package}.m")
        yield {"name": name, "root": root, "package": package}
    finally:
        METHODS.unregister(name)
        for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[module]


def test_editing_the_method_file_or_its_helper_changes_the_key(method_package):
    config = ce_config(method=method_package["name"])
    root, package = method_package["root"], method_package["package"]
    assert set(method_code(METHODS.get(method_package["name"]))) == {
        f"{package}.m",
        f"{package}._helpers",
    }
    before = key_of(config)
    method_file = root / "m.py"
    method_file.write_text(method_file.read_text() + "# a comment is code too\n")
    edited = key_of(config)
    differs(before, edited, "the method's own file (version unchanged)")
    (root / "_helpers.py").write_text("SCALE = 2.0\n")
    differs(edited, key_of(config), "the helper module the method imports")


@register_method("key_test_defaults")
class WithDefaults(Method):
    """A method whose default the test changes."""

    knowledge = "none"
    uses_teacher = False

    class Params(Method.Params):
        temperature: float = 4.0
        steps: int = 2


def test_a_default_and_the_same_value_given_are_one_key_and_a_changed_default_another(
    monkeypatch,
):
    config = ce_config(method="key_test_defaults")
    resolved, key = keyed_trial(config)
    assert resolved.params == (("steps", 2), ("temperature", 4.0))
    # Given as text (the command line) or as an int (YAML), 4 is the default 4.0.
    for given in ((("temperature", "4"),), (("temperature", 4), ("steps", "2"))):
        same(key, key_of(config.with_changes(params=given)), f"giving the default {given}")
    differs(key, key_of(config.with_changes(params=(("temperature", 2.0),))), "temperature")

    class NewDefault(Method.Params):
        temperature: float = 8.0
        steps: int = 2

    monkeypatch.setattr(WithDefaults, "Params", NewDefault)  # same code file, same version
    differs(key, key_of(config), "the default of temperature (4.0 → 8.0)")


def one_trial_suite(cpu: int) -> str:
    """A suite of one tf_kd trial on digits, each trial given ``cpu`` threads."""
    return f"""\
name: one
datasets: [digits]
pairs: [{{teacher: {TEACHER}, student: {STUDENT}}}]
methods: [tf_kd]
seeds: [0]
recipe:
  student: {{epochs: 1, batch_size: 128, augment: false}}
resources: {{cpu: {cpu}}}
"""


def test_a_sweep_trial_and_train_with_its_threads_have_one_key():
    suite = parse_suite(one_trial_suite(cpu=2))
    (trial,) = plan_trials(suite)
    assert trial.config.compute == fast_compute("cpu", threads=2)
    given = TrialConfig(
        dataset="digits",
        student=STUDENT,
        method="tf_kd",
        params=(("temperature", "20"),),  # the default, given
        recipe=RECIPE,
        teacher=TeacherSpec(arch="resnet20"),  # train's default teacher: unused by tf_kd
        compute=fast_compute("cpu", threads=2),
    )
    same(trial.key, identify_trial(given)[1], "train instead of the sweep")
    differs(trial.key, identify_trial(given.with_changes(compute=CPU1))[1], "threads 2 → 1")


def test_overwriting_a_suites_teacher_file_changes_the_keys_its_dry_run_shows(tmp_path, capsys):
    from bench.sweep.cli import add_sweep_arguments, sweep_main

    teacher = teacher_file(tmp_path / "teacher.pt", seed=0)
    (tmp_path / "suite.yaml").write_text(
        f"""\
name: file-teacher
datasets: [digits]
pairs: [{{teacher: {TEACHER}, student: {STUDENT}, teacher_checkpoint: {teacher}}}]
methods: [kd]
seeds: [0]
recipe:
  student: {{epochs: 1, batch_size: 128, augment: false}}
"""
    )
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    args = [str(tmp_path), "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]

    def shown_keys() -> set[str]:
        assert sweep_main(parser.parse_args(args)) == 0
        out = capsys.readouterr().out
        listed = out.split("run keys to run:\n", 1)[1].splitlines()
        return {line.split()[0] for line in listed if line.startswith("  ")}

    before = shown_keys()
    teacher_file(teacher, seed=1)
    after = shown_keys()
    assert len(before) == len(after) == 1
    differs(before.pop(), after.pop(), "the suite's teacher_checkpoint file (overwritten)")


# --------------------------------------------------------------------------------------------
# The checkpoint hash cache
# --------------------------------------------------------------------------------------------


def test_the_file_hash_is_reused_while_path_size_and_mtime_hold_and_redone_when_mtime_moves(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("KDBENCH_HOME", str(tmp_path / "home"))
    path = tmp_path / "teacher.pt"
    path.write_bytes(b"one " * 100)
    aged(path)
    first = file_sha256(path)
    assert first == hashlib.sha256(b"one " * 100).hexdigest()
    cached = json.loads(cache_file().read_text())[str(path.resolve())]
    assert cached["sha256"] == first and cached["size"] == 400

    stat = path.stat()
    path.write_bytes(b"two " * 100)  # same size; then the old mtime put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) == first, "path, size and mtime unchanged: the cached hash"
    aged(path, seconds=10)
    assert file_sha256(path) == hashlib.sha256(b"two " * 100).hexdigest(), "mtime moved"
    # A file written just now is hashed every time (coarse clocks may not move its mtime).
    path.write_bytes(b"six " * 100)
    assert file_sha256(path) == hashlib.sha256(b"six " * 100).hexdigest()


# --------------------------------------------------------------------------------------------
# kdbench train: one run per key, records, bad counts
# --------------------------------------------------------------------------------------------


def train(tmp_path: Path, *extra: str) -> list[str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return [
        "train", "--dataset", "digits", "--student", STUDENT, "--epochs", "1",
        "--batch-size", "128", "--no-augment", "--threads", "1", "--quiet",
        "--tracking-uri", uri, "--experiment", "keys", *extra,
    ]  # fmt: skip


def finished(tmp_path: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("keys")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'")
    return [r for r in runs if RUN_KEY_TAG in r.data.tags]


def test_train_records_a_key_once_and_a_rerun_is_a_replicate_left_off_leaderboards(
    tmp_path, capsys
):
    args = train(tmp_path, "--method", "tf_kd", "--json")
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["recorded"] is True and again["run_key"] == first["run_key"]
    assert again["test_acc"] == first["test_acc"]
    assert again["mlflow_run_id"] == first["mlflow_run_id"]
    assert len(finished(tmp_path)) == 1, "a second train of a finished key recorded a run"
    assert main(train(tmp_path, "--method", "tf_kd")) == 0
    assert "already finished in MLflow run" in capsys.readouterr().out

    assert main([*args, "--rerun"]) == 0
    replicate = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = {r.info.run_id: r for r in finished(tmp_path)}
    assert len(runs) == 2 and replicate["run_key"] == first["run_key"]
    tags = runs[replicate["mlflow_run_id"]].data.tags
    assert tags[REPLICATE_TAG] == "true" and tags[REPLICATE_OF_TAG] == first["mlflow_run_id"]
    assert replicate["test_acc"] == first["test_acc"]  # same key, same result (CPU)
    table, _ = runs_from_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", "keys")
    assert table["mlflow_run_id"].tolist() == [first["mlflow_run_id"]]


def test_a_run_records_its_resolved_params_compute_and_teacher_file(tmp_path, capsys):
    teacher = teacher_file(tmp_path / "teacher.pt", seed=0)
    args = train(
        tmp_path, "--method", "kd", "--teacher", TEACHER, "--teacher-checkpoint", str(teacher),
        "--json",
    )  # fmt: skip
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (run,) = finished(tmp_path)
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    tags, params = run.data.tags, run.data.params
    assert tags["kdbench.compute"] == fast_compute("cpu", 1).describe()
    assert tags["kdbench.teacher_key"] == "file-" + digest[:16]
    assert tags["kdbench.teacher_file"] == str(teacher)
    assert tags["kdbench.teacher_sha256"] == digest
    assert tags["kdbench.torch"] == torch.__version__ and tags["kdbench.cpu"]
    assert (params["params.alpha"], params["params.temperature"]) == ("0.9", "4.0")
    assert params["compute.threads"] == "1"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    record = json.loads(
        Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text()
    )
    assert record["config"]["params"] == [["alpha", 0.9], ["temperature", 4.0]]
    assert record["key_fields"]["teacher"]["checkpoint"] == "sha256:" + digest
    assert record["facts"]["teacher_sha256"] == digest
    table, _ = runs_from_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", "keys")
    write_results_csv(table, tmp_path / "results.csv")
    back = read_results_csv(tmp_path / "results.csv")
    row = back.iloc[0]
    assert json.loads(row["params"]) == {"alpha": 0.9, "temperature": 4.0}
    assert (row["compute"], row["teacher_sha256"]) == (fast_compute("cpu", 1).describe(), digest)
    assert row["teacher_key"] == "file-" + digest[:16]

    # Overwrite the teacher file with another teacher: the next train is another trial.
    teacher_file(teacher, seed=1)
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["recorded"] is False
    differs(first["run_key"], second["run_key"], "the teacher file (overwritten)")


@pytest.mark.parametrize(
    ("option", "value", "minimum"),
    [
        ("--teacher-epochs", "0", 1),
        ("--epochs", "0", 1),
        ("--epochs", "-3", 1),
        ("--batch-size", "0", 1),
        ("--threads", "0", 1),
        ("--teacher-stop-epoch", "0", 1),
        ("--seed", "-1", 0),
        ("--checkpoint-epochs", "-1", 0),
    ],
)
def test_zero_or_negative_counts_are_errors_naming_option_value_and_range(
    option, value, minimum, capsys
):
    with pytest.raises(SystemExit) as caught:
        main(["train", option, value, "--no-track"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: '{value}' is not valid: give a whole number ≥ {minimum}" in err


@pytest.mark.slow
def test_train_with_a_sweep_trials_threads_gives_its_key_and_its_accuracy(
    tmp_path, capsys, monkeypatch
):
    from bench.sweep.cli import add_sweep_arguments, sweep_main

    monkeypatch.setenv("RAY_worker_niceness", "0")  # Ray's default 15 starves a shared machine
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "suite.yaml").write_text(one_trial_suite(cpu=1))
    swept = f"sqlite:///{tmp_path / 'sweep.db'}"
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    assert sweep_main(parser.parse_args([str(folder), "--tracking-uri", swept])) == 0
    capsys.readouterr()
    client = MlflowClient(swept)
    (run,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("one").experiment_id])
        if RUN_KEY_TAG in r.data.tags
    ]
    assert main([*train(tmp_path, "--method", "tf_kd", "--json")]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["run_key"] == run.data.tags[RUN_KEY_TAG]
    assert trained["test_acc"] == run.data.metrics["test_acc"], (
        f"train --threads 1 got test accuracy {trained['test_acc']}, the sweep trial with cpu 1 "
        f"got {run.data.metrics['test_acc']} under the same key"
    )


def test_a_run_names_the_cached_teacher_it_used(tmp_path):
    from bench.teachers import cache_dir, teacher_key

    args = train(tmp_path, "--method", "kd", "--teacher", TEACHER, "--teacher-epochs", "1")
    assert main(args) == 0
    (run,) = finished(tmp_path)
    spec = TeacherSpec(arch=TEACHER, recipe=Recipe(epochs=1, batch_size=128, augment=False))
    key = teacher_key("digits", spec)
    tags = run.data.tags
    assert tags["kdbench.teacher_key"] == key, (tags["kdbench.teacher_key"], key)
    assert Path(tags["kdbench.teacher_file"]).parent == cache_dir() / key
    assert Path(tags["kdbench.teacher_file"]).is_file()
