"""Analyses of trained teachers and students: cost (``profile``), saliency (``explain``) and
compression after distillation (``compress``).

This package's top level imports nothing heavy, so the CLI can name its errors without loading
torch; the submodules import torch and MLflow.
"""

from __future__ import annotations


class AnalysisError(ValueError):
    """Bad input to an analysis: the message names what was wrong and how to fix it."""


class RunNotFoundError(AnalysisError):
    """No run with the given run key (or no matching baseline run) in the experiment."""


class QuantizationError(AnalysisError):
    """A model that int8 post-training quantization cannot handle; the message says why."""


__all__ = ["AnalysisError", "QuantizationError", "RunNotFoundError"]
