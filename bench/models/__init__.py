"""Models: every model is built by ``timm.create_model``; one forward pass yields
:class:`~bench.api.Outputs` (logits, per-stage features in ``feature_info`` order, the pooled
embedding).

kdbench registers the CIFAR zoo of the KD literature (and tiny test models) into timm; their
literature names live in :data:`bench.models.catalog.MODELS`. Any other timm model works too:
``resnet18``, ``mobilenetv3_small_050``, ``vit_tiny_patch16_224`` (built at the dataset's image
size). ``timm:NAME`` forces timm's own model when a catalogue name shadows it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import Any

import timm
import torch
from torch import Tensor, nn

from bench.api import ModelInfo, Outputs
from bench.models.catalog import MODELS, ModelEntry
from bench.registry import UnknownNameError

# Importing these registers the zoo and the tiny test models into timm and the catalogue.
from bench.models import cifar as _cifar  # noqa: F401  isort: skip
from bench.models import tiny as _tiny  # noqa: F401  isort: skip

__all__ = [
    "MODELS",
    "ModelEntry",
    "create_model",
    "forward_outputs",
    "list_models",
    "model_info",
    "resolve",
]

TIMM_PREFIX = "timm:"


@functools.lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    return frozenset(timm.list_models())


def resolve(name: str) -> tuple[str, str]:
    """Map a kdbench model name to (timm name, family).

    Raises:
        UnknownNameError: neither the catalogue nor timm knows ``name``; suggests close names.
    """
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
        if timm_name in _timm_names():
            return timm_name, "timm"
        raise UnknownNameError("model", timm_name, sorted(_timm_names()))
    if name in MODELS:
        entry = MODELS.get(name)
        return entry.timm_name, entry.family
    if name in _timm_names():
        return name, "timm"
    catalogue = MODELS.names()
    error = UnknownNameError("model", name, catalogue + sorted(_timm_names()))
    error.available = [*catalogue, "… and every timm model (`kdbench ls models --timm`)"]
    raise error


def create_model(
    name: str, num_classes: int, *, image_size: int | None = None, in_chans: int = 3
) -> nn.Module:
    """Build ``name`` through ``timm.create_model`` with random weights.

    Args:
        name: Catalogue name, timm name, or ``timm:NAME``.
        num_classes: Classifier width.
        image_size: Input height/width; passed as ``img_size`` to models that take it
            (vision transformers, the zoo's MLPs), so they are built for the dataset's
            resolution.
        in_chans: Input channels (1 for the native MNIST-like datasets); every zoo and timm
            model takes it.
    """
    timm_name, _ = resolve(name)
    # Left out at 3, timm's default, so that models built before it existed are built alike.
    extra: dict[str, Any] = {} if in_chans == 3 else {"in_chans": in_chans}
    if image_size is not None:
        try:
            return timm.create_model(
                timm_name,
                pretrained=False,
                num_classes=num_classes,
                img_size=image_size,
                **extra,
            )
        except TypeError:
            pass  # the model has a fixed or input-agnostic resolution
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, **extra)


def _has_preact(model: nn.Module) -> bool:
    method = getattr(model, "forward_intermediates", None)
    return method is not None and "preact" in inspect.signature(method).parameters


def forward_outputs(model: nn.Module, x: Tensor, needs: Iterable[str] = ()) -> Outputs:
    """One forward pass computing only what ``needs`` asks for besides the logits.

    ``features`` are the stage outputs of ``forward_intermediates`` (``feature_info`` order);
    ``preact_features`` are the same stages before their last ReLU where the model provides
    them (kdbench's zoo) and the plain stage outputs otherwise; ``embedding`` is the pooled
    pre-logit vector, whose classifier output is the logits.
    """
    needs = frozenset(needs)
    # timm's feature API (forward_intermediates, forward_head, ...), which nn.Module lacks.
    net: Any = model
    features: list[Tensor] = []
    preact: list[Tensor] = []
    if "preact_features" in needs and _has_preact(model):
        final, preact = net.forward_intermediates(x, preact=True)
        if "features" in needs:
            _, features = net.forward_intermediates(x)
    elif needs & {"features", "preact_features"}:
        final, features = net.forward_intermediates(x)
        if "preact_features" in needs:
            preact = features
        if "features" not in needs:
            features = []
    else:
        final = net.forward_features(x)
    embedding = net.forward_head(final, pre_logits=True)
    logits = net.get_classifier()(embedding)
    return Outputs(
        logits=logits,
        features=list(features),
        preact_features=list(preact),
        embedding=embedding if "embedding" in needs else None,
    )


@torch.no_grad()
def model_info(model: nn.Module, name: str, input_size: tuple[int, int, int]) -> ModelInfo:
    """Describe ``model`` by one dry forward pass on a 2-sample batch (eval mode, no grad).

    Shapes are measured rather than read from ``feature_info`` so that models built for a
    non-default resolution are described correctly.
    """
    try:
        _, family = resolve(name)
    except UnknownNameError:
        family = "unknown"  # a model built elsewhere (a method's sub-model), described by shape
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(2, *input_size, device=param.device, dtype=param.dtype)
        out = forward_outputs(model, x, {"features", "embedding"})
    finally:
        model.train(was_training)
    assert out.embedding is not None  # asked for above
    height = input_size[1]
    return ModelInfo(
        name=name,
        family=family,
        num_classes=out.logits.shape[1],
        feature_channels=tuple(int(f.shape[1]) for f in out.features),
        feature_reductions=tuple(
            max(1, round(height / f.shape[-2])) if f.dim() == 4 else 0 for f in out.features
        ),
        embedding_dim=int(out.embedding.shape[1]),
        num_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        feature_sizes=tuple(
            (int(f.shape[-2]), int(f.shape[-1])) if f.dim() == 4 else (0, 0) for f in out.features
        ),
    )


def list_models(pattern: str | None = None, *, include_timm: bool = False) -> list[str]:
    """Catalogue names (and optionally every timm name), filtered by a glob."""
    names = MODELS.names(pattern)
    if include_timm:
        names += timm.list_models(pattern or "*")
    return names
