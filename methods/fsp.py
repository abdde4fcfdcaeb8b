"""Flow of solution procedure (FSP).

Paper: Junho Yim, Donggyu Joo, Jihoon Bae, Junmo Kim, "A Gift from Knowledge Distillation: Fast
Optimization, Network Minimization and Transfer Learning", CVPR 2017.
https://openaccess.thecvf.com/content_cvpr_2017/html/Yim_A_Gift_From_CVPR_2017_paper.html
Reference code: the authors released none; CRD benchmark:
https://github.com/HobbitLong/RepDistiller (``distiller_zoo/FSP.py``, ``helper/pretrain.py``).

The FSP matrix of two maps F1 (C1×H×W) and F2 (C2×H×W) of one network is
G_ij = Σ_s F1_i(s) F2_j(s) / (H·W). Here F1, F2 are consecutive stages of ``align_stages``
(the larger map average-pooled to the smaller one's size), and the student matches the
teacher's matrices ‖G_T − G_S‖². G is C1×C2, so the student's and the teacher's stages must
have the same widths: ``supports`` refuses a pair where they differ, or with fewer than two
aligned stages. Spatial sizes may differ between the networks.

Training, as in the paper: an initialisation stage trains the student on the FSP loss alone
(``before_training``), then the student is trained on the main task (cross-entropy only).

Paper vs code:
- The paper's loss sums the squared differences over matrix entries, with equal weights λ_i
  over the pairs, averaged over the batch; the CRD benchmark takes the mean over entries
  (a factor C1·C2 per pair smaller). ``reduction="mean"`` (default, the CRD benchmark's)
  keeps the initialisation stable at the recipe's learning rate; ``reduction="sum"`` is the
  paper's form (scale ``beta`` down accordingly).
- The paper keeps the FSP loss out of the second stage, as does the CRD benchmark;
  ``main_weight`` > 0 adds ``main_weight`` × the FSP loss to the cross-entropy there.
- Stage length: ``init_epochs`` (None: the CRD benchmark's 30 of 240 epochs, scaled).
"""

from __future__ import annotations

import itertools
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import (
    Batch,
    Method,
    ModelInfo,
    Outputs,
    Range,
    TaskInfo,
    TrainContext,
    align_stages,
    describe_pairs,
    init_stage_epochs,
    match_spatial,
    register_method,
    require_teacher,
    spatial_supports,
)


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """N×C1×C2 FSP matrices of two stage outputs of one network, in fp32."""
    first, second = first.float(), second.float()
    if first.shape[-2:] != second.shape[-2:]:
        if first.shape[-2] >= second.shape[-2]:
            first = match_spatial(first, second)
        else:
            second = match_spatial(second, first)
    positions = first.shape[-2] * first.shape[-1]
    with torch.autocast(device_type=first.device.type, enabled=False):
        return first.flatten(2) @ second.flatten(2).transpose(1, 2) / positions


@register_method("fsp")
class FlowOfSolutionProcedure(Method):
    """FSP-matrix initialisation, then classification training.

    Attributes:
        beta: Weight of the FSP loss in the initialisation stage (1).
        reduction: ``mean`` over matrix entries (CRD benchmark) or ``sum`` (paper).
        init_epochs: Epochs of the initialisation stage (None: 30/240 of the student's
            epochs, at least 1).
        main_weight: Weight of the FSP loss after initialisation (0: paper, CRD benchmark).
    """

    knowledge = "relation"
    mode = "offline"
    needs = frozenset({"features"})
    version = 1

    class Params(Method.Params):
        beta: Annotated[float, Range(ge=0)] = 1.0
        reduction: Literal["mean", "sum"] = "mean"
        init_epochs: Annotated[int | None, Range(ge=1)] = None
        main_weight: Annotated[float, Range(ge=0)] = 0.0

    search_space: ClassVar[dict[str, list]] = {"init_epochs": [5, 15, 30]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if not ok or teacher is None:
            return ok, reason
        pairs = align_stages(student, teacher)
        if len(pairs) < 2:
            return False, "FSP relates consecutive stages; the pair aligns fewer than two"
        widths_s = [student.feature_channels[s] for s, _ in pairs]
        widths_t = [teacher.feature_channels[t] for _, t in pairs]
        if widths_s != widths_t:
            return False, (
                f"FSP matrices need equal stage widths; aligned student widths {widths_s} "
                f"differ from the teacher's {widths_t}"
            )
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        self.pairs = align_stages(student, teacher)
        self.stage_pairs = describe_pairs(student, teacher, task, self.pairs)
        self.init_epochs = init_stage_epochs(self.params.init_epochs, task)

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

    def fsp_distance(self, student: Outputs, teacher: Outputs) -> Tensor:
        """Unweighted FSP loss, summed over consecutive aligned stage pairs."""
        total = student.logits.new_zeros((), dtype=torch.float32)
        for (s1, t1), (s2, t2) in itertools.pairwise(self.pairs):
            g_s = fsp_matrix(student.features[s1], student.features[s2])
            g_t = fsp_matrix(teacher.features[t1], teacher.features[t2])
            squared = (g_s - g_t).pow(2)
            if self.params.reduction == "mean":
                total = total + squared.mean()
            else:
                total = total + squared.sum() / squared.shape[0]
        return total

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        """The FSP loss: the objective of the initialisation stage."""
        teacher = require_teacher(teacher, "fsp")
        return {"fsp": self.params.beta * self.fsp_distance(student, teacher)}

    def before_training(self, ctx: TrainContext) -> None:
        needs = frozenset({"features"})

        def step(batch: Batch) -> Tensor:
            teacher = ctx.forward_teacher(batch.x, needs)
            student = ctx.forward_student(batch.x, needs)
            return self.loss(batch, student, teacher)["fsp"]

        ctx.run_init_stage("fsp", self.init_epochs, ctx.student.parameters(), step)

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        """The classification stage: CE, plus ``main_weight`` × FSP when positive."""
        if self.params.main_weight <= 0:
            student = ctx.forward_student(batch.x)
            return {"ce": F.cross_entropy(student.logits, batch.y)}
        needs = frozenset({"features"})
        teacher = ctx.forward_teacher(batch.x, needs)
        student = ctx.forward_student(batch.x, needs)
        return {
            "ce": F.cross_entropy(student.logits, batch.y),
            "fsp": self.params.main_weight * self.fsp_distance(student, teacher),
        }
