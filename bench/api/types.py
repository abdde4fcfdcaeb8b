"""What flows through a training step: :class:`ModelInfo`, :class:`TaskInfo`, :class:`Batch`,
:class:`Outputs`, and the :class:`TrialFailed` a method raises when a trial cannot go on."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


class TrialFailed(RuntimeError):
    """A trial that started but could not finish (diverged, refused); carries the reason.

    Attributes:
        reason: What went wrong and how to fix it, shown in the run's record.
        outcome: ``failed`` or ``refused`` (the method cannot run on the pair).
    """

    def __init__(self, reason: str, *, outcome: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, known before training.

    Attributes:
        name: Model name as given in the suite (``resnet32x4``, ``resnet18``…).
        family: Architecture family (``resnet``, ``vgg``…); ``timm`` for timm models.
        num_classes: Width of the classifier.
        feature_channels: Channels of each stage output, in timm ``feature_info`` order.
        feature_reductions: Spatial reduction of each stage relative to the input.
        embedding_dim: Width of the pooled pre-logit vector.
        num_params: Trainable parameters.
        feature_sizes: (H, W) of each stage output at the task's input size, as measured;
            empty when not measured (then ``bench.api.stage_size`` derives them from the
            reductions), (0, 0) for a stage output that is not a spatial map.
    """

    name: str
    family: str
    num_classes: int
    feature_channels: tuple[int, ...]
    feature_reductions: tuple[int, ...]
    embedding_dim: int
    num_params: int
    feature_sizes: tuple[tuple[int, int], ...] = ()

    @property
    def num_stages(self) -> int:
        return len(self.feature_channels)


@dataclass(frozen=True)
class TaskInfo:
    """The training task a method is set up for.

    Attributes:
        dataset: Dataset name.
        num_classes: Number of classes of the student's task.
        input_size: (C, H, W) of a training input.
        num_train: Training-split size (memory banks index it).
        epochs: Training epochs of the student.
        steps_per_epoch: Optimizer steps per epoch.
        models: Names of the models the harness can build (its catalogue), for methods that
            choose a model of their own (a teacher assistant).
    """

    dataset: str
    num_classes: int
    input_size: tuple[int, int, int]
    num_train: int
    epochs: int
    steps_per_epoch: int
    models: tuple[str, ...] = ()

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class Batch:
    """One training batch and where training stands.

    Attributes:
        x: Normalised inputs, N×C×H×W, on the training device.
        y: Labels, N.
        index: Positions of the samples in the training split, N (stable across epochs).
        epoch: Current epoch, from 0.
        step: Global optimizer step, from 0.
        progress: Fraction of training done, in [0, 1), for warm-ups and schedules.
    """

    x: Tensor
    y: Tensor
    index: Tensor
    epoch: int = 0
    step: int = 0
    progress: float = 0.0


@dataclass
class Outputs:
    """What one forward pass of a model yields.

    Attributes:
        logits: N×K class scores.
        features: Stage outputs in ``feature_info`` order (empty unless asked for).
        preact_features: Stage outputs before the final ReLU (empty unless asked for).
        embedding: N×D pooled pre-logit vector (None unless asked for).
    """

    logits: Tensor
    features: list[Tensor] = field(default_factory=list)
    preact_features: list[Tensor] = field(default_factory=list)
    embedding: Tensor | None = None
