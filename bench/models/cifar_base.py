"""What every model of kdbench's zoo shares: timm's feature API over a stem-and-stages network.

A zoo model is a chain of *stages* (the stem counts as stage 0) followed by an optional final
block (a head convolution or final norm), global average pooling and a linear classifier. A
subclass builds its layers, describes its stages in ``feature_info`` and implements
:meth:`StagedNet._stage`; this base class turns that into the interface kdbench and timm expect
of any model: ``forward_intermediates`` (with ``preact=True`` for pre-activation stage outputs),
``forward_features``, ``forward_head``, ``get_classifier`` and ``reset_classifier``.

The stages are the feature maps the reference CIFAR zoo of the KD literature returns with
``is_feat=True`` (RepDistiller's ``models/``), minus the pooled vector, which kdbench gets from
``forward_head(..., pre_logits=True)``. Global average pooling replaces the reference's
fixed-size pools; the two agree on 32x32 inputs and only the former handles other sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from timm.models import build_model_with_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from torch import Tensor, nn

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def zoo_cfg(
    *, first_conv: str, classifier: str, pool_size: tuple[int, int], **extra: Any
) -> dict[str, Any]:
    """A timm pretrained config for a zoo model: CIFAR-100 input statistics, 32x32, no weights.

    Args:
        first_conv: Name of the first layer (timm adapts it when ``in_chans`` changes).
        classifier: Name of the classifier layer.
        pool_size: Size of the final feature map for a 32x32 input.
        **extra: Further ``PretrainedCfg`` fields.
    """
    return {
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": pool_size,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": first_conv,
        "classifier": classifier,
        "license": "apache-2.0",
        **extra,
    }


def build_zoo_model(
    model_cls: Callable[..., StagedNet], variant: str, pretrained: bool = False, **kwargs: Any
) -> nn.Module:
    """Build a zoo model the way timm builds its own (``pretrained_cfg`` attached, defaults
    filled in from it), for the ``@register_model`` entry points.

    Accepts timm's ``device``/``dtype`` and ``features_only``/``out_indices`` keyword arguments;
    ``features_only=True`` returns timm's ``FeatureGetterNet`` over ``forward_intermediates``.

    Raises:
        ValueError: ``pretrained=True``; the zoo ships no weights.
    """
    if pretrained:
        raise ValueError(
            f"{variant} has no pretrained weights: kdbench's CIFAR zoo is trained from scratch. "
            "Pass pretrained=False and train a teacher, or load a checkpoint with "
            "timm.create_model(..., checkpoint_path=PATH)."
        )
    device = kwargs.pop("device", None)
    dtype = kwargs.pop("dtype", None)
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    model = build_model_with_cfg(model_cls, variant, pretrained=False, **kwargs)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    if features_only:
        if out_indices is None:
            out_indices = tuple(range(len(model.feature_info)))
        return FeatureGetterNet(model, out_indices=out_indices)
    return model


def bn_without_stat_update(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """Apply ``bn`` to ``x`` exactly as ``bn(x)`` would, but leave its running statistics alone.

    Used where a stage's pre-activation is the next stage's first BatchNorm applied to the
    stage output: the network applies that BatchNorm itself, and a second training-mode call
    would update the running statistics twice per step.
    """
    use_batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(
        x, bn.running_mean, bn.running_var, bn.weight, bn.bias, use_batch_stats, 0.0, bn.eps
    )


def blocks_with_preact(blocks: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a sequence of blocks; return the output and the last block's pre-activation.

    The last block must provide ``forward_preact(x) -> (output, preact)``.
    """
    for block in blocks[:-1]:
        x = block(x)
    last: Any = blocks[-1]  # nn.Sequential types its items as plain Modules
    return last.forward_preact(x)


