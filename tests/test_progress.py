"""Long work shows its progress: a line per epoch of every teacher and trial when the output
is not a terminal, a bar per epoch with its time left on a terminal, nothing with --quiet."""

from __future__ import annotations

import argparse
import io
import re

import pytest

from bench.cli import main
from bench.config import Recipe, TeacherSpec, TrialConfig
from bench.conformance import run_conformance
from bench.data import load_dataset
from bench.progress import Reporter, epoch_line
from bench.suite.expand import plan_trials
from bench.suite.load import load_suite
from bench.sweep.cli import add_sweep_arguments, sweep_main
from bench.sweep.progress import ProgressBoard
from bench.sweep.worker import STATUS, QueueLines
from bench.trial.compose import run_trial
from bench.trial.device import machine_compute

PAIR = ["--dataset", "digits", "--student", "test_resnet_narrow", "--teacher", "test_resnet_wide"]
STUDENT = "kd:digits:test_resnet_narrow<-test_resnet_wide:seed0"


def teacher(seed: int) -> str:
    return f"teacher test_resnet_wide on digits (seed {seed})"


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def train(*args: str) -> int:
    # A teacher seed of its own: the teacher trains here, not in the cache of another test.
    # One thread: tiny models gain nothing from more, and contending threads are slow.
    return main(["train", *PAIR, "--no-track", "--teacher-epochs", "1", "--threads", "1", *args])


def test_train_prints_a_line_per_epoch_of_the_teacher_and_the_trial_off_a_terminal(capsys):
    assert train("--epochs", "2", "--teacher-seed", "41") == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar, no carriage return
    lines = [line for line in err.splitlines() if ": epoch " in line]
    assert len(lines) == 3, err
    assert re.fullmatch(
        re.escape(teacher(41)) + r": epoch 1/1  loss \d+\.\d{4}  val_acc 0\.\d{4}  \d+\.\ds",
        lines[0],
    )
    assert re.fullmatch(
        re.escape(STUDENT)
        + r": epoch 1/2  loss \d+\.\d{4}  val_acc 0\.\d{4}  \d+\.\ds  ETA \d+(s|m\d\ds)",
        lines[1],
    )
    assert lines[2].startswith(f"{STUDENT}: epoch 2/2  loss ") and "ETA" not in lines[2]


def test_train_prints_no_progress_with_quiet(capsys):
    assert train("--epochs", "1", "--teacher-seed", "41", "--quiet") == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert "status=FINISHED" in out.out  # the result is still printed


def test_a_terminal_gets_a_bar_per_epoch_with_its_time_left_and_the_epoch_lines():
    stream = Terminal()
    recipe = Recipe(epochs=1, batch_size=64)
    config = TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method="kd",
        recipe=recipe,
        teacher=TeacherSpec(arch="test_resnet_wide", recipe=recipe, seed=43),
        compute=machine_compute(threads=1),  # tiny models: more threads only contend
    )
    result = run_trial(config, progress=Reporter(stream, refresh=0))
    assert result.status == "FINISHED", result.error
    text = stream.getvalue()
    steps = len(load_dataset("digits", val_fraction=config.val_fraction).train) // 64
    for label in (teacher(43), STUDENT):
        drawn = re.findall(
            "\r" + re.escape(label) + r": epoch 1/1: +\d+%\|[^|\r]*\| (\d+)/(\d+) \[00:\d\d<(\S+),",
            text,
        )
        assert drawn, text
        assert {int(total) for _, total, _ in drawn} == {steps}
        done = [int(n) for n, _, _ in drawn]
        assert done[0] == 0 and done[-1] == steps  # drawn from the first step to the last
        assert drawn[0][2] == "?" and re.fullmatch(r"\d\d:\d\d", drawn[-1][2])  # the ETA
        # The bar is taken down and the epoch's line stays.
        assert re.search("\r *\r" + re.escape(label) + r": epoch 1/1  loss \d", text), text


def test_check_method_shows_each_pairs_training():
    stream = io.StringIO()
    report = run_conformance(
        "kd", pairs=["test_resnet_narrow<-test_resnet_wide"], reporter=Reporter(stream)
    )
    assert report.passed, report.format(verbose=True)
    pair = "kd-test_resnet_narrow<-test_resnet_wide"
    lines = [line for line in stream.getvalue().splitlines() if line.startswith(pair)]
    assert [line.split("  ")[0] for line in lines] == [f"{pair}: epoch 1/2", f"{pair}: epoch 2/2"]
    assert not any("val_acc" in line for line in lines)  # the student's run measures none


