"""Tiny models for tests and the method conformance suite (catalogue entries with
``test_only=True``).

They are scaled-down members of the zoo's families, with the same feature API, so a suite of
tiny pairs covers same-family pairs of different widths (``test_resnet_narrow`` →
``test_resnet_wide``), cross-family pairs with a different number of stages (the VGG has five
stages, the ResNets four) and a model whose first stage is already downsampled
(``test_mobile``). Each trains a step on an 8x3x32x32 batch in milliseconds on a CPU.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from bench.models.catalog import register_catalog_model
from bench.models.cifar import summary
from bench.models.cifar_base import build_zoo_model, zoo_cfg
from bench.models.cifar_mobilenet import CifarMobileNetV2
from bench.models.cifar_resnet import CifarResNet
from bench.models.cifar_vgg import CifarVGG

default_cfgs = generate_default_cfgs(
    {
        "test_resnet_narrow": zoo_cfg(first_conv="conv1", classifier="fc", pool_size=(8, 8)),
        "test_resnet_wide": zoo_cfg(first_conv="conv1", classifier="fc", pool_size=(8, 8)),
        "test_vgg": zoo_cfg(first_conv="block0.0", classifier="classifier", pool_size=(4, 4)),
        "test_mobile": zoo_cfg(first_conv="conv1.0", classifier="classifier.0", pool_size=(2, 2)),
    }
)

# Seven inverted-residual groups of one block each, as MobileNetV2's table but narrow.
_TINY_MOBILE_GROUPS = (
    (1, 8, 1, 1),
    (None, 8, 1, 1),
    (None, 16, 1, 2),
    (None, 16, 1, 2),
    (None, 24, 1, 1),
    (None, 32, 1, 2),
    (None, 32, 1, 1),
)


@register_model
def test_resnet_narrow(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Tiny CIFAR ResNet: 1 basic block per stage, widths 8/16/32."""
    return build_zoo_model(
        CifarResNet, "test_resnet_narrow", pretrained, depth=8, widths=(8, 8, 16, 32), **kwargs
    )


@register_model
def test_resnet_wide(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Tiny CIFAR ResNet: 1 basic block per stage, widths 16/32/64."""
    return build_zoo_model(
        CifarResNet, "test_resnet_wide", pretrained, depth=8, widths=(16, 16, 32, 64), **kwargs
    )


@register_model
def test_vgg(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Tiny VGG-BN: five blocks of one conv, widths 8/16/16/32/32."""
    config = [[8], [16], [16], [32], [32]]
    return build_zoo_model(CifarVGG, "test_vgg", pretrained, config=config, **kwargs)


@register_model
def test_mobile(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Tiny MobileNetV2: one inverted residual (expansion 2) per group, head of 64 channels."""
    return build_zoo_model(
        CifarMobileNetV2,
        "test_mobile",
        pretrained,
        expansion=2,
        width_mult=1.0,
        groups=_TINY_MOBILE_GROUPS,
        stem_channels=8,
        head_channels=64,
        **kwargs,
    )


for _entrypoint, _family in (
    (test_resnet_narrow, "resnet"),
    (test_resnet_wide, "resnet"),
    (test_vgg, "vgg"),
    (test_mobile, "mobilenetv2"),
):
    register_catalog_model(
        _entrypoint.__name__, _entrypoint.__name__, _family, summary(_entrypoint), test_only=True
    )
