"""The sweep's packing stage: packed GPU trials, checked before they are scheduled.

A suite may ask for a fraction of a GPU per trial (``resources: {gpu: 0.25}``), so that Ray
places several small trials on one card. Whether a share is enough depends on the model,
the method, the batch and image size, which no formula knows; so before the student trials
start, the sweep runs one short pilot per distinct trial shape (the trial without its seed:
every seed of it holds the same tensors) on a whole card, reads its peak memory, and raises
the share of every trial of that shape to what the pilot needs plus
:data:`bench.sweep.packing.HEADROOM`. Shares are only ever raised, never lowered, so a suite
gets at least the packing it asked for and never more trials on a card than fit; the pilot's
figures are printed, so the user sees how tightly the shapes could pack.

Pilots that land on a node without CUDA (a CPU-only machine, or Ray's simulated GPUs in
tests) measure nothing useful about a card; the shares then stay as the suite asks, and the
sweep says so. A share is computed against the card its pilot ran on: on a cluster whose GPU
nodes have different cards, give packed suites one node type. Readings are kept under the
sweep's storage path, so resuming a sweep does not pilot again.

What a pilot measures, and the share arithmetic, are :mod:`bench.sweep.packing` (see there why
they are a module of their own).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bench import atomic
from bench.config import TrialConfig, stable_hash
from bench.suite.expand import PlannedTrial
from bench.sweep.packing import HEADROOM, gpu_fraction_needed

MIB = 2**20


@dataclass(frozen=True)
class PilotReading:
    """What one pilot measured on the card it had to itself.

    Attributes:
        need_bytes: Peak bytes the trial held on the GPU (the CUDA allocator's reserved
            peak over building the trial and a few optimizer steps).
        card_bytes: The card's total memory.
        card: The card's name, for the report.
    """

    need_bytes: int
    card_bytes: int
    card: str = "GPU"


@dataclass(frozen=True)
class ShapePlan:
    """The packing verdict for one trial shape.

    Attributes:
        shape: A trial of the shape (its seed is irrelevant).
        trials: How many planned trials share the shape.
        asked: The GPU share the suite asks for.
        granted: The share the trials run with (≥ ``asked``).
        reading: The pilot's measurement, or None when the pilot ran without CUDA or failed.
        error: Why the pilot failed, if it did.
    """

    shape: TrialConfig
    trials: int
    asked: float
    granted: float
    reading: PilotReading | None = None
    error: str | None = None

    @property
    def raised(self) -> bool:
        return self.granted > self.asked

    def describe(self) -> str:
        """One line for the sweep's log."""
        c = self.shape
        teacher = f"{c.teacher.arch} → " if c.teacher else ""
        what = (
            f"{c.method} {c.dataset} {teacher}{c.student} (batch {c.recipe.batch_size}, "
            f"{self.trials} trial{'' if self.trials == 1 else 's'})"
        )
        if self.error:
            return f"{what}: pilot failed ({self.error}); gpu {self.asked:g} kept"
        if self.reading is None:
            return f"{what}: no CUDA on the pilot's node; gpu {self.asked:g} kept"
        r = self.reading
        fits = gpu_fraction_needed(r.need_bytes, r.card_bytes)
        measured = (
            f"peak {r.need_bytes / MIB:,.0f} MiB of {r.card}'s {r.card_bytes / MIB:,.0f} MiB "
            f"(+{(HEADROOM - 1) * 100:.0f}% headroom: gpu {fits:g} fits)"
        )
        if self.raised:
            return f"{what}: {measured}; gpu {self.asked:g} raised to {self.granted:g}"
        return f"{what}: {measured}; gpu {self.asked:g} kept"


def shape_of(config: TrialConfig) -> TrialConfig:
    """The trial with its seed fixed: every seed of a trial holds the same tensors."""
    return config.with_changes(seed=0)


def packed_trials(trials: Sequence[PlannedTrial]) -> list[PlannedTrial]:
    """The trials that ask for a fraction of a GPU (0 < gpu < 1)."""
    return [t for t in trials if 0 < t.resources.gpu < 1]


def plan_shapes(
    trials: Sequence[PlannedTrial],
    readings: Mapping[TrialConfig, PilotReading | None],
    errors: Mapping[TrialConfig, str] | None = None,
) -> list[ShapePlan]:
    """Decide each packed shape's share from its pilot.

    Args:
        trials: The planned trials; those not asking for a GPU fraction are left out.
        readings: Shape (see :func:`shape_of`) → its pilot's reading, None for a pilot that
            ran without CUDA. A shape missing here counts as not measured.
        errors: Shape → why its pilot failed.

    Returns:
        One plan per shape, in the order the shapes first appear in ``trials``; a shape's
        share is the largest its trials ask for, raised to what the pilot needs (at most a
        whole card).
    """
    errors = errors or {}
    counts: dict[TrialConfig, int] = {}
    asked: dict[TrialConfig, float] = {}
    for trial in packed_trials(trials):
        shape = shape_of(trial.config)
        counts[shape] = counts.get(shape, 0) + 1
        asked[shape] = max(asked.get(shape, 0.0), trial.resources.gpu)
    plans = []
    for shape, n in counts.items():
        reading = readings.get(shape)
        granted = asked[shape]
        if reading is not None and shape not in errors:
            granted = max(granted, gpu_fraction_needed(reading.need_bytes, reading.card_bytes))
        plans.append(
            ShapePlan(shape, n, asked[shape], granted, reading=reading, error=errors.get(shape))
        )
    return plans


