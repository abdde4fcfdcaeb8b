"""The training loop: per-step loss terms, their finiteness checks, per-epoch records."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from bench.api import Batch, Method, TrialFailed
from bench.progress import TrainingProgress
from bench.trial.context import TrialContext, lr_factor, make_optimizer
from bench.trial.evaluate import labels_of, predict, topk_accuracy
from bench.trial.resume import (
    CheckpointPolicy,
    TrainState,
    capture_rng,
    cpu_state_dict,
    restore_rng,
)


class Checkpointer(Protocol):
    """Where a running trial's state goes between epochs (a file for ``kdbench train``, a Ray
    Tune checkpoint in a sweep), and when."""

    policy: CheckpointPolicy

    def save(self, state: TrainState) -> None: ...


def capture(
    ctx: TrialContext,
    method: Method,
    optimizer: torch.optim.Optimizer,
    epochs_done: int,
    history: list[dict[str, float]],
) -> TrainState:
    """The trial's state after ``epochs_done`` epochs."""
    return TrainState(
        epochs_done=epochs_done,
        history=[dict(h) for h in history],
        student=cpu_state_dict(ctx.student),
        method=cpu_state_dict(method),
        optimizer=cpu_state_dict(optimizer),
        rng=capture_rng(_generators(ctx)),
    )


def restore(
    state: TrainState, ctx: TrialContext, method: Method, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    """Load ``state`` into a freshly built trial; returns the epoch to continue from and the
    history so far."""
    ctx.student.load_state_dict(state.student)
    method.load_state_dict(state.method)
    optimizer.load_state_dict(state.optimizer)
    restore_rng(state.rng, _generators(ctx))
    return state.epochs_done, [dict(h) for h in state.history]


def _generators(ctx: TrialContext) -> dict[str, torch.Generator]:
    return {"method": ctx.generator, "data": ctx.data_generator}


class SupervisedOnly(Method):
    """The harness's own plain training step: the student's cross-entropy and nothing else
    (teachers are trained with it, so the harness needs no plugin to train one)."""

    uses_teacher = False


@dataclass
class EpochRecord:
    """What one epoch produced."""

    epoch: int
    terms: dict[str, float]
    val_acc: float
    lr: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        out = {f"train/{k}": v for k, v in self.terms.items()}
        out.update({"val_acc": self.val_acc, "lr": self.lr, "epoch_seconds": self.seconds})
        return out


#: Steps between finiteness checks. A check reads a value back from the device: on the CPU
#: that costs nothing and a diverged step is caught before it is applied; on an accelerator
#: each read stalls the queue of kernels, so the loss is checked once per window.
CHECK_EVERY = {"cpu": 1}
DEFAULT_CHECK_EVERY = 32


class StepLog:
    """One epoch's per-step loss terms, kept on the device as one small tensor per step;
    checked for finiteness every ``check_every`` steps and averaged at the end."""

    def __init__(self, device: torch.device) -> None:
        self.check_every = CHECK_EVERY.get(device.type, DEFAULT_CHECK_EVERY)
        self.names: list[str] | None = None
        self.rows: list[Tensor] = []
        self.steps: list[tuple[int, int]] = []
        self._checked = 0

    def add(self, terms: dict[str, Tensor], total: Tensor, batch: Batch) -> None:
        names = [*terms, "loss"]
        if self.names is None:
            self.names = names
        elif names != self.names:
            raise TrialFailed(
                f"the method returned loss terms {names[:-1]} at step {batch.step} but "
                f"{self.names[:-1]} before; train_step must return the same terms every step"
            )
        row = torch.stack([v.detach().float() for v in terms.values()] + [total.detach().float()])
        self.rows.append(row)
        self.steps.append((batch.epoch, batch.step))
        if len(self.rows) - self._checked >= self.check_every:
            self.check()

    def check(self) -> None:
        """Raise :class:`TrialFailed` naming the first non-finite step since the last check."""
        if self._checked == len(self.rows):
            return
        assert self.names is not None  # set by the add() that appended the first row
        window = torch.stack(self.rows[self._checked :])
        self._checked = len(self.rows)
        finite = torch.isfinite(window).all(dim=1)
        if bool(finite.all()):
            return
        first = int((~finite).nonzero()[0, 0])
        row = window[first].tolist()
        epoch, step = self.steps[len(self.rows) - len(window) + first]
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(self.names[:-1], row, strict=False))
        raise TrialFailed(
            f"non-finite loss at epoch {epoch}, step {step}: {values}. "
            "The trial diverged; try a smaller learning rate or loss weight."
        )

    def means(self) -> dict[str, float]:
        """Each term's mean over the epoch's steps (``loss`` is their sum's mean)."""
        self.check()
        if not self.rows:
            return {}
        assert self.names is not None  # set by the add() that appended the first row
        means = torch.stack(self.rows).double().mean(dim=0).tolist()
        return dict(zip(self.names, means, strict=True))


