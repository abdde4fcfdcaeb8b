"""MobileNetV2 (Sandler et al., 2018) for CIFAR as the KD literature uses it (``mobile_half``).

The variant of RepDistiller's ``models/mobilenetv2.py``: a stride-2 3x3 stem, seven groups of
inverted residual blocks (every block has its 1x1 expansion, even at ratio 1), a 1x1 head
convolution to 1280 channels, global average pooling and a linear classifier. ``mobile_half``
is width 0.5 with expansion 6. Layer names equal the reference's, so its checkpoints load with
``strict=True``.

Stages: the stem, then the ends of block groups 1, 2, 4 and 6 (as the reference's feature list),
at reductions 2, 2, 4, 8, 16 for a 32x32 input. ``preact=True`` returns the same tensors: the
groups end in a linear bottleneck (BN, no ReLU), so their outputs are already pre-activation,
and the stem is returned after its ReLU, as in the reference.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bench.models.cifar_base import StagedNet, stage_info

# (expansion or None for the network's ratio, channels, blocks, first stride) per group.
MOBILENETV2_GROUPS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
# Block groups whose ends are stages (after the stem), and the groups each stage runs.
_STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))


def _conv_bn_relu(in_chs: int, out_chs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand + ReLU, 3x3 depthwise + ReLU, 1x1 linear projection; residual when shapes
    match."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_chs * expansion
        self.use_residual = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            nn.Conv2d(in_chs, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(StagedNet):
    """MobileNetV2 for 32x32 inputs.

    Args:
        expansion: Expansion ratio of the inverted residual blocks (groups 1-6).
        width_mult: Channel multiplier of the stem and the groups.
        num_classes: Classifier width.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
        groups: Seven (expansion or None, channels, blocks, first stride) rows; defaults to
            MobileNetV2's table.
        stem_channels: Stem width before ``width_mult``.
        head_channels: Width of the head convolution; defaults to 1280, scaled by
            ``width_mult`` only above 1, as in the reference.
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        expansion: int = 6,
        width_mult: float = 0.5,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        groups: tuple[tuple[int | None, int, int, int], ...] = MOBILENETV2_GROUPS,
        stem_channels: int = 32,
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(groups) != 7:
            raise ValueError(f"CifarMobileNetV2 needs 7 block groups, got {len(groups)}")
        in_chs = int(stem_channels * width_mult)
        self.conv1 = _conv_bn_relu(in_chans, in_chs, 3, 2)
        self.blocks = nn.ModuleList()
        group_channels = []
        for ratio, channels, num_blocks, stride in groups:
            out_chs = int(channels * width_mult)
            blocks = []
            for block_stride in [stride] + [1] * (num_blocks - 1):
                blocks.append(InvertedResidual(in_chs, out_chs, block_stride, ratio or expansion))
                in_chs = out_chs
            self.blocks.append(nn.Sequential(*blocks))
            group_channels.append(out_chs)
        if head_channels is None:
            head_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_chs, head_channels, 1, 1)
        stage_ends = [stage[-1] for stage in _STAGE_GROUPS]
        self._init_head(
            head_channels,
            num_classes,
            drop_rate,
            stage_info(
                [int(stem_channels * width_mult)] + [group_channels[g] for g in stage_ends],
                [2, 2, 4, 8, 16],
                ["conv1"] + [f"blocks.{g}" for g in stage_ends],
            ),
        )
        self._init_weights()

    def _make_classifier(self, num_features: int, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return nn.Sequential(nn.Linear(num_features, num_classes))

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if index == 0:
            x = self.conv1(x)
        else:
            for group in _STAGE_GROUPS[index - 1]:
                x = self.blocks[group](x)
        return x, x

    def _final(self, x: Tensor) -> Tensor:
        return self.conv2(x)
