"""Per-run metrics beyond top-1: macro precision/recall/F1, calibration, FLOPs.

Pure functions of a trial's test predictions (and of the student model for FLOPs), called at
the end of a trial and logged with the run. Inputs may be numpy arrays or torch tensors (on
any device); results are plain Python numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MacroPRF:
    """Macro-averaged precision, recall and F1 (each the unweighted mean over classes)."""

    precision: float
    recall: float
    f1: float


def _array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, wherever it lives
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.size == 0:
        raise ValueError(f"{name}: empty input; pass at least one sample.")
    return a


def _labels(labels: Any, n: int) -> np.ndarray:
    y = _array(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(
            f"labels: expected shape ({n},), one class index per sample, got {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: expected integer class indices, got dtype {y.dtype}.")
    return y.astype(np.int64)


def macro_prf(predictions: Any, labels: Any, num_classes: int | None = None) -> MacroPRF:
    """Macro precision, recall and F1 of class predictions.

    Per class c: precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2·P·R / (P + R); a ratio with a zero denominator counts as 0 (a class never
    predicted has precision 0). Macro values are the plain means over the classes, and macro
    F1 is the mean of the per-class F1 (not the F1 of the macro precision and recall), as in
    scikit-learn's ``average="macro"``.

    Args:
        predictions: Shape (N,) predicted class indices, or (N, K) logits or probabilities
            (the argmax is taken).
        labels: Shape (N,) true class indices.
        num_classes: Average over classes 0..num_classes-1 (classes absent from both count
            with zeros). None: over the classes that occur in labels or predictions.

    Returns:
        The three macro averages, each in [0, 1].

    Raises:
        ValueError: On mismatched shapes, non-integer labels, or a class index outside
            0..num_classes-1.
    """
    p = _array(predictions, "predictions")
    if p.ndim == 2:
        p = p.argmax(axis=1)
    elif p.ndim != 1:
        raise ValueError(
            f"predictions: expected shape (N,) class indices or (N, K) scores, got {p.shape}."
        )
    p = p.astype(np.int64)
    y = _labels(labels, p.shape[0])
    if num_classes is None:
        classes = np.union1d(y, p)
    else:
        bad = np.concatenate([y, p])
        bad = bad[(bad < 0) | (bad >= num_classes)]
        if bad.size:
            raise ValueError(
                f"class index {int(bad[0])} is outside 0..{num_classes - 1} (num_classes="
                f"{num_classes})."
            )
        classes = np.arange(num_classes)
    tp = np.array([np.sum((p == c) & (y == c)) for c in classes], dtype=float)
    predicted = np.array([np.sum(p == c) for c in classes], dtype=float)
    actual = np.array([np.sum(y == c) for c in classes], dtype=float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return MacroPRF(float(precision.mean()), float(recall.mean()), float(f1.mean()))


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al., ICML 2017).

    Confidence is the top probability and the prediction its class. Bin b holds the samples
    with confidence in ((b-1)/n_bins, b/n_bins] (the first bin also holds 0).
    ECE = Σ_b |B_b|/N · |accuracy(B_b) − mean confidence(B_b)|.

    Args:
        probs: Shape (N, K) class probabilities, rows summing to 1 (apply softmax to
            logits first).
        labels: Shape (N,) true class indices.
        n_bins: Number of bins.

    Returns:
        The ECE in [0, 1]; 0 is perfectly calibrated.

    Raises:
        ValueError: When probs is not (N, K), a row does not sum to 1 (within 1e-3) or has
            a value outside [0, 1], or n_bins < 1.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}.")
    p = _array(probs, "probs").astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs: expected shape (N, K) class probabilities, got {p.shape}.")
    if np.any(p < 0) or np.any(p > 1) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError(
            "probs: rows must be probabilities summing to 1; pass softmax(logits), not the logits."
        )
    y = _labels(labels, p.shape[0])
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Edges k/n are correctly rounded, so a confidence of exactly 0.7 falls in (0.6, 0.7].
    edges = np.arange(1, n_bins) / n_bins
    bins = np.searchsorted(edges, confidence, side="left")
    ece = 0.0
    for b in range(n_bins):
        members = bins == b
        if members.any():
            gap = abs(correct[members].mean() - confidence[members].mean())
            ece += members.mean() * gap
    return float(ece)


def count_flops(model: Any, input_size: tuple[int, ...]) -> int:
    """FLOPs of one forward pass of ``model`` on a single input, counted by PyTorch.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` in eval mode without
    gradients, on a zero input of shape (1, *input_size) on the model's device; a
    multiply-add counts as 2 FLOPs (so a Linear(i, o) layer is 2·i·o). Only the operations
    PyTorch has formulas for are counted (matrix products and convolutions, which dominate
    CNNs); element-wise operations, normalisation and pooling count 0. The model's training
    mode is restored afterwards.

    Args:
        model: A ``torch.nn.Module``.
        input_size: One input's shape without the batch dimension, e.g. (3, 32, 32).

    Returns:
        The FLOP count.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else None
    x = torch.zeros((1, *input_size), device=device, dtype=dtype or torch.float32)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    total = counter.get_total_flops()
    if not math.isfinite(total):
        raise ValueError(f"FLOP count is not finite ({total}).")
    return int(total)
