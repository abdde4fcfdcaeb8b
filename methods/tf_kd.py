"""Teacher-free KD with a manually designed virtual teacher (Tf-KD_reg).

Paper: Li Yuan, Francis E. H. Tay, Guilin Li, Tao Wang, Jiashi Feng, "Revisiting Knowledge
Distillation via Label Smoothing Regularization", CVPR 2020 (arXiv title: "Revisit Knowledge
Distillation: a Teacher-free Framework"). https://arxiv.org/abs/1909.11723
Reference code: https://github.com/yuanli2333/Teacher-free-Knowledge-Distillation
(``my_loss_function.py``: ``loss_kd_regularization``;
``experiments/base_experiments/*/params.json``).

The virtual teacher puts probability ``a`` on the label and spreads ``1 - a`` evenly over the
other K - 1 classes: p_d(k) = a if k = y else (1 - a) / (K - 1); a = 0.99 in the code. The
loss is ``(1 - alpha) * CE + alpha * multiplier * KL(teacher || student)``, where the two
variants differ in how the distributions are softened:

- ``variant="code"`` (default, the reference): the teacher is ``softmax(p_d / T)`` — the
  softmax is applied to the *probabilities* divided by T — the student is ``softmax(z)``
  (not softened), and the KL divergence is ``nn.KLDivLoss()``'s default: averaged over all
  N·K elements (i.e. the batch-mean KL divided by K). No T^2 factor.
- ``variant="paper"``: KD with the virtual teacher in place of a trained one: teacher
  ``p_d`` softened at T, i.e. ``softmax(log(p_d) / T)``, student ``softmax(z / T)``, batch-mean
  KL; no T^2 factor (the paper's KD equation has none). kdbench's reading of the paper's
  "p^d_tau".

Paper vs code (hyperparameters): the reference tunes (T, alpha, multiplier) per student on
CIFAR-100: ResNet18 (20, 0.1, 100), GoogLeNet (40, 0.1, 50), MobileNetV2 (40, 0.95, 1),
ShuffleNetV2 (10, 0.95, 1). The defaults are the ResNet18 setting (the ResNet family is
kdbench's main student family); the search space covers T in {10, 20, 40}. ``multiplier`` is
the code's extra weight of the KL term (the paper has none, i.e. 1).

Only the virtual-teacher variant is implemented. The paper's self-training variant
(Tf-KD_self: the student's own pre-trained architecture as teacher) is ``kd`` with a teacher
of the student's architecture; it needs no method of its own.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import Batch, Method, ModelInfo, Outputs, Range, TaskInfo, register_method


def virtual_teacher(target: Tensor, num_classes: int, correct_prob: float) -> Tensor:
    """The hand-designed teacher distribution p_d (N×K): ``correct_prob`` on the label, the
    rest spread evenly over the other classes."""
    other = (1.0 - correct_prob) / (num_classes - 1)
    probs = torch.full((target.shape[0], num_classes), other, device=target.device)
    return probs.scatter(1, target[:, None], correct_prob)


def tf_kd_reg_loss(
    student_logits: Tensor,
    target: Tensor,
    correct_prob: float,
    temperature: float,
    variant: Literal["code", "paper"] = "code",
) -> Tensor:
    """The KL term of Tf-KD_reg (without its weights), as the named variant defines it."""
    logits = student_logits.float()
    p_d = virtual_teacher(target, logits.shape[1], correct_prob)
    if variant == "code":
        log_teacher = F.log_softmax(p_d / temperature, dim=1)
        log_student = F.log_softmax(logits, dim=1)
        return (log_teacher.exp() * (log_teacher - log_student)).mean()
    log_teacher = F.log_softmax(p_d.log() / temperature, dim=1)
    log_student = F.log_softmax(logits / temperature, dim=1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1).mean()


@register_method("tf_kd")
class TeacherFreeKD(Method):
    """Teacher-free KD with a manually designed virtual teacher (Tf-KD_reg).

    Attributes:
        correct_prob: Probability ``a`` the virtual teacher puts on the label (code: 0.99).
        temperature: Softening temperature T (code, ResNet18: 20).
        alpha: Weight of the KL term; the cross-entropy gets ``1 - alpha`` (ResNet18: 0.1).
        multiplier: Extra weight of the KL term (code, ResNet18: 100; paper: 1).
        variant: ``code`` (reference implementation) or ``paper`` (KD with the virtual
            teacher); see the module docstring.
    """

    knowledge = "logits"
    mode = "self"
    uses_teacher = False
    owns_ce = True
    version = 1

    class Params(Method.Params):
        correct_prob: Annotated[float, Range(gt=0, lt=1)] = 0.99
        temperature: Annotated[float, Range(gt=0)] = 20.0
        alpha: Annotated[float, Range(ge=0, le=1)] = 0.1
        multiplier: Annotated[float, Range(ge=0)] = 100.0
        variant: Literal["code", "paper"] = "code"

    search_space: ClassVar[dict[str, list]] = {"temperature": [10.0, 20.0, 40.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        if task.num_classes < 2:
            return False, "the virtual teacher needs at least two classes"
        if not 0.0 < self.params.correct_prob < 1.0:
            return False, f"correct_prob must be in (0, 1), got {self.params.correct_prob}"
        return True, ""

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        p = self.params
        reg = tf_kd_reg_loss(student.logits, batch.y, p.correct_prob, p.temperature, p.variant)
        ce = F.cross_entropy(student.logits.float(), batch.y)
        return {"ce": (1.0 - p.alpha) * ce, "tf_kd": p.alpha * p.multiplier * reg}
