"""The CIFAR model zoo of the KD literature, registered into timm and kdbench's catalogue.

The architectures are those of the CRD benchmark's zoo (Tian et al., ICLR 2020; RepDistiller's
``models/``), layer for layer, with its parameter names and counts. Each is a timm model named
``cifar_`` + the lower-cased literature name (``timm.create_model("cifar_resnet32x4",
num_classes=100)``) and a catalogue entry under the literature name (``resnet32x4``,
``ResNet50``, ``ShuffleV2``…; ``MobileNetV2`` is another name for ``mobile_half``). Every model
has CIFAR-100 defaults (100 classes, 3x32x32 inputs, CIFAR-100 mean and std in its
``pretrained_cfg``) and no pretrained weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.models import generate_default_cfgs, register_model
from torch import nn

from bench.models.catalog import register_catalog_model
from bench.models.cifar_base import build_zoo_model, zoo_cfg
from bench.models.cifar_mlp import Mlp
from bench.models.cifar_mobilenet import CifarMobileNetV2
from bench.models.cifar_resnet import BottleneckResNet, CifarResNet
from bench.models.cifar_shufflenet import ShuffleNetV1, ShuffleNetV2
from bench.models.cifar_vgg import VGG_CONFIGS, CifarVGG
from bench.models.cifar_wrn import WideResNet

_RESNET = zoo_cfg(first_conv="conv1", classifier="fc", pool_size=(8, 8))
_WRN = zoo_cfg(first_conv="conv1", classifier="fc", pool_size=(8, 8))
_VGG = zoo_cfg(first_conv="block0.0", classifier="classifier", pool_size=(4, 4))
_SHUFFLE = zoo_cfg(first_conv="conv1", classifier="linear", pool_size=(4, 4))
_MLP = zoo_cfg(first_conv="layers.0", classifier="fc", pool_size=(1, 1), fixed_input_size=True)

default_cfgs = generate_default_cfgs(
    {
        **{f"cifar_resnet{d}": _RESNET for d in (8, 14, 20, 32, 44, 56, 110)},
        "cifar_resnet8x4": _RESNET,
        "cifar_resnet32x4": _RESNET,
        "cifar_resnet50": zoo_cfg(first_conv="conv1", classifier="linear", pool_size=(4, 4)),
        **{f"cifar_wrn_{d}_{k}": _WRN for d in (16, 40) for k in (1, 2)},
        **{f"cifar_{name}": _VGG for name in VGG_CONFIGS},
        "cifar_mobile_half": zoo_cfg(
            first_conv="conv1.0", classifier="classifier.0", pool_size=(2, 2)
        ),
        "cifar_shufflev1": _SHUFFLE,
        "cifar_shufflev2": _SHUFFLE,
        "cifar_mlp_small": _MLP,
        "cifar_mlp_large": _MLP,
    }
)

_X4 = (32, 64, 128, 256)
_X1 = (16, 16, 32, 64)


def _resnet(variant: str, depth: int, widths: tuple[int, ...], **kwargs: Any) -> nn.Module:
    return build_zoo_model(CifarResNet, variant, depth=depth, widths=widths, **kwargs)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-8 for CIFAR: 1 basic block per stage, widths 16/32/64."""
    return _resnet("cifar_resnet8", 8, _X1, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-14 for CIFAR: 2 basic blocks per stage, widths 16/32/64."""
    return _resnet("cifar_resnet14", 14, _X1, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-20 for CIFAR: 3 basic blocks per stage, widths 16/32/64."""
    return _resnet("cifar_resnet20", 20, _X1, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-32 for CIFAR: 5 basic blocks per stage, widths 16/32/64."""
    return _resnet("cifar_resnet32", 32, _X1, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-44 for CIFAR: 7 basic blocks per stage, widths 16/32/64."""
    return _resnet("cifar_resnet44", 44, _X1, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-56 for CIFAR: 9 basic blocks per stage, widths 16/32/64."""
    return _resnet("cifar_resnet56", 56, _X1, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-110 for CIFAR: 18 basic blocks per stage, widths 16/32/64."""
    return _resnet("cifar_resnet110", 110, _X1, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-8x4 for CIFAR: 1 basic block per stage, 4x wider (stem 32, widths 64/128/256)."""
    return _resnet("cifar_resnet8x4", 8, _X4, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-32x4 for CIFAR: 5 basic blocks per stage, 4x wider (stem 32, widths 64/128/256)."""
    return _resnet("cifar_resnet32x4", 32, _X4, pretrained=pretrained, **kwargs)


@register_model
def cifar_resnet50(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ResNet-50 (bottleneck, 3/4/6/3 blocks, widths 256…2048) with a 32x32 stem."""
    return build_zoo_model(
        BottleneckResNet, "cifar_resnet50", pretrained, blocks=(3, 4, 6, 3), **kwargs
    )


def _wrn(variant: str, depth: int, widen: int, **kwargs: Any) -> nn.Module:
    return build_zoo_model(WideResNet, variant, depth=depth, widen_factor=widen, **kwargs)


@register_model
def cifar_wrn_16_1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """WRN-16-1: 2 pre-activation blocks per stage, widths 16/32/64."""
    return _wrn("cifar_wrn_16_1", 16, 1, pretrained=pretrained, **kwargs)


@register_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """WRN-16-2: 2 pre-activation blocks per stage, widths 32/64/128."""
    return _wrn("cifar_wrn_16_2", 16, 2, pretrained=pretrained, **kwargs)


@register_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """WRN-40-1: 6 pre-activation blocks per stage, widths 16/32/64."""
    return _wrn("cifar_wrn_40_1", 40, 1, pretrained=pretrained, **kwargs)


@register_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """WRN-40-2: 6 pre-activation blocks per stage, widths 32/64/128."""
    return _wrn("cifar_wrn_40_2", 40, 2, pretrained=pretrained, **kwargs)


def _vgg(variant: str, **kwargs: Any) -> nn.Module:
    config = VGG_CONFIGS[variant.removeprefix("cifar_")]
    return build_zoo_model(CifarVGG, variant, config=config, **kwargs)


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """VGG-8 with BatchNorm: 1/1/1/1/1 convs per block, widths 64…512."""
    return _vgg("cifar_vgg8", pretrained=pretrained, **kwargs)


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """VGG-11 with BatchNorm: 1/1/2/2/2 convs per block, widths 64…512."""
    return _vgg("cifar_vgg11", pretrained=pretrained, **kwargs)


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """VGG-13 with BatchNorm: 2/2/2/2/2 convs per block, widths 64…512."""
    return _vgg("cifar_vgg13", pretrained=pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """VGG-16 with BatchNorm: 2/2/3/3/3 convs per block, widths 64…512."""
    return _vgg("cifar_vgg16", pretrained=pretrained, **kwargs)


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """VGG-19 with BatchNorm: 2/2/4/4/4 convs per block, widths 64…512."""
    return _vgg("cifar_vgg19", pretrained=pretrained, **kwargs)


@register_model
def cifar_mobile_half(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MobileNetV2 at width 0.5, expansion 6, for 32x32 inputs (head of 1280 channels)."""
    return build_zoo_model(
        CifarMobileNetV2, "cifar_mobile_half", pretrained, expansion=6, width_mult=0.5, **kwargs
    )


@register_model
def cifar_shufflev1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ShuffleNet V1, 3 groups, widths 240/480/960, 4/8/4 blocks, 1x1 stem."""
    return build_zoo_model(ShuffleNetV1, "cifar_shufflev1", pretrained, **kwargs)


@register_model
def cifar_shufflev2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ShuffleNet V2 1x, widths 116/232/464, 3/7/3 blocks, head 1024, 1x1 stem."""
    return build_zoo_model(ShuffleNetV2, "cifar_shufflev2", pretrained, **kwargs)


@register_model
def cifar_mlp_small(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP with two hidden layers of 800 ReLU units on the flattened input (1x28x28: 784)."""
    return build_zoo_model(Mlp, "cifar_mlp_small", pretrained, hidden=(800, 800), **kwargs)


@register_model
def cifar_mlp_large(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """MLP with two hidden layers of 1200 ReLU units on the flattened input (1x28x28: 784)."""
    return build_zoo_model(Mlp, "cifar_mlp_large", pretrained, hidden=(1200, 1200), **kwargs)


# (literature name, timm entry point, family)
CATALOGUE: tuple[tuple[str, Callable[..., nn.Module], str], ...] = (
    ("resnet8", cifar_resnet8, "resnet"),
    ("resnet14", cifar_resnet14, "resnet"),
    ("resnet20", cifar_resnet20, "resnet"),
    ("resnet32", cifar_resnet32, "resnet"),
    ("resnet44", cifar_resnet44, "resnet"),
    ("resnet56", cifar_resnet56, "resnet"),
    ("resnet110", cifar_resnet110, "resnet"),
    ("resnet8x4", cifar_resnet8x4, "resnet"),
    ("resnet32x4", cifar_resnet32x4, "resnet"),
    ("ResNet50", cifar_resnet50, "resnet_imagenet_style"),
    ("wrn_16_1", cifar_wrn_16_1, "wrn"),
    ("wrn_16_2", cifar_wrn_16_2, "wrn"),
    ("wrn_40_1", cifar_wrn_40_1, "wrn"),
    ("wrn_40_2", cifar_wrn_40_2, "wrn"),
    ("vgg8", cifar_vgg8, "vgg"),
    ("vgg11", cifar_vgg11, "vgg"),
    ("vgg13", cifar_vgg13, "vgg"),
    ("vgg16", cifar_vgg16, "vgg"),
    ("vgg19", cifar_vgg19, "vgg"),
    ("mobile_half", cifar_mobile_half, "mobilenetv2"),
    ("MobileNetV2", cifar_mobile_half, "mobilenetv2"),
    ("ShuffleV1", cifar_shufflev1, "shufflenetv1"),
    ("ShuffleV2", cifar_shufflev2, "shufflenetv2"),
    ("mlp_small", cifar_mlp_small, "mlp"),
    ("mlp_large", cifar_mlp_large, "mlp"),
)


def summary(entrypoint: Callable[..., Any]) -> str:
    """First line of an entry point's docstring: its catalogue description."""
    return (entrypoint.__doc__ or "").strip().splitlines()[0]


for _name, _entrypoint, _family in CATALOGUE:
    register_catalog_model(_name, _entrypoint.__name__, _family, summary(_entrypoint))
