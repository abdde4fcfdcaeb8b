"""Factor transfer (FT).

Paper: Jangho Kim, SeongUk Park, Nojun Kwak, "Paraphrasing Complex Network: Network
Compression via Factor Transfer", NeurIPS 2018. https://arxiv.org/abs/1802.04977
Reference code: https://github.com/Jangho-Kim/Factor-Transfer-pytorch
(``Models/FeatureProjection.py``, ``train_Paraphraser.py``, ``train_student.py``); CRD
benchmark: https://github.com/HobbitLong/RepDistiller (``distiller_zoo/FT.py``,
``models/util.py``, ``helper/pretrain.py``).

A paraphraser (convolutional autoencoder, 3×3 convolutions with LeakyReLU(0.1); encoder
C → C → kC → kC, decoder back) is trained on the teacher's last stage output to reconstruct
it (``before_training``); its encoder output is the teacher factor F_T (paraphrase rate
k = 0.5). A translator (three 3×3 convolutions with LeakyReLU, C_s → C_s → kC_t → kC_t) on
the student's last stage gives the student factor F_S. The student trains on
CE + β·‖F_T/‖F_T‖₂ − F_S/‖F_S‖₂‖_p with p = 1, the factors flattened per sample; the
paraphraser stays frozen. Where spatial sizes differ the student factor is resized to the
teacher's with ``match_spatial``. A deepest pair with a 1×1 map on either side carries no
spatial knowledge, and the pair is refused (``spatial_pair_supports``).

Paper vs code:
- β: 500 in the authors' code (default); the CRD benchmark uses 200.
- Factor loss: the authors' code takes the mean absolute difference of the normalised,
  flattened factors (the paper's L1 norm divided by the factor's size). The CRD benchmark
  first reduces each factor to a spatial attention map (mean over channels of F²) and then
  normalises: ``factor="attention"``; ``factor="flat"`` (default) is the authors'.
- Reconstruction loss: the paper writes the L2 reconstruction error, as does the CRD
  benchmark (MSE, default ``reconstruction="l2"``); the authors' code uses L1.
- Batch normalisation: none in the authors' paraphraser and translator; the CRD benchmark
  puts BN in the translator (``translator_bn``).
- Paraphraser training length: ``init_epochs`` (None: the CRD benchmark's 30 of 240
  epochs, scaled; the authors' script trains it for a few epochs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, ClassVar, Literal

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
    describe_pairs,
    init_stage_epochs,
    match_spatial,
    register_method,
    require_teacher,
    spatial_pair_supports,
    spatial_supports,
)


def conv_block(in_channels: int, out_channels: int, *, transposed: bool, bn: bool) -> nn.Module:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [conv(in_channels, out_channels, kernel_size=3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Convolutional autoencoder whose bottleneck is the teacher factor."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(
            conv_block(c, c, transposed=False, bn=False),
            conv_block(c, k, transposed=False, bn=False),
            conv_block(k, k, transposed=False, bn=False),
        )
        self.decoder = nn.Sequential(
            conv_block(k, k, transposed=True, bn=False),
            conv_block(k, c, transposed=True, bn=False),
            conv_block(c, c, transposed=True, bn=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def translator(in_channels: int, factor_channels: int, bn: bool) -> nn.Module:
    c, k = in_channels, factor_channels
    return nn.Sequential(
        conv_block(c, c, transposed=False, bn=bn),
        conv_block(c, k, transposed=False, bn=bn),
        conv_block(k, k, transposed=False, bn=bn),
    )


def normalised_factor(factor: Tensor, form: str) -> Tensor:
    """Per-sample L2-normalised factor, flattened (``flat``) or as an attention map."""
    f = factor.float()
    if form == "attention":
        f = f.pow(2).mean(dim=1)
    return F.normalize(f.flatten(1), dim=1, eps=1e-12)


@register_method("ft")
class FactorTransfer(Method):
    """Transfer the teacher's paraphrased factor of the last stage.

    Attributes:
        beta: Weight of the factor loss (authors' code: 500; CRD benchmark: 200).
        k: Paraphrase rate: factor channels = round(k × teacher channels) (paper: 0.5).
        p: Norm of the factor loss, 1 (paper) or 2 (mean squared difference).
        factor: ``flat`` (authors' code) or ``attention`` (CRD benchmark).
        reconstruction: Paraphraser loss, ``l2`` (paper, CRD benchmark) or ``l1`` (code).
        translator_bn: BatchNorm in the translator (CRD benchmark) or not (authors' code).
        init_epochs: Paraphraser training epochs (None: 30/240 of the student's epochs).
    """

    knowledge = "intermediate"
    mode = "offline"
    needs = frozenset({"features"})
    version = 2

    class Params(Method.Params):
        beta: Annotated[float, Range(ge=0)] = 500.0
        k: Annotated[float, Range(gt=0)] = 0.5
        p: Literal[1, 2] = 1
        factor: Literal["flat", "attention"] = "flat"
        reconstruction: Literal["l2", "l1"] = "l2"
        translator_bn: bool = False
        init_epochs: Annotated[int | None, Range(ge=1)] = None

    search_space: ClassVar[dict[str, list]] = {"beta": [125.0, 500.0, 2000.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if not ok or teacher is None:
            return ok, reason
        return spatial_pair_supports(student, teacher, task, align_stages(student, teacher)[-1:])

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        p = self.params
        self.pair = align_stages(student, teacher)[-1]
        self.stage_pairs = describe_pairs(student, teacher, task, [self.pair])
        s, t = self.pair
        factor_channels = max(1, round(teacher.feature_channels[t] * p.k))
        self.paraphraser = Paraphraser(teacher.feature_channels[t], factor_channels)
        self.translator = translator(student.feature_channels[s], factor_channels, p.translator_bn)
        self.init_epochs = init_stage_epochs(p.init_epochs, task)

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

    def before_training(self, ctx: TrainContext) -> None:
        t = self.pair[1]
        needs = frozenset({"features"})
        reconstruction = F.mse_loss if self.params.reconstruction == "l2" else F.l1_loss

        def step(batch: Batch) -> Tensor:
            target = ctx.forward_teacher(batch.x, needs).features[t].float()
            return reconstruction(self.paraphraser(target).float(), target)

        self.paraphraser.train()
        ctx.run_init_stage("ft_paraphraser", self.init_epochs, self.paraphraser.parameters(), step)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return self.translator.parameters()  # the paraphraser is frozen after its stage

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "ft")
        p = self.params
        s, t = self.pair
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(teacher.features[t])
        factor_s = match_spatial(self.translator(student.features[s]), factor_t)
        diff = normalised_factor(factor_s, p.factor) - normalised_factor(factor_t, p.factor)
        value = diff.abs().mean() if p.p == 1 else diff.pow(2).mean()
        return {"ft": p.beta * value}
