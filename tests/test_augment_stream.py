"""The shared augmentation stream (recipe.augment_stream: shared) and the per-epoch teacher
outputs cache it makes possible."""

from __future__ import annotations

import pytest
import torch

from bench.config import ConfigError, Recipe, TeacherSpec, TrialConfig, run_key
from bench.data import DataError, load_dataset, with_loader
from bench.suite.expand import plan_trials
from bench.suite.load import parse_suite
from bench.suite.schema import SuiteError
from bench.trial.compose import run_trial
from bench.trial.context import make_context

CPU = torch.device("cpu")
SHARED = Recipe(epochs=2, batch_size=64, augment_stream="shared")
TEACHER = TeacherSpec(arch="test_resnet_wide", recipe=Recipe(epochs=2, batch_size=64), seed=0)


def kd_config(**changes) -> TrialConfig:
    base = TrialConfig(
        dataset="digits",
        student="test_resnet_narrow",
        method="kd",
        seed=3,
        recipe=SHARED,
        teacher=TEACHER,
    )
    return base.with_changes(**changes)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def images_by_sample(split, *, seed: int, batch_size: int, epoch: int | None) -> torch.Tensor:
    """One shuffled, augmented epoch of ``split``, its images put back in sample order."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty((len(split), *split.images.shape[1:]))
    extra = {} if epoch is None else {"shared_epoch": epoch}
    for x, _, index in split.batches(
        batch_size, shuffle=True, generator=generator, augment=True, device=CPU, **extra
    ):
        out[index] = x
    return out


def test_shared_stream_augments_each_sample_alike_in_every_trial(digits):
    split = digits.train
    first = images_by_sample(split, seed=1, batch_size=64, epoch=0)
    other_trial = images_by_sample(split, seed=2, batch_size=100, epoch=0)
    assert torch.equal(first, other_trial)  # another seed, order and batch size
    unaugmented = images_by_sample(split, seed=1, batch_size=64, epoch=None)
    plain = torch.cat([x for x, _, _ in split.batches(64, **_in_order())])
    assert not torch.equal(first, plain)  # it does augment
    assert not torch.equal(unaugmented, first)  # and not as the trial's own stream does
    next_epoch = images_by_sample(split, seed=1, batch_size=64, epoch=1)
    changed = (next_epoch != first).flatten(1).any(1).float().mean().item()
    assert changed > 0.5  # a new epoch, new crops for most samples


def test_trial_stream_differs_between_seeds(digits):
    split = digits.train
    one = images_by_sample(split, seed=1, batch_size=64, epoch=None)
    two = images_by_sample(split, seed=2, batch_size=64, epoch=None)
    differs = (one != two).flatten(1).any(1).float().mean().item()
    assert differs > 0.5


def _in_order() -> dict:
    return {"shuffle": False, "generator": None, "augment": False, "device": CPU}


def test_trials_of_any_seed_train_on_the_same_augmented_batches_per_sample(digits):
    """Through the training context, as a method sees them: per (epoch, sample) the same
    image under 'shared' for two seeds, different images under 'trial'."""

    def seen(recipe: Recipe, seed: int) -> list[torch.Tensor]:
        ctx = make_context(
            student=torch.nn.Identity(),
            student_info=None,
            task=_task(digits, recipe),
            recipe=recipe,
            device=CPU,
            data=digits,
            seed=seed,
        )
        epochs = []
        for epoch in range(2):
            images = torch.zeros((len(digits.train), *digits.train.images.shape[1:]))
            for batch in ctx.train_batches(epoch=epoch):
                images[batch.index] = batch.x
            epochs.append(images)
        return epochs

    shared = Recipe(epochs=2, batch_size=32, augment_stream="shared")
    trial = Recipe(epochs=2, batch_size=32)
    a, b = seen(shared, 1), seen(shared, 2)
    # drop_last leaves out a different remainder per seed: compare samples both trials saw
    for epoch in range(2):
        both = (a[epoch].flatten(1).abs().sum(1) > 0) & (b[epoch].flatten(1).abs().sum(1) > 0)
        assert both.sum() > 0.9 * len(digits.train)
        assert torch.equal(a[epoch][both], b[epoch][both])
    c, d = seen(trial, 1), seen(trial, 2)
    both = (c[0].flatten(1).abs().sum(1) > 0) & (d[0].flatten(1).abs().sum(1) > 0)
    same = (c[0][both] == d[0][both]).flatten(1).all(1).float().mean().item()
    assert same < 0.5


def _task(data, recipe):
    from bench.trial.context import task_info

    return task_info("digits", data, recipe)


def test_shared_stream_changes_the_run_key_and_the_default_keeps_it():
    trial = kd_config(recipe=Recipe(epochs=2, batch_size=64))
    explicit = kd_config(recipe=Recipe(epochs=2, batch_size=64, augment_stream="trial"))
    assert run_key(explicit, 1) == run_key(trial, 1)
    assert run_key(kd_config(), 1) != run_key(trial, 1)


def test_bad_stream_and_the_loader_path_are_refused_with_the_fix(digits):
    with pytest.raises(ConfigError, match="augment_stream 'sometimes' is not one of 'trial'"):
        Recipe(augment_stream="sometimes")
    with pytest.raises(ConfigError, match="needs data_path 'device'"):
        Recipe(augment_stream="shared", data_path="loader")
    loader = with_loader(digits, num_workers=0).train
    with pytest.raises(DataError, match="no shared augmentation stream"):
        next(loader.batches(8, **{**_in_order(), "augment": True}, shared_epoch=0))


SUITE = """
name: shared-stream
datasets: [digits]
pairs: [{teacher: test_resnet_wide, student: test_resnet_narrow}]
methods: [kd]
seeds: [0, 1]
recipe:
  student: {epochs: 1, batch_size: 32, augment_stream: STREAM}
  teacher: {epochs: 1}
