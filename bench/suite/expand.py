"""A suite's work: its student trials (one per run key) and the teachers they distil from."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.config import Compute, TeacherSpec, TrialConfig
from bench.suite.schema import DatasetEntry, MethodEntry, Pair, Resources, Suite


@dataclass(frozen=True)
class PlannedTrial:
    """One student trial of a suite.

    Attributes:
        config: The trial.
        key: Its run key.
        resources: What it asks of a node.
        pairs: Labels of the suite pairs it serves (several for teacherless methods).
        given: The params as the suite gives them (the config holds them all, resolved);
            what trial lists show.
    """

    config: TrialConfig
    key: str
    resources: Resources
    pairs: tuple[str, ...] = ()
    given: tuple[tuple[str, Any], ...] = ()

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def pair(self) -> str:
        c = self.config
        return f"{teacher_label(c.teacher)}->{c.student}" if c.teacher else c.student

    @property
    def params_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.given) or "defaults"

    def describe(self) -> str:
        c = self.config
        params = f" [{self.params_label}]" if self.given else ""
        return f"{c.method}{params} {c.dataset} {self.pair} seed {c.seed}"


@dataclass(frozen=True)
class TeacherJob:
    """A distinct teacher the suite's trials distil from."""

    dataset: DatasetEntry
    spec: TeacherSpec
    resources: Resources

    def describe(self) -> str:
        stop = f", checkpoint after epoch {self.spec.stop_epoch}" if self.spec.stop_epoch else ""
        return f"{self.spec.arch} on {self.dataset.name} (seed {self.spec.seed}{stop})"

    @property
    def epoch(self) -> int:
        """The epoch of its training whose checkpoint it is (the last unless early-stopped)."""
        return self.spec.stop_epoch or self.spec.recipe.epochs


def teacher_trainings(jobs: Sequence[TeacherJob]) -> list[tuple[TeacherJob, ...]]:
    """``jobs`` grouped by the training run that produces them, in order of first appearance:
    the early-stopped checkpoints of one teacher training form one group, sorted by epoch, so
    that a single training can keep them all."""
    groups: dict[tuple[str, TeacherSpec], list[TeacherJob]] = {}
    for job in jobs:
        run = (job.dataset.name, dataclasses.replace(job.spec, stop_epoch=None))
        groups.setdefault(run, []).append(job)
    return [tuple(sorted(group, key=lambda j: j.epoch)) for group in groups.values()]


def teacher_label(spec: TeacherSpec) -> str:
    """How a teacher is named in trial lists: its architecture, and ``@ep<k>`` for the
    checkpoint after epoch k of its training (the leaderboard names cells the same way)."""
    return f"{spec.arch}@ep{spec.stop_epoch}" if spec.stop_epoch else spec.arch


def plan_trials(suite: Suite) -> tuple[PlannedTrial, ...]:
    """Every student trial of ``suite``: datasets × pairs × methods × configurations × seeds,
    one per run key, in that order. A trial several pairs share (a teacherless method's) is
    planned once and lists every pair it serves.

    Raises:
        ConfigError: a combination no trial accepts (e.g. an early-stopped teacher past the
            end of its training).
    """
    from bench.plugins import get_method, keyed_trial

    planned: dict[str, PlannedTrial] = {}
    for dataset, pair, entry in itertools.product(suite.datasets, suite.pairs, suite.methods):
        method_cls = get_method(entry.name)
        teachers = teachers_of(suite, pair) if method_cls.uses_teacher else [None]
        resources = entry.resources or suite.resources
        combos = itertools.product(teachers, entry.configurations(suite.budget), suite.seeds)
        for teacher, params, seed in combos:
            config = _trial_config(suite, dataset, pair, entry, teacher, params, seed)
            # The worker computes the key again from this config: the same function, so the
            # same key, as long as the code and checkpoint files stay as they are.
            config, key = keyed_trial(config.with_changes(compute=trial_compute(resources)))
            label = f"{teacher_label(teacher)}->{pair.student}" if teacher else pair.label
            known = planned.get(key)
            if known is None:
                given = tuple(sorted(params.items()))
                planned[key] = PlannedTrial(config, key, resources, (label,), given)
            elif label not in known.pairs:
                planned[key] = dataclasses.replace(known, pairs=(*known.pairs, label))
    return tuple(planned.values())


def trial_compute(resources: Resources) -> Compute:
    """The compute of a trial asking for ``resources``: CUDA when it asks for any GPU (Ray
    hides the cards from the others), CPU otherwise; as many torch threads as CPUs; the
    execution policy of :func:`bench.trial.device.fast_compute` (on CPU, as this machine's
    processor decides: a cluster's CPU workers are expected to be of the driver's kind)."""
    from bench.trial.device import fast_compute

    return fast_compute("cuda" if resources.gpu > 0 else "cpu", resources.threads)


def _trial_config(
    suite: Suite,
    dataset: DatasetEntry,
    pair: Pair,
    entry: MethodEntry,
    teacher: TeacherSpec | None,
    params: dict[str, Any],
    seed: int,
) -> TrialConfig:
    return TrialConfig(
        dataset=dataset.name,
        student=pair.student,
        method=entry.name,
        params=tuple(params.items()),
        seed=seed,
        recipe=pair.recipe or suite.recipe,
        teacher=teacher,
        phase=suite.phase,
        val_fraction=suite.val_fraction,
        train_size=dataset.train_size,
        data_root=dataset.data_root,
        download=dataset.download,
        student_checkpoint=pair.student_checkpoint,
    )


def teachers_of(suite: Suite, pair: Pair) -> list[TeacherSpec]:
    """The teacher of a pair, or one early-stopped checkpoint per ``teacher_epochs``."""
    base = TeacherSpec(
        arch=pair.teacher,
        recipe=pair.teacher_recipe or suite.teacher_recipe,
        seed=suite.teacher_seed,
        checkpoint=pair.teacher_checkpoint,
    )
    if not pair.teacher_epochs:
        return [base]
    return [dataclasses.replace(base, stop_epoch=e) for e in pair.teacher_epochs]


def teacher_jobs(suite: Suite, trials: Sequence[PlannedTrial]) -> list[TeacherJob]:
    """The distinct teachers that ``trials`` distil from, in order of first use."""
    datasets = {d.name: d for d in suite.datasets}
    jobs: dict[tuple[str, TeacherSpec], TeacherJob] = {}
    for trial in trials:
        teacher = trial.config.teacher
        if teacher is None:
            continue
        ident = (trial.config.dataset, teacher)
        if ident not in jobs:
            dataset = datasets[trial.config.dataset]
            jobs[ident] = TeacherJob(dataset, teacher, suite.teacher_resources)
    return list(jobs.values())
