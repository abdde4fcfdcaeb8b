"""Wide residual networks (Zagoruyko & Komodakis, 2016) of the CIFAR KD zoo: WRN-d-k.

Pre-activation blocks (BN, ReLU, conv, BN, ReLU, conv); ``depth = 6n + 4`` gives three groups
of n blocks of widths 16k, 32k, 64k after a 16-channel 3x3 stem, then a final BN + ReLU. Layer
names equal those of RepDistiller's ``models/wrn.py``, so its checkpoints load with
``strict=True``.

Stages: the stem convolution (reduction 1), block1 (1), block2 (2), block3 (4). Because the
blocks are pre-activation, a stage output has no ReLU of its own; with ``preact=True`` the stage
outputs after the stem are returned through the BatchNorm that precedes the next ReLU (the first
BN of the next group, the final BN for block3), as the reference does. The stem is returned as
it is. Those BatchNorms are applied without a second update of their running statistics.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.cifar_base import StagedNet, bn_without_stat_update, stage_info


class WideBasicBlock(nn.Module):
    """Pre-activation block; a width change adds a 1x1 shortcut on the activated input."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.equal_in_out = in_chs == out_chs
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        # With a width change the shortcut sees the activated input, else the raw one.
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return shortcut + out


class WideGroup(nn.Module):
    """A group of blocks; the first one may change width and resolution."""

    def __init__(self, num_blocks: int, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            WideBasicBlock(in_chs, out_chs, stride),
            *(WideBasicBlock(out_chs, out_chs, 1) for _ in range(num_blocks - 1)),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(StagedNet):
    """WRN-depth-widen_factor for CIFAR.

    Args:
        depth: Number of weighted layers, 6n + 4.
        widen_factor: Width multiplier k.
        num_classes: Classifier width.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(
                f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 40, …), got {depth}"
            )
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.block1 = WideGroup(n, widths[0], widths[1], 1)
        self.block2 = WideGroup(n, widths[1], widths[2], 2)
        self.block3 = WideGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self._groups = ("block1", "block2", "block3")
        self._init_head(
            widths[3],
            num_classes,
            drop_rate,
            stage_info(widths, [1, 1, 2, 4], ["conv1", *self._groups]),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _next_bn(self, index: int) -> nn.BatchNorm2d:
        """The BatchNorm that follows stage ``index`` (>= 1) before a ReLU."""
        if index == len(self._groups):
            return self.bn1
        return getattr(self, self._groups[index]).layer[0].bn1

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if index == 0:
            x = self.conv1(x)
            return x, x
        out = getattr(self, self._groups[index - 1])(x)
        return out, bn_without_stat_update(self._next_bn(index), out) if preact else out

    def _final(self, x: Tensor) -> Tensor:
        return F.relu(self.bn1(x))
