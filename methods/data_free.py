"""Data-free distillation (DAFL): a generator, trained against the frozen teacher, supplies the
student's training images.

Paper: Hanting Chen, Yunhe Wang, Chang Xu, Zhaohui Yang, Chuanjian Liu, Boxin Shi, Chunjing Xu,
Chao Xu, Qi Tian, "Data-Free Learning of Student Networks", ICCV 2019.
https://arxiv.org/abs/1904.01186
Reference code: https://github.com/huawei-noah/Efficient-Computing
(``Data-Efficient-Model-Compression/DAFL``: ``DAFL-train.py``, ``models.py``, ``utils.py``).

Each step draws ``z ~ N(0, I)`` (one per sample of the harness's batch), generates images
``x = G(z)`` and updates the generator, with its own Adam optimizer, on::

    L_G = oh_weight * CE(z_t, argmax z_t)            one-hot loss
        + act_weight * L_a(f_t)                      activation loss (f_t: teacher embedding)
        + ie_weight * sum_c pbar_c log pbar_c        information entropy loss (pbar: batch-mean
                                                     teacher softmax; minimising it balances
                                                     the classes)

with gradients flowing through the frozen teacher (eval mode, parameters without gradients) into
G only. The student is distilled on the same, detached images:
``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``. The harness's batch supplies only its size:
the values of ``batch.x`` and ``batch.y`` are never read, so no real training image reaches the
student's loss (the harness still evaluates on the real validation and test splits).

The generator follows the reference: a linear map of z to 128 maps of a quarter of the input
size, BatchNorm, two x2 nearest upsamplings each followed by conv 3x3, BatchNorm (eps 0.8, as the
reference builds it) and LeakyReLU 0.2, a final conv to the input channels, tanh, and an affine-
free BatchNorm, so generated images are normalised per channel like the harness's inputs.

Paper vs code (``variant``):
- ``code`` (default): activation loss ``-mean |f_t|`` over samples and units, entropy with
  ``log10``. ``paper``: ``-(1/n) sum_i ||f_t^i||_1`` (Eq. 3) and the natural logarithm (Eq. 4).
- Defaults are the paper's MNIST settings, also the code's defaults: weights 1 / 0.1 / 5,
  latent size 100, generator lr 0.2 (Adam), KD at T = 1. The README's CIFAR settings are
  ``oh_weight 0.05, act_weight 0.01, ie_weight 5, latent_dim 1000, gen_lr 0.02`` (CIFAR-100:
  0.5 / 0.1 / 20).
- The reference trains a fixed 120 generator/student iterations per "epoch"; here an epoch has
  the harness's steps per epoch.
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
    Range,
    TaskInfo,
    TrainContext,
    register_method,
    same_classes,
)
from methods._common import kd_loss


class Generator(nn.Module):
    """DAFL's generator: z → normalised image of size ``image_size`` (C, H, W)."""

    def __init__(self, latent_dim: int, image_size: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = image_size
        self.image_size = image_size
        self.init_size = (max(1, height // 4), max(1, width // 4))
        self.project = nn.Linear(latent_dim, 128 * self.init_size[0] * self.init_size[1])
        self.norm0 = nn.BatchNorm2d(128)
        self.block1 = nn.Sequential(
            nn.Conv2d(128, 128, 3, padding=1),
            nn.BatchNorm2d(128, eps=0.8),
            nn.LeakyReLU(0.2, inplace=True),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(128, 64, 3, padding=1),
            nn.BatchNorm2d(64, eps=0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(64, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: Tensor) -> Tensor:
        x = self.project(z).view(z.shape[0], 128, *self.init_size)
        x = F.interpolate(self.norm0(x), scale_factor=2)
        x = F.interpolate(self.block1(x), scale_factor=2)
        x = self.block2(x)
        if tuple(x.shape[-2:]) != self.image_size[1:]:  # sizes not divisible by 4
            x = F.interpolate(x, size=self.image_size[1:], mode="bilinear", align_corners=False)
        return x


def generator_losses(
    teacher_logits: Tensor, teacher_embedding: Tensor, variant: str = "code"
) -> dict[str, Tensor]:
    """DAFL's three unweighted generator losses on the teacher's outputs for generated images:
    ``one_hot``, ``activation`` and ``entropy`` (see the module docstring)."""
    logits = teacher_logits.float()
    one_hot = F.cross_entropy(logits, logits.argmax(dim=1))
    features = teacher_embedding.float()
    per_sample_l1 = features.abs().sum(dim=1)
    activation = -(per_sample_l1 / features.shape[1] if variant == "code" else per_sample_l1).mean()
    mean_prob = logits.softmax(dim=1).mean(dim=0)
    entropy = torch.special.xlogy(mean_prob, mean_prob).sum()
    if variant == "code":
        entropy = entropy / torch.log(torch.tensor(10.0, device=entropy.device))
    return {"one_hot": one_hot, "activation": activation, "entropy": entropy}


@register_method("data_free")
class DataFreeLearning(Method):
    """DAFL: distil on images from a generator trained against the frozen teacher.

    Attributes:
        latent_dim: Size of the generator's Gaussian input (MNIST: 100; CIFAR: 1000).
        gen_lr: Learning rate of the generator's Adam optimizer (MNIST: 0.2; CIFAR: 0.02).
        oh_weight: Weight of the one-hot loss (MNIST: 1).
        act_weight: Weight of the activation loss (MNIST: 0.1).
        ie_weight: Weight of the information-entropy loss (MNIST: 5).
        temperature: Temperature of the student's distillation loss (reference: 1).
        variant: ``code`` or ``paper`` normalisation of the activation and entropy losses.
    """

    knowledge = "logits"
    mode = "data_free"
    teacher_needs = frozenset({"embedding"})
    owns_ce = True
    version = 1

    class Params(Method.Params):
        latent_dim: Annotated[int, Range(ge=1)] = 100
        gen_lr: Annotated[float, Range(gt=0)] = 0.2
        oh_weight: Annotated[float, Range(ge=0)] = 1.0
        act_weight: Annotated[float, Range(ge=0)] = 0.1
        ie_weight: Annotated[float, Range(ge=0)] = 5.0
        temperature: Annotated[float, Range(gt=0)] = 1.0
        variant: Literal["code", "paper"] = "code"

    search_space: ClassVar[dict[str, list]] = {"gen_lr": [0.02, 0.2], "ie_weight": [5.0, 20.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        return same_classes(student, teacher)

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.generator = Generator(self.params.latent_dim, task.input_size)
        self.gen_optimizer = torch.optim.Adam(self.generator.parameters(), lr=self.params.gen_lr)

    def get_extra_state(self) -> dict:
        return {"gen_optimizer": self.gen_optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.gen_optimizer.load_state_dict(state["gen_optimizer"])

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())  # the generator steps with its own optimizer

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        if ctx.teacher is None:
            raise RuntimeError("data_free: the trial has no teacher; give one (--teacher NAME)")
        p = self.params
        size = batch.x.shape[0]  # the only use of the real batch
        z = torch.randn(size, p.latent_dim, generator=ctx.generator).to(ctx.device)
        images = self.generator(z)
        teacher = ctx.forward(ctx.teacher, images, self.needs_of_teacher(), grad=True)
        assert teacher.embedding is not None  # teacher_needs asks for it
        losses = generator_losses(teacher.logits, teacher.embedding, p.variant)
        gen_loss = (
            p.oh_weight * losses["one_hot"]
            + p.act_weight * losses["activation"]
            + p.ie_weight * losses["entropy"]
        )
        self.gen_optimizer.zero_grad(set_to_none=True)
        gen_loss.backward()
        self.gen_optimizer.step()
        student = ctx.forward_student(images.detach()).logits
        return {"kd": kd_loss(student, teacher.logits.detach(), p.temperature)}