def apply_plans(trials: Sequence[PlannedTrial], plans: Sequence[ShapePlan]) -> list[PlannedTrial]:
    """``trials`` with each packed trial's GPU share set to its shape's granted share."""
    granted = {p.shape: p.granted for p in plans}
    out = []
    for trial in trials:
        share = granted.get(shape_of(trial.config))
        if share is not None and 0 < trial.resources.gpu < 1 and share != trial.resources.gpu:
            trial = dataclasses.replace(
                trial, resources=dataclasses.replace(trial.resources, gpu=share)
            )
        out.append(trial)
    return out


def pilot_on_card(config: TrialConfig, home: str, plugins: tuple[str, ...]) -> PilotReading | None:
    """Run a pilot of ``config`` in this (Ray worker) process; None without CUDA.

    The worker has a whole card (the task asks for ``num_gpus=1``), so the allocator's peak
    is this trial's alone.
    """
    import torch

    from bench.sweep.packing import pilot_memory
    from bench.sweep.worker import prepare_worker

    if not torch.cuda.is_available():
        return None
    prepare_worker(home, max(1, torch.get_num_threads()), plugins)
    pilot = pilot_memory(config, device="cuda")
    props = torch.cuda.get_device_properties(0)
    return PilotReading(pilot.need_bytes, int(props.total_memory), props.name)


def run_pilots(
    trials: Sequence[PlannedTrial],
    home: str,
    plugins: tuple[str, ...],
    *,
    pilot: Callable[[TrialConfig, str, tuple[str, ...]], PilotReading | None] = pilot_on_card,
    cache: Path | None = None,
) -> tuple[dict[TrialConfig, PilotReading | None], dict[TrialConfig, str]]:
    """One pilot per packed shape, as Ray tasks with a whole GPU each (they run in parallel
    when the cluster has several cards); returns the readings and the pilots' errors. Shapes
    with a reading in ``cache`` (a folder) are not piloted again."""
    import ray

    shapes: dict[TrialConfig, PlannedTrial] = {}
    for trial in packed_trials(trials):
        shapes.setdefault(shape_of(trial.config), trial)
    readings: dict[TrialConfig, PilotReading | None] = {}
    if cache is not None:
        for shape in list(shapes):
            known = _cached_reading(cache, shape)
            if known is not None:
                readings[shape] = known
                del shapes[shape]
    task = ray.remote(pilot)
    pending = {
        task.options(
            num_cpus=trial.resources.cpu, num_gpus=1, max_retries=1, name="packing pilot"
        ).remote(shape, home, plugins): shape
        for shape, trial in shapes.items()
    }
    errors: dict[TrialConfig, str] = {}
    for ref, shape in pending.items():
        try:
            reading = ray.get(ref)
        except Exception as exc:  # the trial itself will fail alone, under its cap
            errors[shape] = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
            continue
        readings[shape] = reading
        if cache is not None and reading is not None:
            _store_reading(cache, shape, reading)
    return readings, errors


def _reading_path(cache: Path, shape: TrialConfig) -> Path:
    return cache / f"{stable_hash(shape, length=20)}.json"


def _cached_reading(cache: Path, shape: TrialConfig) -> PilotReading | None:
    path = _reading_path(cache, shape)
    try:
        reading = PilotReading(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: pilot again
    sizes = (reading.need_bytes, reading.card_bytes)
    if not all(isinstance(n, int) and n >= 0 for n in sizes) or not isinstance(reading.card, str):
        return None  # damaged: pilot again
    return reading


def _store_reading(cache: Path, shape: TrialConfig, reading: PilotReading) -> None:
    atomic.write_json(_reading_path(cache, shape), dataclasses.asdict(reading), indent=None)


def check_packing(
    trials: Sequence[PlannedTrial],
    home: str,
    plugins: tuple[str, ...],
    err: TextIO,
    *,
    pilot: Callable[[TrialConfig, str, tuple[str, ...]], PilotReading | None] = pilot_on_card,
    cache: Path | None = None,
) -> list[PlannedTrial]:
    """Pilot every packed shape of ``trials``, print the verdicts, and return the trials with
    their GPU shares raised where a pilot needs more (unchanged when nothing is packed)."""
    if not packed_trials(trials):
        return list(trials)
    readings, errors = run_pilots(trials, home, plugins, pilot=pilot, cache=cache)
    plans = plan_shapes(trials, readings, errors)
    raised = sum(p.trials for p in plans if p.raised)
    print(
        f"packing: {len(plans)} trial shape{'' if len(plans) == 1 else 's'} piloted on a whole "
        f"card; {raised} trial{'' if raised == 1 else 's'} get a larger GPU share",
        file=err,
        flush=True,
    )
    for plan in plans:
        print(f"  {plan.describe()}", file=err, flush=True)
    return apply_plans(trials, plans)
