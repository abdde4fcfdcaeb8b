"""Pairing teacher and student stages by one rule, and the checks pair-dependent methods share.

Feature methods pair stages with :func:`align_stages` (or :func:`hint_pair` for one hint),
resize with :func:`match_spatial` and connect with :func:`conv_connector`; their ``supports``
use :func:`same_classes`, :func:`spatial_supports` and :func:`spatial_pair_supports`; their
``loss`` uses :func:`require_teacher`; :func:`describe_pairs` says which stages they paired.

Which pairs carry spatial knowledge: a stage output of 1×1 has one position, so its attention
map, its distribution over positions and any position-by-position comparison with another map
are constants, and resizing the other map to it (or it to the other) only averages or copies
one value. Methods that compare a student map with a teacher map position by position (AT,
NST, FitNets, AB, VID, FT) therefore use only pairs whose maps are at least 2×2 on both sides
(:func:`spatial_pairs`): one that uses several aligned pairs drops the 1×1 ones and runs while
at least one remains; one that uses a single pair (FitNets' hint, FT's deepest pair) refuses
the trial when that pair has a 1×1 map. Either refusal names the stages and their sizes.

Token models: a vision transformer's stage outputs are its blocks' tokens, which timm's
``forward_intermediates`` reshapes to the patch grid (class and distillation tokens dropped);
so a ViT has maps of (image size / patch size)² positions, 1×1 when the image is one patch
(``vit_tiny_patch16_224`` at 16 px), and is refused by the same rule. Stage outputs that are
not maps at all (N×L×C) are refused by :func:`spatial_supports`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.api.types import ModelInfo, Outputs, TaskInfo

#: The CRD benchmark's initialisation stage: 30 epochs before 240 of training.
INIT_STAGE_FRACTION = 30 / 240
#: The smallest height and width of a stage map that carries spatial knowledge.
MIN_SPATIAL_SIZE = 2


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


def stage_size(info: ModelInfo, stage: int, task: TaskInfo) -> tuple[int, int]:
    """(H, W) of a stage output at the task's input size: as measured (``feature_sizes``)
    when ``info`` carries it, else the input size divided by the stage's reduction; (0, 0)
    for a stage output that is not a spatial map."""
    if len(info.feature_sizes) == info.num_stages:
        return info.feature_sizes[stage]
    reduction = info.feature_reductions[stage]
    if reduction <= 0:
        return 0, 0
    _, height, width = task.input_size
    return max(1, round(height / reduction)), max(1, round(width / reduction))


def describe_pairs(
    student: ModelInfo, teacher: ModelInfo, task: TaskInfo, pairs: list[tuple[int, int]]
) -> str:
    """The (student, teacher) stage pairs with their output sizes, shallowest first, as runs
    record them: ``s2 (8×8) → t3 (4×4), s3 (4×4) → t4 (2×2)`` (stage indices in
    ``feature_info`` order)."""

    def size(info: ModelInfo, stage: int) -> str:
        h, w = stage_size(info, stage, task)
        return f"{h}×{w}" if h > 0 else "no grid"

    return ", ".join(f"s{s} ({size(student, s)}) → t{t} ({size(teacher, t)})" for s, t in pairs)


def spatial_pairs(
    student: ModelInfo, teacher: ModelInfo, task: TaskInfo, pairs: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The pairs of ``pairs`` whose student and teacher maps are both at least
    :data:`MIN_SPATIAL_SIZE` high and wide (the rule in this module's docstring)."""

    def spatial(info: ModelInfo, stage: int) -> bool:
        return min(stage_size(info, stage, task)) >= MIN_SPATIAL_SIZE

    return [(s, t) for s, t in pairs if spatial(student, s) and spatial(teacher, t)]


def spatial_pair_supports(
    student: ModelInfo, teacher: ModelInfo, task: TaskInfo, pairs: list[tuple[int, int]]
) -> tuple[bool, str]:
    """Refuse, naming the stages, when no pair of ``pairs`` (the aligned pairs a method would
    use, or its single pair) can carry spatial knowledge."""
    if spatial_pairs(student, teacher, task, pairs):
        return True, ""
    what = "the stage pair" if len(pairs) == 1 else f"each of the {len(pairs)} stage pairs"
    return False, (
        f"{what} {describe_pairs(student, teacher, task, pairs)} has a map smaller than "
        f"{MIN_SPATIAL_SIZE}×{MIN_SPATIAL_SIZE}, which carries no spatial knowledge; use a "
        "larger image_size or models whose stages keep a spatial grid"
    )


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
