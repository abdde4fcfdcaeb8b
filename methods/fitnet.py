"""FitNets: hint-based training.

Paper: Adriana Romero, Nicolas Ballas, Samira Ebrahimi Kahou, Antoine Chassang, Carlo Gatta,
Yoshua Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015. https://arxiv.org/abs/1412.6550
Reference code: the authors' Theano code is not maintained; CRD benchmark:
https://github.com/HobbitLong/RepDistiller (``distiller_zoo/FitNet.py``,
``models/util.py: ConvReg``, ``train_student.py``).

A regressor r maps the student's guided layer to the teacher's hint layer; the hint loss is
the squared error ‖u_h − r(v_g)‖². Guided/hint layers: ``hint_pair`` (the middle aligned
stage pair); a pair with a 1×1 map on either side carries no spatial knowledge and is refused
(``spatial_pair_supports``).

The regressor is the CRD benchmark's ``ConvReg`` (``use_relu=True``, as its
``train_student.py`` builds it for FitNets): a convolution chosen by the two maps' heights,
then BatchNorm, then ReLU:

- equal sizes: 1×1 convolution;
- student map twice the teacher's: 3×3 convolution, stride 2, padding 1;
- student map half the teacher's: 4×4 transposed convolution, stride 2, padding 1;
- student map larger otherwise: a convolution of kernel (1 + H_s − H_t) × (1 + W_s − W_t);
- student map smaller than half the teacher's (ConvReg raises there): 1×1 convolution, and
  the output resized to the hint's size with ``match_spatial``.

Paper vs code (``stages`` selects):
- ``two_stage`` (the paper, default): stage 1 trains the student up to the guided layer and
  the regressor on the hint loss alone (``before_training``; only parameters the hint loss
  reaches are updated); stage 2 trains the whole student with KD,
  ``CE + λ·H(P_T^τ, P_S^τ)``, τ = 3 and λ annealed linearly from 4 to 1 over training
  (paper, appendix). H is implemented as KL(P_T^τ‖P_S^τ), which differs from the
  cross-entropy by the teacher's entropy, a constant: same gradients.
- ``joint`` (the CRD benchmark): one stage, CE + β·MSE(r(v_g), u_h), β = 100.
- Regressor: the paper's is a convolution whose kernel maps the guided map onto the hint
  map's size, with the hint layer's non-linearity so that r and u_h are comparable (ReLU for
  the post-ReLU stage outputs of CNNs); the CRD benchmark's ConvReg puts BatchNorm between the
  convolution and the ReLU, and uses strided and transposed convolutions for sizes that
  differ by a factor of 2. Here ConvReg (``regressor_relu=True``, default).
  ``regressor_relu=False`` drops the ReLU (conv + BN, ConvReg with ``use_relu=False``): a
  regressor that can output negative values against non-negative hints, which changes the
  loss and its gradients, not only their scale. A teacher whose stage outputs are signed (a
  vision transformer's tokens) needs ``regressor_relu=False``: a ReLU cannot match them.
- The hint loss is β·mean squared error in both stages (the paper's ½·sum differs by a
  constant factor, folded into β).
- Stage 1 length: ``init_epochs``; by default the CRD benchmark's 30 initialisation epochs
  of 240, scaled to the recipe (at least one epoch).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

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
    describe_pairs,
    hint_pair,
    init_stage_epochs,
    match_spatial,
    register_method,
    require_teacher,
    spatial_pair_supports,
    spatial_supports,
    stage_size,
)
from methods._common import soft_kl


class ConvRegressor(nn.Module):
    """The CRD benchmark's ``ConvReg``: a convolution chosen by the maps' sizes (see the
    module docstring), BatchNorm, and a ReLU when ``relu``.

    Args:
        in_channels: Channels of the student's guided map.
        out_channels: Channels of the teacher's hint map.
        student_size: (H, W) of the guided map.
        teacher_size: (H, W) of the hint map.
        relu: Whether a ReLU follows the BatchNorm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        student_size: tuple[int, int],
        teacher_size: tuple[int, int],
        relu: bool,
    ) -> None:
        super().__init__()
        (s_h, s_w), (t_h, t_w) = student_size, teacher_size
        self.conv: nn.Module
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            kernel = (1 + s_h - t_h, 1 + s_w - t_w)
            self.conv = nn.Conv2d(in_channels, out_channels, kernel)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


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
        regressor_relu: Whether the regressor ends in a ReLU (CRD benchmark's ConvReg, and
            the paper's "same non-linearity" as the hint); False: conv + BN only.
    """

    knowledge = "intermediate"
    mode = "offline"
    needs = frozenset({"features"})
    version = 2

    class Params(Method.Params):
        stages: Literal["two_stage", "joint"] = "two_stage"
        beta: Annotated[float, Range(ge=0)] = 100.0
        init_epochs: Annotated[int | None, Range(ge=1)] = None
        temperature: Annotated[float, Range(gt=0)] = 3.0
        kd_lambda_start: Annotated[float, Range(ge=0)] = 4.0
        kd_lambda_end: Annotated[float, Range(ge=0)] = 1.0
        regressor_relu: bool = True

    search_space: ClassVar[dict[str, list]] = {"beta": [25.0, 100.0, 400.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if not ok or teacher is None:
            return ok, reason
        if self.params.stages == "two_stage" and teacher.num_classes != student.num_classes:
            return False, "the KD stage needs a teacher with the student's classes"
        return spatial_pair_supports(student, teacher, task, [hint_pair(student, teacher)])

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        self.pair = hint_pair(student, teacher)
        s, t = self.pair
        self.regressor = ConvRegressor(
            student.feature_channels[s],
            teacher.feature_channels[t],
            stage_size(student, s, task),
            stage_size(teacher, t, task),
            self.params.regressor_relu,
        )
        self.stage_pairs = describe_pairs(student, teacher, task, [self.pair])
        self.init_epochs = init_stage_epochs(self.params.init_epochs, task)

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

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
