"""Packing several trials on one GPU: measure a trial's memory on a short pilot, then check
that a fractional GPU request leaves it room.

A pilot builds the trial exactly as :func:`bench.trial.compose.execute` does and runs a few
optimizer steps; its peak (the CUDA allocator's reserved bytes on a GPU, the resident set on
the CPU) is what the trial needs at its batch size, since every later step repeats the same
shapes. :func:`check_gpu_fraction` turns that into a verdict on a request such as
``gpu: 0.25``, and :func:`limit_process_memory` makes the CUDA allocator of a packed trial stay
within its share, so a trial that outgrows it fails alone instead of starving its neighbours.

This module is what happens inside one process (a pilot, a packed trial); the sweep's packing
stage, which runs the pilots as Ray tasks and raises the shares of the suite's trials, is
:mod:`bench.sweep.pilot`. They are two modules because the worker imports this one (to cap a
packed trial) while the stage imports the worker (to set up a pilot's process): one module
holding both would import the worker and be imported by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.config import TrialConfig
from bench.memory import MemoryPeak, PeakMemory

__all__ = [
    "HEADROOM",
    "PackingError",
    "Pilot",
    "check_gpu_fraction",
    "gpu_fraction_needed",
    "limit_process_memory",
    "pilot_memory",
]

#: Margin over the pilot's peak: allocator fragmentation over a long run, evaluation batches.
HEADROOM = 1.25


class PackingError(ValueError):
    """A fractional GPU request too small for the trial's measured memory."""


@dataclass(frozen=True)
class Pilot:
    """What a pilot measured.

    Attributes:
        steps: Optimizer steps run.
        peak: Peak memory over building the trial and those steps.
        device: The device it ran on.
    """

    steps: int
    peak: MemoryPeak
    device: str

    @property
    def need_bytes(self) -> int:
        """Bytes the trial holds at its peak on its device (GPU reserved, else CPU RSS)."""
        return self.peak.gpu_reserved if self.device.startswith("cuda") else self.peak.rss


def pilot_memory(
    config: TrialConfig, *, steps: int = 3, device: torch.device | str | None = None
) -> Pilot:
    """Build ``config``'s trial and run ``steps`` optimizer steps; measure the peak memory.

    The method's ``before_training`` stage is skipped: it runs once, and the steps it
    precedes hold the same tensors as any later one.
    """
    from bench.trial.compose import build_trial, prepare_trial
    from bench.trial.loop import train_loop

    prepared = prepare_trial(config, torch.device(device) if device is not None else None)
    meter = PeakMemory(prepared.device).start()
    built = build_trial(prepared)
    train_loop(built.ctx, built.method, evaluate_val=False, max_steps=steps)
    return Pilot(steps=steps, peak=meter.read(), device=str(prepared.device))


def gpu_fraction_needed(need_bytes: int, total_bytes: int, *, headroom: float = HEADROOM) -> float:
    """The smallest share of a card of ``total_bytes`` that holds ``need_bytes`` with
    ``headroom``, rounded up to a sixteenth (so packing counts stay whole)."""
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be positive, got {total_bytes}")
    return min(1.0, math.ceil(16 * need_bytes * headroom / total_bytes) / 16)


def check_gpu_fraction(
    fraction: float,
    need_bytes: int,
    total_bytes: int,
    *,
    where: str = "the trial",
    headroom: float = HEADROOM,
) -> None:
    """Raise :class:`PackingError` when ``fraction`` of the card cannot hold ``need_bytes``.

    Raises:
        PackingError: naming ``where``, the measured need, the share asked for and the
            smallest share that fits.
    """
    if not 0 < fraction <= 1:
        raise PackingError(f"{where}: a GPU share must be in (0, 1], got {fraction}")
    if fraction * total_bytes >= need_bytes * headroom:
        return
    needed = gpu_fraction_needed(need_bytes, total_bytes, headroom=headroom)
    mib = 2**20
    raise PackingError(
        f"{where} needs {need_bytes / mib:.0f} MiB on the GPU (pilot peak, +"
        f"{(headroom - 1) * 100:.0f}% headroom: {need_bytes * headroom / mib:.0f} MiB) but "
        f"gpu: {fraction:g} gives {fraction * total_bytes / mib:.0f} MiB of the card's "
        f"{total_bytes / mib:.0f} MiB; ask for gpu: {needed:g} or more in the suite's "
        "resources, or lower the batch size"
    )


def limit_process_memory(fraction: float, device: torch.device | str | None = None) -> bool:
    """Cap this process's CUDA allocator at ``fraction`` of the card (a packed trial's
    share); returns whether a cap was set (False without CUDA or for a whole card)."""
    if fraction >= 1 or not torch.cuda.is_available():
        return False
    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device or "cuda"))
    return True
