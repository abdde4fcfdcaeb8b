"""A trial's resumable state: what a checkpoint between two epochs holds, when one is taken,
and how it is saved and restored.

A checkpoint after epoch ``k`` holds the student, the method (its modules, buffers and extra
state, internal optimizers included), the student's optimizer, every random stream the loop
draws from (Python, NumPy, torch on the CPU and the GPU, the trial's data-order and method
generators) and the history of epochs ``0..k``. The schedule's position follows from the
epoch. Restoring it into a trial built the same way and continuing from epoch ``k + 1`` gives,
on the CPU, the same result as a trial that never stopped.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench import atomic
from bench.checkpoint import CheckpointError, read_checkpoint
from bench.config import CHECKPOINT_EVERY_EPOCHS, CHECKPOINT_EVERY_MINUTES

#: Bump when the layout of a saved state changes; older states are then ignored (the trial
#: starts from epoch 0) rather than misread.
STATE_FORMAT = 1


@dataclass
class TrainState:
    """Everything a trial needs to continue after ``epochs_done`` epochs.

    Attributes:
        epochs_done: Epochs completed (the next epoch to run).
        history: Per-epoch metrics of the completed epochs.
        student: The student's state dict.
        method: The method's state dict (modules, buffers, extra state).
        optimizer: The student optimizer's state dict.
        rng: The random streams (see :func:`capture_rng`).
        run_id: The MLflow run the trial records into, so a resumed trial continues it.
    """

    epochs_done: int
    history: list[dict[str, float]]
    student: dict[str, Any]
    method: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, **self.__dict__}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainState | None:
        """The state in ``raw``, or None when it was saved in another format."""
        if raw.get("format") != STATE_FORMAT:
            return None
        return cls(**{k: v for k, v in raw.items() if k != "format"})


@dataclass
class CheckpointPolicy:
    """When a running trial saves its state: after every ``every_epochs`` epochs, and after
    any epoch that ends ``every_minutes`` or more after the last save (checkpoints are taken
    between epochs only, so a long epoch is never cut).

    Attributes:
        every_epochs: Epoch interval (0: never by count).
        every_minutes: Wall-clock interval in minutes (0: never by time).
    """

    every_epochs: int = CHECKPOINT_EVERY_EPOCHS
    every_minutes: float = CHECKPOINT_EVERY_MINUTES
    _last: float = field(default_factory=time.monotonic, repr=False)

    def due(self, epochs_done: int, total_epochs: int) -> bool:
        """Whether to save after ``epochs_done`` epochs; never after the last one (a finished
        trial needs no checkpoint)."""
        if epochs_done >= total_epochs:
            return False
        by_count = self.every_epochs > 0 and epochs_done % self.every_epochs == 0
        elapsed = time.monotonic() - self._last
        by_time = self.every_minutes > 0 and elapsed >= 60 * self.every_minutes
        return by_count or by_time

    def saved(self) -> None:
        self._last = time.monotonic()


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random stream the loop may draw from, as tensors and plain values (so a state
    loads with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Put back the streams :func:`capture_rng` took."""
    random.setstate(_as_tuple(state["python"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` wants the nested tuples ``getstate`` gave, not lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


def cpu_state_dict(module: nn.Module | torch.optim.Optimizer) -> dict[str, Any]:
    """A state dict with every tensor moved to the CPU (a checkpoint loads on any device)."""
    return _to_cpu(module.state_dict())


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def save_state(state: TrainState, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (a crash mid-write leaves the previous one)."""
    atomic.torch_save(state.to_dict(), path)


def load_state(path: Path) -> TrainState | None:
    """The state saved at ``path``, or None when there is none or it is unreadable (then the
    trial starts over, which is always correct, only slower; a damaged file is reported)."""
    if not path.is_file():
        return None
    try:
        raw = read_checkpoint(path, "saved trial state")
        state = TrainState.from_dict(raw) if isinstance(raw, dict) else None
    except (CheckpointError, TypeError) as exc:  # truncated or foreign: start over
        problem = exc.problem if isinstance(exc, CheckpointError) else str(exc)
        print(
            f"kdbench: saved trial state {path} is damaged: {problem}; the trial starts "
            "from its first epoch",
            file=sys.stderr,
        )
        return None
    return state
