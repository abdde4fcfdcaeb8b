"""BSS: knowledge distillation with adversarial samples supporting the decision boundary.

Paper: Byeongho Heo, Minsik Lee, Sangdoo Yun, Jin Young Choi, "Knowledge Distillation with
Adversarial Samples Supporting Decision Boundary", AAAI 2019. https://arxiv.org/abs/1805.05532
Reference code: https://github.com/bhheo/BSS_distillation (``train_BSS_distillation.py``,
``attacks/attack_BSS.py``).

Each step, besides CE and KD on the batch:
1. Base samples: those the teacher classifies correctly; if there are more than
   ``attack_fraction`` of the batch, the ones where student and teacher disagree most,
   scored by ``sum_{k != y} (p_t,k - p_s,k)^2``.
2. Target class per base sample, drawn from the teacher's non-top classes with probability
   proportional to the teacher's softmax.
3. Boundary supporting sample: an iterative targeted attack on the frozen teacher. With
   margin m = z_src - z_tgt (src: the teacher's class at the start) and g the gradient of
   ``z_tgt - z_src`` w.r.t. the input, each step moves ``x += eta * (m + 1e-4) * g / ||g||_2``
   (per sample), i.e. a step proportional to the remaining margin along the direction that
   closes it fastest; a sample stops once the teacher's top class is no longer src.
   ``attack_steps`` steps of size eta.
4. A KD term on the boundary supporting samples.

Loss: ``CE + w_kd(e) * KL_T(batch) + w_bss(e) * KL_T(BSS)`` with KL_T the batch-mean
KL(softmax(z_t/T) || softmax(z_s/T)) and, with e = (epoch + 1) / epochs (the reference's
``epoch / max_epoch`` with epochs counted from 1):
``w_kd = kd_weight_end + (kd_weight_start - kd_weight_end) * (1 - e)`` (4 → 1) and
``w_bss = bss_weight_start * max(1 - e / bss_end_fraction, 0)`` (2 → 0 at 3/4 of training).

Defaults are the reference code's CIFAR-10 setting: T = 3, 10 attack steps, step size 0.3,
64 base samples per batch of 256, the weight schedules above.

Deviations from the reference code:
- Base samples are capped at a fraction of the batch (0.25 = 64/256) instead of an absolute
  64, so the setting carries over to other batch sizes.
- The attacked sample is clipped to the dataset's valid pixel range in normalised units,
  ``[(0 - mean) / std, (1 - mean) / std]`` per channel; the reference clips to ±2.5, which is
  close to that range for CIFAR's normalisation.
- The reference's KD terms are soft cross-entropies ``-sum p_t log p_s`` without T^2; this
  code uses the KL divergence without T^2, which differs only by the teacher's entropy (a
  constant): identical gradients.
- Target classes are sampled with ``torch.multinomial`` from the trial's seeded generator
  (the same distribution as the reference's cumulative-sum draw).
- The attack's gradient is taken w.r.t. the input only (``torch.autograd.grad``), through the
  teacher in eval mode: its weights, gradients and BatchNorm statistics stay untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import (
    Batch,
    Method,
    ModelInfo,
    Range,
    TaskInfo,
    TrainContext,
    register_method,
    same_classes,
)
from methods._common import soft_kl

MARGIN_OFFSET = 1e-4  # the reference's offset: keep moving a sample sitting on the boundary


def boundary_attack(
    teacher_logits: Callable[[Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    *,
    steps: int,
    step_size: float,
    lower: Tensor | float | None = None,
    upper: Tensor | float | None = None,
) -> Tensor:
    """Move each sample of ``x`` towards the teacher's boundary between its current class
    and ``target`` (the BSS attack).

    Args:
        teacher_logits: Maps inputs to the teacher's logits, differentiably w.r.t. the input.
        x: Base samples, N×….
        target: Target class per sample, N; must differ from the teacher's class.
        steps: Iterations of the attack.
        step_size: Step size eta: each step moves ``eta * (margin + 1e-4)`` along the unit
            gradient of the target-vs-source logit difference.
        lower: Lowest valid input value (broadcastable to ``x``), or None.
        upper: Highest valid input value, or None.

    Returns:
        The boundary supporting samples, detached, shaped like ``x``.
    """
    x_adv = x.detach().clone()
    source: Tensor | None = None
    shape = (-1,) + (1,) * (x.dim() - 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = teacher_logits(x_adv).float()
        if source is None:
            source = logits.argmax(dim=1).detach()
        z_src = logits.gather(1, source[:, None]).squeeze(1)
        z_tgt = logits.gather(1, target[:, None]).squeeze(1)
        (grad,) = torch.autograd.grad((z_tgt - z_src).sum(), x_adv)
        still_source = (logits.argmax(dim=1) == source).float().detach()
        if not still_source.any():
            break
        margin = (z_src - z_tgt).detach()
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = step_size * still_source * (margin + MARGIN_OFFSET) / grad_norm
        x_adv = x_adv.detach() + scale.view(shape) * grad.detach()
        if lower is not None or upper is not None:
            x_adv = x_adv.clamp(lower, upper)
    return x_adv.detach()


def select_base_samples(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, max_samples: int
) -> Tensor:
    """Indices of the samples to attack: the teacher is right on them, and (when too many)
    teacher and student disagree most on the non-target classes."""
    correct = (teacher_logits.argmax(dim=1) == target).nonzero().squeeze(1)
    if correct.numel() <= max_samples:
        return correct
    p_t = teacher_logits[correct].float().softmax(dim=1)
    p_s = student_logits[correct].detach().float().softmax(dim=1)
    diff = (p_t - p_s).pow(2)
    score = diff.sum(dim=1) - diff.gather(1, target[correct][:, None]).squeeze(1)
    return correct[score.topk(max_samples).indices]


def sample_target_classes(teacher_logits: Tensor, generator: torch.Generator) -> Tensor:
    """One target class per row, drawn from the non-top classes ∝ the teacher's softmax."""
    probs = teacher_logits.detach().float().softmax(dim=1).clamp_min(1e-12)
    probs = probs.scatter(1, probs.argmax(dim=1, keepdim=True), 0.0)
    drawn = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1)
    return drawn.to(teacher_logits.device)


