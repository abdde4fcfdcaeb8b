"""The distillation-method plugin API: :class:`Method`, :class:`Batch`, :class:`Outputs`.

A method is a ``torch.nn.Module`` registered by name. Its own trainable parts (connectors,
embeddings, discriminators, memory banks as buffers) are submodules, so they move to the
device, land in checkpoints and reach the optimizer together with the student's parameters.

The harness calls, in order::

    method.supports(student_info, teacher_info, task)   # may refuse the pair, with a reason
    method.setup(student_info, teacher_info, task)      # build connectors for these shapes
    method.before_training(ctx)                         # optional init stage (FT, AB, FitNets…)
    for each batch:
        terms = method.train_step(ctx, batch)           # named, weighted loss terms
        sum(terms).backward(); optimizer.step()
        method.after_step(ctx, batch)                   # e.g. an EMA update

The default :meth:`Method.train_step` runs the student (and the frozen teacher, when the method
needs one) once, calls :meth:`Method.loss`, and adds the student's cross-entropy unless the
method owns it. Methods that change the step itself (online peers, discriminators, generators)
override :meth:`Method.train_step`; nothing method-specific lives in the harness.

Stage alignment between teacher and student follows one rule, :func:`align_stages`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from bench.registry import Registry

if TYPE_CHECKING:
    from bench.train import TrainContext

KNOWLEDGE_KINDS = frozenset(
    {"none", "logits", "intermediate", "relation", "parameter", "graph", "multi-model"}
)
MODES = frozenset({"offline", "online", "self", "data_free"})
NEEDS = frozenset({"features", "preact_features", "embedding"})


class ParamError(ValueError):
    """A method hyperparameter that does not exist or has the wrong type."""


# --------------------------------------------------------------------------------------------
# What flows through a training step
# --------------------------------------------------------------------------------------------


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
    """

    name: str
    family: str
    num_classes: int
    feature_channels: tuple[int, ...]
    feature_reductions: tuple[int, ...]
    embedding_dim: int
    num_params: int

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
    """

    dataset: str
    num_classes: int
    input_size: tuple[int, int, int]
    num_train: int
    epochs: int
    steps_per_epoch: int

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


# --------------------------------------------------------------------------------------------
# Typed hyperparameters
# --------------------------------------------------------------------------------------------


class Params:
    """Base of a method's hyperparameters. Subclasses are made frozen dataclasses.

    Declare fields with a type and the paper's default::

        class Params(Method.Params):
            temperature: float = 4.0
            alpha: float = 0.9
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True)(cls)

    @classmethod
    def fields(cls) -> dict[str, Any]:
        """Field name → resolved type."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, where: str = "params") -> Params:
        """Build from a mapping of raw values (strings from the command line are parsed).

        Raises:
            ParamError: an unknown name (with suggestions) or a value of the wrong type.
        """
        known = cls.fields()
        coerced = {}
        for key, raw in values.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.5)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ParamError(
                    f"{where}: unknown parameter {key!r} for {cls.__qualname__.split('.')[0]}."
                    f"{hint} Parameters: {', '.join(known) or '(none)'}."
                )
            coerced[key] = coerce_value(raw, known[key], where=f"{where}.{key}")
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


# A method without hyperparameters uses the base class itself, so it is a dataclass too.
dataclasses.dataclass(frozen=True)(Params)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce_value(raw: Any, tp: Any, *, where: str) -> Any:
    """Convert ``raw`` to the annotated type ``tp`` (bool, int, float, str, Literal, tuples,
    optionals), parsing strings as the command line gives them.

    Raises:
        ParamError: naming ``where`` and the expected type.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    expected = _type_name(tp)

    def fail() -> ParamError:
        return ParamError(f"{where}: expected {expected}, got {raw!r} ({type(raw).__name__})")

    if origin in (typing.Union, types.UnionType):
        is_none = raw is None or (isinstance(raw, str) and raw.lower() in {"none", "null"})
        if is_none and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce_value(raw, arg, where=where)
            except ParamError:
                continue
        raise fail()
    if origin is typing.Literal:
        for option in args:
            if raw == option or (isinstance(raw, str) and str(option) == raw):
                return option
        raise ParamError(f"{where}: expected one of {list(args)}, got {raw!r}")
    if origin in (tuple, list, Sequence):
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple):
            raise fail()
        inner = args[0] if args else str
        return tuple(coerce_value(v, inner, where=where) for v in items)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return raw.lower() in {"true", "1", "yes"}
        raise fail()
    if tp is int:
        if isinstance(raw, bool):
            raise fail()
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is float:
        if isinstance(raw, bool):
            raise fail()
        if isinstance(raw, int | float):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(raw, str):
            return raw
        raise fail()
    return raw


