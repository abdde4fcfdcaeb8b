"""Logit standardisation (Z-score) before KD or DKD.

Paper: Shangquan Sun, Wenqi Ren, Jingzhi Li, Rui Wang, Xiaochun Cao, "Logit Standardization in
Knowledge Distillation", CVPR 2024. https://arxiv.org/abs/2403.01427
Reference code: https://github.com/sunshangquan/logit-standardization-KD
(``mdistiller/distillers/KD.py`` and ``DKD.py``: ``normalize``; ``tools/train.py``: the
``--logit-stand --base-temp --kd-weight`` options; ``logs/``).

Each sample's logits, teacher's and student's separately, are standardised,
``Z(z) = (z - mean(z)) / std(z)``, and divided by a shared *base temperature* T before the
softmax; the distillation loss is then unchanged: KD (``base="kd"``, the ``kd`` method's
``kd_loss``) or DKD (``base="dkd"``, the ``dkd`` method's ``dkd_loss`` and ``dkd_warmup``),
both from the shared loss math in ``methods/_common.py``. The T^2 factor of those losses is
kept, as the reference does.

Loss, ``base="kd"``::

    ce_weight * CE + kd_weight * T^2 * KL(softmax(Z(z_t) / T) || softmax(Z(z_s) / T))

Loss, ``base="dkd"``::

    ce_weight * CE + w(epoch) * DKD(Z(z_s), Z(z_t); kd_weight * dkd_alpha, kd_weight * dkd_beta, T)


Paper vs code:
- Standard deviation: the paper's Z-score uses the standard deviation over the K logits
  (1/K); the reference calls ``torch.std`` (unbiased, 1/(K-1)) and adds 1e-7 to it.
  ``std="unbiased"`` (default) follows the code, ``std="population"`` the paper; both add
  1e-7. The difference is a constant factor sqrt(K/(K-1)) on the standardised logits, i.e.
  a slightly different effective temperature.
- Temperature and weights: the method's settings are CLI overrides in the reference's
  ``tools/train.py`` (``--base-temp 2 --kd-weight 9`` in the README). For KD they replace
  the config's ``KD.TEMPERATURE`` (4) by the base temperature and ``KD_WEIGHT`` by 9; the
  CE weight stays the config's (1.0 in the repository's ``cfg.py``, where plain
  mdistiller uses 0.1 with KD weight 0.9). For DKD they multiply ``ALPHA`` and ``BETA`` by
  the KD weight (1·9 = 9 and 8·9 = 72) and set ``DKD.T`` to the base temperature; an
  earlier version of ``train.py`` instead set ``BETA = ALPHA * 9`` after ALPHA had already
  been multiplied (81) and wrote the base temperature into ``KD.TEMPERATURE``, leaving DKD at
  T = 4. kdbench follows the latest version.
- The results table (README, reproducing the paper's CIFAR-100 tables) links logs whose
  names encode (base temperature, KD weight) per pair: mostly (2, 9); (3, 9) for
  resnet32x4→wrn_16_2/wrn_40_2, vgg13→vgg8/MobileNetV2 and wrn_40_2→MobileNetV2;
  (3, 1) for ResNet50→MobileNetV2. Defaults here: T = 2, kd_weight = 9, ce_weight = 1.
- With ``base="dkd"`` the reference weights are large (TCKD 9, NCKD 72, times T^2) and rely
  on DKD's warm-up; in short recipes, where the scaled warm-up lasts under an epoch, they
  swamp the cross-entropy (digits, 10 epochs, test_resnet_wide→test_resnet_narrow: 28.7 %
  test accuracy with kd_weight 9, 94.2 % with kd_weight 1). Lower ``kd_weight`` there.
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
from methods._common import dkd_loss, dkd_warmup, kd_loss

STD_EPS = 1e-7  # the reference's guard against constant logits


def standardise(
    logits: Tensor, std: Literal["unbiased", "population"] = "unbiased", eps: float = STD_EPS
) -> Tensor:
    """Per-sample Z-score of a N×K logit matrix: ``(z - mean) / (std + eps)`` over classes."""
    logits = logits.float()
    mean = logits.mean(dim=1, keepdim=True)
    spread = logits.std(dim=1, keepdim=True, correction=1 if std == "unbiased" else 0)
    return (logits - mean) / (spread + eps)


@register_method("ls")
class LogitStandardisation(Method):
    """Z-score logit standardisation wrapped around KD or DKD.

    Attributes:
        base: The loss the standardised logits feed: ``kd`` or ``dkd``.
        temperature: Base temperature T applied after the Z-score (reference: 2).
        kd_weight: Weight of the KD term; for DKD it multiplies ``dkd_alpha`` and
            ``dkd_beta`` (reference: 9).
        ce_weight: Weight of the student's cross-entropy (reference config: 1.0).
        std: ``unbiased`` (reference code) or ``population`` (paper) standard deviation.
        dkd_alpha: DKD's TCKD weight before ``kd_weight`` (DKD default 1).
        dkd_beta: DKD's NCKD weight before ``kd_weight`` (DKD default 8).
        warmup_epochs: DKD's warm-up, in epochs of the reference schedule (see ``dkd``).
        warmup_reference_epochs: Schedule length ``warmup_epochs`` refers to (see ``dkd``).
    """

    knowledge = "logits"
    mode = "offline"
    owns_ce = True
    version = 1

    class Params(Method.Params):
        base: Literal["kd", "dkd"] = "kd"
        temperature: Annotated[float, Range(gt=0)] = 2.0
        kd_weight: Annotated[float, Range(ge=0)] = 9.0
        ce_weight: Annotated[float, Range(ge=0)] = 1.0
        std: Literal["unbiased", "population"] = "unbiased"
        dkd_alpha: Annotated[float, Range(ge=0)] = 1.0
        dkd_beta: Annotated[float, Range(ge=0)] = 8.0
        warmup_epochs: Annotated[int, Range(ge=0)] = 20
        warmup_reference_epochs: Annotated[int, Range(ge=0)] = 240

    search_space: ClassVar[dict[str, list]] = {"temperature": [1.0, 2.0, 3.0]}
    # Standardising an untrained student's near-constant logits divides their gradient by
    # their tiny spread, so at the reference's weight (9, and still at 1 on test_vgg) eight
    # SGD steps at lr 0.05 overshoot and the conformance loss rises (CE 2.3 -> 7.4). The loss
    # and every code path are the same at weight 0.1.
    conformance_params: ClassVar[dict[str, object]] = {"kd_weight": 0.1}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return same_classes(student, teacher)

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.epochs = task.epochs

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "ls")
        p = self.params
        z_s = standardise(student.logits, p.std)
        z_t = standardise(teacher.logits, p.std)
        terms = {"ce": p.ce_weight * F.cross_entropy(student.logits.float(), batch.y)}
        if p.base == "kd":
            terms["kd"] = p.kd_weight * kd_loss(z_s, z_t, p.temperature)
            return terms
        if not hasattr(self, "epochs"):
            raise RuntimeError("ls: call setup(student, teacher, task) before loss()")
        weight = dkd_warmup(batch.epoch, self.epochs, p.warmup_epochs, p.warmup_reference_epochs)
        alpha, beta = p.kd_weight * p.dkd_alpha, p.kd_weight * p.dkd_beta
        terms["dkd"] = weight * dkd_loss(z_s, z_t, batch.y, alpha, beta, p.temperature)
        return terms
