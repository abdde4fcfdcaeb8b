"""Relational knowledge distillation (RKD).

Paper: Wonpyo Park, Dongju Kim, Yan Lu, Minsu Cho, "Relational Knowledge Distillation",
CVPR 2019. https://arxiv.org/abs/1904.05068
Reference code: https://github.com/lenscloth/RKD (``metric/loss.py``: ``RkdDistance``,
``RKdAngle``); CRD benchmark: https://github.com/HobbitLong/RepDistiller
(``distiller_zoo/RKD.py``).

On the pooled embeddings of a batch (widths may differ):

- distance-wise: ψ_D(t_i, t_j) = ‖t_i − t_j‖ / μ with μ the mean distance over pairs i ≠ j;
  loss = mean over all (i, j) of Huber(ψ_D^S − ψ_D^T);
- angle-wise: ψ_A(t_i, t_j, t_k) = ⟨e_ij, e_kj⟩ with e_ij = (t_i − t_j)/‖t_i − t_j‖;
  loss = mean over all triplets of Huber(ψ_A^S − ψ_A^T);

total = w_dist · distance + w_angle · angle, Huber with δ = 1 (smooth L1).

Paper vs code: they agree (λ_D = 25, λ_A = 50 in the paper's RKD-DA; the CRD benchmark uses the
same weights with β = 1 on the pooled feature). Both the reference code and this
implementation set the angle of a degenerate triple (a repeated sample) to 0. Here pairwise
distances and angles are computed from the batch Gram matrix (O(b³) memory, not O(b²·d)),
in fp32 on centred embeddings.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

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
    register_method,
    require_teacher,
)


def gram_and_distances(embedding: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """Gram matrix of the centred rows and their pairwise Euclidean distances (0 on the
    diagonal, at least sqrt(eps) elsewhere), both b×b in fp32."""
    e = embedding.float().flatten(1)
    e = e - e.mean(dim=0, keepdim=True)
    with torch.autocast(device_type=e.device.type, enabled=False):
        gram = e @ e.t()
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(eps).sqrt()
    off_diagonal = 1.0 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype)
    return gram, dist * off_diagonal


def distance_potential(dist: Tensor) -> Tensor:
    """Distances divided by their mean over pairs i ≠ j."""
    b = dist.shape[0]
    mean = dist.sum() / max(b * (b - 1), 1)
    return dist / mean.clamp_min(1e-12)


def angle_potential(gram: Tensor, dist: Tensor) -> Tensor:
    """b×b×b cosines: entry (j, i, k) is the cosine of the angle at t_j between t_i and t_k."""
    inv = torch.where(dist > 0, 1.0 / dist.clamp_min(1e-12), torch.zeros_like(dist))
    diag = gram.diagonal()
    # (t_i − t_j)·(t_k − t_j) = G_ik − G_ji − G_jk + G_jj
    dots = gram[None, :, :] - gram[:, :, None] - gram[:, None, :] + diag[:, None, None]
    return dots * inv[:, :, None] * inv[:, None, :]


@register_method("rkd")
class RelationalKD(Method):
    """Distance- and angle-wise relational distillation on embeddings.

    Attributes:
        w_dist: Weight of the distance term (paper: 25).
        w_angle: Weight of the angle term (paper: 50).
    """

    knowledge = "relation"
    mode = "offline"
    needs = frozenset({"embedding"})
    version = 1

    class Params(Method.Params):
        w_dist: Annotated[float, Range(ge=0)] = 25.0
        w_angle: Annotated[float, Range(ge=0)] = 50.0

    search_space: ClassVar[dict[str, list]] = {
        "w_dist": [12.5, 25.0, 50.0],
        "w_angle": [25.0, 50.0, 100.0],
    }

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return (True, "") if teacher is not None else (False, "needs a teacher")

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "rkd")
        assert student.embedding is not None and teacher.embedding is not None
        gram_s, dist_s = gram_and_distances(student.embedding)
        with torch.no_grad():
            gram_t, dist_t = gram_and_distances(teacher.embedding)
            pot_t_dist = distance_potential(dist_t)
            pot_t_angle = angle_potential(gram_t, dist_t)
        loss_dist = F.smooth_l1_loss(distance_potential(dist_s), pot_t_dist)
        loss_angle = F.smooth_l1_loss(angle_potential(gram_s, dist_s), pot_t_angle)
        p = self.params
        return {"rkd_dist": p.w_dist * loss_dist, "rkd_angle": p.w_angle * loss_angle}
