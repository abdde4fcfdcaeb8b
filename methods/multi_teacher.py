"""Multi-teacher distillation: several frozen teachers combined into one soft target.

Papers:
- Shan You, Chang Xu, Chao Xu, Dacheng Tao, "Learning from Multiple Teacher Networks",
  KDD 2017. https://doi.org/10.1145/3097983.3098135 (averaged soft targets of several
  teachers; Hinton et al., arXiv:1503.02531, distil an ensemble the same way).
- For teachers trained on disjoint label sets: Chengchao Shen, Xinchao Wang, Jie Song, Li Sun,
  Mingli Song, "Amalgamating Knowledge towards Comprehensive Classification", AAAI 2019
  (https://arxiv.org/abs/1811.02796), whose target for the union of the classes is the
  concatenation of the teachers' score vectors; see also Jayakorn Vongkulbhisal, Phongtharin
  Vinayavekhin, Marco Visentini-Scarzanella, "Unifying Heterogeneous Classifiers with
  Distillation", CVPR 2019 (https://arxiv.org/abs/1904.06062).
Reference code: none from the authors; the loss is Hinton KD against the combined target.

The teachers are the trial's teacher plus the architectures in ``teachers`` (obtained from the
teacher cache in ``before_training``, frozen, kept in eval mode). The student minimises::

    (1 - alpha) * CE(z_s, y) + alpha * T^2 * KL(q || softmax(z_s / T))

with the target q (``label_sets``):
- ``shared``: every teacher is trained on all classes; ``q = (1/M) sum_m softmax(z_m / T)``.
- ``disjoint``: the task's classes are split into M contiguous groups (sizes differing by at
  most one, earlier groups larger); teacher m (the trial teacher's architecture first, then
  ``teachers`` in order) is trained on group m only and scores only its classes. Its logits are
  placed at their classes and ``q = softmax([z_1, ..., z_M] / T)`` over the union: each teacher's
  softmax over its own classes, scaled by a gate ``g_m = softmax_m(logsumexp(z_m / T))``, its
  share of the total exponentiated score. The trial's own (all-class) teacher is not used then.

Paper vs code: You et al. also match intermediate-layer relative dissimilarities; kdbench
implements the soft-target part (their multi-teacher logit averaging) only. Defaults T = 4 and
alpha = 0.9 are the CRD benchmark's KD settings (the papers' values are dataset-specific).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, Range, TaskInfo, TrainContext, register_method


def class_groups(num_classes: int, groups: int) -> list[list[int]]:
    """Split ``0..num_classes-1`` into ``groups`` contiguous groups, sizes differing by at most
    one, earlier groups larger."""
    base, extra = divmod(num_classes, groups)
    out, start = [], 0
    for g in range(groups):
        size = base + (1 if g < extra else 0)
        out.append(list(range(start, start + size)))
        start += size
    return out


def averaged_targets(teacher_logits: Sequence[Tensor], temperature: float) -> Tensor:
    """Mean of the teachers' softened probabilities (N×K each)."""
    probs = [F.softmax(z.float() / temperature, dim=1) for z in teacher_logits]
    return torch.stack(probs).mean(dim=0)


def union_targets(
    teacher_logits: Sequence[Tensor], groups: Sequence[Sequence[int]], temperature: float
) -> Tensor:
    """Softmax over the union of disjoint class groups of the teachers' logits placed at their
    classes (teacher m's logits cover ``groups[m]`` in order)."""
    first = teacher_logits[0]
    num_classes = sum(len(g) for g in groups)
    full = first.new_zeros(first.shape[0], num_classes, dtype=torch.float32)
    for z, group in zip(teacher_logits, groups, strict=True):
        full[:, list(group)] = z.float()
    return F.softmax(full / temperature, dim=1)


def soft_target_kd(student_logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(targets || softmax(z_s / T))``, summed over classes, averaged over samples."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    kl = (torch.special.xlogy(targets, targets) - targets * log_p).sum(dim=1).mean()
    return temperature**2 * kl


@register_method("multi_teacher")
class MultiTeacher(Method):
    """Distillation from several teachers' combined soft targets.

    Attributes:
        teachers: Architectures of the teachers besides the trial's teacher (their recipe and
            seed are the trial teacher's).
        label_sets: ``shared`` (all teachers see all classes; averaged targets) or
            ``disjoint`` (each teacher trained on one contiguous class group; union target).
        temperature: Softmax temperature (CRD benchmark: 4).
        alpha: Weight of the distillation term; the cross-entropy gets ``1 - alpha``.
    """

    knowledge = "multi-model"
    mode = "offline"
    owns_ce = True
    version = 1

    class Params(Method.Params):
        teachers: tuple[str, ...] = ()
        label_sets: Literal["shared", "disjoint"] = "shared"
        temperature: Annotated[float, Range(gt=0)] = 4.0
        alpha: Annotated[float, Range(ge=0, le=1)] = 0.9

    search_space: ClassVar[dict[str, list]] = {"temperature": [2.0, 4.0, 8.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        if teacher is None:
            return False, "needs a teacher"
        count = 1 + len(self.params.teachers)
        if self.params.label_sets == "disjoint":
            if count < 2:
                return False, "label_sets=disjoint needs ≥ 2 teachers; list more in teachers="
            if task.num_classes < count:
                return False, f"{task.num_classes} classes cannot be split among {count} teachers"
        elif teacher.num_classes != student.num_classes:
            return False, "the teacher's classes differ from the student's"
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.groups: list[list[int]] = []
        self.teacher_models = nn.ModuleList()
        self.num_classes = task.num_classes

    def before_training(self, ctx: TrainContext) -> None:
        extra = list(self.params.teachers)
        if self.params.label_sets == "disjoint":
            if ctx.teacher_info is None:
                raise RuntimeError(
                    "multi_teacher: the trial has no teacher; give one (--teacher NAME)"
                )
            archs = [ctx.teacher_info.name, *extra]
            self.groups = class_groups(self.num_classes, len(archs))
            for arch, group in zip(archs, self.groups, strict=True):
                model, _ = ctx.obtain_teacher(arch, classes=group)
                self.teacher_models.append(model)
        else:
            for arch in extra:
                model, _ = ctx.obtain_teacher(arch)
                self.teacher_models.append(model)
        for model in self.teacher_models:
            model.eval().requires_grad_(False)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())  # the teachers are frozen

    def train(self, mode: bool = True) -> MultiTeacher:
        super().train(mode)
        for model in self.teacher_models:
            model.eval()  # frozen teachers keep their BatchNorm statistics
        return self

    def targets(self, ctx: TrainContext, x: Tensor) -> Tensor:
        """The combined soft target for a batch."""
        p = self.params
        logits = [ctx.forward(m, x, grad=False).logits for m in self.teacher_models]
        if p.label_sets == "disjoint":
            return union_targets(logits, self.groups, p.temperature)
        return averaged_targets([ctx.forward_teacher(x).logits, *logits], p.temperature)

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        p = self.params
        student = ctx.forward_student(batch.x).logits
        targets = self.targets(ctx, batch.x)
        return {
            "ce": (1.0 - p.alpha) * F.cross_entropy(student.float(), batch.y),
            "kd": p.alpha * soft_target_kd(student, targets, p.temperature),
        }
