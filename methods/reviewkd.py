"""Knowledge review (ReviewKD).

Paper: Pengguang Chen, Shu Liu, Hengshuang Zhao, Jiaya Jia, "Distilling Knowledge via
Knowledge Review", CVPR 2021. https://arxiv.org/abs/2104.09044
Reference code: https://github.com/dvlab-research/ReviewKD (``CIFAR-100/model/reviewkd.py``,
``CIFAR-100/train.py``, ``CIFAR-100/script/reviewKD.sh``); also
https://github.com/megvii-research/mdistiller (``mdistiller/distillers/ReviewKD.py``).

Levels: the aligned stage outputs (``align_stages``) plus the pooled embedding as a 1×1 map.
The student's levels are reviewed from the deepest up: at each level an attention-based
fusion (ABF) block maps the student map to a middle width (1×1 conv + BN), fuses it with the
residual coming from the deeper level (resized to this level's size) through two
sigmoid-gated attention maps (1×1 conv on their concatenation), resizes the result to the
teacher's map (``match_spatial``), which becomes the residual for the next level up, and
projects it to the teacher's width (3×3 conv + BN). The deepest level has no fusion. The
middle width is min(512, student embedding width).

The hierarchical context loss (HCL) compares each output with the teacher's pre-activation
map: MSE at full resolution plus MSE after adaptive average pooling to 4×4, 2×2 and 1×1
(only sizes below the map's), weighted 1, ½, ¼, ⅛ and normalised by the weights' sum;
summed over levels. The term is ramped up linearly over the first ``warmup`` fraction of
training.

Paper vs code:
- Weight: the authors' default is 1.0 (``--kd-loss-weight``); their CIFAR-100 scripts tune it
  per pair (0.6 to 8, mostly 5; mdistiller uses 5 for ResNet32x4→ResNet8x4). Default 1.0.
- Warm-up: the code multiplies by min(epoch/20, 1) with epochs of 240 counted from 0 (so the
  first epoch has no review term); here min((step + 1)/(warmup · total steps), 1) with
  warmup = 20/240, continuous over steps.
- Resizing: the code uses nearest-neighbour interpolation; here the one ``match_spatial``
  rule (average pooling down, bilinear up).
- Teacher maps are pre-activation (``preact_features``) as in the code; for timm models
  without them the stage outputs stand in.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

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
    spatial_supports,
)


class AttentionFusion(nn.Module):
    """One ABF block: student map → middle width, optional fusion, → teacher width."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        reduce_conv = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.reduce = nn.Sequential(reduce_conv, nn.BatchNorm2d(mid_channels))
        project_conv = nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.project = nn.Sequential(project_conv, nn.BatchNorm2d(out_channels))
        self.attention = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid())
            if fuse
            else None
        )
        # After every submodule is built, so the draws keep their order.
        nn.init.kaiming_uniform_(reduce_conv.weight, a=1)
        nn.init.kaiming_uniform_(project_conv.weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, target: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (output at the teacher's size and width, residual for the next level)."""
        x = self.reduce(x)
        if self.attention is not None and residual is not None:
            residual = match_spatial(residual, x)
            gates = self.attention(torch.cat([x, residual], dim=1))
            x = x * gates[:, :1] + residual * gates[:, 1:]
        x = match_spatial(x, target)
        return self.project(x), x


def hcl_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Hierarchical context loss of one level (fp32)."""
    s, t = student.float(), teacher.float()
    loss = F.mse_loss(s, t)
    weight, total = 1.0, 1.0
    for size in (4, 2, 1):
        if size >= s.shape[-2]:
            continue
        weight /= 2.0
        pooled_s = F.adaptive_avg_pool2d(s, size)
        pooled_t = F.adaptive_avg_pool2d(t, size)
        loss = loss + weight * F.mse_loss(pooled_s, pooled_t)
        total += weight
    return loss / total


def as_map(embedding: Tensor) -> Tensor:
    return embedding.reshape(*embedding.shape, 1, 1)


@register_method("reviewkd")
class ReviewKD(Method):
    """Review the student's stages from the deepest up against the teacher's.

    Attributes:
        beta: Weight of the summed HCL terms (authors' default: 1).
        warmup: Fraction of training over which the weight ramps up from 0 (20/240).
        max_mid_channels: Cap of the ABF middle width (512).
    """

    knowledge = "intermediate"
    mode = "offline"
    needs = frozenset({"features", "embedding"})
    teacher_needs = frozenset({"preact_features", "embedding"})
    version = 1

    class Params(Method.Params):
        beta: Annotated[float, Range(ge=0)] = 1.0
        warmup: Annotated[float, Range(ge=0, le=1)] = 20 / 240
        max_mid_channels: Annotated[int, Range(ge=1)] = 512

    search_space: ClassVar[dict[str, list]] = {"beta": [1.0, 2.5, 5.0, 8.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return spatial_supports(student, teacher)

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        self.pairs = align_stages(student, teacher)
        self.stage_pairs = describe_pairs(student, teacher, task, self.pairs)
        in_channels = [student.feature_channels[s] for s, _ in self.pairs]
        in_channels.append(student.embedding_dim)
        out_channels = [teacher.feature_channels[t] for _, t in self.pairs]
        out_channels.append(teacher.embedding_dim)
        mid = min(self.params.max_mid_channels, student.embedding_dim)
        last = len(in_channels) - 1
        self.total_steps = task.total_steps
        self.fusions = nn.ModuleList(
            AttentionFusion(c_in, mid, c_out, fuse=i < last)
            for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels, strict=True))
        )

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "reviewkd")
        assert student.embedding is not None and teacher.embedding is not None
        p = self.params
        levels_s = [student.features[s] for s, _ in self.pairs] + [as_map(student.embedding)]
        levels_t = [teacher.preact_features[t] for _, t in self.pairs]
        levels_t.append(as_map(teacher.embedding))
        total = student.logits.new_zeros((), dtype=torch.float32)
        residual = None
        for level in reversed(range(len(levels_s))):
            out, residual = self.fusions[level](levels_s[level], residual, levels_t[level])
            total = total + hcl_loss(out, levels_t[level])
        return {"reviewkd": p.beta * self.ramp(batch) * total}

    def ramp(self, batch: Batch) -> float:
        """Linear warm-up factor; counted in steps from 1 so that no step is wasted."""
        warmup_steps = self.params.warmup * self.total_steps
        return min((batch.step + 1) / warmup_steps, 1.0) if warmup_steps > 0 else 1.0
