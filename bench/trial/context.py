"""The harness's training context: :class:`TrialContext` implements the plugin API's
``TrainContext`` protocol, and :func:`make_context` is the one way to build one.

The context needs two things from above it that it must not import: a source of further
teachers (``bench.teachers``) and the training loop (``bench.trial.loop``, for ``fit``). The
trial's composition lends them through :class:`ContextServices`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, Outputs, TaskInfo, TrialFailed
from bench.config import Recipe
from bench.data import DataBundle
from bench.models import create_model, forward_outputs, list_models, model_info
from bench.trial.device import Execution


class CachedOutputs(Protocol):
    """One epoch's cached teacher outputs (``bench.teacher_cache.TeacherOutputs``)."""

    def covers(self, needs: frozenset[str]) -> bool: ...

    def take(self, index: Tensor, needs: frozenset[str]) -> Outputs: ...


class EpochOutputs(Protocol):
    """A trial's teacher outputs cache: the cached outputs of an epoch's inputs, if any."""

    def for_epoch(self, epoch: int, *, augmented: bool) -> CachedOutputs | None: ...


#: Further teachers a method asks for: (architecture, class subset, stop epoch) → model, info.
TeacherSource = Callable[[str, tuple[int, ...] | None, int | None], tuple[nn.Module, ModelInfo]]


@dataclass(frozen=True)
class ContextServices:
    """What the trial's composition lends its context.

    Attributes:
        obtain_teacher: Source of further teachers (``ctx.obtain_teacher``), or None.
        train: The training loop (``ctx.fit`` trains sub-models with it), or None.
        log: Where ``ctx.log_metrics`` records, or None.
    """

    obtain_teacher: TeacherSource | None = None
    train: Callable[[TrialContext, Method], list[dict[str, float]]] | None = None
    log: Callable[[dict[str, float]], None] | None = None


