"""The :class:`TrainContext` protocol: everything a method's hooks may use during a trial.

The harness passes an object with this interface to ``before_training``, ``train_step`` and
``after_step``; methods type against the protocol and never import the harness that
implements it (``bench/trial/context.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from bench.api.types import Batch, ModelInfo, Outputs, TaskInfo

if TYPE_CHECKING:
    from bench.api.method import Method


class TrainContext(Protocol):
    """What a method's hooks can use during a trial.

    Attributes:
        student: The model being trained.
        teacher: The frozen teacher (eval mode, no grad), or None.
        student_info: Shapes of the student.
        teacher_info: Shapes of the teacher, or None.
        task: The task (classes, input size, epochs, steps per epoch).
        device: The training device.
        seed: The trial's seed.
        generator: A seeded CPU generator for any randomness a method draws.
    """

    student: nn.Module
    teacher: nn.Module | None
    student_info: ModelInfo
    teacher_info: ModelInfo | None
    task: TaskInfo
    device: torch.device
    seed: int
    generator: torch.Generator

    def forward(
        self,
        model: nn.Module,
        x: Tensor,
        needs: frozenset[str] | set[str] = frozenset(),
        *,
        grad: bool = True,
    ) -> Outputs:
        """One forward pass of any model under the trial's precision, computing only
        ``needs`` (``features``, ``preact_features``, ``embedding``) besides logits."""
        ...

    def forward_student(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        """The student's forward pass, with gradients."""
        ...

    def forward_teacher(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        """The frozen teacher's outputs on ``x`` (no gradients; cached when ``x`` is the
        current training batch)."""
        ...

    def train_batches(self, augment: bool = True, *, epoch: int = 0) -> Iterator[Batch]:
        """One epoch over the training split, as the main loop sees it."""
        ...

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``params``."""
        ...

    def scheduled_lr(self, batch: Batch) -> float:
        """The learning rate the harness gives the student at ``batch`` (warm-up and
        schedule applied): for optimizers a method steps itself."""
        ...

    def run_init_stage(
        self,
        name: str,
        epochs: int,
        candidates: Iterable[nn.Parameter],
        step_loss: Callable[[Batch], Tensor],
    ) -> None:
        """Train on ``step_loss`` alone for ``epochs`` epochs before the main training (an
        initialisation stage: FitNets' hints, AB, FT's paraphraser).

        Only the ``candidates`` the loss reaches are optimised (the recipe's optimizer at its
        constant learning rate), so parts past them stay untouched, weight decay included.
        Logs ``init/<name>`` per epoch. Raises :class:`~bench.api.types.TrialFailed` on a
        non-finite loss.
        """
        ...

    def create_model(
        self, name: str, num_classes: int | None = None
    ) -> tuple[nn.Module, ModelInfo]:
        """A fresh model on the device, initialised from this trial's seed."""
        ...

    def obtain_teacher(
        self,
        arch: str,
        *,
        classes: tuple[int, ...] | list[int] | None = None,
        epochs: int | None = None,
    ) -> tuple[nn.Module, ModelInfo]:
        """A trained, frozen teacher from the cache (trained on this dataset; optionally on a
        class subset, or early-stopped after ``epochs``)."""
        ...

    def fit(
        self,
        model: nn.Module,
        method: Method,
        *,
        teacher: nn.Module | None = None,
        epochs: int | None = None,
        name: str = "sub-model",
    ) -> list[dict[str, float]]:
        """Run the standard training loop on another (model, method, teacher) triple, as a
        chain step (a teacher assistant trained before the student)."""
        ...

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Record extra metrics with the trial's run."""
        ...
