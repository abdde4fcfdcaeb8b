"""FitNets: hint-based training.

Paper: Adriana Romero, Nicolas Ballas, Samira Ebrahimi Kahou, Antoine Chassang, Carlo Gatta,
Yoshua Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015. https://arxiv.org/abs/1412.6550
Reference code: the authors' Theano code is not maintained; CRD benchmark:
https://github.com/HobbitLong/RepDistiller (``distiller_zoo/FitNet.py``,
``models/util.py: ConvReg``, ``train_student.py``).

A regressor r maps the student's guided layer to the teacher's hint layer; the hint loss is
the squared error ‖u_h − r(v_g)‖². Guided/hint layers: ``hint_pair`` (the middle aligned
stage pair); the regressor is ``conv_connector`` (1×1 conv + BN), followed by
``match_spatial`` when the maps' sizes differ.

Paper vs code (``stages`` selects):
- ``two_stage`` (the paper, default): stage 1 trains the student up to the guided layer and
  the regressor on the hint loss alone (``before_training``; only parameters the hint loss
  reaches are updated); stage 2 trains the whole student with KD,
  ``CE + λ·H(P_T^τ, P_S^τ)``, τ = 3 and λ annealed linearly from 4 to 1 over training
  (paper, appendix). H is implemented as KL(P_T^τ‖P_S^τ), which differs from the
  cross-entropy by the teacher's entropy, a constant: same gradients.
- ``joint`` (the CRD benchmark): one stage, CE + β·MSE(r(v_g), u_h), β = 100.
- The paper's regressor is a convolution whose kernel maps the guided map onto the hint
  map's size (the CRD benchmark's ConvReg adds BN + ReLU and uses a strided/transposed
  convolution); here the shared 1×1 connector plus ``match_spatial``.
- The hint loss is β·mean squared error in both stages (the paper's ½·sum differs by a
  constant factor, folded into β).
- Stage 1 length: ``init_epochs``; by default the CRD benchmark's 30 initialisation epochs
  of 240, scaled to the recipe (at least one epoch).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

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
    conv_connector,
    hint_pair,
    init_stage_epochs,
    match_spatial,
    register_method,
    require_teacher,
    spatial_supports,
)
from methods._common import soft_kl


@register_method("fitnet")
class FitNet(Method):
    """Hint learning through a regressor on the middle aligned stage pair.

    Attributes:
        stages: ``two_stage`` (paper: hint pre-training, then KD) or ``joint`` (CRD
            benchmark: CE + β·hint).
        beta: Weight of the hint MSE (CRD benchmark: 100).
        init_epochs: Epochs of the hint stage of ``two_stage`` (None: 30/240 of the
            student's epochs, at least 1).
        temperature: τ of the KD stage of ``two_stage`` (paper: 3).
        kd_lambda_start: λ of the KD stage at the start of training (paper: 4).
        kd_lambda_end: λ at the end, reached linearly (paper: 1).
    """

    knowledge = "intermediate"
    mode = "offline"
    needs = frozenset({"features"})
    version = 1

    class Params(Method.Params):
        stages: Literal["two_stage", "joint"] = "two_stage"
        beta: Annotated[float, Range(ge=0)] = 100.0
        init_epochs: Annotated[int | None, Range(ge=1)] = None
        temperature: Annotated[float, Range(gt=0)] = 3.0
        kd_lambda_start: Annotated[float, Range(ge=0)] = 4.0
        kd_lambda_end: Annotated[float, Range(ge=0)] = 1.0

    search_space: ClassVar[dict[str, list]] = {"beta": [25.0, 100.0, 400.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if (
            ok
            and self.params.stages == "two_stage"
            and teacher is not None
            and teacher.num_classes != student.num_classes
        ):
            return False, "the KD stage needs a teacher with the student's classes"
        return ok, reason

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        self.pair = hint_pair(student, teacher)
        s, t = self.pair
        self.regressor = conv_connector(student.feature_channels[s], teacher.feature_channels[t])
        self.init_epochs = init_stage_epochs(self.params.init_epochs, task)

    def hint_loss(self, student: Outputs, teacher: Outputs) -> Tensor:
        s, t = self.pair
        f_t = teacher.features[t]
        f_s = match_spatial(self.regressor(student.features[s]), f_t)
        return self.params.beta * F.mse_loss(f_s.float(), f_t.float())

    def before_training(self, ctx: TrainContext) -> None:
        if self.params.stages != "two_stage":
            return

        def step(batch: Batch) -> Tensor:
            teacher = ctx.forward_teacher(batch.x, frozenset({"features"}))
            student = ctx.forward_student(batch.x, frozenset({"features"}))
            return self.loss(batch, student, teacher)["hint"]

        candidates = [*ctx.student.parameters(), *self.regressor.parameters()]
        ctx.run_init_stage("fitnet_hint", self.init_epochs, candidates, step)

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        if self.params.stages == "joint":
            return super().train_step(ctx, batch)
        # After the hint stage: KD on logits only, so the feature maps are skipped.
        p = self.params
        teacher = ctx.forward_teacher(batch.x)
        student = ctx.forward_student(batch.x)
        weight = p.kd_lambda_start + (p.kd_lambda_end - p.kd_lambda_start) * batch.progress
        return {
            "ce": F.cross_entropy(student.logits, batch.y),
            "kd": weight * soft_kl(student.logits, teacher.logits, p.temperature),
        }

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        """The hint term (the whole distillation loss of ``joint``; the objective of the hint
        stage of ``two_stage``, whose second stage :meth:`train_step` runs)."""
        teacher = require_teacher(teacher, "fitnet")
        return {"hint": self.hint_loss(student, teacher)}
