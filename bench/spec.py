"""Suites: ``leaderboards/<suite>/suite.yaml`` → frozen, typed, validated objects.

A suite file is data (``yaml.safe_load``; nothing in it executes). Everything is checked before
any work starts: unknown keys and names (with suggestions), wrong types, empty grids, parameters
a method does not have, and (given the nodes of a cluster) resources no node can satisfy. Every
problem is reported at once, each with its key path and line, e.g.
``suite.yaml:14: methods[3].params.temprature: unknown parameter … Did you mean 'temperature'?``

The schema (``leaderboards/digits/suite.yaml`` is a complete example)::

    name: digits                 # [A-Za-z0-9_.-]+; default: the suite's folder name
    description: free text
    experiment: digits           # MLflow experiment; default: the name
    phase: final                 # tune (selection on val) | final (fresh seeds, test)
    datasets: [digits]           # names, or {name, data_root, download}
    val_fraction: 0.1
    pairs:                       # teacher → student
      - {teacher: resnet20, student: resnet8}
      - {teacher: vgg8, student: mobile_half, teacher_checkpoint: ckpt/vgg8.pt}
      - teacher: vgg13           # a pair's own recipe, merged over the suite's (below)
        student: mobile_half
        recipe: {student: {lr: 0.01}}
      - {teacher: resnet20, student: resnet8, teacher_epochs: [1, 2, 4]}
                                 # early-stopped teachers: checkpoints of one teacher training
                                 # after 1, 2 and 4 of its recipe's epochs, one pair each
      - {teacher: resnet20, student: resnet8, student_checkpoint: ckpt/resnet8-pretrained.pt}
                                 # the student starts from a pretrained state dict (shapes that
                                 # differ, e.g. another classifier width, stay freshly drawn)
    methods:
      - ce                                   # the method's default params
      - {name: kd, params: {temperature: 4}} # fixed params
      - {name: dkd, search: {beta: [2, 8]}}  # phase tune only; ``search: default`` uses the
                                             # method's own ``search_space``
    seeds: 5                     # 0..4, or an explicit list [100, 101, …]
    recipe:
      student: {epochs: 30, batch_size: 64, lr: 0.05}   # any bench.config.Recipe field
      teacher: {epochs: 60}      # default: the student's recipe
      # transfer learning: student: {trainable: [head]} trains the classifier only (any other
      # entry is a parameter name prefix); the rest keeps its weights and BatchNorm statistics
    teacher_seed: 0
    resources: {cpu: 1, gpu: 0.25}          # per student trial (fractional GPUs pack)
    teacher_resources: {cpu: 4, gpu: 1}      # per teacher; default: ``resources``
    tune: {budget: 4}            # phase tune: configurations per method (equal budget)
    max_failures: 3              # retries of a trial whose worker or node died
    plugins: [my_method.py]      # method files to load, relative to the suite
    study: {parameter: temperature, method: kd, reference: 4.0}
                                 # optional: the leaderboard plots accuracy against this
                                 # method parameter, or against the teacher's training epochs
                                 # with {parameter: teacher_epoch}; reference: the setting
                                 # its "gain over kd" column compares with
    compress:                    # optional post-stage of the sweep (phase final only)
      methods: [ce, kd]          # whose students; default: every method of the suite
      sparsities: [0.5, 0.8]     # global magnitude pruning, each in (0, 1); may be left out
      int8: true                 # int8 post-training quantization; default false
                                 # after the trials, each finished student of these methods
                                 # is measured as fp32, pruned at each sparsity and int8
                                 # (`kdbench compress`), each variant an MLflow child run of
                                 # its trial; the leaderboard adds a Compression section

A method that uses no teacher (``ce``, self-distillation, online methods) runs once per
distinct student rather than once per pair: same config, same run key, one trial. The same
method may be listed several times with different params (a temperature study lists ``kd``
once per temperature); the leaderboard shows each setting as its own row.

The compression post-stage runs once per student: a sweep run again compresses only students
that have no record of a requested variant yet (see :mod:`bench.sweep.compress`).

A pair's ``recipe`` is merged over the suite's: its ``student`` fields over
``recipe.student``, its ``teacher`` fields over ``recipe.teacher`` (a pair's student override
does not change the teacher, which other pairs may share).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import random
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.config import (
    ConfigError,
    Phase,
    Recipe,
    TeacherSpec,
    TrialConfig,
    run_key,
    stable_hash,
)

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
    "plugins",
    "study",
    "compress",
)
REQUIRED_KEYS = ("datasets", "pairs", "methods", "seeds")
DATASET_KEYS = ("name", "data_root", "download")
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
TUNE_KEYS = ("budget",)
STUDY_KEYS = ("parameter", "method", "reference")
COMPRESS_KEYS = ("methods", "sparsities", "int8")
#: The study parameter that is the teacher's training epochs rather than a method parameter.
TEACHER_EPOCH = "teacher_epoch"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The typed suite
# --------------------------------------------------------------------------------------------


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
    """A dataset of the suite and where its files are."""

    name: str
    data_root: str | None = None
    download: bool = False


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
        params: Fixed hyperparameters, sorted by name.
        search: Parameter → candidate values, sorted by name (tune phase).
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
class PlannedTrial:
    """One student trial of a suite.

    Attributes:
        config: The trial.
        key: Its run key.
        resources: What it asks of a node.
        pairs: Labels of the suite pairs it serves (several for teacherless methods).
    """

    config: TrialConfig
    key: str
    resources: Resources
    pairs: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def pair(self) -> str:
        c = self.config
        return f"{teacher_label(c.teacher)}->{c.student}" if c.teacher else c.student

    @property
    def params_label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.config.params) or "defaults"

    def describe(self) -> str:
        c = self.config
        params = f" [{self.params_label}]" if c.params else ""
        return f"{c.method}{params} {c.dataset} {self.pair} seed {c.seed}"


@dataclass(frozen=True)
class TeacherJob:
    """A distinct teacher the suite's trials distil from."""

    dataset: DatasetEntry
    spec: TeacherSpec
    resources: Resources

    def describe(self) -> str:
        stop = f", checkpoint after epoch {self.spec.stop_epoch}" if self.spec.stop_epoch else ""
        return f"{self.spec.arch} on {self.dataset.name} (seed {self.spec.seed}{stop})"

    @property
    def epoch(self) -> int:
        """The epoch of its training whose checkpoint it is (the last unless early-stopped)."""
        return self.spec.stop_epoch or self.spec.recipe.epochs


