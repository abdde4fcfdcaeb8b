"""Pairing teacher and student stages by one rule, and the checks pair-dependent methods share.

Feature methods pair stages with :func:`align_stages` (or :func:`hint_pair` for one hint),
resize with :func:`match_spatial` and connect with :func:`conv_connector`; their ``supports``
use :func:`same_classes` and :func:`spatial_supports`; their ``loss`` uses
:func:`require_teacher`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.api.types import ModelInfo, Outputs, TaskInfo

#: The CRD benchmark's initialisation stage: 30 epochs before 240 of training.
INIT_STAGE_FRACTION = 30 / 240


def align_stages(student: ModelInfo, teacher: ModelInfo) -> list[tuple[int, int]]:
    """Pair student stages with teacher stages.

    The rule: both networks end in their deepest stage, so stages are matched from the end.
    With ``k = min(#student stages, #teacher stages)`` the last ``k`` stages of each are paired
    in order; earlier stages of the deeper-staged network are left out. Spatial sizes of a
    pair may differ; :func:`match_spatial` resizes the student map to the teacher's.

    Returns:
        (student_stage, teacher_stage) index pairs, shallowest first.
    """
    k = min(student.num_stages, teacher.num_stages)
    s0, t0 = student.num_stages - k, teacher.num_stages - k
    return [(s0 + i, t0 + i) for i in range(k)]


def hint_pair(student: ModelInfo, teacher: ModelInfo) -> tuple[int, int]:
    """The single (student, teacher) stage pair used by one-hint methods (FitNets' middle
    layer): the middle of the aligned pairs, rounding towards the deeper stage."""
    pairs = align_stages(student, teacher)
    return pairs[len(pairs) // 2]


def match_spatial(x: Tensor, like: Tensor) -> Tensor:
    """Resize a N×C×H×W map to the spatial size of ``like`` (adaptive average pooling down,
    bilinear interpolation up); unchanged when the sizes agree."""
    if x.dim() != 4 or x.shape[-2:] == like.shape[-2:]:
        return x
    if x.shape[-2] >= like.shape[-2] and x.shape[-1] >= like.shape[-1]:
        return F.adaptive_avg_pool2d(x, (like.shape[-2], like.shape[-1]))
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def conv_connector(in_channels: int, out_channels: int) -> nn.Module:
    """The standard student→teacher feature connector: 1×1 conv + BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def same_classes(student: ModelInfo, teacher: ModelInfo | None) -> tuple[bool, str]:
    """Logit-matching methods need a teacher with the student's classes."""
    if teacher is None:
        return False, "needs a teacher"
    if teacher.num_classes != student.num_classes:
        return False, (
            f"teacher has {teacher.num_classes} classes but the student {student.num_classes}; "
            "logit distillation needs the same classes"
        )
    return True, ""


def spatial_supports(
    student: ModelInfo, teacher: ModelInfo | None, *, spatial: bool = True
) -> tuple[bool, str]:
    """Feature methods need a teacher and stage outputs on both sides; ``spatial`` ones also
    need every stage output to be an N×C×H×W map."""
    if teacher is None:
        return False, "needs a teacher"
    for role, info in (("student", student), ("teacher", teacher)):
        if info.num_stages == 0:
            return False, f"the {role} {info.name} exposes no feature stages"
        if spatial and any(r == 0 for r in info.feature_reductions):
            return False, f"the {role} {info.name} has stage outputs that are not spatial maps"
    return True, ""


def require_teacher(teacher: Outputs | None, method: str) -> Outputs:
    """``teacher``, or a ValueError saying that ``method`` needs a teacher's outputs."""
    if teacher is None:
        raise ValueError(
            f"{method}: loss() got no teacher outputs; the method distils from a teacher, so "
            "the trial needs one (--teacher NAME)"
        )
    return teacher


def init_stage_epochs(init_epochs: int | None, task: TaskInfo) -> int:
    """``init_epochs`` if given, else the CRD benchmark's share (30 of 240) of the student's
    epochs, at least one: the length of an initialisation stage (FitNets' hints, AB, FT)."""
    if init_epochs is not None:
        return init_epochs
    return max(1, round(INIT_STAGE_FRACTION * task.epochs))
