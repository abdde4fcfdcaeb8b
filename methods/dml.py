"""Deep Mutual Learning (DML): a cohort of students trained together, each distilling from the
others' predictions.

Paper: Ying Zhang, Tao Xiang, Timothy M. Hospedales, Huchuan Lu, "Deep Mutual Learning",
CVPR 2018. https://arxiv.org/abs/1706.00384
Reference code: https://github.com/YingZhangDUT/Deep-Mutual-Learning (``train_models.py``,
TensorFlow).

Every model k of the cohort minimises::

    CE(z_k, y) + 1/(K-1) * sum_{l != k} KL(p_l || p_k)

with ``p = softmax(z)`` (temperature 1) and the other models' predictions as constant targets.
The trial's student is model 0 and the only one evaluated; the ``peers - 1`` other models are
built in ``before_training`` (the student's architecture unless ``peer_arch`` names another) and
are submodules of the method, so they move and checkpoint with it.

Updates (``update``):
- ``alternating`` (paper, Algorithm 1; also the reference code, which runs one training op per
  model in turn): the models are updated one after another on the same batch, each against the
  latest predictions of the others. Here the peers are updated first, each with its own
  optimizer built from the trial's recipe (learning rate following the trial's schedule), and
  the student last, by the harness, against the updated peers. A peer's prediction is recomputed
  after its update (in train mode, with its BatchNorm statistics left unchanged).
- ``simultaneous``: all models make one forward pass, each gets its own loss against the others'
  detached predictions, and the harness's single optimizer steps them together (the peers'
  parameters are then part of ``trainable_parameters``). Cheaper: one forward per model.

Paper vs code:
- The paper averages the KL terms over the other K-1 models; the reference code sums them
  (``kl_reduction="mean"`` / ``"sum"``; identical for two models).
- The reference code clips probabilities with 1e-8 inside the logarithm; kdbench computes the
  KL divergence from log-probabilities.
- In the reference code each model's training op draws its own batch from the input queue; the
  paper (and kdbench) updates all models on the same batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, Range, TaskInfo, TrainContext, register_method
from methods._common import soft_kl


def mutual_kl(logits: Sequence[Tensor], k: int, reduction: str = "mean") -> Tensor:
    """Model k's mimicry loss: KL(p_l || p_k) over the other models l, averaged (``mean``,
    paper) or summed (``sum``, reference code); the others' predictions are constants."""
    terms = [soft_kl(logits[k], logits[l].detach(), 1.0) for l in range(len(logits)) if l != k]
    total = torch.stack(terms).sum()
    return total / len(terms) if reduction == "mean" else total


def dml_losses(logits: Sequence[Tensor], labels: Tensor, reduction: str = "mean") -> list[Tensor]:
    """Each model's DML loss, CE plus mutual KL, for one batch (model order kept)."""
    return [
        F.cross_entropy(z.float(), labels) + mutual_kl(logits, k, reduction)
        for k, z in enumerate(logits)
    ]


@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Forward passes in train mode that leave BatchNorm running statistics unchanged."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


@register_method("dml")
class DeepMutualLearning(Method):
    """Deep Mutual Learning between the student and ``peers - 1`` peer models.

    Attributes:
        peers: Models in the cohort, the student included (≥ 2; paper: 2 in most experiments).
        peer_arch: Architecture of the peers; empty means the student's.
        update: ``alternating`` (paper's Algorithm 1) or ``simultaneous`` (one joint step).
        kl_reduction: ``mean`` over the other models (paper) or ``sum`` (reference code).
    """

    knowledge = "logits"
    mode = "online"
    uses_teacher = False
    owns_ce = True
    version = 1

    class Params(Method.Params):
        peers: Annotated[int, Range(ge=2)] = 2
        peer_arch: str = ""
        update: Literal["alternating", "simultaneous"] = "alternating"
        kl_reduction: Literal["mean", "sum"] = "mean"

    search_space: ClassVar[dict[str, list]] = {"peers": [2, 3, 4]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        if self.params.peers < 2:
            return False, f"peers={self.params.peers}: a cohort needs at least 2 models"
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.peer_models = nn.ModuleList()
        self.optimizers: list[torch.optim.Optimizer] = []

    def before_training(self, ctx: TrainContext) -> None:
        arch = self.params.peer_arch or ctx.student_info.name
        for _ in range(self.params.peers - 1):
            model, _ = ctx.create_model(arch)
            self.peer_models.append(model)
        if self.params.update == "alternating":
            self.optimizers = [ctx.make_optimizer(m.parameters()) for m in self.peer_models]
        self._restore_optimizers()

    def get_extra_state(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def set_extra_state(self, state: dict) -> None:
        # a method rebuilt for resuming gets its optimizers in before_training, after this
        self._pending_optimizer_states = list(state.get("optimizers", []))
        self._restore_optimizers()

    def _restore_optimizers(self) -> None:
        pending = getattr(self, "_pending_optimizer_states", [])
        if pending and len(pending) == len(self.optimizers):
            for optimizer, saved in zip(self.optimizers, pending, strict=True):
                optimizer.load_state_dict(saved)
            self._pending_optimizer_states = []

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        if self.params.update == "simultaneous":
            return self.peer_models.parameters()
        return iter(())  # the peers step with their own optimizers

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        if not len(self.peer_models):
            raise RuntimeError("dml: no peers; before_training(ctx) must run before train_step")
        if self.params.update == "simultaneous":
            return self._simultaneous_step(ctx, batch)
        return self._alternating_step(ctx, batch)

    def _simultaneous_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        logits = [ctx.forward_student(batch.x).logits]
        logits += [ctx.forward(m, batch.x).logits for m in self.peer_models]
        reduction = self.params.kl_reduction
        ce = [F.cross_entropy(z.float(), batch.y) for z in logits]
        kl = [mutual_kl(logits, k, reduction) for k in range(len(logits))]
        return {
            "ce": ce[0],
            "kl": kl[0],
            "peer_ce": torch.stack(ce[1:]).sum(),
            "peer_kl": torch.stack(kl[1:]).sum(),
        }

    def _alternating_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        x, reduction = batch.x, self.params.kl_reduction
        student = ctx.forward_student(x).logits
        # the latest prediction of every model by cohort position (0: the student); the
        # student's does not change until the harness steps it, after the peers; peer 1's
        # comes from its own forward below
        size = 1 + len(self.peer_models)
        latest = {0: student.detach()}
        for k, model in enumerate(self.peer_models[1:], start=2):
            with frozen_bn_statistics(model):
                latest[k] = ctx.forward(model, x, grad=False).logits
        lr = ctx.scheduled_lr(batch)
        for k, (model, optimizer) in enumerate(
            zip(self.peer_models, self.optimizers, strict=True), start=1
        ):
            own = ctx.forward(model, x).logits
            cohort = [own if l == k else latest[l] for l in range(size)]
            loss = F.cross_entropy(own.float(), batch.y) + mutual_kl(cohort, k, reduction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with frozen_bn_statistics(model):
                latest[k] = ctx.forward(model, x, grad=False).logits
        cohort = [student, *(latest[l] for l in range(1, size))]
        return {
            "ce": F.cross_entropy(student.float(), batch.y),
            "kl": mutual_kl(cohort, 0, reduction),
        }
