"""Correlation congruence (CC).

Paper: Baoyun Peng, Xiao Jin, Jiaheng Liu, Shunfeng Zhou, Yichao Wu, Yu Liu, Dongsheng Li,
Zhaoning Zhang, "Correlation Congruence for Knowledge Distillation", ICCV 2019.
https://arxiv.org/abs/1904.01802
Reference code: the authors released none. Kernel form used here:
https://github.com/AberHu/Knowledge-Distillation-Zoo (``kd_losses/cc.py``); CRD benchmark:
https://github.com/HobbitLong/RepDistiller (``distiller_zoo/CC.py``, "code emailed to me by
the original author").

``variant="paper"`` (default): the correlation of two L2-normalised embeddings is the Gaussian
RBF kernel exp(−γ‖x − y‖²) = exp(−2γ)·exp(2γ xᵀy), approximated by its Taylor series to order
P::

    C_ij = Σ_{p=0..P} exp(−2γ) (2γ)^p / p! · (x_iᵀx_j)^p

and the loss is ‖C_T − C_S‖_F² / b² (γ = 0.4, P = 2). C is b×b on both sides, so the student's
and the teacher's embeddings are used as they are, whatever their widths.

``variant="crd"``: the CRD benchmark's implementation. Both embeddings pass through trainable
linear embeddings (width ``feat_dim`` = 128) and the loss is
``mean_i Σ_d |Δ_i,d| · |Δ_{i+1},d|`` with Δ = embed_s(s) − embed_t(t), i.e. a product of the
differences of consecutive samples of the batch; β = 0.02.

Paper vs code: the two variants above are what they disagree on. Further notes:
- The paper adds the instance-level KD term; here only the correlation term is the method
  (combine with ``kd`` for CCKD), as in both reference codebases.
- No trainable embedding in ``paper``: with a trainable teacher-side embedding both
  correlation matrices can collapse to the same constant and the loss to zero.
- ``beta`` defaults to 100 (Knowledge-Distillation-Zoo's CIFAR weight for this kernel form);
  the paper's weight for CIFAR-100 is not used by any public code. With ``variant="crd"``
  set ``beta=0.02`` for the CRD benchmark's setting.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

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
    register_method,
    require_teacher,
)


def taylor_rbf_correlation(embedding: Tensor, gamma: float, order: int) -> Tensor:
    """b×b correlation matrix of L2-normalised rows under the order-``order`` Taylor
    expansion of the Gaussian RBF kernel, in fp32."""
    e = F.normalize(embedding.float().flatten(1), dim=1, eps=1e-12)
    with torch.autocast(device_type=e.device.type, enabled=False):
        sim = e @ e.t()
    coefficients = [
        math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) for p in range(order + 1)
    ]
    corr = torch.full_like(sim, coefficients[0])
    power = torch.ones_like(sim)
    for coefficient in coefficients[1:]:
        power = power * sim
        corr = corr + coefficient * power
    return corr


def consecutive_difference_loss(embed_s: Tensor, embed_t: Tensor) -> Tensor:
    """The CRD benchmark's CC loss: mean_i Σ_d |Δ_i| |Δ_{i+1}| over the batch order."""
    delta = (embed_s.float() - embed_t.float()).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


@register_method("cc")
class CorrelationCongruence(Method):
    """Match the kernel correlation between the samples of a batch.

    Attributes:
        beta: Weight of the CC term (``paper``: 100; CRD benchmark's ``crd``: 0.02).
        gamma: γ of the Gaussian RBF kernel (0.4).
        order: Order P of its Taylor expansion (2).
        variant: ``paper`` (Taylor-RBF correlation matrices) or ``crd`` (the CRD benchmark's
            loss on linear embeddings).
        feat_dim: Width of the linear embeddings of the ``crd`` variant (128).
    """

    knowledge = "relation"
    mode = "offline"
    needs = frozenset({"embedding"})
    version = 1

    class Params(Method.Params):
        beta: Annotated[float, Range(ge=0)] = 100.0
        gamma: Annotated[float, Range(gt=0)] = 0.4
        order: Annotated[int, Range(ge=0)] = 2
        variant: Literal["paper", "crd"] = "paper"
        feat_dim: Annotated[int, Range(ge=1)] = 128

    search_space: ClassVar[dict[str, list]] = {"beta": [25.0, 100.0, 400.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return (True, "") if teacher is not None else (False, "needs a teacher")

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        if self.params.variant == "crd":
            self.embed_s = nn.Linear(student.embedding_dim, self.params.feat_dim)
            self.embed_t = nn.Linear(teacher.embedding_dim, self.params.feat_dim)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "cc")
        assert student.embedding is not None and teacher.embedding is not None
        p = self.params
        if p.variant == "crd":
            value = consecutive_difference_loss(
                self.embed_s(student.embedding), self.embed_t(teacher.embedding)
            )
        else:
            corr_s = taylor_rbf_correlation(student.embedding, p.gamma, p.order)
            corr_t = taylor_rbf_correlation(teacher.embedding, p.gamma, p.order)
            value = (corr_t - corr_s).pow(2).mean()
        return {"cc": p.beta * value}
