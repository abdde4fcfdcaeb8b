"""Logit regression: the student's logits regress onto the teacher's with a squared L2 loss.

Papers:
- Lei Jimmy Ba, Rich Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014.
  https://arxiv.org/abs/1312.6184 — the mimic network learns the teacher's logits by
  minimising ``1/(2N) * sum_n ||g(x_n) - z_n||^2`` (sum over classes, mean over samples,
  factor 1/2), trained on the logits alone (no label term).
- Raphael Tang, Yao Lu, Linqing Liu, Lili Mou, Olga Vechtomova, Jimmy Lin, "Distilling
  Task-Specific Knowledge from BERT into Simple Neural Networks", arXiv:1903.12136, 2019.
  https://arxiv.org/abs/1903.12136 — ``L = a * CE + (1 - a) * ||z_teacher - z_student||^2``
  (squared L2 norm over classes, no factor 1/2), with ``a`` a tuned weight.
Reference code: neither paper's code is used here; the loss is a closed form.

Paper vs paper (normalisation, selected by ``normalisation``):
- ``half_sum`` (default, Ba & Caruana): ``0.5 * mean_n sum_k (z_s - z_t)^2``.
- ``sum`` (Tang et al.): ``mean_n sum_k (z_s - z_t)^2``.
- ``mean`` (``torch.nn.MSELoss`` default, used by many codebases): ``mean_{n,k} (z_s - z_t)^2``,
  i.e. ``sum`` divided by the number of classes.
The label term is the method's own (``owns_ce``) so that its weight can be 0 as in Ba &
Caruana (default) or ``a`` as in Tang et al.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor

from bench.api import (
    Batch,
    Method,
    ModelInfo,
    Outputs,
    Range,
    TaskInfo,
    register_method,
    require_teacher,
    same_classes,
)


def logit_mse_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    normalisation: Literal["half_sum", "sum", "mean"] = "half_sum",
) -> Tensor:
    """Squared L2 distance between logits, normalised as named (see the module docstring)."""
    squared = (student_logits.float() - teacher_logits.float()).pow(2)
    if normalisation == "mean":
        return squared.mean()
    per_sample = squared.sum(dim=1).mean()
    return 0.5 * per_sample if normalisation == "half_sum" else per_sample


@register_method("logit_mse")
class LogitMSE(Method):
    """Regression of the teacher's logits.

    Attributes:
        normalisation: ``half_sum`` (Ba & Caruana 2014), ``sum`` (Tang et al. 2019) or
            ``mean`` (mean over batch and classes).
        weight: Weight of the logit-regression term.
        ce_weight: Weight of the student's cross-entropy on the labels (Ba & Caruana: 0).
    """

    knowledge = "logits"
    mode = "offline"
    owns_ce = True
    version = 1

    class Params(Method.Params):
        normalisation: Literal["half_sum", "sum", "mean"] = "half_sum"
        weight: Annotated[float, Range(ge=0)] = 1.0
        ce_weight: Annotated[float, Range(ge=0)] = 0.0

    search_space: ClassVar[dict[str, list]] = {"ce_weight": [0.0, 0.1, 1.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return same_classes(student, teacher)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "logit_mse")
        p = self.params
        mse = logit_mse_loss(student.logits, teacher.logits, p.normalisation)
        ce = F.cross_entropy(student.logits.float(), batch.y)
        return {"ce": p.ce_weight * ce, "logit_mse": p.weight * mse}