def teacher_trainings(jobs: Sequence[TeacherJob]) -> list[tuple[TeacherJob, ...]]:
    """``jobs`` grouped by the training run that produces them, in order of first appearance:
    the early-stopped checkpoints of one teacher training form one group, sorted by epoch, so
    that a single training can keep them all."""
    groups: dict[tuple[str, TeacherSpec], list[TeacherJob]] = {}
    for job in jobs:
        run = (job.dataset.name, dataclasses.replace(job.spec, stop_epoch=None))
        groups.setdefault(run, []).append(job)
    return [tuple(sorted(group, key=lambda j: j.epoch)) for group in groups.values()]


def teacher_label(spec: TeacherSpec) -> str:
    """How a teacher is named in trial lists: its architecture, and ``@ep<k>`` for the
    checkpoint after epoch k of its training (the leaderboard names cells the same way)."""
    return f"{spec.arch}@ep{spec.stop_epoch}" if spec.stop_epoch else spec.arch


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

    def selects(self, trial: PlannedTrial) -> bool:
        """Whether ``trial``'s student is compressed."""
        return trial.method in self.methods

    def describe(self) -> str:
        """E.g. ``pruning at sparsity 0.5, 0.8 and int8 quantization of the ce, kd students``."""
        what = []
        if self.sparsities:
            what.append("pruning at sparsity " + ", ".join(f"{s:g}" for s in self.sparsities))
        if self.int8:
            what.append("int8 quantization")
        return f"{' and '.join(what)} of the {', '.join(self.methods)} students"


