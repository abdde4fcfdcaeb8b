"""Loss math shared by several of kdbench's methods.

What lives here is used by more than one method file: the temperature-softened KL divergence
of Hinton's KD (``soft_kl``, ``kd_loss``: kd, ab, bss, byot, data_free, dml, fitnet, ls,
takd) and the decoupled KD terms with their warm-up (``dkd_loss``, ``dkd_warmup``: dkd, ls).
Math used by a single method stays in that method's file.

This module is part of the run key of every method whose file imports it: the harness adds a
hash of its source (``bench.plugins.shared_code``) to each such method's key, because the
method's ``version`` does not cover code outside its file. Any edit here therefore gives all
importing methods new run keys, and their earlier results are no longer reused; keep changes
to what those methods really need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, averaged over the batch.

    Computed in fp32 from log-probabilities, so it stays finite under bf16 autocast and for
    saturated teachers.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's distillation term: ``T^2 * soft_kl`` (the T^2 keeps gradient magnitudes
    comparable across temperatures)."""
    return temperature**2 * soft_kl(student_logits, teacher_logits, temperature)


def _binary_and_non_target_log_probs(
    scaled_logits: Tensor, target_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Log of [p_gt, 1 - p_gt] (N×2) and log of the renormalised non-target distribution
    (N×K, 0 at the target class)."""
    log_total = torch.logsumexp(scaled_logits, dim=1, keepdim=True)
    non_target = scaled_logits.masked_fill(target_mask, float("-inf"))
    log_non_target_total = torch.logsumexp(non_target, dim=1, keepdim=True)
    log_p_target = (scaled_logits - log_total).masked_fill(~target_mask, 0.0).sum(1, True)
    log_binary = torch.cat([log_p_target, log_non_target_total - log_total], dim=1)
    log_non_target = (scaled_logits - log_non_target_total).masked_fill(target_mask, 0.0)
    return log_binary, log_non_target


def tckd_nckd(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """DKD's target-class and non-target-class KD terms, each ``T^2 * KL``, batch-averaged."""
    target_mask = F.one_hot(target, student_logits.shape[1]).bool()
    log_b_s, log_hat_s = _binary_and_non_target_log_probs(
        student_logits.float() / temperature, target_mask
    )
    log_b_t, log_hat_t = _binary_and_non_target_log_probs(
        teacher_logits.float() / temperature, target_mask
    )
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(dim=1).mean()
    hat_t = log_hat_t.exp().masked_fill(target_mask, 0.0)
    nckd = (hat_t * (log_hat_t - log_hat_s)).sum(dim=1).mean()
    return temperature**2 * tckd, temperature**2 * nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> Tensor:
    """DKD's ``alpha * TCKD + beta * NCKD`` (both with the T^2 factor), batch-averaged."""
    tckd, nckd = tckd_nckd(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: int, epochs: int, warmup_epochs: float, reference_epochs: int = 240) -> float:
    """Linear warm-up weight of the DKD term at ``epoch`` (counted from 0).

    Args:
        epoch: Current epoch, from 0.
        epochs: Epochs of this trial's schedule.
        warmup_epochs: Length of the warm-up in epochs of the reference schedule.
        reference_epochs: Length of the schedule ``warmup_epochs`` refers to; 0 means
            ``warmup_epochs`` are epochs of this trial's schedule.
    """
    if warmup_epochs <= 0:
        return 1.0
    scale = epochs / reference_epochs if reference_epochs > 0 else 1.0
    return min((epoch + 1) / (warmup_epochs * scale), 1.0)
