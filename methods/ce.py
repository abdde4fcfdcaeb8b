"""The student trained alone with cross-entropy: the baseline every method is compared with.

Paper: none (standard supervised training). The leaderboard's "gain over the student trained
alone" is measured against this method.
Reference code: none needed; the harness adds the cross-entropy term itself.
Paper vs code: not applicable. Label smoothing, mixup and other regularisers are not part of
this baseline; they would be methods of their own.
"""

from __future__ import annotations

from torch import Tensor

from bench.api import Batch, Method, Outputs, register_method


@register_method("ce")
class CrossEntropyOnly(Method):
    """Cross-entropy on the labels only; no teacher, no extra terms, no parameters."""

    knowledge = "none"
    uses_teacher = False
    version = 1

    class Params(Method.Params):
        """No hyperparameters."""

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        return {}
