"""VGG with BatchNorm for CIFAR (the KD zoo's vgg8 … vgg19): five conv blocks, no FC layers.

Each block is a run of 3x3 conv (with bias) + BN + ReLU layers whose last ReLU is applied
outside the block, so that the block output is its pre-activation. Max-pooling (2x2) sits between
blocks 0-1, 1-2 and 2-3; before block 4 it is applied only while the map is larger than 4x4
(64-pixel inputs), so the last two blocks both run at 4x4 on 32x32 inputs, as in the reference.
Global average pooling and one linear classifier follow. Layer names equal those of
RepDistiller's ``models/vgg.py`` (``vgg*_bn``, which its ``vgg*`` names denote), so its
checkpoints load with ``strict=True``.

Stages: the five blocks after their ReLU, at reductions 1, 2, 4, 8, 8 (32x32 input). With
``preact=True`` blocks 1-4 are returned before their ReLU (the output of their last BN), as in
the reference; block 0 is returned after its ReLU in both cases, also as in the reference.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bench.models.cifar_base import StagedNet, stage_info

# Convolution widths per block; the literature names these configurations by depth.
VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [
        [64, 64],
        [128, 128],
        [256, 256, 256, 256],
        [512, 512, 512, 512],
        [512, 512, 512, 512],
    ],
}

_LAST_MAP_SIZE = 4


def _conv_block(widths: list[int], in_chs: int) -> nn.Sequential:
    """conv-BN-ReLU layers for ``widths``, without the final ReLU."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_chs, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_chs = width
    return nn.Sequential(*layers[:-1])


class CifarVGG(StagedNet):
    """VGG-BN with five blocks of 3x3 convolutions.

    Args:
        config: Convolution widths of each of the five blocks (see ``VGG_CONFIGS``).
        num_classes: Classifier width.
        in_chans: Input channels.
        drop_rate: Dropout before the classifier.
    """

    classifier_attr = "classifier"

    def __init__(
        self,
        config: list[list[int]],
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(config) != 5 or not all(config):
            raise ValueError(f"CifarVGG needs five non-empty lists of block widths, got {config!r}")
        in_chs = in_chans
        for index, widths in enumerate(config):
            setattr(self, f"block{index}", _conv_block(widths, in_chs))
            in_chs = widths[-1]
        for index in range(4):
            setattr(self, f"pool{index}", nn.MaxPool2d(kernel_size=2, stride=2))
        # One ReLU module per stage, so that each stage output is the output of a module.
        for index in range(5):
            setattr(self, f"act{index}", nn.ReLU())
        self._init_head(
            in_chs,
            num_classes,
            drop_rate,
            stage_info(
                [widths[-1] for widths in config],
                [1, 2, 4, 8, 8],
                [f"act{index}" for index in range(5)],
            ),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:  # every conv here has one
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if 0 < index < 4 or (index == 4 and x.shape[-1] > _LAST_MAP_SIZE):
            x = getattr(self, f"pool{index - 1}")(x)
        pre = getattr(self, f"block{index}")(x)
        out = getattr(self, f"act{index}")(pre)
        return out, pre if preact and index > 0 else out