@dataclass(frozen=True)
class Suite:
    """A validated suite. Build it with :func:`load_suite` or :func:`parse_suite`."""

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
    plugins: tuple[str, ...] = ()
    description: str = ""
    study: Study | None = None
    compress: Compression | None = None
    path: str | None = field(default=None, compare=False)

    @property
    def metric(self) -> str:
        """What selects and ranks: validation accuracy when tuning, test accuracy in final."""
        return "val_acc" if self.phase == "tune" else "test_acc"

    @property
    def source(self) -> str:
        return self.path or f"<suite {self.name}>"

    def trials(self) -> tuple[PlannedTrial, ...]:
        """Every student trial: datasets × pairs × methods × configurations × seeds, one per
        run key, in that order."""
        from bench.plugins import get_method

        planned: dict[str, PlannedTrial] = {}
        for dataset, pair, entry in itertools.product(self.datasets, self.pairs, self.methods):
            method_cls = get_method(entry.name)
            teachers = self._teachers_of(pair) if method_cls.uses_teacher else [None]
            resources = entry.resources or self.resources
            combos = itertools.product(teachers, entry.configurations(self.budget), self.seeds)
            for teacher, params, seed in combos:
                config = TrialConfig(
                    dataset=dataset.name,
                    student=pair.student,
                    method=entry.name,
                    params=tuple(params.items()),
                    seed=seed,
                    recipe=pair.recipe or self.recipe,
                    teacher=teacher,
                    phase=self.phase,
                    val_fraction=self.val_fraction,
                    data_root=dataset.data_root,
                    download=dataset.download,
                    student_checkpoint=pair.student_checkpoint,
                )
                key = run_key(config, method_cls.version)
                label = f"{teacher_label(teacher)}->{pair.student}" if teacher else pair.label
                if key in planned:
                    known = planned[key]
                    if label not in known.pairs:
                        planned[key] = dataclasses.replace(known, pairs=(*known.pairs, label))
                else:
                    planned[key] = PlannedTrial(config, key, resources, (label,))
        return tuple(planned.values())

    def _teachers_of(self, pair: Pair) -> list[TeacherSpec]:
        """The teacher of a pair, or one early-stopped checkpoint per ``teacher_epochs``."""
        base = TeacherSpec(
            arch=pair.teacher,
            recipe=pair.teacher_recipe or self.teacher_recipe,
            seed=self.teacher_seed,
            checkpoint=pair.teacher_checkpoint,
        )
        if not pair.teacher_epochs:
            return [base]
        return [dataclasses.replace(base, stop_epoch=e) for e in pair.teacher_epochs]

    def teachers(self, trials: Sequence[PlannedTrial] | None = None) -> list[TeacherJob]:
        """The distinct teachers that ``trials`` (default: all) distil from, in order."""
        datasets = {d.name: d for d in self.datasets}
        jobs: dict[tuple[str, TeacherSpec], TeacherJob] = {}
        for trial in self.trials() if trials is None else trials:
            teacher = trial.config.teacher
            if teacher is None:
                continue
            ident = (trial.config.dataset, teacher)
            if ident not in jobs:
                dataset = datasets[trial.config.dataset]
                jobs[ident] = TeacherJob(dataset, teacher, self.teacher_resources)
        return list(jobs.values())

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

        def changed(recipe: Recipe | None) -> Recipe | None:
            return None if recipe is None else dataclasses.replace(recipe, **changes)

        teacher = changed(self.teacher_recipe)
        pairs = []
        for pair in self.pairs:
            own = changed(pair.teacher_recipe)
            epochs = (own or teacher).epochs
            stops = pair.teacher_epochs
            if stops:
                stops = tuple(sorted({min(e, epochs) for e in stops}))
            pairs.append(
                dataclasses.replace(
                    pair, recipe=changed(pair.recipe), teacher_recipe=own, teacher_epochs=stops
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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def suite_path(path: str | Path) -> Path:
    """A suite file from a path to the file or to its folder (``leaderboards/digits``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / SUITE_FILE
    if not path.is_file():
        raise SuiteError(
            str(path), [Problem("", "no such suite file (give a suite.yaml or its folder)")]
        )
    return path


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (or the ``suite.yaml`` in a folder).

    Raises:
        SuiteError: listing every problem with its key path and line.
    """
    file = suite_path(path)
    return parse_suite(file.read_text(), source=str(file), base=file.parent)


def parse_suite(text: str, *, source: str = "<suite>", base: Path | None = None) -> Suite:
    """Validate suite YAML text.

    Args:
        text: The YAML.
        source: Its file name, for messages.
        base: Folder that relative paths (checkpoints, data roots, plugins) are relative to.

    Raises:
        SuiteError: listing every problem with its key path and line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(source, [Problem("", f"not valid YAML: {reason}", line)]) from None
    checker = _Checker(source, root, base or Path.cwd())
    suite = checker.suite(data, default_name=_default_name(source))
    if checker.problems or suite is None:
        raise SuiteError(source, checker.problems)
    try:
        trials = suite.trials()
    except ConfigError as exc:
        raise SuiteError(source, [Problem("", str(exc))]) from None
    if not trials:
        raise SuiteError(source, [Problem("", "the suite expands to no trials")])
    return dataclasses.replace(suite, path=source if base else None)


def _default_name(source: str) -> str:
    path = Path(source)
    name = path.parent.name if path.name == SUITE_FILE else path.stem
    return name if NAME_PATTERN.match(name or "") else "suite"


class _Checker:
    """Walks the parsed YAML, collecting every problem, and builds the typed suite."""

    def __init__(self, source: str, root: yaml.Node | None, base: Path) -> None:
        self.source = source
        self.root = root
        self.base = base
        self.problems: list[Problem] = []
        if root is not None:
            self._find_duplicate_keys(root, ())

    # -- reporting ---------------------------------------------------------------------------

    def fail(self, path: tuple, message: str) -> None:
        self.problems.append(Problem(_render_path(path), message, self._line(path)))

    def _line(self, path: tuple) -> int | None:
        node = self.root
        for depth, part in enumerate(path):
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == part]
                if not match:
                    break
                key, value = match[-1]
                # An error about a key points at the key; one about a value at the value.
                node = key if depth == len(path) - 1 else value
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
            else:
                break
        return node.start_mark.line + 1 if node is not None else None

    def _find_duplicate_keys(self, node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if key.value in seen:
                    self.problems.append(
                        Problem(
                            _render_path((*path, key.value)),
                            "key given twice; YAML would silently keep the last one",
                            key.start_mark.line + 1,
                        )
                    )
                seen.add(key.value)
                self._find_duplicate_keys(value, (*path, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._find_duplicate_keys(item, (*path, i))

    # -- generic checks ----------------------------------------------------------------------

    def mapping(
        self, value: Any, path: tuple, keys: Sequence[str], what: str = "key"
    ) -> dict | None:
        """``value`` as a mapping whose keys are all in ``keys`` (unknown ones reported)."""
        if not isinstance(value, dict):
            self.fail(path, f"expected a mapping with keys {', '.join(keys)}; got {_kind(value)}")
            return None
        for key in value:
            if key not in keys:
                self.fail((*path, key), _unknown(what, str(key), keys))
        return value

    def typed(self, value: Any, tp: Any, path: tuple) -> bool:
        if _matches(value, tp):
            return True
        self.fail(path, f"expected {_type_text(tp)}, got {value!r} ({_kind(value)})")
        return False

    def nonempty_list(self, value: Any, path: tuple, what: str) -> list | None:
        if isinstance(value, str | dict) or not isinstance(value, list):
            self.fail(path, f"expected a list of {what}; got {_kind(value)}")
            return None
        if not value:
            self.fail(path, f"empty: the grid needs at least one {what.rstrip('s')}")
            return None
        return value

    def local_path(self, value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (self.base / path).resolve())

    # -- sections ----------------------------------------------------------------------------

    def suite(self, data: Any, default_name: str) -> Suite | None:
        top = self.mapping(data, (), TOP_KEYS) if data is not None else None
        if top is None:
            if data is None:
                self.fail((), "the suite file is empty")
            return None
        unknown = [str(k) for k in top if k not in TOP_KEYS]
        for key in REQUIRED_KEYS:
            misspelt = any(difflib.get_close_matches(u, [key], n=1, cutoff=0.6) for u in unknown)
            if key not in top and not misspelt:  # a misspelt key was already reported
                self.fail((), f"missing required key {key!r}")
        name = self.name(top.get("name", default_name))
        phase = top.get("phase", "final")
        if phase not in ("tune", "final"):
            self.fail(("phase",), _unknown("phase", str(phase), ("tune", "final")))
        plugins = self.plugins(top.get("plugins", []))
        datasets = self.datasets(top["datasets"]) if "datasets" in top else None
        student, teacher = self.recipes(top.get("recipe", {}))
        pairs = self.pairs(top["pairs"]) if "pairs" in top else None
        methods = self.methods(top["methods"], phase) if "methods" in top else None
        seeds = self.seeds(top["seeds"]) if "seeds" in top else None
        study = self.study(top["study"], methods, pairs) if "study" in top else None
        compress = self.compress(top["compress"], methods, phase) if "compress" in top else None
        budget = self.budget(top.get("tune"), phase, methods)
        scalars = {
            "description": (str, ""),
            "experiment": (str, name),
            "teacher_seed": (int, 0),
            "val_fraction": (float, 0.1),
            "max_failures": (int, 3),
        }
        values = {}
        for key, (tp, default) in scalars.items():
            value = top.get(key, default)
            values[key] = value if self.typed(value, tp, (key,)) else default
        if not 0 < values["val_fraction"] < 1:
            self.fail(("val_fraction",), f"must be in (0, 1), got {values['val_fraction']}")
        if values["teacher_seed"] < 0 or values["max_failures"] < 0:
            key = "teacher_seed" if values["teacher_seed"] < 0 else "max_failures"
            self.fail((key,), f"must be ≥ 0, got {values[key]}")
        if values["experiment"] is not None and not str(values["experiment"]).strip():
            self.fail(("experiment",), "must be a non-empty MLflow experiment name")
        resources = self.resources(top.get("resources", {}), ("resources",)) or Resources()
        teacher_resources = (
            self.resources(top["teacher_resources"], ("teacher_resources",))
            if "teacher_resources" in top
            else resources
        ) or resources
        if self.problems or None in (datasets, pairs, methods, seeds, student, teacher):
            return None
        return Suite(
            name=name,
            experiment=values["experiment"],
            phase=phase,
            datasets=datasets,
            pairs=pairs,
            methods=methods,
            seeds=seeds,
            recipe=student,
            teacher_recipe=teacher,
            teacher_seed=values["teacher_seed"],
            val_fraction=float(values["val_fraction"]),
            resources=resources,
            teacher_resources=teacher_resources,
            budget=budget,
            max_failures=values["max_failures"],
            plugins=plugins,
            description=values["description"],
            study=study,
            compress=compress,
        )

    def name(self, value: Any) -> str:
        if not isinstance(value, str) or not NAME_PATTERN.match(value):
            self.fail(
                ("name",), f"expected a name of letters, digits, '_', '.', '-'; got {value!r}"
            )
            return "suite"
        return value

    def plugins(self, value: Any) -> tuple[str, ...]:
        from bench.plugins import load_plugin_file

        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(("plugins",), f"expected a list of .py files; got {value!r}")
            return ()
        out = []
        for i, item in enumerate(value):
            path = self.local_path(item)
            try:
                load_plugin_file(path)
            except (FileNotFoundError, ImportError) as exc:
                self.fail(("plugins", i), str(exc))
                continue
            out.append(path)
        return tuple(out)

    def datasets(self, value: Any) -> tuple[DatasetEntry, ...] | None:
        from bench.data import DATASETS

        items = self.nonempty_list(value, ("datasets",), "datasets")
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            path = ("datasets", i)
            if isinstance(item, str):
                item = {"name": item}
            entry = self.mapping(item, path, DATASET_KEYS)
            if entry is None:
                continue
            name = entry.get("name")
            if not self.typed(name, str, (*path, "name")):
                continue
            if name not in DATASETS:
                self.fail(path, _unknown("dataset", name, DATASETS.names()))
                continue
            root = entry.get("data_root")
            download = entry.get("download", False)
            ok = self.typed(root, str | None, (*path, "data_root"))
            ok &= self.typed(download, bool, (*path, "download"))
            if ok:
                out.append(DatasetEntry(name, self.local_path(root) if root else None, download))
        return self.unique(out, ("datasets",), "dataset")

    def pairs(self, value: Any) -> tuple[Pair, ...] | None:
        items = self.nonempty_list(value, ("pairs",), "pairs")
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            path = ("pairs", i)
            entry = self.mapping(item, path, PAIR_KEYS)
            if entry is None:
                continue
            missing = [role for role in ("teacher", "student") if role not in entry]
            for role in missing:
                self.fail(path, f"missing {role!r} (a pair is {{teacher: …, student: …}})")
            if missing:
                continue
            names = [entry.get("teacher"), entry.get("student")]
            if not all(
                self.typed(entry.get(role), str, (*path, role)) for role in ("teacher", "student")
            ):
                continue
            if not all(
                self.model(n, (*path, r))
                for n, r in zip(names, ("teacher", "student"), strict=True)
            ):
                continue
            checkpoint = self.checkpoint(entry.get("teacher_checkpoint"), path, "teacher")
            student_checkpoint = self.checkpoint(entry.get("student_checkpoint"), path, "student")
            epochs = self.teacher_epochs(entry.get("teacher_epochs"), (*path, "teacher_epochs"))
            recipes = self.pair_recipes(entry.get("recipe"), (*path, "recipe"))
            if checkpoint is False or student_checkpoint is False or epochs is False:
                continue
            if recipes is None:
                continue
            student_recipe, teacher_recipe = recipes
            if epochs and checkpoint:
                self.fail(
                    (*path, "teacher_epochs"),
                    "early-stopped teachers are checkpoints of a teacher kdbench trains; a "
                    "pair with teacher_checkpoint loads a finished one. Drop one of the two.",
                )
                continue
            if epochs:
                last = (teacher_recipe or self.teacher_recipe).epochs
                late = [e for e in epochs if e > last]
                if late:
                    self.fail(
                        (*path, "teacher_epochs"),
                        f"epochs {late} are past the teacher's {last} training epochs; raise "
                        "recipe.teacher.epochs or drop them",
                    )
                    continue
            out.append(
                Pair(
                    names[0],
                    names[1],
                    checkpoint,
                    recipe=student_recipe,
                    teacher_recipe=teacher_recipe,
                    teacher_epochs=epochs,
                    student_checkpoint=student_checkpoint,
                )
            )
        return self.unique(out, ("pairs",), "pair")

    def checkpoint(self, value: Any, path: tuple, role: str) -> str | bool | None:
        """A pair's checkpoint file as an absolute path; None when not given; False (after
        reporting) when it is not a string or no such file exists."""
        key = f"{role}_checkpoint"
        if not self.typed(value, str | None, (*path, key)):
            return False
        if value is None:
            return None
        checkpoint = self.local_path(value)
        if not Path(checkpoint).is_file():
            self.fail((*path, key), f"no such file: {checkpoint}")
            return False
        return checkpoint

    def teacher_epochs(self, value: Any, path: tuple) -> tuple[int, ...] | bool | None:
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            self.fail(path, f"expected a non-empty list of epochs, e.g. [1, 2, 4]; got {value!r}")
            return False
        if not all(self.typed(e, int, (*path, i)) for i, e in enumerate(value)):
            return False
        if any(e < 1 for e in value) or len(set(value)) != len(value):
            self.fail(path, f"epochs must be distinct and ≥ 1, got {value}")
            return False
        return tuple(sorted(value))

    def pair_recipes(self, value: Any, path: tuple) -> tuple[Recipe | None, Recipe | None] | None:
        """A pair's (student, teacher) recipes merged over the suite's; (None, None) when the
        pair has no recipe of its own; None after reporting a problem."""
        if value is None:
            return None, None
        entry = self.mapping(value, path, RECIPE_KEYS)
        if entry is None:
            return None
        base_student, base_teacher = self.recipe_values_seen
        if base_student is None or base_teacher is None:
            return None  # the suite's own recipe is broken; reported there
        student = teacher = None
        if "student" in entry:
            own = self.recipe_values(entry["student"], (*path, "student"))
            if own is None:
                return None
            student = self.build_recipe({**base_student, **own}, (*path, "student"))
            if student is None:
                return None
        if "teacher" in entry:
            own = self.recipe_values(entry["teacher"], (*path, "teacher"))
            if own is None or not self.teacher_recipe_ok(own, (*path, "teacher")):
                return None
            teacher = self.build_recipe({**base_teacher, **own}, (*path, "teacher"))
            if teacher is None:
                return None
        return student, teacher

    def teacher_recipe_ok(self, values: dict[str, Any], path: tuple) -> bool:
        if values.get("trainable"):
            self.fail(
                (*path, "trainable"),
                "teachers train every layer; freezing applies to students only (give a "
                "fine-tuned teacher as teacher_checkpoint, or move trainable to the student)",
            )
            return False
        return True

    def study(
        self, value: Any, methods: Sequence[MethodEntry] | None, pairs: Sequence[Pair] | None
    ) -> Study | None:
        entry = self.mapping(value, ("study",), STUDY_KEYS)
        if entry is None or methods is None or pairs is None:
            return None
        parameter = entry.get("parameter")
        method = entry.get("method", "kd")
        if not self.typed(parameter, str, ("study", "parameter")):
            return None
        if not self.typed(method, str, ("study", "method")):
            return None
        listed = [m for m in methods if m.name == method]
        if not listed:
            self.fail(
                ("study", "method"),
                _unknown("method of this suite", method, sorted({m.name for m in methods})),
            )
            return None
        if parameter == TEACHER_EPOCH:
            if not any(p.teacher_epochs for p in pairs):
                self.fail(
                    ("study", "parameter"),
                    "a teacher_epoch study needs a pair with teacher_epochs: [...]",
                )
                return None
            return Study(parameter, method)
        from bench.plugins import get_method

        fields = get_method(method).Params.fields()
        if parameter not in fields:
            self.fail(
                ("study", "parameter"),
                _unknown(f"parameter of {method}", parameter, [*fields, TEACHER_EPOCH]),
            )
            return None
        varied = {dict(m.params).get(parameter) for m in listed}
        varied |= {v for m in listed for k, vs in m.search if k == parameter for v in vs}
        reference = entry.get("reference")
        if reference is not None and reference not in varied:
            self.fail(
                ("study", "reference"),
                f"{reference!r} is not one of the {parameter} values the suite runs "
                f"({', '.join(map(str, sorted(v for v in varied if v is not None)))})",
            )
            return None
        if len(varied) < 2:
            self.fail(
                ("study", "parameter"),
                f"{method} is listed with one value of {parameter}; list it once per value "
                f"(- {{name: {method}, params: {{{parameter}: …}}}}) to study it",
            )
            return None
        return Study(parameter, method)

    def compress(
        self, value: Any, methods: Sequence[MethodEntry] | None, phase: Any
    ) -> Compression | None:
        path = ("compress",)
        entry = self.mapping(value, path, COMPRESS_KEYS)
        if entry is None or methods is None:
            return None
        if phase == "tune":
            self.fail(
                path,
                "compression measures test accuracy, which a tune suite never looks at; "
                "compress the students of the final suite",
            )
            return None
        known = list(dict.fromkeys(m.name for m in methods))
        chosen = self.compress_methods(entry.get("methods", known), known)
        sparsities = self.sparsities(entry.get("sparsities", []))
        int8 = entry.get("int8", False)
        if not self.typed(int8, bool, (*path, "int8")) or None in (chosen, sparsities):
            return None
        if not sparsities and not int8:
            self.fail(
                path,
                "nothing to do: give sparsities: [0.5, …] (global magnitude pruning) and/or "
                "int8: true",
            )
            return None
        return Compression(chosen, sparsities, int8)

    def compress_methods(self, value: Any, known: list[str]) -> tuple[str, ...] | None:
        path = ("compress", "methods")
        if value == []:
            self.fail(path, "empty: leave methods out to compress the students of every method")
            return None
        items = self.nonempty_list(value, path, "methods")
        if items is None or not all(self.typed(m, str, (*path, i)) for i, m in enumerate(items)):
            return None
        unknown = [(i, m) for i, m in enumerate(items) if m not in known]
        for i, name in unknown:
            self.fail((*path, i), _unknown("method of this suite", name, known))
        if unknown:
            return None
        return self.unique(items, path, "method")

    def sparsities(self, value: Any) -> tuple[float, ...] | None:
        path = ("compress", "sparsities")
        if not isinstance(value, list):
            self.fail(
                path, f"expected a list of sparsities in (0, 1), e.g. [0.5, 0.8]; got {value!r}"
            )
            return None
        if not all(self.typed(s, float, (*path, i)) for i, s in enumerate(value)):
            return None
        outside = [(i, s) for i, s in enumerate(value) if not 0 < s < 1]
        for i, sparsity in outside:
            self.fail(
                (*path, i),
                f"{sparsity} is not in (0, 1): a sparsity is the share of weights set to zero "
                "(0.5 prunes half of them)",
            )
        if outside:
            return None
        unique = self.unique([float(s) for s in value], path, "sparsity")
        return None if unique is None else tuple(sorted(unique))

    def model(self, name: str, path: tuple) -> bool:
        from bench.models import resolve
        from bench.registry import UnknownNameError

        try:
            resolve(name)
        except UnknownNameError as exc:
            hint = (
                f" Did you mean {' or '.join(map(repr, exc.suggestions))}?"
                if exc.suggestions
                else ""
            )
            self.fail(path, f"unknown model {name!r}.{hint} See `kdbench ls models`.")
            return False
        return True

    def methods(self, value: Any, phase: Any) -> tuple[MethodEntry, ...] | None:
        from bench.plugins import get_method
        from bench.registry import RegistryError

        items = self.nonempty_list(value, ("methods",), "methods")
        if items is None:
            return None
        out = []
        for i, item in enumerate(items):
            path = ("methods", i)
            if isinstance(item, str):
                item = {"name": item}
            entry = self.mapping(item, path, METHOD_KEYS)
            if entry is None:
                continue
            name = entry.get("name")
            if not self.typed(name, str, (*path, "name")):
                continue
            try:
                cls = get_method(name)
            except RegistryError as exc:
                suggestions = getattr(exc, "suggestions", None)
                if suggestions is not None:
                    hint = (
                        f" Did you mean {' or '.join(map(repr, suggestions))}?"
                        if suggestions
                        else ""
                    )
                    self.fail(
                        (*path, "name"), f"unknown method {name!r}.{hint} See `kdbench ls methods`."
                    )
                else:
                    self.fail((*path, "name"), str(exc))
                continue
            params = self.params(cls, entry.get("params", {}), (*path, "params"))
            search = self.search(cls, entry.get("search"), (*path, "search"), phase)
            resources = (
                self.resources(entry["resources"], (*path, "resources"))
                if "resources" in entry
                else None
            )
            if params is None or search is None:
                continue
            overlap = sorted(set(params) & {k for k, _ in search})
            if overlap:
                self.fail(path, f"{', '.join(overlap)} both fixed in params and searched; pick one")
                continue
            out.append(
                MethodEntry(
                    name=name,
                    params=tuple(sorted(params.items())),
                    search=search,
                    resources=resources,
                )
            )
        return self.unique(out, ("methods",), "method entry")

    def params(self, cls: type, value: Any, path: tuple) -> dict[str, Any] | None:
        fields = cls.Params.fields()
        entry = self.mapping(value, path, tuple(fields), f"parameter of {cls.name}")
        if entry is None:
            return None
        ok = True
        out = {}
        for key, raw in entry.items():
            if key in fields and self.typed(raw, fields[key], (*path, key)):
                out[key] = _frozen(raw)
            else:
                ok = False
        return out if ok else None

    def search(
        self, cls: type, value: Any, path: tuple, phase: Any
    ) -> tuple[tuple[str, tuple[Any, ...]], ...] | None:
        if value is None:
            return ()
        if phase != "tune":
            self.fail(
                path,
                "search spaces belong to phase: tune; a final suite runs fixed params "
                "(put the chosen values in params)",
            )
            return None
        if value == "default":
            space = cls.search_space
            if not space:
                self.fail(path, f"method {cls.name!r} declares no search_space; give one here")
                return None
            value = {k: list(v) for k, v in space.items()}
        fields = cls.Params.fields()
        entry = self.mapping(value, path, tuple(fields), f"parameter of {cls.name}")
        if entry is None:
            return None
        out = []
        for key, candidates in entry.items():
            if key not in fields:
                continue
            where = (*path, key)
            if not isinstance(candidates, list) or not candidates:
                self.fail(
                    where, f"expected a non-empty list of candidate values; got {candidates!r}"
                )
                continue
            if all(self.typed(c, fields[key], where) for c in candidates):
                out.append((key, tuple(_frozen(c) for c in candidates)))
        if len(out) != len(entry):
            return None
        if not out:
            self.fail(path, "empty search space: give at least one parameter with candidates")
            return None
        return tuple(sorted(out))

    def seeds(self, value: Any) -> tuple[int, ...] | None:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                self.fail(("seeds",), f"expected a count ≥ 1 or a list of seeds; got {value}")
                return None
            return tuple(range(value))
        items = self.nonempty_list(value, ("seeds",), "seeds")
        if items is None:
            return None
        if not all(self.typed(s, int, ("seeds", i)) for i, s in enumerate(items)):
            return None
        if any(s < 0 for s in items):
            self.fail(("seeds",), f"seeds must be ≥ 0; got {items}")
            return None
        return self.unique(items, ("seeds",), "seed")

    def recipes(self, value: Any) -> tuple[Recipe | None, Recipe | None]:
        """The suite's (student, teacher) recipes; the values behind them are kept for the
        pairs' own recipes, which merge over them."""
        self.recipe_values_seen: tuple[dict | None, dict | None] = (None, None)
        self.teacher_recipe: Recipe = Recipe()
        entry = self.mapping(value, ("recipe",), RECIPE_KEYS)
        if entry is None:
            return None, None
        student_values = self.recipe_values(entry.get("student", {}), ("recipe", "student"))
        teacher_values = self.recipe_values(entry.get("teacher", {}), ("recipe", "teacher"))
        if teacher_values is not None and not self.teacher_recipe_ok(
            teacher_values, ("recipe", "teacher")
        ):
            teacher_values = None
        student = teacher = None
        if student_values is not None:
            student = self.build_recipe(student_values, ("recipe", "student"))
            if student is not None and teacher_values is not None:
                # The teacher inherits the student's fields, but never its frozen layers, nor
                # the stream its augmentation is shared across student trials by.
                inherited = {
                    k: v for k, v in student_values.items() if k not in STUDENT_ONLY_RECIPE_KEYS
                }
                merged = {**inherited, **teacher_values}
                teacher = self.build_recipe(merged, ("recipe", "teacher"))
                if teacher is not None:
                    self.recipe_values_seen = (student_values, merged)
                    self.teacher_recipe = teacher
        return student, teacher

    def recipe_values(self, value: Any, path: tuple) -> dict[str, Any] | None:
        hints = typing.get_type_hints(Recipe)
        entry = self.mapping(value, path, tuple(hints), "recipe field")
        if entry is None:
            return None
        ok = all(
            key in hints and self.typed(v, hints[key], (*path, key)) for key, v in entry.items()
        )
        return {k: _frozen(v) for k, v in entry.items()} if ok else None

    def build_recipe(self, values: dict[str, Any], path: tuple) -> Recipe | None:
        try:
            return Recipe(**values)
        except ConfigError as exc:
            self.fail(path, str(exc))
            return None

    def resources(self, value: Any, path: tuple) -> Resources | None:
        entry = self.mapping(value, path, RESOURCE_KEYS)
        if entry is None:
            return None
        cpu, gpu = entry.get("cpu", 1.0), entry.get("gpu", 0.0)
        if not (self.typed(cpu, float, (*path, "cpu")) & self.typed(gpu, float, (*path, "gpu"))):
            return None
        if cpu <= 0:
            self.fail((*path, "cpu"), f"must be > 0, got {cpu}")
            return None
        if gpu < 0 or (gpu > 1 and not float(gpu).is_integer()):
            self.fail(
                (*path, "gpu"),
                f"must be a fraction in [0, 1] or a whole number of GPUs, got {gpu} "
                "(Ray cannot split a trial across part of a second card)",
            )
            return None
        return Resources(float(cpu), float(gpu))

    def budget(self, value: Any, phase: Any, methods: Sequence[MethodEntry] | None) -> int | None:
        if phase != "tune":
            if value is not None:
                self.fail(("tune",), "only phase: tune takes a tune section")
            return None
        if value is None:
            self.fail(
                (),
                "phase: tune needs tune: {budget: N}, the number of configurations every "
                "method gets (an equal budget keeps the comparison fair)",
            )
            return None
        entry = self.mapping(value, ("tune",), TUNE_KEYS)
        if entry is None:
            return None
        budget = entry.get("budget")
        if not self.typed(budget, int, ("tune", "budget")):
            return None
        if budget < 1:
            self.fail(("tune", "budget"), f"must be ≥ 1, got {budget}")
            return None
        return budget

    def unique(self, items: list, path: tuple, what: str) -> tuple | None:
        seen = set()
        for i, item in enumerate(items):
            if item in seen:
                self.fail((*path, i), f"duplicate {what}: {item!r} is listed twice")
                return None
            seen.add(item)
        return tuple(items)


# --------------------------------------------------------------------------------------------
# Strict type checks (YAML values are never parsed from strings)
# --------------------------------------------------------------------------------------------


def _matches(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None) or tp is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, list | tuple):
            return False
        inner = args[0] if args else Any
        return all(_matches(v, inner) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list, Sequence):
        return f"a list of {_type_text(args[0]) if args else 'values'}"
    if tp is type(None):
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


def _frozen(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


def _unknown(kind: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    listed = ", ".join(list(known)[:30])
    return f"unknown {kind} {name!r}.{hint} Known: {listed}."


def _render_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