def train_loop(
    ctx: TrialContext,
    method: Method,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    evaluate_val: bool = True,
    max_steps: int | None = None,
    resume: TrainState | None = None,
    checkpoint: Checkpointer | None = None,
    progress: TrainingProgress | None = None,
) -> list[dict[str, float]]:
    """Train ``ctx.student`` with ``method`` for ``ctx.recipe.epochs``; returns per-epoch
    metrics (of every epoch, resumed ones included).

    Args:
        ctx: The trial's context.
        method: The method, set up (and past ``before_training``).
        on_epoch: Called after each epoch with its record.
        evaluate_val: Measure validation accuracy after each epoch.
        max_steps: Stop after that many optimizer steps (a pilot run), ending the epoch there.
        resume: A state saved after some epochs: training continues after them.
        checkpoint: Saves the state between epochs when its policy says so.
        progress: Shown each epoch's steps and end.

    Raises:
        TrialFailed: a non-finite loss.
    """
    recipe = ctx.recipe
    params = list(ctx.student.parameters())
    seen = {id(p) for p in params}
    params += [p for p in method.trainable_parameters() if id(p) not in seen and p.requires_grad]
    optimizer = make_optimizer(params, recipe)
    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume is not None:
        start_epoch, history = restore(resume, ctx, method, optimizer)
    total_steps = max(1, ctx.task.total_steps)
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        ctx.student.train()
        method.train()
        steps = StepLog(ctx.device)
        lr = recipe.lr
        if progress is not None:
            progress.start_epoch(epoch, recipe.epochs, max(1, ctx.task.steps_per_epoch))
        for batch in ctx.train_batches(epoch=epoch):
            lr = recipe.lr * lr_factor(recipe, batch.step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            terms = method.train_step(ctx, batch)
            total = sum(terms.values())
            if not isinstance(total, Tensor):  # no terms sum to the integer 0
                raise TypeError(f"{method.name}: train_step returned no loss terms")
            steps.add(terms, total, batch)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            method.after_step(ctx, batch)
            if progress is not None:
                progress.step()
            if max_steps is not None and len(steps.rows) >= max_steps:
                break
        val_acc = float("nan")
        if evaluate_val and len(ctx.data.val):
            val_acc = topk_accuracy(
                predict(ctx.student, ctx.data.val, ctx.device, execution=ctx.execution),
                labels_of(ctx.data.val, ctx.device),
            )
        record = EpochRecord(
            epoch=epoch,
            terms=steps.means(),
            val_acc=val_acc,
            lr=lr,
            seconds=time.perf_counter() - started,
        )
        history.append(record.metrics())
        if progress is not None:
            progress.end_epoch(
                epoch,
                recipe.epochs,
                loss=record.terms.get("loss", float("nan")),
                val_acc=val_acc,
                seconds=record.seconds,
            )
        if on_epoch is not None:
            on_epoch(record)
        if checkpoint is not None and checkpoint.policy.due(epoch + 1, recipe.epochs):
            checkpoint.save(capture(ctx, method, optimizer, epoch + 1, history))
            checkpoint.policy.saved()
        if max_steps is not None:
            break
    return history