# --------------------------------------------------------------------------------------------
# The Method base class
# --------------------------------------------------------------------------------------------


class Method(nn.Module):
    """Base class of every distillation method.

    Class attributes a method declares:
        name: Registered name (set by :func:`register_method`).
        knowledge: What is transferred: one of ``KNOWLEDGE_KINDS``.
        mode: ``offline`` (frozen teacher), ``online`` (models train together), ``self``
            (no separate teacher), ``data_free``.
        needs: What the harness computes for the student besides logits: any of
            ``features``, ``preact_features``, ``embedding``.
        teacher_needs: The same for the teacher; defaults to ``needs``.
        uses_teacher: Whether the trial needs a trained teacher at all.
        owns_ce: Whether :meth:`loss` includes the student's cross-entropy itself.
        version: Bump on any change of behaviour; part of every run key.
        search_space: Parameter name → candidate values for the ``tune`` phase.
        conformance_params: Parameters the conformance suite uses on its tiny test models
            when the paper's defaults cannot apply there (e.g. naming a tiny assistant).
    """

    Params: ClassVar[type[Params]] = Params
    name: ClassVar[str] = ""
    knowledge: ClassVar[str] = "logits"
    mode: ClassVar[str] = "offline"
    needs: ClassVar[frozenset[str]] = frozenset()
    teacher_needs: ClassVar[frozenset[str] | None] = None
    uses_teacher: ClassVar[bool] = True
    owns_ce: ClassVar[bool] = False
    version: ClassVar[int] = 1
    search_space: ClassVar[dict[str, list[Any]]] = {}
    conformance_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Params | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if params is None:
            params = self.Params()
        elif not isinstance(params, self.Params):
            params = self.Params.from_mapping(dict(params), where=f"{self.name}.params")
        self.params = params

    # -- declared facts ----------------------------------------------------------------------

    @classmethod
    def student_needs(cls) -> frozenset[str]:
        return frozenset(cls.needs)

    @classmethod
    def needs_of_teacher(cls) -> frozenset[str]:
        return frozenset(cls.needs if cls.teacher_needs is None else cls.teacher_needs)

    # -- hooks -------------------------------------------------------------------------------

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        """Whether this method can run on the pair; if not, a reason shown on leaderboards."""
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        """Build the method's own modules for these shapes. Called once, before training."""

    def before_training(self, ctx: TrainContext) -> None:
        """An optional stage before the main training (paraphraser, initialisation, …)."""

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        """Named, already-weighted loss terms; their sum is minimised.

        The student's cross-entropy is added by :meth:`train_step` unless ``owns_ce``.
        """
        return {}

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        """One step's loss terms. Override to change the step itself (online peers,
        discriminators, generators); the harness sums the terms, backpropagates and steps
        the optimizer."""
        # The teacher goes first: its activations are freed before the student's autograd
        # graph is built, so the allocator reuses them (student first: ~5 % slower on CPU).
        teacher = None
        if self.uses_teacher and ctx.teacher is not None:
            teacher = ctx.forward_teacher(batch.x, self.needs_of_teacher())
        student = ctx.forward_student(batch.x, self.student_needs())
        terms = self.loss(batch, student, teacher)
        if not self.owns_ce:
            terms = {"ce": F.cross_entropy(student.logits, batch.y), **terms}
        return terms

    def after_step(self, ctx: TrainContext, batch: Batch) -> None:
        """Called after each optimizer step (EMA updates, queue updates, …)."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The method's parameters that the student's optimizer updates (default: all).

        Methods with an adversary or a generator optimise those parts themselves and
        leave them out here.
        """
        return self.parameters()

    def extra_parameters(self) -> int:
        """Trainable parameters the method adds during training (connectors, heads, …)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass under ``name``.

    Checks the declared attributes so a plugin's mistakes surface at import time.
    """

    def decorate(cls: type[Method]) -> type[Method]:
        _validate_method_class(name, cls)
        cls.name = name
        METHODS.register(name, cls)
        return cls

    return decorate


