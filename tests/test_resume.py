"""Trials resume mid-way: a state saved between epochs continues to the result of a trial that
never stopped, for `kdbench train` and for the pieces it is built from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import Recipe, TeacherSpec, TrialConfig
from bench.tracking import RUN_KEY_TAG, Tracker
from bench.trial.compose import execute, prepare_trial
from bench.trial.loop import EpochRecord
from bench.trial.resume import CheckpointPolicy, TrainState, load_state, save_state

TEACHER = TeacherSpec(arch="test_resnet_wide", recipe=Recipe(epochs=2, batch_size=64), seed=0)


def config(method: str, epochs: int = 3, **params: object) -> TrialConfig:
    return TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method=method,
        params=tuple(params.items()),
        seed=5,
        recipe=Recipe(epochs=epochs, batch_size=64),
        teacher=TEACHER,
    )


@dataclass
class MemoryCheckpointer:
    """Keeps the states a trial saves (a stand-in for a file or a Tune checkpoint)."""

    policy: CheckpointPolicy = field(default_factory=lambda: CheckpointPolicy(every_epochs=1))
    states: list[TrainState] = field(default_factory=list)

    def save(self, state: TrainState) -> None:
        self.states.append(state)


class Interrupted(Exception):
    pass


def interrupt_after(epoch: int):
    def on_epoch(record: EpochRecord) -> None:
        if record.epoch == epoch:
            raise Interrupted(f"stopped after epoch {epoch}")

    return on_epoch


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


# dml: peers built by before_training and internal optimizers in extra state; fitnet: a
# two-stage method whose hint stage runs in before_training; kd: the plain step.
@pytest.mark.parametrize("method", ["kd", "fitnet", "dml"])
def test_a_trial_resumed_from_its_checkpoint_ends_as_if_never_stopped(method):
    trial = config(method)
    whole = execute(prepare_trial(trial))
    assert whole.status == "FINISHED", whole.error

    saver = MemoryCheckpointer()
    broken = execute(prepare_trial(trial), on_epoch=interrupt_after(1), checkpoint=saver)
    assert broken.status == "FAILED" and "stopped after epoch 1" in broken.error
    assert [s.epochs_done for s in saver.states] == [1]  # the checkpoint before the failure

    resumed_epochs: list[int] = []
    resumed = execute(
        prepare_trial(trial),
        resume=saver.states[-1],
        on_epoch=lambda record: resumed_epochs.append(record.epoch),
    )
    assert resumed.status == "FINISHED", resumed.error
    assert resumed_epochs == [1, 2]  # continued after the saved epoch, not from 0
    assert resumed.test_acc == whole.test_acc
    assert resumed.final_loss == whole.final_loss
    assert without_timing(resumed.history) == without_timing(whole.history)


def test_the_policy_saves_every_n_epochs_but_never_after_the_last():
    saver = MemoryCheckpointer(policy=CheckpointPolicy(every_epochs=2, every_minutes=0))
    result = execute(prepare_trial(config("ce", epochs=5)), checkpoint=saver)
    assert result.status == "FINISHED", result.error
    assert [s.epochs_done for s in saver.states] == [2, 4]
    assert [len(s.history) for s in saver.states] == [2, 4]
    timed = CheckpointPolicy(every_epochs=0, every_minutes=1e-9)
    assert timed.due(1, 5) and timed.due(3, 5) and not timed.due(5, 5)
    never = CheckpointPolicy(every_epochs=0, every_minutes=0)
    assert not any(never.due(e, 5) for e in range(1, 6))


def test_a_state_survives_the_file_round_trip_and_a_broken_file_is_ignored(tmp_path):
    saver = MemoryCheckpointer()
    execute(prepare_trial(config("kd", epochs=2)), checkpoint=saver)
    path = tmp_path / "state.pt"
    save_state(saver.states[0], path)
    loaded = load_state(path)
    assert loaded is not None and loaded.epochs_done == 1
    assert loaded.student.keys() == saver.states[0].student.keys()
    assert load_state(tmp_path / "missing.pt") is None
    path.write_bytes(b"not a checkpoint")
    assert load_state(path) is None


KILLED_TRAIN = """
import os, sys
from bench.tracking import RunHandle

log_epoch = RunHandle.log_epoch

def log_then_die(self, record):
    log_epoch(self, record)
    if record.epoch == {die_after}:
        os._exit(9)  # like SIGKILL: no cleanup, the MLflow run stays RUNNING

RunHandle.log_epoch = log_then_die
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train_args(uri: str) -> list[str]:
    return [
        "train",
        "--dataset=digits",
        "--student=test_resnet_narrow",
        "--teacher=test_resnet_wide",
        "--teacher-epochs=2",
        "--method=kd",
        "--seed=2",
        "--epochs=4",
        "--checkpoint-epochs=2",
        f"--tracking-uri={uri}",
        "--experiment=resume",
        "--quiet",
        "--json",
    ]


def test_kdbench_train_killed_mid_run_continues_in_the_same_run(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "KDBENCH_HOME": str(tmp_path / "home")}
    # Killed right after logging epoch 3 of 4 (index 2): the last checkpoint is after 2
    # epochs, so epoch index 2 runs twice but must be recorded once.
    script = textwrap.dedent(KILLED_TRAIN.format(die_after=2))
    killed = subprocess.run(
        [sys.executable, "-c", script, *train_args(uri)], env=env, capture_output=True, text=True
    )
    assert killed.returncode == 9, killed.stderr[-2000:]
    tracker = Tracker(uri, experiment="resume")
    (run,) = tracker.search()
    assert run.info.status == "RUNNING"
    key = run.data.tags[RUN_KEY_TAG]
    home_state = Path(env["KDBENCH_HOME"]) / "checkpoints" / key / "state.pt"
    assert home_state.is_file()

    again = subprocess.run(
        [sys.executable, "-c", script.replace("os._exit(9)", "pass"), *train_args(uri)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    runs = tracker.search()
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # the same run, continued
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in tracker.client.get_metric_history(run.info.run_id, "epoch_seconds")]
    assert sorted(steps) == [0, 1, 2, 3]  # each epoch once
    assert not home_state.parent.exists()  # nothing left to resume

    assert main([*train_args(uri), "--no-track"]) == 0
    uninterrupted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert uninterrupted["run_key"] == key
    assert runs[0].data.metrics["test_acc"] == uninterrupted["test_acc"]
