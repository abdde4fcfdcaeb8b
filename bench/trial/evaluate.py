"""Evaluating a trained model: logits on a split, accuracy, and a run's test metrics."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from bench.data import DatasetInfo, Split
from bench.trial.device import Execution
from bench.trial.metrics import count_flops, expected_calibration_error, macro_prf


class TestMetrics(Protocol):
    """What :func:`record_test_metrics` fills in (a trial's result)."""

    macro_precision: float
    macro_recall: float
    macro_f1: float
    ece: float
    student_flops: int


@torch.no_grad()
def predict(
    model: nn.Module,
    split: Split,
    device: torch.device,
    batch_size: int = 256,
    *,
    execution: Execution | None = None,
) -> Tensor:
    """Logits of ``model`` on every sample of ``split`` in order (eval mode), on the CPU,
    computed under ``execution`` (default: the device's precision, NCHW)."""
    execution = execution or Execution()
    was_training = model.training
    model.eval()
    chunks = []
    # A reduced-precision teacher takes inputs of its own dtype; a quantised model has no
    # floating-point parameters and takes float32.
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    with execution.autocast(device):
        for x, _, _ in split.batches(
            batch_size, shuffle=False, generator=None, augment=False, device=device
        ):
            chunks.append(model(execution.images(x.to(dtype))).float().cpu())
    model.train(was_training)
    return torch.cat(chunks)


def labels_of(split: Split, device: torch.device) -> Tensor:
    return torch.cat(
        [
            y.cpu()
            for _, y, _ in split.batches(
                1024, shuffle=False, generator=None, augment=False, device=device
            )
        ]
    )


def topk_accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among the ``k`` highest logits (N×K, N)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def record_test_metrics(
    result: TestMetrics, student: nn.Module, logits: Tensor, labels: Tensor, info: DatasetInfo
) -> None:
    """Macro precision/recall/F1, calibration error and the student's FLOPs."""
    prf = macro_prf(logits, labels, num_classes=info.num_classes)
    result.macro_precision, result.macro_recall, result.macro_f1 = prf.precision, prf.recall, prf.f1
    result.ece = expected_calibration_error(logits.softmax(1), labels)
    result.student_flops = count_flops(student, info.input_size)
