"""Template for a new distillation method: copy it, rename it, fill it in.

    cp methods/_template.py methods/my_method.py    # the file name is the method's name
    kdbench check-method my_method                   # the conformance suite
    kdbench train --method my_method --param weight=2.0

Files whose names start with ``_`` are skipped by method discovery, so this template is not
registered; it still runs as a plugin file: ``kdbench train --plugins methods/_template.py
--method _template``.

A method imports kdbench only through ``bench.api``, the plugin API: ``Method`` and
``register_method``, the ``TrainContext`` protocol its hooks receive, and the stage-pairing and
pair-check helpers (``align_stages``, ``same_classes``, ``require_teacher``, ...). The harness
behind that API may change without breaking the method. Loss math shared by several of
kdbench's own methods lives in ``methods/_common.py``; a private helper module like it (a
``_``-prefixed module beside the method in the same package) is hashed into the run key of
every method that imports it.

The example is complete and runnable: cosine similarity between the student's and the
teacher's pooled embeddings, after a linear projection of the student's embedding to the
teacher's width (a small "connector" the method owns and trains with the student).

Replace this docstring with the method's header, in this form:

Paper: <authors>, "<title>", <venue> <year>. <arXiv/DOI link>
Reference code: <url> (<file>)
Paper vs code: <each place where the paper and the reference code disagree, and which
Params value selects which>.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, Outputs, Range, TaskInfo, register_method


# The registered name is the file's name, so a copy saved as methods/my_method.py registers
# "my_method" without editing this line. Write a literal name instead if you prefer.
@register_method(Path(__file__).stem)
class CosineEmbedding(Method):
    """Cosine-similarity distillation of pooled embeddings (template example).

    Document every parameter here (Google style), with the paper's default and its source.

    Attributes:
        weight: Weight of the cosine term relative to the student's cross-entropy.
    """

    # What is transferred: none | logits | intermediate | relation | parameter | graph |
    # multi-model.
    knowledge = "intermediate"
    # offline (frozen teacher) | online (teacher trains too) | self (no separate teacher) |
    # data_free.
    mode = "offline"
    # What the harness computes besides logits, for student and (by default) teacher:
    # features (stage outputs), preact_features, embedding (pooled pre-logit vector).
    needs = frozenset({"embedding"})
    # False for methods without a teacher (the trial then trains none).
    uses_teacher = True
    # True if loss() returns the student's cross-entropy itself (e.g. to weight it);
    # otherwise the harness adds CE with weight 1.
    owns_ce = False
    # Bump whenever the method's behaviour changes: it is part of every run key, so old
    # results are never mixed with new ones.
    version = 1

    class Params(Method.Params):
        # Typed hyperparameters with the paper's defaults, each number with its valid range
        # (Range(gt=0) for a temperature, ge=0 for a weight, ge=0, le=1 for a probability,
        # ge=1 for a count); the harness parses values given on the command line or in a
        # suite file and refuses those outside the range.
        weight: Annotated[float, Range(ge=0)] = 1.0

    # A few values of the main knob for the tuning phase (3–4 values).
    search_space: ClassVar[dict[str, list]] = {"weight": [0.5, 1.0, 2.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        # Refuse pairs the method cannot handle; the reason is shown on leaderboards.
        if teacher is None:
            return False, "needs a teacher"
        if student.embedding_dim < 1 or teacher.embedding_dim < 1:
            return False, "needs pooled embeddings from both models"
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        # Build the method's own modules here, for these shapes. Submodules move to the
        # device, are saved in checkpoints and are optimised with the student.
        assert teacher is not None  # supports() refused the pair otherwise
        self.projector = nn.Linear(student.embedding_dim, teacher.embedding_dim, bias=False)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        # Return named, already-weighted scalar terms; the harness adds CE (unless
        # owns_ce), sums, backpropagates and logs each term. Compute in fp32 where
        # precision matters: the step may run under bf16 autocast.
        if teacher is None or student.embedding is None or teacher.embedding is None:
            raise ValueError(f"{self.name}: needs student and teacher embeddings")
        projected = self.projector(student.embedding.float())
        cosine = F.cosine_similarity(projected, teacher.embedding.float(), dim=1, eps=1e-8)
        return {"cosine": self.params.weight * (1.0 - cosine).mean()}