def make_optimizer(params: list[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params`` (BatchNorm and biases are decayed too, as in
    the reference KD codebases)."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` ∈ [0, 1] of training."""
    warm = recipe.warmup_epochs / recipe.epochs
    if progress < warm:
        return (progress + 1e-12) / warm
    if recipe.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.schedule == "step":
        return recipe.gamma ** sum(progress >= m for m in recipe.milestones)
    return 1.0


def task_info(dataset: str, data: DataBundle, recipe: Recipe) -> TaskInfo:
    """The task a method is set up for: ``data``'s classes, input size and training split,
    trained for ``recipe``'s epochs in steps of its batch size (at least one per epoch)."""
    batch = recipe.batch_size
    return TaskInfo(
        dataset=dataset,
        num_classes=data.info.num_classes,
        input_size=data.info.input_size,
        num_train=len(data.train),
        epochs=recipe.epochs,
        steps_per_epoch=len(data.train) // batch if len(data.train) > batch else 1,
        models=tuple(list_models()),
    )


class TrialContext:
    """The harness's :class:`bench.api.TrainContext`: what a method's hooks use in a trial.

    Attributes:
        student: The model being trained.
        teacher: The frozen teacher (eval mode, no grad), or None.
        student_info: Shapes of the student.
        teacher_info: Shapes of the teacher, or None.
        task: The task.
        recipe: The student's recipe.
        device: The training device.
        generator: A seeded CPU generator for any randomness a method draws.
        data: The dataset bundle (methods read ``data.train`` through :meth:`train_batches`).
        data_generator: The generator of the training order (part of a resumable state).
        execution: The device's execution policy.
        services: What the trial's composition lends the context (teachers, the loop).
    """

    def __init__(
        self,
        *,
        student: nn.Module,
        student_info: ModelInfo,
        teacher: nn.Module | None,
        teacher_info: ModelInfo | None,
        task: TaskInfo,
        recipe: Recipe,
        device: torch.device,
        data: DataBundle,
        seed: int,
        execution: Execution,
        services: ContextServices,
        teacher_outputs: EpochOutputs | None = None,
    ) -> None:
        self.student = student
        self.student_info = student_info
        self.teacher = teacher
        self.teacher_info = teacher_info
        self.task = task
        self.recipe = recipe
        self.device = device
        self.data = data
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.data_generator = torch.Generator().manual_seed(seed)
        self.execution = execution
        self.services = services
        self._models_created = 0
        #: The frozen teacher's outputs on the training split, or None: one entry when the
        #: inputs are the same every epoch, one per epoch under the shared augmentation stream.
        self.teacher_outputs = teacher_outputs
        self._batch: Batch | None = None
        self._batch_version = -1
        self._batch_outputs: CachedOutputs | None = None

    # -- forward passes ----------------------------------------------------------------------

    def forward(
        self,
        model: nn.Module,
        x: Tensor,
        needs: frozenset[str] | set[str] = frozenset(),
        *,
        grad: bool = True,
    ) -> Outputs:
        """One forward pass of any model, computing only ``needs`` besides logits."""
        grad_mode = contextlib.nullcontext() if grad else torch.no_grad()
        with grad_mode, self.execution.autocast(self.device):
            return forward_outputs(model, x, needs)

    def forward_student(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        return self.forward(self.student, x, needs)

    def forward_teacher(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        """The frozen teacher's outputs on ``x``: looked up in the teacher outputs cache when
        ``x`` is the current training batch, unmodified, else one forward pass without
        gradients."""
        if self.teacher is None:
            raise RuntimeError("this trial has no teacher (the method declares uses_teacher)")
        cached = self._cached_teacher_outputs(x, needs)
        if cached is not None:
            return cached
        # no_grad rather than inference_mode: its outputs may be saved for the student's
        # backward pass as they are, where inference tensors would need a copy every step.
        with torch.no_grad(), self.execution.autocast(self.device):
            return forward_outputs(self.teacher, x, needs)

    def _cached_teacher_outputs(self, x: Tensor, needs: frozenset[str]) -> Outputs | None:
        batch, cache = self._batch, self._batch_outputs
        if cache is None or batch is None or x is not batch.x:
            return None
        if x._version != self._batch_version or not cache.covers(needs):
            return None  # changed in place since it was yielded, or asks for more
        return cache.take(batch.index, needs)

    # -- building blocks for methods that change the step ------------------------------------

    def create_model(
        self, name: str, num_classes: int | None = None
    ) -> tuple[nn.Module, ModelInfo]:
        """A fresh model on the device, initialised from this trial's seed."""
        self._models_created += 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1000 + self._models_created)
            model = create_model(
                name,
                num_classes or self.task.num_classes,
                image_size=self.task.input_size[1],
                in_chans=self.task.input_size[0],
            )
        model.to(self.device)
        return model, model_info(model, name, self.task.input_size)

    def obtain_teacher(
        self,
        arch: str,
        *,
        classes: tuple[int, ...] | list[int] | None = None,
        epochs: int | None = None,
    ) -> tuple[nn.Module, ModelInfo]:
        """A trained, frozen teacher from the cache (trained on this dataset; optionally on a
        class subset, or early-stopped at ``epochs``)."""
        if self.services.obtain_teacher is None:
            raise TrialFailed("this trial cannot obtain further teachers (no teacher source)")
        chosen = tuple(classes) if classes is not None else None
        return self.services.obtain_teacher(arch, chosen, epochs)

    def train_batches(self, augment: bool = True, *, epoch: int = 0) -> Iterator[Batch]:
        """One epoch over the training split as :class:`Batch` objects (augmented by the
        shared stream of ``epoch`` when the recipe asks for it)."""
        steps = max(1, self.task.steps_per_epoch)
        augment = augment and self.recipe.augment
        shared = augment and self.recipe.augment_stream == "shared"
        cache = self.teacher_outputs
        outputs = None if cache is None else cache.for_epoch(epoch, augmented=augment)
        for i, (x, y, index) in enumerate(
            self.data.train.batches(
                self.recipe.batch_size,
                shuffle=True,
                generator=self.data_generator,
                augment=augment,
                device=self.device,
                drop_last=len(self.data.train) > self.recipe.batch_size,
                **({"shared_epoch": epoch} if shared else {}),
            )
        ):
            step = epoch * steps + i
            x = self.execution.images(x)
            batch = Batch(
                x=x,
                y=y,
                index=index,
                epoch=epoch,
                step=step,
                progress=min(step / max(1, self.task.total_steps), 1.0 - 1e-9),
            )
            self._batch, self._batch_version = batch, x._version
            self._batch_outputs = outputs
            yield batch
        self._batch = self._batch_outputs = None

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return make_optimizer(list(params), self.recipe)

    def scheduled_lr(self, batch: Batch) -> float:
        """The student's learning rate at ``batch`` under the recipe's warm-up and schedule."""
        return self.recipe.lr * lr_factor(self.recipe, batch.step / max(1, self.task.total_steps))

    def run_init_stage(
        self,
        name: str,
        epochs: int,
        candidates: Iterable[nn.Parameter],
        step_loss: Callable[[Batch], Tensor],
    ) -> None:
        """Train on ``step_loss`` alone for ``epochs`` epochs (an initialisation stage).

        Only the ``candidates`` that the loss reaches are optimised (with the recipe's
        optimizer and constant learning rate), so layers past the guided ones are left
        untouched, weight decay included. Logs ``init/<name>`` per epoch.

        Raises:
            TrialFailed: the loss became non-finite.
        """
        candidates = list(candidates)
        optimizer = None
        for epoch in range(epochs):
            total, steps = 0.0, 0
            for batch in self.train_batches(epoch=epoch):
                loss = step_loss(batch)
                if not torch.isfinite(loss):
                    raise TrialFailed(
                        f"{name}: non-finite initialisation loss at epoch {epoch}; lower the "
                        "learning rate or the loss weight"
                    )
                if optimizer is None:
                    optimizer = self.make_optimizer(reached_parameters(loss, candidates))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item()
                steps += 1
            self.log_metrics({f"init/{name}": total / max(steps, 1), "init/epoch": float(epoch)})

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
        recipe = self.recipe if epochs is None else dataclasses.replace(self.recipe, epochs=epochs)
        info = model_info(model, name, self.task.input_size)
        teacher_info = (
            model_info(teacher, name + "-teacher", self.task.input_size) if teacher else None
        )
        task = dataclasses.replace(self.task, epochs=recipe.epochs)
        sub = TrialContext(
            student=model,
            student_info=info,
            teacher=teacher,
            teacher_info=teacher_info,
            task=task,
            recipe=recipe,
            device=self.device,
            data=self.data,
            seed=self.seed + 7919,
            execution=Execution(precision=self.execution.precision),
            services=dataclasses.replace(self.services, log=None),
        )
        method.setup(info, teacher_info, task)
        method.to(self.device)
        if self.services.train is None:
            raise TrialFailed("this trial cannot train sub-models (no training loop given)")
        return self.services.train(sub, method)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.services.log is not None:
            self.services.log(metrics)


def make_context(
    *,
    student: nn.Module,
    student_info: ModelInfo,
    task: TaskInfo,
    recipe: Recipe,
    device: torch.device,
    data: DataBundle,
    seed: int,
    teacher: nn.Module | None = None,
    teacher_info: ModelInfo | None = None,
    execution: Execution | None = None,
    services: ContextServices | None = None,
    teacher_outputs: EpochOutputs | None = None,
) -> TrialContext:
    """The one way to build a :class:`TrialContext` (trials, teachers, tests, benchmarks)."""
    return TrialContext(
        student=student,
        student_info=student_info,
        teacher=teacher,
        teacher_info=teacher_info,
        task=task,
        recipe=recipe,
        device=device,
        data=data,
        seed=seed,
        execution=execution or Execution(),
        services=services or ContextServices(),
        teacher_outputs=teacher_outputs,
    )


def reached_parameters(loss: Tensor, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters among ``params`` that ``loss`` depends on."""
    params = [p for p in params if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]
