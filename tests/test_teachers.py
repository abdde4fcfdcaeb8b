"""The teacher cache: one training keeps every early-stopped checkpoint asked for, a later
request for a checkpoint that was not kept retrains (deterministically) only then, and a sweep
trains each teacher run once however many of its checkpoints the trials use."""

from __future__ import annotations

import json

import pytest
import torch

from bench.config import Recipe, TeacherSpec
from bench.suite.expand import plan_trials, teacher_jobs, teacher_trainings
from bench.suite.load import parse_suite
from bench.teachers import cache_dir, obtain_teacher, teacher_key

# A tiny teacher on the digits at 8x8: each epoch is a fraction of a second.
RECIPE = Recipe(epochs=4, batch_size=64, augment=False, image_size=8)


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KDBENCH_HOME", str(tmp_path / "home"))


def spec(stop_epoch: int | None = None, seed: int = 3) -> TeacherSpec:
    return TeacherSpec(arch="test_vgg", recipe=RECIPE, seed=seed, stop_epoch=stop_epoch)


def cached(seed: int = 3) -> tuple[set[str], dict]:
    folder = cache_dir() / teacher_key("digits", spec(seed=seed))
    meta = json.loads((folder / "meta.json").read_text())
    return {p.name for p in folder.glob("epoch_*.pt")}, meta


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_one_training_keeps_every_requested_checkpoint_and_later_requests_only_load():
    first = obtain_teacher("digits", spec(stop_epoch=1), keep=(1, 2, 4))
    files, meta = cached()
    assert files == {"epoch_1.pt", "epoch_2.pt", "epoch_4.pt"}
    assert set(meta["test_acc"]) == {"1", "2", "4"}
    assert len(meta["history"]) == RECIPE.epochs  # one run of four epochs, not three
    assert first.test_acc == meta["test_acc"]["1"]
    assert first.path.name == "epoch_1.pt"

    # The other checkpoints come from the cache: the run is not repeated (its record is the
    # same one) and each teacher is the checkpoint of its epoch.
    for stop in (2, 4, None):
        teacher = obtain_teacher("digits", spec(stop_epoch=stop))
        epoch = stop or RECIPE.epochs
        assert teacher.test_acc == meta["test_acc"][str(epoch)]
        state = weights(teacher.path)
        assert all(torch.equal(v, state[k]) for k, v in teacher.model.state_dict().items())
    assert cached()[1]["train_seconds"] == meta["train_seconds"]
    # Later epochs of a training differ from earlier ones (the checkpoints are not copies).
    early, late = weights(first.path), weights(first.path.with_name("epoch_4.pt"))
    assert any(not torch.equal(early[k], late[k]) for k in early)


def test_a_checkpoint_that_was_not_kept_retrains_the_same_run_once_and_keeps_the_others():
    obtain_teacher("digits", spec(seed=5))  # the end of training only
    files, meta = cached(seed=5)
    assert files == {"epoch_4.pt"}
    final = weights(cache_dir() / teacher_key("digits", spec(seed=5)) / "epoch_4.pt")

    obtain_teacher("digits", spec(stop_epoch=2, seed=5))
    files, again = cached(seed=5)
    assert files == {"epoch_2.pt", "epoch_4.pt"}
    assert again["train_seconds"] != meta["train_seconds"]  # it did train again...
    assert again["test_acc"]["4"] == meta["test_acc"]["4"]  # ...the same deterministic run
    retrained = weights(cache_dir() / teacher_key("digits", spec(seed=5)) / "epoch_4.pt")
    assert all(torch.equal(final[k], retrained[k]) for k in final)

    obtain_teacher("digits", spec(stop_epoch=2, seed=5), keep=(4,))
    assert cached(seed=5)[1]["train_seconds"] == again["train_seconds"]  # all cached: no run


def test_keeping_an_epoch_past_the_teachers_training_is_refused_before_training():
    with pytest.raises(ValueError, match=r"checkpoints to keep \[5\] are outside .* 1\.\.4"):
        obtain_teacher("digits", spec(stop_epoch=1), keep=(2, 5))
    assert not (cache_dir() / teacher_key("digits", spec())).exists()


EARLY_STOPPED = """\
name: early
datasets: [digits]
pairs:
  - {teacher: test_vgg, student: test_resnet_narrow, teacher_epochs: [4, 1, 2]}
  - {teacher: test_vgg, student: test_resnet_wide}
  - {teacher: test_resnet_wide, student: test_resnet_narrow}
methods: [kd]
seeds: 2
recipe:
  student: {epochs: 1, batch_size: 32}
  teacher: {epochs: 4}
"""


def test_a_sweep_trains_the_early_stopped_teachers_of_one_run_as_one_training():
    suite = parse_suite(EARLY_STOPPED)
    jobs = teacher_jobs(suite, plan_trials(suite))
    assert len(jobs) == 5  # test_vgg at epochs 4, 1, 2 and at the end; test_resnet_wide
    trainings = teacher_trainings(jobs)
    assert [[(j.spec.arch, j.spec.stop_epoch) for j in group] for group in trainings] == [
        [("test_vgg", 1), ("test_vgg", 2), ("test_vgg", 4), ("test_vgg", None)],
        [("test_resnet_wide", None)],
    ]
    assert [j.epoch for j in trainings[0]] == [1, 2, 4, 4]


def test_class_subset_teachers_of_a_trial_train_at_its_teachers_image_size():
    from bench.config import TrialConfig
    from bench.trial.compose import run_trial

    small = Recipe(epochs=1, batch_size=64, augment=False, image_size=8)
    config = TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method="multi_teacher",
        params=(("label_sets", "disjoint"), ("teachers", ("test_vgg",))),
        recipe=small,
        teacher=TeacherSpec(arch="test_vgg", recipe=small, seed=1),
    )
    result = run_trial(config)
    assert result.status == "FINISHED", result.error
    specs = [json.loads(m.read_text())["spec"] for m in cache_dir().glob("*/meta.json")]
    subsets = sorted((s["classes"], s["recipe"]["image_size"]) for s in specs if s["classes"])
    assert subsets == [([0, 1, 2, 3, 4], 8), ([5, 6, 7, 8, 9], 8)]
