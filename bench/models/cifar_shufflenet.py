"""ShuffleNet V1 (Zhang et al., 2018) and V2 (Ma et al., 2018) for CIFAR, as in the KD zoo.

Both use a 1x1 convolution stem of 24 channels at full resolution and three stride-2 stages.
Layer names equal those of RepDistiller's ``models/ShuffleNetv1.py`` and ``ShuffleNetv2.py``
(``ShuffleV1``: groups 3, widths 240/480/960, 4/8/4 blocks; ``ShuffleV2``: size 1x, widths
116/232/464, 3/7/3 blocks, head 1024), so their checkpoints load with ``strict=True``.

Stages: the stem after its ReLU (reduction 1), then the three stages (2, 4, 8). With
``preact=True`` the stages are returned before the last block's final ReLU. For V1 that is the
reference's pre-activation. For V2 the reference returns the concatenation before the block's
channel shuffle; here it is shuffled like the block output, so ``relu(preact) == output`` holds
channel by channel (the two differ by a fixed channel permutation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.cifar_base import StagedNet, blocks_with_preact, stage_info

_STEM = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv(
    in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, groups: int = 1
) -> nn.Conv2d:
    """Bias-free convolution with "same" padding."""
    return nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, groups=groups, bias=False)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1, channel shuffle, 3x3 depthwise, grouped 1x1; stride 2 concatenates an
    average-pooled shortcut, stride 1 adds the identity.

    Args:
        in_chs: Input channels.
        out_chs: Channels of the residual branch (the block outputs ``in_chs + out_chs``
            channels at stride 2).
        stride: 1 or 2.
        groups: Groups of the 1x1 convolutions.
        first_pointwise_groups: Groups of the first 1x1 convolution (1 on the stem's output).
    """

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, groups: int, first_pointwise_groups: int
    ) -> None:
        super().__init__()
        mid = out_chs // 4
        self.stride = stride
        self.shuffle_groups = first_pointwise_groups
        self.conv1 = _conv(in_chs, mid, groups=first_pointwise_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv(mid, mid, 3, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(mid, out_chs, groups=groups)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut = (
            nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        )

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block output and the same before its final ReLU."""
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.shuffle_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        preact = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ShuffleNetV1(StagedNet):
    """ShuffleNet V1 for 32x32 inputs.

    Args:
        widths: Output channels of the three stages.
        blocks: Blocks per stage (the first of each has stride 2).
        groups: Groups of the pointwise convolutions.
        num_classes: Classifier width.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
    """

    classifier_attr = "linear"

    def __init__(
        self,
        widths: tuple[int, int, int] = (240, 480, 960),
        blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        self.relu = nn.ReLU()
        in_chs = _STEM
        self._groups = ("layer1", "layer2", "layer3")
        for name, width, num_blocks in zip(self._groups, widths, blocks, strict=True):
            stage = []
            for index in range(num_blocks):
                first_groups = 1 if in_chs == _STEM else groups
                if index == 0:  # stride 2: the branch tops up the pooled input to `width`
                    stage.append(ShuffleV1Block(in_chs, width - in_chs, 2, groups, first_groups))
                else:
                    stage.append(ShuffleV1Block(width, width, 1, groups, first_groups))
                in_chs = width
            setattr(self, name, nn.Sequential(*stage))
        self._init_head(
            widths[-1],
            num_classes,
            drop_rate,
            stage_info([_STEM, *widths], [1, 2, 4, 8], ["relu", *self._groups]),
        )

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if index == 0:
            x = self.relu(self.bn1(self.conv1(x)))
            return x, x
        out, pre = blocks_with_preact(getattr(self, self._groups[index - 1]), x)
        return out, pre if preact else out


class ShuffleV2Block(nn.Module):
    """Split the channels in half; one half passes, the other goes 1x1, 3x3 depthwise, 1x1;
    concatenate and shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        branch = channels - self.split
        self.conv1 = _conv(branch, branch)
        self.bn1 = nn.BatchNorm2d(branch)
        self.conv2 = _conv(branch, branch, 3, groups=branch)
        self.bn2 = nn.BatchNorm2d(branch)
        self.conv3 = _conv(branch, branch)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block output and the same before its final ReLU (shuffled alike)."""
        passed, branch = x[:, : self.split], x[:, self.split :]
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn3(self.conv3(self.bn2(self.conv2(branch))))
        preact = channel_shuffle(torch.cat([passed, branch], 1), 2)
        out = channel_shuffle(torch.cat([passed, F.relu(branch)], 1), 2)
        return out, preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_preact(x)[0]


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 block: two branches (3x3 dw + 1x1, and 1x1 + 3x3 dw + 1x1), concatenated and
    shuffled."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        mid = out_chs // 2
        self.conv1 = _conv(in_chs, in_chs, 3, 2, groups=in_chs)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv2 = _conv(in_chs, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(in_chs, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _conv(mid, mid, 3, 2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(StagedNet):
    """ShuffleNet V2 for 32x32 inputs.

    Args:
        widths: Output channels of the three stages.
        blocks: Blocks per stage after its stride-2 block.
        head_channels: Width of the 1x1 head convolution.
        num_classes: Classifier width.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
    """

    classifier_attr = "linear"

    def __init__(
        self,
        widths: tuple[int, int, int] = (116, 232, 464),
        blocks: tuple[int, int, int] = (3, 7, 3),
        head_channels: int = 1024,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, _STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(_STEM)
        self.relu = nn.ReLU()
        in_chs = _STEM
        self._groups = ("layer1", "layer2", "layer3")
        for name, width, num_blocks in zip(self._groups, widths, blocks, strict=True):
            stage: list[nn.Module] = [ShuffleV2DownBlock(in_chs, width)]
            stage += [ShuffleV2Block(width) for _ in range(num_blocks)]
            setattr(self, name, nn.Sequential(*stage))
            in_chs = width
        self.conv2 = nn.Conv2d(in_chs, head_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self._init_head(
            head_channels,
            num_classes,
            drop_rate,
            stage_info([_STEM, *widths], [1, 2, 4, 8], ["relu", *self._groups]),
        )

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if index == 0:
            x = self.relu(self.bn1(self.conv1(x)))
            return x, x
        out, pre = blocks_with_preact(getattr(self, self._groups[index - 1]), x)
        return out, pre if preact else out

    def _final(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(x)))
