"""The CIFAR model zoo and the tiny test models: sizes, the timm feature contract, training.

Every catalogue model is checked for its parameter count, for the feature API kdbench relies on
(stage outputs as ``feature_info`` describes them; the head applied to the final map gives the
logits of ``model(x)``; pre-activation stage outputs) and for a backward pass.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import bench.models.cifar
import bench.models.tiny  # noqa: F401  registers the tiny models
from bench.models.catalog import MODELS
from bench.models.cifar_base import CIFAR100_MEAN, CIFAR100_STD, count_params

# Trainable parameters at num_classes=100. The zoo models' counts equal those of the same
# models in RepDistiller's ``models/`` (the CRD benchmark's zoo) built for 100 classes, e.g.
# the published 0.28M (resnet20), 0.86M (resnet56), 7.43M (resnet32x4), 2.26M (wrn_40_2),
# 9.46M (vgg13), 0.81M (mobile_half), 0.95M (ShuffleV1), 1.36M (ShuffleV2). The MLP and tiny
# model counts follow from their documented widths.
EXPECTED_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "ResNet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobile_half": 812_836,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    # 3072·800 + 800 + 800·800 + 800 + 800·100 + 100
    "mlp_small": 3_179_300,
    # 3072·1200 + 1200 + 1200·1200 + 1200 + 1200·100 + 100
    "mlp_large": 5_248_900,
    "test_resnet_narrow": 22_924,
    "test_resnet_wide": 83_892,
    "test_vgg": 21_108,
    "test_mobile": 21_844,
}

# What ``preact=True`` returns, by family: "pre_relu": every stage output after the stem (every
# stage for MLPs) is ReLU of its pre-activation; "next_bn": WRN stages after the stem pass
# through the next BatchNorm; "linear": MobileNetV2 stages end without a ReLU, so nothing changes.
PREACT_KIND = {
    "resnet": "pre_relu",
    "resnet_imagenet_style": "pre_relu",
    "vgg": "pre_relu",
    "shufflenetv1": "pre_relu",
    "shufflenetv2": "pre_relu",
    "mlp": "pre_relu",
    "wrn": "next_bn",
    "mobilenetv2": "linear",
}

ALL_MODELS = MODELS.names()


def _build(name: str, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(MODELS.get(name).timm_name, pretrained=False, num_classes=num_classes)


def _batch(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    return torch.randn(
        n, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(1)
    )


def test_every_model_has_an_expected_count():
    assert sorted(EXPECTED_PARAMS) == ALL_MODELS


@pytest.mark.parametrize("name", ALL_MODELS)
def test_parameter_count_at_100_classes(name):
    actual = count_params(_build(name, num_classes=100))
    expected = EXPECTED_PARAMS[name]
    assert actual == expected, f"{name}: {actual:,} parameters, expected {expected:,}"


@pytest.mark.parametrize("name", ALL_MODELS)
@torch.no_grad()
def test_feature_contract(name):
    model = _build(name).eval()
    x = _batch(model)
    logits = model(x)
    final, stages = model.forward_intermediates(x)

    assert len(stages) == len(model.feature_info)
    for index, (stage, info) in enumerate(zip(stages, model.feature_info, strict=True)):
        assert stage.shape[:2] == (2, info["num_chs"]), f"stage {index}"
        assert stage.shape[-2] == stage.shape[-1], f"stage {index}"
        assert x.shape[-1] // stage.shape[-1] == info["reduction"], f"stage {index}"
    assert torch.equal(final, model.forward_features(x))

    embedding = model.forward_head(final, pre_logits=True)
    assert embedding.shape == (2, model.num_features)
    assert logits.shape == (2, 10) == (2, model.num_classes)
    assert torch.equal(model.forward_head(final), logits)
    assert torch.equal(model.get_classifier()(embedding), logits)

    preact = model.forward_intermediates(x, preact=True, intermediates_only=True)
    assert [p.shape for p in preact] == [s.shape for s in stages]
    kind = PREACT_KIND[MODELS.get(name).family]
    if kind == "linear":
        assert all(torch.equal(p, s) for p, s in zip(preact, stages, strict=True))
        return
    assert any(p.min() < 0 for p in preact[1:]), "pre-activations should have negative values"
    if kind == "pre_relu":
        for index, (p, s) in enumerate(zip(preact, stages, strict=True)):
            assert torch.equal(F.relu(p), s), f"stage {index}: ReLU(preact) != stage output"
    else:  # next_bn: the last one is the map before the final ReLU
        assert torch.equal(F.relu(preact[-1]), final)
        assert torch.equal(preact[0], stages[0])


@pytest.mark.parametrize("name", ALL_MODELS)
def test_backward_reaches_every_parameter(name):
    model = _build(name).train()
    x = _batch(model)
    loss = F.cross_entropy(model(x), torch.tensor([3, 7]))
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient in {param_name}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_catalogue_names_families_and_timm_names():
    assert MODELS.get("MobileNetV2").timm_name == MODELS.get("mobile_half").timm_name
    assert MODELS.get("resnet32x4").timm_name == "cifar_resnet32x4"
    assert MODELS.get("ResNet50").timm_name == "cifar_resnet50"
    assert MODELS.get("ShuffleV2").family == "shufflenetv2"
    assert MODELS.get("wrn_40_2").family == "wrn"
    tiny = {n for n in ALL_MODELS if MODELS.get(n).test_only}
    assert tiny == {"test_resnet_narrow", "test_resnet_wide", "test_vgg", "test_mobile"}
    registered = set(timm.list_models())
    assert all(MODELS.get(n).timm_name in registered for n in ALL_MODELS)
    assert all(MODELS.get(n).description for n in ALL_MODELS)


def test_pretrained_cfg_carries_cifar100_defaults():
    model = timm.create_model("cifar_resnet20")
    cfg = model.pretrained_cfg
    assert model.num_classes == 100
    assert cfg["input_size"] == (3, 32, 32)
    assert tuple(cfg["mean"]) == CIFAR100_MEAN
    assert tuple(cfg["std"]) == CIFAR100_STD
    assert timm.data.resolve_data_config({}, model=model)["mean"] == CIFAR100_MEAN


def test_timm_keyword_arguments():
    model = timm.create_model(
        "cifar_resnet20", pretrained=False, num_classes=10, in_chans=1, drop_rate=0.5
    )
    x = torch.randn(2, 1, 32, 32)
    model.train()
    assert not torch.equal(
        model.forward_head(model.forward_features(x), pre_logits=True),
        model.forward_head(model.forward_features(x), pre_logits=True),
    )
    assert model.eval()(x).shape == (2, 10)
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("cifar_resnet20", pretrained=True)
    with pytest.raises(TypeError):
        timm.create_model("cifar_resnet20", img_size=64)  # convolutional: input-size agnostic


def test_reset_classifier():
    model = timm.create_model("test_resnet_narrow").eval()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.num_classes == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    with pytest.raises(ValueError, match="global average"):
        model.reset_classifier(5, global_pool="max")


@torch.no_grad()
def test_stage_selection_and_stop_early():
    model = timm.create_model("test_vgg").eval()
    x = torch.randn(2, 3, 32, 32)
    _, stages = model.forward_intermediates(x)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [t.shape for t in last_two] == [t.shape for t in stages[-2:]]
    assert all(torch.equal(a, b) for a, b in zip(last_two, stages[-2:], strict=True))
    picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    assert torch.equal(picked[0], stages[0]) and torch.equal(picked[1], stages[-1])
    final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
    assert torch.equal(final, stages[1]) and torch.equal(early[0], stages[1])
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


@torch.no_grad()
def test_features_only_returns_the_stage_outputs():
    features = timm.create_model("test_mobile", features_only=True).eval()
    model = timm.create_model("test_mobile").eval()
    model.load_state_dict(features.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    expected = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[1] for f in features(x)] == [i["num_chs"] for i in model.feature_info]
    assert all(torch.equal(a, b) for a, b in zip(features(x), expected, strict=True))


def test_wrn_preact_leaves_batchnorm_statistics_as_a_plain_forward_does():
    x = torch.randn(4, 3, 32, 32)
    with_preact, plain = _build("wrn_16_1").train(), _build("wrn_16_1").train()
    with_preact.forward_intermediates(x, preact=True)
    plain(x)
    expected = plain.state_dict()
    for key, value in with_preact.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_mlp_checks_its_input_shape():
    model = timm.create_model("cifar_mlp_small", num_classes=10, in_chans=1, img_size=28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.feature_info[0]["reduction"] == 28
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(2, 3, 32, 32))


REFERENCE_KEYS = {
    "resnet32x4": ["conv1.weight", "layer1.0.downsample.0.weight", "layer3.4.bn2.running_var"],
    "ResNet50": ["layer1.0.shortcut.1.weight", "layer4.2.conv3.weight", "linear.bias"],
    "wrn_40_2": ["block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.bias", "fc.weight"],
    "vgg13": ["block0.0.bias", "block0.4.running_mean", "block4.3.weight", "classifier.weight"],
    "mobile_half": ["conv1.1.weight", "blocks.6.0.conv.7.running_var", "classifier.0.weight"],
    "ShuffleV1": ["layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"],
    "ShuffleV2": ["layer1.0.conv5.weight", "layer2.7.conv3.weight", "conv2.weight"],
}


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_parameter_names_follow_the_reference_checkpoints(name):
    """A sample of the parameter names of RepDistiller checkpoints, which load unchanged."""
    state = _build(name).state_dict()
    missing = [k for k in REFERENCE_KEYS[name] if k not in state]
    assert not missing, f"{name}: missing {missing}"
