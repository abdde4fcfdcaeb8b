"""The typed suite: what a validated ``suite.yaml`` holds, the keys of its format, and the
error that lists every problem found in it (see :mod:`bench.suite` for the format)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.config import (
    CHECKPOINT_EVERY_EPOCHS,
    CHECKPOINT_EVERY_MINUTES,
    ConfigError,
    Phase,
    Recipe,
    stable_hash,
)
from bench.entry_spec import EntrySpec

SUITE_FILE = "suite.yaml"
#: Student recipe fields a suite's teacher recipe does not inherit.
STUDENT_ONLY_RECIPE_KEYS = ("trainable", "augment_stream")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
TOP_KEYS = (
    "name",
    "description",
    "experiment",
    "phase",
    "datasets",
    "val_fraction",
    "pairs",
    "methods",
    "seeds",
    "recipe",
    "teacher_seed",
    "resources",
    "teacher_resources",
    "tune",
    "max_failures",
    "checkpoint",
    "plugins",
    "study",
    "compress",
    "leaderboard",
)
REQUIRED_KEYS = ("datasets", "pairs", "methods", "seeds")
DATASET_KEYS = ("name", "data_root", "download", "train_size")
PAIR_KEYS = (
    "teacher",
    "student",
    "teacher_checkpoint",
    "recipe",
    "teacher_epochs",
    "student_checkpoint",
)
METHOD_KEYS = ("name", "params", "search", "resources")
RECIPE_KEYS = ("student", "teacher")
RESOURCE_KEYS = ("cpu", "gpu")
CHECKPOINT_KEYS = ("epochs", "minutes")
TUNE_KEYS = ("budget",)
STUDY_KEYS = ("parameter", "method", "reference")
COMPRESS_KEYS = ("methods", "sparsities", "int8")
LEADERBOARD_KEYS = ("baseline", "reference")
#: The study parameter that is the teacher's training epochs rather than a method parameter.
TEACHER_EPOCH = "teacher_epoch"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a suite.

    Attributes:
        path: Key path inside the suite, e.g. ``methods[2].params.temperature``.
        message: What is wrong and how to fix it.
        line: 1-based line in the suite file, when known.
    """

    path: str
    message: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class SuiteError(ConfigError):
    """A suite that cannot run; carries every :class:`Problem` found."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"suite {self.source}: {count} problem{'s' if count != 1 else ''}; nothing was run"
        ordered = sorted(self.problems, key=lambda p: p.line or 0)
        return "\n".join([head, *("  " + p.render(self.source) for p in ordered)])


@dataclass(frozen=True)
class Resources:
    """What one trial (or teacher) asks of a node.

    Attributes:
        cpu: CPU cores (also the trial's torch threads, at least 1).
        gpu: GPUs; a fraction below 1 packs several trials onto one card.
    """

    cpu: float = 1.0
    gpu: float = 0.0

    @property
    def threads(self) -> int:
        return max(1, math.floor(self.cpu))

    def as_ray(self) -> dict[str, float]:
        """The request in Ray's resource names."""
        out = {"CPU": float(self.cpu)}
        if self.gpu:
            out["GPU"] = float(self.gpu)
        return out

    def fits(self, node: Mapping[str, float]) -> bool:
        """Whether a node with these total resources can hold the request."""
        return all(node.get(k, 0.0) + 1e-9 >= v for k, v in self.as_ray().items())

    def describe(self) -> str:
        return f"cpu {self.cpu:g}" + (f", gpu {self.gpu:g}" if self.gpu else "")


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset of the suite, where its files are, and how much of it students train on.

    Attributes:
        name: The registered dataset name.
        data_root: A folder searched first for its files.
        download: Whether files found nowhere may be downloaded.
        train_size: Students train on a stratified subset of this many training samples
            (teachers on the whole split); None: the whole split.
    """

    name: str
    data_root: str | None = None
    download: bool = False
    train_size: int | None = None


@dataclass(frozen=True)
class Pair:
    """A teacher → student pair.

    Attributes:
        teacher: Teacher model name.
        student: Student model name.
        teacher_checkpoint: A trained teacher's state dict to load instead of training one.
        recipe: The pair's student recipe when it overrides the suite's, else None.
        teacher_recipe: The pair's teacher recipe when it overrides the suite's, else None.
        teacher_epochs: Early-stopped teachers: distil from the checkpoints of one teacher
            training after each of these epochs (one pair each); None: the trained teacher.
        student_checkpoint: A pretrained state dict the student starts from.
    """

    teacher: str
    student: str
    teacher_checkpoint: str | None = None
    recipe: Recipe | None = None
    teacher_recipe: Recipe | None = None
    teacher_epochs: tuple[int, ...] | None = None
    student_checkpoint: str | None = None

    @property
    def label(self) -> str:
        return f"{self.teacher}->{self.student}"


@dataclass(frozen=True)
class MethodEntry:
    """A method with fixed params and, in the tune phase, a search space.

    Attributes:
        name: Registered method name.
        params: Fixed hyperparameters, sorted by name, each of its field's type (checked and
            converted once, by ``bench.api.coerce_value``; trials carry them as they are).
        search: Parameter → candidate values, sorted by name (tune phase), typed likewise.
        resources: Per-trial resources overriding the suite's, or None.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    search: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    resources: Resources | None = None

    def grid(self) -> list[dict[str, Any]]:
        """Every configuration: the search space's product on top of the fixed params."""
        names = [name for name, _ in self.search]
        combos = itertools.product(*(values for _, values in self.search))
        return [{**dict(self.params), **dict(zip(names, combo, strict=True))} for combo in combos]

    def configurations(self, budget: int | None) -> list[dict[str, Any]]:
        """At most ``budget`` configurations of :meth:`grid`: the whole grid when it fits,
        else a fixed-seed sample (the same suite always gets the same sample)."""
        full = self.grid()
        if budget is None or len(full) <= budget:
            return full
        rng = random.Random(stable_hash([self.name, self.params, self.search]))
        return [full[i] for i in sorted(rng.sample(range(len(full)), budget))]


