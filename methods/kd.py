"""Knowledge distillation (KD) with temperature-softened teacher probabilities.

Paper: Geoffrey Hinton, Oriol Vinyals, Jeff Dean, "Distilling the Knowledge in a Neural
Network", NIPS 2014 Deep Learning Workshop; arXiv:1503.02531 (2015).
https://arxiv.org/abs/1503.02531
Reference code: the authors released none. The CIFAR-100 benchmark implementations used for
the defaults are https://github.com/HobbitLong/RepDistiller (``distiller_zoo/KD.py``,
``scripts/run_cifar_distill.sh``) and https://github.com/megvii-research/mdistiller
(``mdistiller/distillers/KD.py``, ``mdistiller/engine/cfg.py``).

Loss::

    (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

with the KL divergence summed over classes and averaged over the batch ("batchmean").

Paper vs code:
- The paper combines the soft-target and hard-target objectives as a weighted average,
  with a much smaller weight on the hard targets, and scales the soft-target term by T^2;
  it fixes no values. The defaults T = 4 and weights 0.1 (CE) / 0.9 (KD) are the CRD
  benchmark's (RepDistiller: ``--kd_T 4 -r 0.1 -a 0.9``; mdistiller: ``KD.TEMPERATURE 4``,
  ``CE_WEIGHT 0.1``, ``KD_WEIGHT 0.9``).
- Those codebases weigh CE and KD independently; here the weights are tied as
  ``(1 - alpha, alpha)``, which reproduces 0.1 / 0.9 exactly. The method therefore owns its
  cross-entropy term (``owns_ce``) instead of taking the harness's unit-weight CE.

The distillation term ``kd_loss`` is shared loss math (``methods/_common.py``): ``ls``,
``takd``, ``byot`` and ``data_free`` use the same function.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

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
from methods._common import kd_loss


@register_method("kd")
class KD(Method):
    """Hinton knowledge distillation.

    Attributes:
        temperature: Softmax temperature T of both teacher and student (CRD benchmark: 4).
        alpha: Weight of the distillation term; the cross-entropy gets ``1 - alpha``
            (CRD benchmark: 0.9).
    """

    knowledge = "logits"
    mode = "offline"
    owns_ce = True
    version = 1

    class Params(Method.Params):
        temperature: Annotated[float, Range(gt=0)] = 4.0
        alpha: Annotated[float, Range(ge=0, le=1)] = 0.9

    search_space: ClassVar[dict[str, list]] = {"temperature": [1.0, 2.0, 4.0, 8.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return same_classes(student, teacher)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "kd")
        p = self.params
        ce = F.cross_entropy(student.logits.float(), batch.y)
        return {
            "ce": (1.0 - p.alpha) * ce,
            "kd": p.alpha * kd_loss(student.logits, teacher.logits, p.temperature),
        }
