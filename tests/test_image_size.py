"""Training at another image size (``Recipe.image_size``): the trial, its teacher and its run
key follow it; a teacher trained at another size than its student is refused before anything
runs."""

from __future__ import annotations

import dataclasses

import pytest

from bench.config import ConfigError, Recipe, TeacherSpec, TrialConfig, key_fields, run_key
from bench.teachers import teacher_key
from bench.trial.compose import run_trial

SMALL = Recipe(epochs=1, batch_size=64, augment=False, image_size=16)
TEACHER = TeacherSpec(arch="test_resnet_wide", recipe=SMALL, seed=0)


def config(**changes) -> TrialConfig:
    base = TrialConfig(
        dataset="digits", student="test_resnet_narrow", method="kd", recipe=SMALL, teacher=TEACHER
    )
    return base.with_changes(**changes)


def test_a_trial_at_16_pixels_trains_and_costs_a_quarter_of_the_flops():
    small = run_trial(config())
    full = run_trial(
        config(method="ce", teacher=None, recipe=dataclasses.replace(SMALL, image_size=None))
    )
    assert small.status == full.status == "FINISHED", (small.error, full.error)
    # Every convolution sees a quarter of the positions; only the classifier costs the same.
    assert small.student_flops == pytest.approx(full.student_flops / 4, rel=0.02)


def test_image_size_is_in_the_run_and_teacher_keys_only_when_set():
    default = config(recipe=dataclasses.replace(SMALL, image_size=None))
    assert run_key(config(), 1) != run_key(default, 1)
    unset = dataclasses.replace(TEACHER, recipe=dataclasses.replace(SMALL, image_size=None))
    assert teacher_key("digits", TEACHER) != teacher_key("digits", unset)
    # Unset, the field is left out, so keys made before the option existed still hold.
    assert "image_size" in key_fields(config(), 1)["recipe"]
    assert "image_size" not in key_fields(default, 1)["recipe"]


def test_a_teacher_trained_at_another_size_is_refused_before_anything_runs():
    mismatched = config(
        teacher=dataclasses.replace(TEACHER, recipe=dataclasses.replace(SMALL, image_size=24))
    )
    with pytest.raises(ConfigError, match=r"image_size 16 .* test_resnet_wide at 24"):
        run_trial(mismatched)


def test_image_size_below_eight_pixels_is_rejected():
    with pytest.raises(ConfigError, match="image_size must be ≥ 8"):
        Recipe(image_size=4)
