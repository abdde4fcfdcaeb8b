"""Residual networks of the CIFAR KD zoo.

:class:`CifarResNet` is the 3-stage CIFAR ResNet of He et al. (2016), ``depth = 6n + 2``
(resnet8 … resnet110, and the 4x wider resnet8x4 / resnet32x4 of the CRD benchmark).
:class:`BottleneckResNet` is the ImageNet ResNet adapted to 32x32 inputs (3x3 stride-1 stem, no
max-pool) that the CRD benchmark calls ResNet50. Layer names equal those of RepDistiller's
``models/resnet.py`` and ``models/resnetv2.py``, so their checkpoints load with ``strict=True``.

Stages and ``preact``: stage 0 is the stem (conv, BN, ReLU; always returned after its ReLU, as in
the reference), then one stage per layer group, whose pre-activation is the sum of the last
block's residual branch and shortcut before the final ReLU.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.cifar_base import StagedNet, blocks_with_preact, stage_info


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)


def _projection(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    """1x1 convolution + BN shortcut for blocks that change width or resolution."""
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
    )


def _init_conv_bn(model: nn.Module) -> None:
    """He initialisation (fan-out) of convolutions, unit-scale zero-shift BatchNorm."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarBasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection (``downsample``) shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = _conv3x3(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        needs_projection = stride != 1 or in_chs != out_chs
        self.downsample = _projection(in_chs, out_chs, stride) if needs_projection else None

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block output and the same before its final ReLU."""
        branch = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = branch + shortcut
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class CifarResNet(StagedNet):
    """CIFAR ResNet: 3x3 stem, three groups of ``(depth - 2) / 6`` basic blocks.

    Stages: stem (reduction 1), layer1 (1), layer2 (2), layer3 (4).

    Args:
        depth: Number of weighted layers, 6n + 2.
        widths: Channels of the stem and of the three groups.
        num_classes: Classifier width.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int],
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(
                f"CifarResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, …), got {depth}"
            )
        blocks_per_group = (depth - 2) // 6
        self.conv1 = _conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._group(widths[0], widths[1], blocks_per_group, stride=1)
        self.layer2 = self._group(widths[1], widths[2], blocks_per_group, stride=2)
        self.layer3 = self._group(widths[2], widths[3], blocks_per_group, stride=2)
        self._groups = ("layer1", "layer2", "layer3")
        self._init_head(
            widths[3],
            num_classes,
            drop_rate,
            stage_info(list(widths), [1, 1, 2, 4], ["relu", *self._groups]),
        )
        _init_conv_bn(self)

    @staticmethod
    def _group(in_chs: int, out_chs: int, num_blocks: int, stride: int) -> nn.Sequential:
        blocks = [CifarBasicBlock(in_chs, out_chs, stride)]
        blocks += [CifarBasicBlock(out_chs, out_chs) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks)

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if index == 0:
            x = self.relu(self.bn1(self.conv1(x)))
            return x, x
        out, pre = blocks_with_preact(getattr(self, self._groups[index - 1]), x)
        return out, pre if preact else out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with an identity or projection (``shortcut``)."""

    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.conv1 = nn.Conv2d(in_chs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        needs_projection = stride != 1 or in_chs != out_chs
        # An empty Sequential is the identity and keeps the reference's parameter names.
        self.shortcut = (
            _projection(in_chs, out_chs, stride) if needs_projection else nn.Sequential()
        )

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block output and the same before its final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class BottleneckResNet(StagedNet):
    """ImageNet-style bottleneck ResNet for 32x32 inputs (stem 3x3/1, no max-pool).

    Stages: stem (64 channels, reduction 1), layer1 (256, 1), layer2 (512, 2), layer3 (1024, 4),
    layer4 (2048, 8).

    Args:
        blocks: Bottleneck blocks per group, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: Classifier width.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
    """

    classifier_attr = "linear"

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        stem = 64
        self.conv1 = _conv3x3(in_chans, stem)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self._groups = ("layer1", "layer2", "layer3", "layer4")
        in_chs = stem
        for name, width, num_blocks, stride in zip(
            self._groups, (64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True
        ):
            group = [Bottleneck(in_chs, width, stride)]
            in_chs = width * Bottleneck.expansion
            group += [Bottleneck(in_chs, width) for _ in range(num_blocks - 1)]
            setattr(self, name, nn.Sequential(*group))
        self._init_head(
            in_chs,
            num_classes,
            drop_rate,
            stage_info([stem, 256, 512, 1024, 2048], [1, 1, 2, 4, 8], ["relu", *self._groups]),
        )
        _init_conv_bn(self)

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if index == 0:
            x = self.relu(self.bn1(self.conv1(x)))
            return x, x
        out, pre = blocks_with_preact(getattr(self, self._groups[index - 1]), x)
        return out, pre if preact else out
