"""Be Your Own Teacher (BYOT): self-distillation from the deepest classifier into shallow heads.

Paper: Linfeng Zhang, Jiebo Song, Anni Gao, Jingwei Chen, Chenglong Bao, Kaisheng Ma, "Be Your
Own Teacher: Improve the Performance of Convolutional Neural Networks via Self Distillation",
ICCV 2019. https://arxiv.org/abs/1905.08094
Reference code: https://github.com/luanyunteng/pytorch-be-your-own-teacher (``train.py``,
``models/resnet.py``; the authors' community re-implementation linked from the paper's page).

The student is split into sections at its stages. Each shallow section gets an auxiliary head
(a bottleneck: 1x1 conv to D/4 channels, k x k conv with stride k, 1x1 conv to D channels, each
followed by BatchNorm and ReLU; global average pooling; a linear classifier), where D is the
width of the student's embedding and k the spatial reduction between that stage and the
deepest one. The deepest classifier (the student's own head) teaches every shallow head::

    (1 - alpha) * [CE(z, y) + sum_i CE(z_i, y)]
    + alpha * sum_i T^2 * KL(softmax(z / T) || softmax(z_i / T))
    + beta * sum_i hint(f_i, F)

``z`` are the student's logits and ``F`` its embedding, both detached as targets; ``z_i`` and
``f_i`` are the logits and pooled bottleneck features of head i. Heads sit on every stage except
the first (the stem) and the deepest; a two-stage model gets one head on its first stage. The
heads are training scaffolding: only the student (its deepest classifier) is evaluated.

Paper vs code:
- The paper's loss uses KL(q_C || q_i); the reference code uses the cross-entropy with the soft
  target, which differs by the target's entropy (a constant: same gradients). kdbench uses the
  KL divergence, so the logged ``kd`` term is zero when a head agrees with the deepest one.
- Hint: the paper writes an L2 distance ||F_i - F_C||^2. The reference code masks it to the
  entries where either feature is positive and sums over the batch and the features; the weight
  ``beta = 1e-6`` is calibrated to that sum. ``hint="code"`` (default) does the same,
  ``hint="paper"`` uses the plain squared distance averaged over the batch.
- The paper gives no numeric alpha, lambda or T; the defaults (alpha 0.1, beta 1e-6, T 3) are the
  reference code's.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, Outputs, Range, TaskInfo, register_method
from methods._common import kd_loss


def head_stages(num_stages: int) -> list[int]:
    """Stages that get an auxiliary head: all but the stem (stage 0) and the deepest stage;
    the first stage alone for a two-stage model, none for a one-stage model."""
    if num_stages < 2:
        return []
    if num_stages == 2:
        return [0]
    return list(range(1, num_stages - 1))


def bottleneck(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """The BYOT bottleneck: 1x1 conv to ``out/4``, ``stride`` x ``stride`` conv with that
    stride, 1x1 conv to ``out``; BatchNorm and ReLU after each."""
    middle = max(1, out_channels // 4)
    return nn.Sequential(
        nn.Conv2d(in_channels, middle, kernel_size=1),
        nn.BatchNorm2d(middle),
        nn.ReLU(inplace=True),
        nn.Conv2d(middle, middle, kernel_size=stride, stride=stride),
        nn.BatchNorm2d(middle),
        nn.ReLU(inplace=True),
        nn.Conv2d(middle, out_channels, kernel_size=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AuxiliaryHead(nn.Module):
    """Bottleneck, global average pooling and a linear classifier on one stage's output."""

    def __init__(self, in_channels: int, width: int, num_classes: int, stride: int) -> None:
        super().__init__()
        self.bottleneck = bottleneck(in_channels, width, stride)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (logits, pooled bottleneck features)."""
        pooled = self.bottleneck(feature).mean(dim=(2, 3))
        return self.fc(pooled), pooled


def masked_hint(head_feature: Tensor, target: Tensor) -> Tensor:
    """The reference code's hint: squared difference where either feature is positive, summed
    over the batch and the features."""
    mask = ((head_feature > 0) | (target > 0)).to(head_feature.dtype)
    return ((head_feature - target) ** 2 * mask).sum()


def l2_hint(head_feature: Tensor, target: Tensor) -> Tensor:
    """The paper's hint: squared L2 distance per sample, averaged over the batch."""
    return ((head_feature - target) ** 2).sum(dim=1).mean()


@register_method("byot")
class BeYourOwnTeacher(Method):
    """Be Your Own Teacher self-distillation with auxiliary heads on the shallow stages.

    Attributes:
        alpha: Weight of the distillation terms; the cross-entropy terms (deepest classifier
            and every head) get ``1 - alpha`` (reference code: 0.1).
        beta: Weight of the feature hints (reference code: 1e-6, for ``hint="code"``).
        temperature: Softmax temperature of the distillation terms (reference code: 3).
        hint: ``code``: masked squared difference summed over batch and features;
            ``paper``: squared L2 distance averaged over the batch.
    """

    knowledge = "logits"
    mode = "self"
    needs = frozenset({"features", "embedding"})
    uses_teacher = False
    owns_ce = True
    version = 1

    class Params(Method.Params):
        alpha: Annotated[float, Range(ge=0, le=1)] = 0.1
        beta: Annotated[float, Range(ge=0)] = 1e-6
        temperature: Annotated[float, Range(gt=0)] = 3.0
        hint: Literal["code", "paper"] = "code"

    search_space: ClassVar[dict[str, list]] = {
        "alpha": [0.1, 0.3, 0.5],
        "temperature": [1.0, 3.0, 4.0],
    }

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        stages = head_stages(student.num_stages)
        if not stages:
            return False, f"{student.name} exposes {student.num_stages} stage(s); BYOT needs ≥ 2"
        if any(student.feature_reductions[i] <= 0 for i in stages):
            return False, f"{student.name} has non-spatial stage features; BYOT needs N×C×H×W"
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.stages = head_stages(student.num_stages)
        deepest = student.feature_reductions[-1]
        height, width = task.input_size[1:]
        heads = []
        for i in self.stages:
            reduction = student.feature_reductions[i]
            # the strided conv brings the stage to the deepest stage's resolution; it cannot
            # be larger than the stage's own map
            side = min(-(-height // reduction), -(-width // reduction))
            stride = max(1, min(deepest // reduction, side))
            heads.append(
                AuxiliaryHead(
                    student.feature_channels[i],
                    student.embedding_dim,
                    student.num_classes,
                    stride,
                )
            )
        self.heads = nn.ModuleList(heads)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        assert student.embedding is not None  # needs asks for it
        p = self.params
        final = student.logits.float()
        target_logits = final.detach()
        target_feature = student.embedding.float().detach()
        hint = masked_hint if p.hint == "code" else l2_hint
        ce_heads, kd, hints = [], [], []
        for head, i in zip(self.heads, self.stages, strict=True):
            logits, pooled = head(student.features[i])
            logits, pooled = logits.float(), pooled.float()
            ce_heads.append(F.cross_entropy(logits, batch.y))
            kd.append(kd_loss(logits, target_logits, p.temperature))
            hints.append(hint(pooled, target_feature))
        return {
            "ce": (1.0 - p.alpha) * F.cross_entropy(final, batch.y),
            "ce_heads": (1.0 - p.alpha) * torch.stack(ce_heads).sum(),
            "kd": p.alpha * torch.stack(kd).sum(),
            "hint": p.beta * torch.stack(hints).sum(),
        }