def _validate_method_class(name: str, cls: type) -> None:
    where = f"method {name!r} ({cls.__module__}.{cls.__qualname__})"
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{where}: register_method expects a subclass of bench.method.Method")
    if cls.knowledge not in KNOWLEDGE_KINDS:
        raise ValueError(f"{where}: knowledge {cls.knowledge!r} not in {sorted(KNOWLEDGE_KINDS)}")
    if cls.mode not in MODES:
        raise ValueError(f"{where}: mode {cls.mode!r} not in {sorted(MODES)}")
    for need in set(cls.needs) | set(cls.teacher_needs or ()):
        if need not in NEEDS:
            raise ValueError(f"{where}: unknown need {need!r}; choose from {sorted(NEEDS)}")
    if not isinstance(cls.version, int) or cls.version < 1:
        raise ValueError(f"{where}: version must be a positive int, got {cls.version!r}")
    known = cls.Params.fields()
    for key, values in cls.search_space.items():
        if key not in known:
            raise ValueError(f"{where}: search_space key {key!r} is not a parameter")
        for v in values:
            coerce_value(v, known[key], where=f"{where}.search_space.{key}")


# --------------------------------------------------------------------------------------------
# Stage alignment: the one rule every feature method follows
# --------------------------------------------------------------------------------------------


def align_stages(student: ModelInfo, teacher: ModelInfo) -> list[tuple[int, int]]:
    """Pair student stages with teacher stages.

    The rule: both networks end in their deepest stage, so stages are matched from the end.
    With ``k = min(#student stages, #teacher stages)`` the last ``k`` stages of each are paired
    in order; earlier stages of the deeper-staged network are left out. Spatial sizes of a
    pair may differ; :func:`match_spatial` resizes the student map to the teacher's.

    Returns:
        (student_stage, teacher_stage) index pairs, shallowest first.
    """
    k = min(student.num_stages, teacher.num_stages)
    s0, t0 = student.num_stages - k, teacher.num_stages - k
    return [(s0 + i, t0 + i) for i in range(k)]


def hint_pair(student: ModelInfo, teacher: ModelInfo) -> tuple[int, int]:
    """The single (student, teacher) stage pair used by one-hint methods (FitNets' middle
    layer): the middle of the aligned pairs, rounding towards the deeper stage."""
    pairs = align_stages(student, teacher)
    return pairs[len(pairs) // 2]


def match_spatial(x: Tensor, like: Tensor) -> Tensor:
    """Resize a N×C×H×W map to the spatial size of ``like`` (adaptive average pooling down,
    bilinear interpolation up); unchanged when the sizes agree."""
    if x.dim() != 4 or x.shape[-2:] == like.shape[-2:]:
        return x
    if x.shape[-2] >= like.shape[-2] and x.shape[-1] >= like.shape[-1]:
        return F.adaptive_avg_pool2d(x, like.shape[-2:])
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def conv_connector(in_channels: int, out_channels: int) -> nn.Module:
    """The standard student→teacher feature connector: 1×1 conv + BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def get_method(name: str) -> type[Method]:
    """The method class registered under ``name`` (loads kdbench's methods and plugins)."""
    from bench.plugins import load_methods

    load_methods()
    return METHODS.get(name)


def build_method(name: str, params: Mapping[str, Any] | None = None) -> Method:
    """Instantiate a registered method with (raw) params; raises ParamError on bad params."""
    cls = get_method(name)
    return cls(cls.Params.from_mapping(dict(params or {}), where=f"{name}.params"))
