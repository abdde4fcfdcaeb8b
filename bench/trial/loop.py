"""The training loop: per-step loss terms, their finiteness checks, per-epoch records."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.api import Batch, Method, TrialFailed
from bench.trial.context import TrialContext, lr_factor, make_optimizer
from bench.trial.evaluate import labels_of, predict, topk_accuracy


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
        means = torch.stack(self.rows).double().mean(dim=0).tolist()
        return dict(zip(self.names, means, strict=True))


def train_loop(
    ctx: TrialContext,
    method: Method,
    *,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    start_epoch: int = 0,
    evaluate_val: bool = True,
    max_steps: int | None = None,
) -> list[dict[str, float]]:
    """Train ``ctx.student`` with ``method`` for ``ctx.recipe.epochs``; returns per-epoch
    metrics. Raises :class:`TrialFailed` on a non-finite loss. ``max_steps`` stops after that
    many optimizer steps (a pilot run), ending the epoch there."""
    recipe = ctx.recipe
    params = list(ctx.student.parameters())
    seen = {id(p) for p in params}
    params += [p for p in method.trainable_parameters() if id(p) not in seen and p.requires_grad]
    optimizer = make_optimizer(params, recipe)
    total_steps = max(1, ctx.task.total_steps)
    history: list[dict[str, float]] = []
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        ctx.student.train()
        method.train()
        steps = StepLog(ctx.device)
        lr = recipe.lr
        for batch in ctx.train_batches(epoch=epoch):
            lr = recipe.lr * lr_factor(recipe, batch.step / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            terms = method.train_step(ctx, batch)
            total = sum(terms.values())
            steps.add(terms, total, batch)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            method.after_step(ctx, batch)
            if max_steps is not None and len(steps.rows) >= max_steps:
                break
        val_acc = float("nan")
        if evaluate_val and len(ctx.data.val):
            val_acc = topk_accuracy(
                predict(ctx.student, ctx.data.val, ctx.device), labels_of(ctx.data.val, ctx.device)
            )
        record = EpochRecord(
            epoch=epoch,
            terms=steps.means(),
            val_acc=val_acc,
            lr=lr,
            seconds=time.perf_counter() - started,
        )
        history.append(record.metrics())
        if on_epoch is not None:
            on_epoch(record)
        if max_steps is not None:
            break
    return history
