"""Variational information distillation (VID).

Paper: Sungsoo Ahn, Shell Xu Hu, Andreas Damianou, Neil D. Lawrence, Zhenwen Dai, "Variational
Information Distillation for Knowledge Transfer", CVPR 2019. https://arxiv.org/abs/1904.05835
Reference code: https://github.com/ssahn0215/variational-information-distillation; CRD
benchmark: https://github.com/HobbitLong/RepDistiller (``distiller_zoo/VID.py``, "code from
author").

At every aligned stage pair the teacher's map t is modelled by a heteroscedastic Gaussian
whose mean μ(s) is a small network of 1×1 convolutions on the student's map s
(C_s → C_t → C_t → C_t, ReLU between) and whose variance is one learned value per teacher
channel, σ_c² = softplus(α_c) + ε. The loss is the Gaussian negative log-likelihood
(without its constant)::

    ½ · [ (t − μ(s))² / σ_c² + log σ_c² ]

averaged over batch, channels and positions, summed over the stage pairs (β = 1). σ² starts
at 5 (α initialised to softplus⁻¹(5 − ε)), ε = 1e-5. Where spatial sizes differ the student's
map is resized to the teacher's with ``match_spatial`` before the regressor (the CRD
benchmark pools whichever map is larger). Pairs with a 1×1 map on either side carry no
spatial knowledge and are left out (``spatial_pairs``); the pair is refused when none remains.

Paper vs code: the paper's negative log-likelihood sums over channels and positions; the
authors' code (and the CRD benchmark) averages, which weighs every stage pair equally
whatever its size. ``reduction="mean"`` (default) is the code's; ``reduction="sum"`` sums
over channels and positions and averages over the batch (then lower ``beta``).
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class GaussianRegressor(nn.Module):
    """Mean network (1×1 convolutions) and per-channel variance of one stage pair.

    Args:
        in_channels: Student channels.
        out_channels: Teacher channels (also the hidden width, as in the reference code).
        init_var: Initial variance σ².
        eps: Floor added to the variance.
    """

    def __init__(self, in_channels: int, out_channels: int, init_var: float, eps: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False),
        )
        self.eps = eps
        # softplus⁻¹(v) = log(exp(v) − 1), written stably for large v
        v = init_var - eps
        self.alpha = nn.Parameter(torch.full((out_channels,), v + math.log(-math.expm1(-v))))

    def variance(self) -> Tensor:
        return F.softplus(self.alpha.float()) + self.eps

    def nll(self, student: Tensor, teacher: Tensor, reduction: str) -> Tensor:
        """Gaussian negative log-likelihood of ``teacher`` given ``student`` (fp32)."""
        mu = self.mean(student).float()
        var = self.variance().view(1, -1, 1, 1)
        per_element = 0.5 * ((mu - teacher.float()).pow(2) / var + torch.log(var))
        if reduction == "mean":
            return per_element.mean()
        return per_element.sum() / per_element.shape[0]


@register_method("vid")
class VariationalInformationDistillation(Method):
    """Maximise a variational lower bound on the student–teacher mutual information.

    Attributes:
        beta: Weight of the summed per-stage negative log-likelihoods (CRD benchmark: 1).
        init_var: Initial variance σ² (reference code: 5).
        eps: Variance floor ε (reference code: 1e-5).
        reduction: ``mean`` (authors' code) or ``sum`` (paper) over channels and positions.
    """

    knowledge = "intermediate"
    mode = "offline"
    needs = frozenset({"features"})
    version = 2

    class Params(Method.Params):
        beta: Annotated[float, Range(ge=0)] = 1.0
        init_var: Annotated[float, Range(gt=0)] = 5.0
        eps: Annotated[float, Range(gt=0)] = 1e-5
        reduction: Literal["mean", "sum"] = "mean"

    search_space: ClassVar[dict[str, list]] = {"beta": [0.25, 1.0, 4.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if not ok or teacher is None:
            return ok, reason
        return spatial_pair_supports(student, teacher, task, align_stages(student, teacher))

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        p = self.params
        self.pairs = spatial_pairs(student, teacher, task, align_stages(student, teacher))
        self.stage_pairs = describe_pairs(student, teacher, task, self.pairs)
        self.regressors = nn.ModuleList(
            GaussianRegressor(
                student.feature_channels[s], teacher.feature_channels[t], p.init_var, p.eps
            )
            for s, t in self.pairs
        )

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "vid")
        p = self.params
        total = student.logits.new_zeros((), dtype=torch.float32)
        for (s, t), regressor in zip(self.pairs, self.regressors, strict=True):
            f_t = teacher.features[t]
            f_s = match_spatial(student.features[s], f_t)
            # nn.ModuleList yields plain Modules; setup() fills it with GaussianRegressors.
            nll = cast(GaussianRegressor, regressor).nll
            total = total + nll(f_s, f_t, p.reduction)
        return {"vid": p.beta * total}
