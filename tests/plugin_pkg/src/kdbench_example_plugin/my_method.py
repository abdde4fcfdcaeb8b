"""Cosine distillation of logits: an example method published as a package.

Paper: none; an example. It matches the direction of the student's logit vector to the
teacher's, ignoring their scales.
Reference code: none.
Paper vs code: not applicable.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from bench.api import Batch, Method, ModelInfo, Outputs, TaskInfo, register_method


@register_method("example_cosine")
class CosineLogits(Method):
    """One minus the cosine similarity of student and teacher logits, per sample.

    Attributes:
        weight: Weight of the cosine term next to the student's cross-entropy.
    """

    knowledge = "logits"
    mode = "offline"
    version = 1

    class Params(Method.Params):
        weight: float = 1.0

    search_space: ClassVar[dict[str, list]] = {"weight": [0.5, 1.0, 2.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        if teacher is None or teacher.num_classes != student.num_classes:
            return False, "needs a teacher with the student's classes"
        return True, ""

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        if teacher is None:
            raise ValueError("example_cosine: needs the teacher's logits")
        cosine = F.cosine_similarity(student.logits.float(), teacher.logits.float(), dim=1)
        return {"cosine": self.params.weight * (1.0 - cosine).mean()}