class StagedNet(nn.Module):
    """Base class of the zoo: stages, final block, global average pooling, linear classifier.

    Subclasses build their layers, then call :meth:`_init_head`, and implement :meth:`_stage`
    and, if they have one, :meth:`_final`. ``classifier_attr`` names the classifier module,
    matching the reference zoo's parameter names so that its checkpoints load unchanged.

    Attributes:
        feature_info: One dict per stage: ``num_chs``, ``reduction`` (for a 32x32 input) and
            ``module`` (the module whose output is the stage output).
        num_classes: Classifier width (0: no classifier, ``forward`` returns the embedding).
        num_features: Width of the pooled embedding.
        supports_preact: ``forward_intermediates`` honours ``preact=True``.
    """

    classifier_attr = "fc"
    supports_preact = True

    def _init_head(
        self,
        num_features: int,
        num_classes: int,
        drop_rate: float,
        feature_info: list[dict[str, Any]],
    ) -> None:
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.feature_info = feature_info
        self.head_drop = nn.Dropout(drop_rate)
        setattr(self, self.classifier_attr, self._make_classifier(num_features, num_classes))

    def _make_classifier(self, num_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        """Run stage ``index`` on ``x``.

        Returns:
            The tensor passed on to the next stage, and the stage's feature to expose: the
            same tensor, or its pre-activation version when ``preact`` is set.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _stage")

    def _final(self, x: Tensor) -> Tensor:
        """Layers between the last stage and the pooling (none by default)."""
        return x

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | list[int] | tuple[int, ...] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        preact: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Forward pass returning the stage outputs, as timm models do.

        Args:
            x: Input batch, N×C×H×W.
            indices: Stages to return: all if None, the last n if an int, else the listed
                indices (negative ones count from the end).
            norm: Accepted for timm compatibility; the stage outputs are returned as they are
                (the zoo's final blocks are not per-stage norms).
            stop_early: Stop after the last requested stage; the first return value is then
                that stage's output.
            output_fmt: Only "NCHW".
            intermediates_only: Return only the list of stage outputs.
            preact: Return each stage's output before its final ReLU, as the reference zoo's
                ``preact=True`` does (what each architecture returns is documented on its
                class).

        Returns:
            ``(final feature map, [stage outputs])``, or the list alone.
        """
        if output_fmt != "NCHW":
            raise ValueError(
                f"{type(self).__name__}.forward_intermediates: output_fmt={output_fmt!r} is not "
                "supported; use 'NCHW'."
            )
        num_stages = len(self.feature_info)
        # timm takes a tuple as well; its annotation is narrower for TorchScript's sake.
        take_indices, max_index = feature_take_indices(num_stages, indices)  # type: ignore[arg-type]
        last = max_index if stop_early else num_stages - 1
        intermediates = []
        for index in range(last + 1):
            x, feature = self._stage(index, x, preact)
            if index in take_indices:
                intermediates.append(feature)
        if intermediates_only:
            return intermediates
        if last == num_stages - 1:
            x = self._final(x)
        return x, intermediates

    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map, before pooling."""
        for index in range(len(self.feature_info)):
            x, _ = self._stage(index, x, False)
        return self._final(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool the final feature map; return the embedding (``pre_logits``) or the logits."""
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs.

        Raises:
            ValueError: ``global_pool`` is other than "avg" (the only pooling the zoo has).
        """
        if global_pool not in (None, "avg"):
            raise ValueError(
                f"{type(self).__name__} pools by global average only; got "
                f"global_pool={global_pool!r}. Pass 'avg' or leave it out."
            )
        self.num_classes = num_classes
        reference = next(self.parameters())
        classifier = self._make_classifier(self.num_features, num_classes)
        classifier.to(device=reference.device, dtype=reference.dtype)
        setattr(self, self.classifier_attr, classifier)


def stage_info(channels: list[int], reductions: list[int], modules: list[str]) -> list[dict]:
    """``feature_info`` entries from per-stage channels, reductions and module names."""
    return [
        {"num_chs": c, "reduction": r, "module": m}
        for c, r, m in zip(channels, reductions, modules, strict=True)
    ]


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
