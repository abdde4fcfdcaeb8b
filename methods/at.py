"""Attention transfer (AT).

Paper: Sergey Zagoruyko, Nikos Komodakis, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.
https://arxiv.org/abs/1612.03928
Reference code: https://github.com/szagoruyko/attention-transfer (``cifar.py``: ``at``,
``at_loss``); CRD benchmark: https://github.com/HobbitLong/RepDistiller (``distiller_zoo/AT.py``).

The attention map of a stage output A (C×H×W) is Q = vec(mean_c |A_c|^p), L2-normalised. The
student matches the teacher's map at every aligned stage pair.

Paper vs code:
- The paper's Eq. (2) adds ``β/2 · Σ_j ‖Q_S^j/‖Q_S^j‖ − Q_T^j/‖Q_T^j‖‖_p`` (a norm, not squared)
  with β = 10^3 "divided by the number of elements in the attention map and batch size".
  Both the authors' code and the CRD benchmark instead add ``β · Σ_j mean((Q_S − Q_T)^2)``
  with β = 1000 (the mean over batch and positions plays the division). ``variant="code"``
  (default; what every published AT number was produced with) selects that;
  ``variant="paper"`` the written equation with the stated normalisation of β.
- The paper sums |A_c|^p over channels, the code averages; the L2 normalisation removes the
  difference.
- Stages: the code pairs same-resolution group outputs of two WRNs (the CRD benchmark all
  stage outputs but the stem). Here the stage pairs of ``align_stages`` whose maps are at
  least 2×2 on both sides (``spatial_pairs``: a 1×1 map's attention map is a constant); the
  pair is refused when none is. Where spatial sizes differ the student's map is resized to
  the teacher's with ``match_spatial`` (the CRD benchmark pools whichever map is larger).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import (
    Batch,
    Method,
    ModelInfo,
    Outputs,
    Range,
    TaskInfo,
    align_stages,
    describe_pairs,
    match_spatial,
    register_method,
    require_teacher,
    spatial_pair_supports,
    spatial_pairs,
    spatial_supports,
)


def attention_map(feature: Tensor, p: float) -> Tensor:
    """The L2-normalised spatial attention map of an N×C×H×W map, as N×(H·W), in fp32."""
    q = feature.float().abs().pow(p).mean(dim=1).flatten(1)
    return F.normalize(q, dim=1, eps=1e-12)


@register_method("at")
class AttentionTransfer(Method):
    """Attention transfer on every aligned stage pair.

    Attributes:
        beta: Weight of the attention term (paper and CRD benchmark: 1000).
        p: Exponent of the attention map (paper: 2).
        variant: ``code`` (β·mean squared difference, summed over stages) or ``paper``
            (β/2 · Σ_j ‖ΔQ_j‖_2 with β divided by batch size and map size).
    """

    knowledge = "intermediate"
    mode = "offline"
    needs = frozenset({"features"})
    version = 2

    class Params(Method.Params):
        beta: Annotated[float, Range(ge=0)] = 1000.0
        p: Annotated[float, Range(gt=0)] = 2.0
        variant: Literal["code", "paper"] = "code"

    search_space: ClassVar[dict[str, list]] = {"beta": [250.0, 1000.0, 4000.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if not ok or teacher is None:
            return ok, reason
        return spatial_pair_supports(student, teacher, task, align_stages(student, teacher))

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        self.pairs = spatial_pairs(student, teacher, task, align_stages(student, teacher))
        self.stage_pairs = describe_pairs(student, teacher, task, self.pairs)

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "at")
        p = self.params
        total = student.logits.new_zeros((), dtype=torch.float32)
        for s, t in self.pairs:
            f_t = teacher.features[t]
            f_s = match_spatial(student.features[s], f_t)
            diff = attention_map(f_s, p.p) - attention_map(f_t, p.p)
            if p.variant == "code":
                total = total + p.beta * diff.pow(2).mean()
            else:
                total = total + p.beta / 2 * diff.norm(dim=1).mean() / diff.shape[1]
        return {"at": total}