@dataclass(frozen=True)
class Study:
    """What a study suite varies, for the leaderboard's study figure.

    Attributes:
        parameter: A parameter of ``method`` (``temperature``), or ``teacher_epoch``: the
            teacher's training epochs (pairs with ``teacher_epochs``).
        method: The method whose parameter varies (for ``teacher_epoch``: the distillation
            method plotted; default ``kd``).
    """

    parameter: str
    method: str = "kd"


@dataclass(frozen=True)
class LeaderboardAnchors:
    """The entries a suite's leaderboard compares every method with (``leaderboard:``); each
    left out is its method's default setting (``ce``, ``kd``) at the current version.

    Attributes:
        baseline: The student-alone entry, or None for ``ce`` at its defaults.
        reference: The reference entry, or None for ``kd`` at its defaults.
    """

    baseline: EntrySpec | None = None
    reference: EntrySpec | None = None


@dataclass(frozen=True)
class Compression:
    """The suite's compression post-stage (``compress:``): after the trials, every finished
    student of ``methods`` is measured as trained (``fp32``), pruned at each sparsity and
    quantised to int8 (:mod:`bench.analysis.compress`), each variant recorded as an MLflow
    child run of its trial.

    Attributes:
        methods: Names of the suite's methods whose students are compressed.
        sparsities: Global magnitude-pruning sparsities, each in (0, 1), ascending.
        int8: Whether to quantise to int8 as well.
    """

    methods: tuple[str, ...]
    sparsities: tuple[float, ...] = ()
    int8: bool = False

    @property
    def variants(self) -> tuple[str, ...]:
        """The variants recorded per student, as the child runs name them."""
        from bench.analysis import FP32_VARIANT, INT8_VARIANT, pruned_variant

        pruned = tuple(pruned_variant(s) for s in self.sparsities)
        return (FP32_VARIANT, *pruned, *((INT8_VARIANT,) if self.int8 else ()))

    def selects(self, method: str) -> bool:
        """Whether the students of ``method`` are compressed."""
        return method in self.methods

    def describe(self) -> str:
        """E.g. ``pruning at sparsity 0.5, 0.8 and int8 quantization of the ce, kd students``."""
        what = []
        if self.sparsities:
            what.append("pruning at sparsity " + ", ".join(f"{s:g}" for s in self.sparsities))
        if self.int8:
            what.append("int8 quantization")
        return f"{' and '.join(what)} of the {', '.join(self.methods)} students"


@dataclass(frozen=True)
class Checkpointing:
    """How often a running trial saves its resumable state (``checkpoint:``).

    Attributes:
        epochs: Every this many epochs (0: never by count).
        minutes: After any epoch that ends this many minutes after the last save (0: never).
    """

    epochs: int = CHECKPOINT_EVERY_EPOCHS
    minutes: float = CHECKPOINT_EVERY_MINUTES


