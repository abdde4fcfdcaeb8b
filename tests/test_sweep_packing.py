"""Packed GPU trials: one pilot per trial shape, shares raised to what the pilot needs, never
lowered, readings reused on resume."""

from __future__ import annotations

import io
import sys

import pytest

from bench.suite.expand import plan_trials
from bench.suite.load import parse_suite
from bench.sweep.localray import local_ray
from bench.sweep.pilot import (
    PilotReading,
    apply_plans,
    check_packing,
    plan_shapes,
    shape_of,
)

GIB = 2**30

SUITE = """\
name: packed
datasets: [digits]
pairs:
  - {teacher: test_resnet_wide, student: test_resnet_narrow}
methods: [ce, kd]
seeds: 3
recipe:
  student: {epochs: 1, batch_size: 64}
  teacher: {epochs: 1}
resources: {cpu: 1, gpu: 0.125}
"""


def packed_trials(text: str = SUITE) -> list:
    return list(plan_trials(parse_suite(text)))


def by_method(trials: list) -> dict[str, set[float]]:
    shares: dict[str, set[float]] = {}
    for t in trials:
        shares.setdefault(t.method, set()).add(t.resources.gpu)
    return shares


def test_a_pilot_that_needs_more_than_the_share_raises_every_seed_of_its_shape():
    trials = packed_trials()
    shapes = {shape_of(t.config) for t in trials}
    assert len(trials) == 6 and len(shapes) == 2  # ce and kd, three seeds each
    ce, kd = sorted(shapes, key=lambda c: c.method)
    # kd: 3 GiB × 1.25 headroom = 3.75 GiB of 16 GiB = 0.234 → 4/16 = 0.25 (asked 0.125).
    # ce: 1 GiB × 1.25 = 1.25 GiB of 16 GiB = 0.078 → 2/16 = 0.125: the share asked fits.
    readings = {kd: PilotReading(3 * GIB, 16 * GIB, "A16"), ce: PilotReading(GIB, 16 * GIB)}
    plans = {p.shape.method: p for p in plan_shapes(trials, readings)}
    assert (plans["kd"].asked, plans["kd"].granted, plans["kd"].trials) == (0.125, 0.25, 3)
    assert plans["kd"].raised and not plans["ce"].raised
    assert plans["ce"].granted == 0.125
    assert "peak 3,072 MiB of A16's 16,384 MiB" in plans["kd"].describe()
    assert "gpu 0.125 raised to 0.25" in plans["kd"].describe()
    assert by_method(apply_plans(trials, list(plans.values()))) == {"ce": {0.125}, "kd": {0.25}}


def test_shares_are_never_lowered_and_a_pilot_bigger_than_the_card_gets_a_whole_one():
    trials = packed_trials(SUITE.replace("gpu: 0.125", "gpu: 0.5"))
    ce, kd = sorted({shape_of(t.config) for t in trials}, key=lambda c: c.method)
    readings = {ce: PilotReading(2**20, 16 * GIB), kd: PilotReading(20 * GIB, 16 * GIB)}
    plans = {p.shape.method: p for p in plan_shapes(trials, readings)}
    assert plans["ce"].granted == 0.5  # needs 1/16, keeps the 1/2 it asked for
    assert plans["kd"].granted == 1.0


def test_without_cuda_or_after_a_failed_pilot_the_asked_share_stays():
    trials = packed_trials()
    ce, kd = sorted({shape_of(t.config) for t in trials}, key=lambda c: c.method)
    plans = plan_shapes(trials, {ce: None}, errors={kd: "CUDA out of memory"})
    described = {p.shape.method: p.describe() for p in plans}
    assert [p.granted for p in plans] == [0.125, 0.125]
    assert "no CUDA on the pilot's node; gpu 0.125 kept" in described["ce"]
    assert "pilot failed (CUDA out of memory); gpu 0.125 kept" in described["kd"]


def test_unpacked_trials_are_not_piloted():
    whole = packed_trials(SUITE.replace("gpu: 0.125", "gpu: 1"))
    cpu_only = packed_trials(SUITE.replace(", gpu: 0.125", ""))
    for trials in (whole, cpu_only):
        assert check_packing(trials, "/nonexistent", (), io.StringIO()) == trials


@pytest.fixture
def ray_with_two_gpus():
    from ray import cloudpickle

    # Ray's GPUs are only a resource count here: the pilots below are stand-ins, shipped to
    # the workers by value (they cannot import this test module).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with local_ray(num_cpus=2, num_gpus=2):  # as a sweep starts it: loopback only, watched
        yield


def pilot_3gib_of_16(config, home, plugins):
    return PilotReading(3 * GIB if config.method == "kd" else GIB, 16 * GIB, "A16")


def pilot_must_not_run(config, home, plugins):
    raise AssertionError(f"piloted again: {config.describe()}")


def test_pilots_run_as_ray_tasks_once_per_shape_and_are_reused(ray_with_two_gpus, tmp_path):
    trials = packed_trials()
    log = io.StringIO()
    cache = tmp_path / "pilots"
    planned = check_packing(trials, str(tmp_path), (), log, pilot=pilot_3gib_of_16, cache=cache)
    assert by_method(planned) == {"ce": {0.125}, "kd": {0.25}}
    assert [t.key for t in planned] == [t.key for t in trials]
    assert "packing: 2 trial shapes piloted on a whole card; 3 trials get a larger GPU" in (
        log.getvalue()
    )
    assert len(list(cache.glob("*.json"))) == 2
    again = check_packing(trials, str(tmp_path), (), io.StringIO(), pilot=pilot_must_not_run,
                          cache=cache)  # fmt: skip
    assert by_method(again) == {"ce": {0.125}, "kd": {0.25}}
