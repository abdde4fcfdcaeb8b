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


# The record of a compression, named here rather than in ``compress`` so that suites, sweeps
# and leaderboards can read it without importing torch.
#: ``kdbench.kind`` of a compression child run.
COMPRESS_KIND = "compress"
#: Tag naming the run key a compression child run belongs to.
COMPRESSED_KEY_TAG = "kdbench.compress_of"
#: Tag naming the variant a compression child run measured (``fp32``, ``pruned-0.5``, ``int8``).
VARIANT_TAG = "kdbench.compression"
FP32_VARIANT = "fp32"
INT8_VARIANT = "int8"


def pruned_variant(sparsity: float) -> str:
    """The variant name of the student pruned to ``sparsity`` (``pruned-0.5``)."""
    return f"pruned-{sparsity:g}"


__all__ = [
    "COMPRESSED_KEY_TAG",
    "COMPRESS_KIND",
    "FP32_VARIANT",
    "INT8_VARIANT",
    "VARIANT_TAG",
    "AnalysisError",
    "QuantizationError",
    "RunNotFoundError",
    "pruned_variant",
]