def test_the_sweep_view_prints_a_line_per_trial_epoch_unless_quiet(tmp_path):
    folder = tmp_path / "view"
    folder.mkdir()
    (folder / "suite.yaml").write_text(
        "name: view\ndatasets: [digits]\n"
        "pairs:\n  - {teacher: test_resnet_wide, student: test_resnet_narrow}\n"
        "methods: [ce]\nseeds: 1\nrecipe:\n  student: {epochs: 3}\n  teacher: {epochs: 1}\n"
    )
    trials = {t.key: t for t in plan_trials(load_suite(folder))}
    key = next(iter(trials))
    shown, quiet = io.StringIO(), io.StringIO()
    for stream, epochs in ((shown, True), (quiet, False)):
        board = ProgressBoard(trials, "test_acc", stream, interval=1e9, epochs=epochs)
        board.trial_started(key)
        for epoch, seconds in ((1, 3.0), (2, 5.0), (3, 4.0)):
            board.trial_result(
                key, {"epoch": epoch, "loss": 0.5, "val_acc": 0.9, "epoch_seconds": seconds}
            )
        board.trial_result(key, {STATUS: "FINISHED", "test_acc": 0.9, "trial_seconds": 12.0})
    label = trials[key].describe()
    lines = [line for line in shown.getvalue().splitlines() if ": epoch" in line]
    assert lines == [
        f"  {label}: epoch 1/3  loss 0.5000  val_acc 0.9000  3.0s  ETA 6s",
        f"  {label}: epoch 2/3  loss 0.5000  val_acc 0.9000  5.0s  ETA 4s",
        f"  {label}: epoch 3/3  loss 0.5000  val_acc 0.9000  4.0s",
    ]
    assert ": epoch" not in quiet.getvalue() and "done" in quiet.getvalue()


def test_teacher_lines_reach_the_queue_whole_and_a_lost_queue_does_not_stop_training():
    class Queue:
        def __init__(self, fail: bool = False) -> None:
            self.items: list[str] = []
            self.fail = fail

        def put_nowait(self, item: str) -> None:
            if self.fail:
                raise ConnectionError("the queue's actor died")
            self.items.append(item)

    queue = Queue()
    progress = Reporter(QueueLines(queue), bars=False).start("teacher t")
    progress.start_epoch(0, 2, 10)
    progress.step()
    progress.end_epoch(0, 2, loss=1.0, val_acc=0.5, seconds=2.0)
    assert queue.items == [epoch_line("teacher t", 1, 2, loss=1.0, val_acc=0.5, seconds=2.0, eta=2)]
    broken = Queue(fail=True)
    lost = Reporter(QueueLines(broken), bars=False).start("teacher t")
    lost.end_epoch(0, 1, loss=1.0, val_acc=0.5, seconds=2.0)  # no error
    assert broken.items == []


@pytest.mark.slow  # Ray starts, then a teacher and a trial train: about a minute
def test_a_sweep_prints_the_epochs_of_its_teachers_and_trials(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_worker_niceness", "0")  # see test_cluster.py
    folder = tmp_path / "epochs"
    folder.mkdir()
    (folder / "suite.yaml").write_text(
        "name: epochs\ndatasets: [digits]\n"
        "pairs:\n  - {teacher: test_resnet_wide, student: test_resnet_narrow}\n"
        "methods: [kd]\nseeds: [0]\nteacher_seed: 44\n"
        "recipe:\n  student: {epochs: 2, augment: false}\n  teacher: {epochs: 2}\n"
        "resources: {cpu: 1}\n"
    )
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sweep_main(parser.parse_args([str(folder), "--tracking-uri", uri])) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    taught = [i for i, line in enumerate(lines) if line.startswith(f"  {teacher(44)}: epoch ")]
    assert [lines[i].split("  ")[1] for i in taught] == [
        f"{teacher(44)}: epoch 1/2",
        f"{teacher(44)}: epoch 2/2",
    ]
    trained = next(
        i for i, line in enumerate(lines) if line.startswith(f"  {teacher(44)}: test_acc")
    )
    assert taught[-1] < trained  # the epochs come before the teacher's outcome
    trial = plan_trials(load_suite(folder))[0].describe()
    assert [line.split("  ")[1] for line in lines if line.startswith(f"  {trial}: epoch")] == [
        f"{trial}: epoch 1/2",
        f"{trial}: epoch 2/2",
    ]
