"""Activation boundaries (AB).

Paper: Byeongho Heo, Minsik Lee, Sangdoo Yun, Jin Young Choi, "Knowledge Transfer via
Distillation of Activation Boundaries Formed by Hidden Neurons", AAAI 2019.
https://arxiv.org/abs/1811.03233
Reference code: https://github.com/bhheo/AB_distillation (``cifar10_AB_distillation.py``,
``models/distillation_module.py``); CRD benchmark: https://github.com/HobbitLong/RepDistiller
(``distiller_zoo/AB.py``, ``helper/pretrain.py``).

The student learns where the teacher's neurons switch on: at every aligned stage pair, a
connector (``conv_connector``: 1×1 conv + BN) maps the student's pre-ReLU map onto the
teacher's, and the margin-based alternative loss penalises a connector response on the wrong
side of the teacher's activation boundary::

    Σ (r + μ)² · 1[r > −μ ∧ t ≤ 0] + (r − μ)² · 1[r ≤ μ ∧ t > 0]

summed over elements, divided by the batch size, with weight 1 on the deepest pair halved
for each shallower one, times 3/1000 (μ = 1). The connector's output is resized to the
teacher's map with ``match_spatial`` where sizes differ. Pairs with a 1×1 map on either side
carry no spatial knowledge and are left out (``spatial_pairs``; the deepest remaining pair
weighs 1); the pair is refused when none remains.

Training (both codebases): an initialisation stage trains the student (the layers the loss
reaches) and the connectors on this loss alone (``before_training``), then the student is
trained for classification without it.

Paper vs code:
- After initialisation the authors' CIFAR script trains with KD (τ = 3, KD term only); the
  CRD benchmark with cross-entropy only. ``kd_weight`` (default 0, the CRD benchmark) adds
  ``kd_weight · KL(P_T^τ ‖ P_S^τ)`` to the harness's cross-entropy; ``kd_weight=1`` is the
  authors' setting plus the cross-entropy.
- Pre-activation maps: kdbench's zoo provides them; for other timm models the post-ReLU
  stage outputs stand in on both sides. The teacher's sign pattern is the same either way
  (t > 0 iff the pre-activation is > 0); the student side goes through the connector anyway.
- Connector initialisation: N(0, 2/(k²·C_out)) weights, BN weight 1 and bias 0, as in the
  authors' code. The CRD benchmark skips the connector where shapes agree; here it is always
  present (one rule).
- Stage length: ``init_epochs`` (None: the CRD benchmark's 30 of 240 epochs, scaled).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import (
    Batch,
    Method,
    ModelInfo,
    Outputs,
    Range,
    TaskInfo,
    TrainContext,
    align_stages,
    conv_connector,
    describe_pairs,
    init_stage_epochs,
    match_spatial,
    register_method,
    require_teacher,
    spatial_pair_supports,
    spatial_pairs,
    spatial_supports,
)
from methods._common import soft_kl


def alternative_loss(response: Tensor, target: Tensor, margin: float) -> Tensor:
    """The margin-based activation-boundary loss, summed over all elements (fp32)."""
    r, t = response.float(), target.float()
    on = t > 0
    wrong_off = (r > -margin) & ~on
    wrong_on = (r <= margin) & on
    return ((r + margin).pow(2) * wrong_off + (r - margin).pow(2) * wrong_on).sum()


@register_method("ab")
class ActivationBoundaries(Method):
    """Activation-boundary initialisation, then classification training.

    Attributes:
        margin: Margin μ of the alternative loss (1).
        scale: Factor of the summed, batch-averaged, layer-weighted loss (3/1000).
        init_epochs: Epochs of the initialisation stage (None: 30/240 of the student's
            epochs, at least 1).
        kd_weight: Weight of a KD term after initialisation (0: CE only, CRD benchmark).
        temperature: τ of that KD term (authors' code: 3).
    """

    knowledge = "intermediate"
    mode = "offline"
    needs = frozenset({"preact_features"})
    version = 2

    class Params(Method.Params):
        margin: Annotated[float, Range(ge=0)] = 1.0
        scale: Annotated[float, Range(ge=0)] = 3e-3
        init_epochs: Annotated[int | None, Range(ge=1)] = None
        kd_weight: Annotated[float, Range(ge=0)] = 0.0
        temperature: Annotated[float, Range(gt=0)] = 3.0

    search_space: ClassVar[dict[str, list]] = {"init_epochs": [5, 15, 30]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if not ok or teacher is None:
            return ok, reason
        if self.params.kd_weight > 0 and teacher.num_classes != student.num_classes:
            return False, "kd_weight > 0 needs a teacher with the student's classes"
        return spatial_pair_supports(student, teacher, task, align_stages(student, teacher))

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        self.pairs = spatial_pairs(student, teacher, task, align_stages(student, teacher))
        self.stage_pairs = describe_pairs(student, teacher, task, self.pairs)
        self.connectors = nn.ModuleList(
            conv_connector(student.feature_channels[s], teacher.feature_channels[t])
            for s, t in self.pairs
        )
        for module in self.connectors.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.init_epochs = init_stage_epochs(self.params.init_epochs, task)

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

    def before_training(self, ctx: TrainContext) -> None:
        needs = frozenset({"preact_features"})

        def step(batch: Batch) -> Tensor:
            teacher = ctx.forward_teacher(batch.x, needs)
            student = ctx.forward_student(batch.x, needs)
            return self.loss(batch, student, teacher)["ab"]

        candidates = [*ctx.student.parameters(), *self.connectors.parameters()]
        ctx.run_init_stage("ab", self.init_epochs, candidates, step)

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        """The classification stage: CE, plus KD when ``kd_weight`` > 0."""
        p = self.params
        student = ctx.forward_student(batch.x)
        terms = {"ce": F.cross_entropy(student.logits, batch.y)}
        if p.kd_weight > 0:
            teacher = ctx.forward_teacher(batch.x)
            kd = soft_kl(student.logits, teacher.logits, p.temperature)
            terms["kd"] = p.kd_weight * kd
        return terms

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        """The activation-boundary loss: the objective of the initialisation stage."""
        teacher = require_teacher(teacher, "ab")
        p = self.params
        batch_size = student.preact_features[0].shape[0]
        total = student.preact_features[0].new_zeros((), dtype=torch.float32)
        k = len(self.pairs)
        for i, ((s, t), connector) in enumerate(zip(self.pairs, self.connectors, strict=True)):
            target = teacher.preact_features[t]
            response = match_spatial(connector(student.preact_features[s]), target)
            weight = 2.0 ** (i - k + 1)
            total = total + weight * alternative_loss(response, target, p.margin)
        return {"ab": p.scale * total / batch_size}