"""


def test_suites_take_the_stream_for_students_and_name_bad_values():
    suite = parse_suite(SUITE.replace("STREAM", "shared"))
    trials = [t for t in plan_trials(suite) if t.config.teacher is not None]
    assert trials and all(t.config.recipe.augment_stream == "shared" for t in trials)
    # Teachers are trained once, not per student trial: they keep their own stream and key.
    assert all(t.config.teacher.recipe.augment_stream == "trial" for t in trials)
    with pytest.raises(SuiteError, match=r"recipe\.student\.augment_stream.*'trial', 'shared'"):
        parse_suite(SUITE.replace("STREAM", "always"))


def test_cached_shared_stream_trial_matches_the_uncached_one_and_later_trials_reuse_it(
    monkeypatch,
):
    from bench import teacher_cache
    from bench.models import forward_outputs
    from bench.paths import kdbench_home

    teacher_steps, builds = [], []

    def counting_forward(model, x, needs):
        if not any(p.requires_grad for p in model.parameters()):  # the frozen teacher
            teacher_steps.append(len(x))
        return forward_outputs(model, x, needs)

    def counting_build(*args, **kwargs):
        builds.append(kwargs.get("shared_epoch"))
        return compute_outputs(*args, **kwargs)

    compute_outputs = teacher_cache.compute_outputs
    monkeypatch.setattr("bench.trial.context.forward_outputs", counting_forward)
    monkeypatch.setattr(teacher_cache, "compute_outputs", counting_build)
    store = kdbench_home() / "teacher_outputs"
    config = kd_config(seed=31)

    monkeypatch.setenv("KDBENCH_TEACHER_CACHE_MB", "0")
    uncached = run_trial(config)
    assert len(teacher_steps) > 0 and builds == []  # the teacher ran every step
    monkeypatch.setenv("KDBENCH_TEACHER_CACHE_MB", "512")
    teacher_steps.clear()
    cached = run_trial(config)
    assert uncached.status == cached.status == "FINISHED", (uncached.error, cached.error)
    assert builds == [0, 1] and teacher_steps == []  # one entry per epoch, built once
    assert cached.final_loss == uncached.final_loss
    assert cached.test_acc == uncached.test_acc
    assert [h["train/loss"] for h in cached.history] == [h["train/loss"] for h in uncached.history]

    # Another seed, read from disk as a trial in another process would: nothing is built and
    # the teacher never runs during training.
    entries = set(store.glob("*.pt"))
    teacher_cache.clear_memory()
    second = run_trial(kd_config(seed=32))
    assert second.status == "FINISHED", second.error
    assert builds == [0, 1] and teacher_steps == []
    assert set(store.glob("*.pt")) == entries
    assert second.final_loss != cached.final_loss  # a trial of its own all the same