@dataclass(frozen=True)
class Suite:
    """A validated suite. Build it with :func:`bench.suite.load.load_suite` or
    :func:`bench.suite.load.parse_suite`."""

    name: str
    experiment: str
    phase: Phase
    datasets: tuple[DatasetEntry, ...]
    pairs: tuple[Pair, ...]
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...]
    recipe: Recipe
    teacher_recipe: Recipe
    teacher_seed: int = 0
    val_fraction: float = 0.1
    resources: Resources = field(default_factory=Resources)
    teacher_resources: Resources = field(default_factory=Resources)
    budget: int | None = None
    max_failures: int = 3
    checkpoint: Checkpointing = field(default_factory=lambda: Checkpointing())
    plugins: tuple[str, ...] = ()
    #: Methods of ``methods:`` left unchecked and unplanned because the plugin files that may
    #: define them were not imported (a dry run); empty otherwise.
    unloaded_methods: tuple[str, ...] = ()
    description: str = ""
    study: Study | None = None
    compress: Compression | None = None
    leaderboard: LeaderboardAnchors | None = None
    path: str | None = field(default=None, compare=False)

    @property
    def metric(self) -> str:
        """What selects and ranks: validation accuracy when tuning, test accuracy in final."""
        return "val_acc" if self.phase == "tune" else "test_acc"

    @property
    def source(self) -> str:
        return self.path or f"<suite {self.name}>"

    def smoke(self) -> Suite:
        """The same suite cut to one seed, one configuration per method and one epoch (student
        and teacher), in its own experiment: a quick check that every trial can run."""
        return dataclasses.replace(
            self.with_recipes(epochs=1, warmup_epochs=0),
            experiment=f"{self.experiment}-smoke",
            seeds=self.seeds[:1],
            budget=1 if self.phase == "tune" else None,
        )

    def with_recipes(self, **changes: Any) -> Suite:
        """The same suite with ``changes`` (Recipe fields) applied to every recipe: the
        student's and the teacher's, the suite's and each pair's. Early-stopped teachers keep
        their stop epochs where the changed teacher recipe still has them, else stop at its
        last epoch.

        Raises:
            ConfigError: A change no recipe accepts (e.g. ``epochs=0``).
        """

        def changed(recipe: Recipe) -> Recipe:
            return dataclasses.replace(recipe, **changes)

        def changed_own(recipe: Recipe | None) -> Recipe | None:
            # A pair without a recipe of its own keeps following the suite's.
            return None if recipe is None else changed(recipe)

        teacher = changed(self.teacher_recipe)
        pairs = []
        for pair in self.pairs:
            own = changed_own(pair.teacher_recipe)
            epochs = (own or teacher).epochs
            stops = pair.teacher_epochs
            if stops:
                stops = tuple(sorted({min(e, epochs) for e in stops}))
            pairs.append(
                dataclasses.replace(
                    pair, recipe=changed_own(pair.recipe), teacher_recipe=own, teacher_epochs=stops
                )
            )
        return dataclasses.replace(
            self,
            recipe=changed(self.recipe),
            teacher_recipe=teacher,
            pairs=tuple(pairs),
        )

    def check_resources(self, node_types: Sequence[Mapping[str, float]], where: str) -> None:
        """Raise :class:`SuiteError` if a trial or teacher asks for more than every node type
        of ``node_types`` (Ray resource dicts) has.

        Args:
            node_types: Total resources of each kind of node that exists or can be started.
            where: What the nodes are, for the message ("this machine", "the cluster").
        """
        shown = "; ".join(_describe_node(n) for n in node_types) or "no nodes"
        problems = []
        requests = [("resources", self.resources), ("teacher_resources", self.teacher_resources)]
        requests += [
            (f"methods[{i}].resources", m.resources)
            for i, m in enumerate(self.methods)
            if m.resources is not None
        ]
        for path, request in requests:
            if not any(request.fits(node) for node in node_types):
                problems.append(
                    Problem(
                        path,
                        f"asks for {request.describe()} per trial, but no node of {where} "
                        f"has that much ({shown}). Lower the request or add a node type "
                        "that fits.",
                    )
                )
        if problems:
            raise SuiteError(self.source, problems)


def _describe_node(node: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(node.items()) if k in ("CPU", "GPU"))