def pixel_range(ctx: TrainContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """Valid input range in normalised units, per channel (1×C×1×1): from the dataset's
    normalisation when known, else the batch's own per-channel extremes."""
    info = getattr(getattr(ctx, "data", None), "info", None)
    if info is not None and len(info.mean) == x.shape[1]:
        mean = torch.tensor(info.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(info.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        return (0.0 - mean) / std, (1.0 - mean) / std
    dims = (0, 2, 3)
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


@register_method("bss")
class BSS(Method):
    """KD plus distillation on boundary supporting samples (adversarial, on the teacher).

    Attributes:
        temperature: Softmax temperature of both KD terms (reference: 3).
        attack_steps: Iterations of the boundary attack (reference: 10).
        step_size: Attack step size eta (reference: 0.3).
        attack_fraction: Most base samples per batch, as a fraction of the batch
            (reference: 64 of 256).
        kd_weight_start: KD weight at the start of training (reference: 4).
        kd_weight_end: KD weight at the end (reference: 1).
        bss_weight_start: BSS weight at the start (reference: 2).
        bss_end_fraction: Fraction of training at which the BSS weight reaches 0
            (reference: 0.75).
    """

    knowledge = "logits"
    mode = "offline"
    owns_ce = True
    version = 1

    class Params(Method.Params):
        temperature: Annotated[float, Range(gt=0)] = 3.0
        attack_steps: Annotated[int, Range(ge=1)] = 10
        step_size: Annotated[float, Range(gt=0)] = 0.3
        attack_fraction: Annotated[float, Range(gt=0, le=1)] = 0.25
        kd_weight_start: Annotated[float, Range(ge=0)] = 4.0
        kd_weight_end: Annotated[float, Range(ge=0)] = 1.0
        bss_weight_start: Annotated[float, Range(ge=0)] = 2.0
        bss_end_fraction: Annotated[float, Range(gt=0, le=1)] = 0.75

    search_space: ClassVar[dict[str, list]] = {"bss_weight_start": [1.0, 2.0, 4.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return same_classes(student, teacher)

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.epochs = task.epochs

    def weights(self, epoch: int) -> tuple[float, float]:
        """(KD weight, BSS weight) at ``epoch`` (from 0)."""
        p = self.params
        done = (epoch + 1) / max(self.epochs, 1)
        kd = p.kd_weight_end + (p.kd_weight_start - p.kd_weight_end) * max(1.0 - done, 0.0)
        bss = p.bss_weight_start * max(1.0 - done / p.bss_end_fraction, 0.0)
        return kd, bss

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        teacher_model = ctx.teacher
        if teacher_model is None:
            raise RuntimeError("bss: the trial has no teacher; give one (--teacher NAME)")
        if not hasattr(self, "epochs"):
            raise RuntimeError("bss: call setup(student, teacher, task) before train_step()")
        p = self.params
        teacher = ctx.forward_teacher(batch.x).logits
        student = ctx.forward_student(batch.x).logits
        kd_weight, bss_weight = self.weights(batch.epoch)
        terms = {
            "ce": F.cross_entropy(student.float(), batch.y),
            "kd": kd_weight * soft_kl(student, teacher, p.temperature),
            "bss": student.new_zeros((), dtype=torch.float32),
        }
        if bss_weight <= 0.0:
            return terms
        # At least two samples: the student's forward on them runs in train mode, and
        # BatchNorm cannot normalise a single sample with 1x1 maps.
        max_samples = max(2, round(p.attack_fraction * batch.x.shape[0]))
        base = select_base_samples(student, teacher, batch.y, max_samples)
        if base.numel() < 2:
            return terms
        targets = sample_target_classes(teacher[base], ctx.generator)
        lower, upper = pixel_range(ctx, batch.x)
        x_bss = boundary_attack(
            lambda x: ctx.forward(teacher_model, x, frozenset(), grad=True).logits,
            batch.x[base],
            targets,
            steps=p.attack_steps,
            step_size=p.step_size,
            lower=lower,
            upper=upper,
        )
        teacher_bss = ctx.forward_teacher(x_bss).logits
        student_bss = ctx.forward_student(x_bss).logits
        terms["bss"] = bss_weight * soft_kl(student_bss, teacher_bss, p.temperature)
        return terms
