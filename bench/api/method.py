"""The distillation-method base class :class:`Method`, the registry methods join, and the
:class:`TrainContext` protocol of what a method's hooks may use (the two name each other, so
they live together; the harness implements the protocol in ``bench/trial/context.py``).

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

Stage alignment between teacher and student follows one rule,
:func:`bench.api.stages.align_stages`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api.params import Params as BaseParams
from bench.api.params import coerce_value
from bench.api.types import Batch, ModelInfo, Outputs, TaskInfo
from bench.registry import Registry

KNOWLEDGE_KINDS = frozenset(
    {"none", "logits", "intermediate", "relation", "parameter", "graph", "multi-model"}
)
MODES = frozenset({"offline", "online", "self", "data_free"})
NEEDS = frozenset({"features", "preact_features", "embedding"})


class TrainContext(Protocol):
    """What a method's hooks can use during a trial.

    Attributes:
        student: The model being trained.
        teacher: The frozen teacher (eval mode, no grad), or None.
        student_info: Shapes of the student.
        teacher_info: Shapes of the teacher, or None.
        task: The task (classes, input size, epochs, steps per epoch).
        device: The training device.
        seed: The trial's seed.
        generator: A seeded CPU generator for any randomness a method draws.
    """

    student: nn.Module
    teacher: nn.Module | None
    student_info: ModelInfo
    teacher_info: ModelInfo | None
    task: TaskInfo
    device: torch.device
    seed: int
    generator: torch.Generator

    def forward(
        self,
        model: nn.Module,
        x: Tensor,
        needs: frozenset[str] | set[str] = frozenset(),
        *,
        grad: bool = True,
    ) -> Outputs:
        """One forward pass of any model under the trial's precision, computing only
        ``needs`` (``features``, ``preact_features``, ``embedding``) besides logits."""
        ...

    def forward_student(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        """The student's forward pass, with gradients."""
        ...

    def forward_teacher(self, x: Tensor, needs: frozenset[str] = frozenset()) -> Outputs:
        """The frozen teacher's outputs on ``x`` (no gradients; cached when ``x`` is the
        current training batch)."""
        ...

    def train_batches(self, augment: bool = True, *, epoch: int = 0) -> Iterator[Batch]:
        """One epoch over the training split, as the main loop sees it."""
        ...

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``params``."""
        ...

    def scheduled_lr(self, batch: Batch) -> float:
        """The learning rate the harness gives the student at ``batch`` (warm-up and
        schedule applied): for optimizers a method steps itself."""
        ...

    def run_init_stage(
        self,
        name: str,
        epochs: int,
        candidates: Iterable[nn.Parameter],
        step_loss: Callable[[Batch], Tensor],
    ) -> None:
        """Train on ``step_loss`` alone for ``epochs`` epochs before the main training (an
        initialisation stage: FitNets' hints, AB, FT's paraphraser).

        Only the ``candidates`` the loss reaches are optimised (the recipe's optimizer at its
        constant learning rate), so parts past them stay untouched, weight decay included.
        Logs ``init/<name>`` per epoch. Raises :class:`~bench.api.types.TrialFailed` on a
        non-finite loss.
        """
        ...

    def create_model(
        self, name: str, num_classes: int | None = None
    ) -> tuple[nn.Module, ModelInfo]:
        """A fresh model on the device, initialised from this trial's seed."""
        ...

    def obtain_teacher(
        self,
        arch: str,
        *,
        classes: tuple[int, ...] | list[int] | None = None,
        epochs: int | None = None,
    ) -> tuple[nn.Module, ModelInfo]:
        """A trained, frozen teacher from the cache (trained on this dataset; optionally on a
        class subset, or early-stopped after ``epochs``)."""
        ...

    def fit(
        self,
        model: nn.Module,
        method: Method,
        *,
        teacher: nn.Module | None = None,
        epochs: int | None = None,
        name: str = "sub-model",
    ) -> list[dict[str, float]]:
        """Run the standard training loop on another (model, method, teacher) triple, as a
        chain step (a teacher assistant trained before the student)."""
        ...

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Record extra metrics with the trial's run."""
        ...


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

    class Params(BaseParams):
        """No hyperparameters. A method declares its own ``Params(Method.Params)``."""

    # Of the subclass's own ``Params``, whose fields the base class cannot name.
    params: Any
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

    def __init__(self, params: BaseParams | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if params is None:
            params = self.Params()
        elif not isinstance(params, self.Params):
            if not isinstance(params, Mapping):
                # Another method's Params: its fields are not this method's.
                raise TypeError(
                    f"{self.name}.params: expected {type(self).__qualname__}.Params or a "
                    f"mapping, got {type(params).__qualname__}"
                )
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

    def recorded_setup(self) -> dict[str, str]:
        """Facts of this trial's setup worth recording, as name → text (e.g. which stages
        were paired); called after :meth:`setup`. The harness records them with the run
        (tags ``kdbench.setup.<name>``, the ``setup`` entry of ``config.json``)."""
        return {}

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
        raise TypeError(f"{where}: register_method expects a subclass of bench.api.Method")
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
