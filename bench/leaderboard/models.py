"""The Models section: what a leaderboard's teachers and students cost at inference.

One row per distinct (architecture, input shape, classes) among the teachers and students of
the board's cells: parameters, FLOPs and CPU latency at batch 1 and 64, measured by
:func:`bench.analysis.profile.profile_model` on a model built by
:func:`bench.models.create_model` with random weights (the cost does not depend on them).
Every method of a cell distils into the same student, so these costs belong to models, not
to methods.

Timing is slow and depends on the machine, so the profiles are kept in the suite folder's
``models.csv`` and reused while it has a row for the same model, input shape and classes;
``kdbench leaderboard --reprofile`` measures every model again. Its columns:

===================  ==========================================================================
column               meaning
===================  ==========================================================================
model                architecture (a teacher's ``@ep<k>`` checkpoint label dropped)
input_size           one input as ``CxHxW``, e.g. ``3x16x16``
num_classes          classifier width
params               parameters (buffers excluded)
flops                FLOPs of one forward pass on one input (multiply-add = 2)
latency_ms_batch1    median CPU latency of one forward pass at batch 1, in milliseconds
latency_ms_batch64   the same at batch 64
threads              torch threads during the timing
repeats              timed passes per batch size (the median is kept)
warmup               untimed passes before them
cpu                  the CPU's model name
torch                the torch version
datasets             the board's datasets with this input shape, ``name`` or ``name@size``
                     (the image size the runs resized to), so a rebuild finds the shape
                     without the data
===================  ==========================================================================

The input shape of a run is its dataset's at the run's ``image_size`` (results.csv), found
through :func:`bench.data.load_dataset` unless models.csv already names the dataset. A model
whose dataset or architecture cannot be loaded here is listed with its reason and no cost.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from bench.leaderboard import formatting as fmt
from bench.leaderboard.runs import LeaderboardError
from bench.registry import RegistryError, UnknownNameError
from bench.textfile import not_utf8

MODELS_FILE = "models.csv"
BATCH_SIZES = (1, 64)
#: Timed passes per batch size: the digits board's four models take about a second in all.
REPEATS = 10
WARMUP = 3
#: One thread: latencies comparable across machines with different core counts and steady
#: while other jobs use the other cores.
THREADS = 1

COLUMNS: tuple[str, ...] = (
    "model",
    "input_size",
    "num_classes",
    "params",
    "flops",
    *(f"latency_ms_batch{b}" for b in BATCH_SIZES),
    "threads",
    "repeats",
    "warmup",
    "cpu",
    "torch",
    "datasets",
)

ROLE_ORDER = ("teacher", "student")

Shape = tuple[tuple[int, int, int], int]


@dataclass(frozen=True)
class Profile:
    """One row of models.csv: a model's cost on one input shape, and how it was measured."""

    model: str
    input_size: tuple[int, int, int]
    num_classes: int
    params: int
    flops: int
    latency_ms: dict[int, float]
    threads: int
    repeats: int
    warmup: int
    cpu: str
    torch: str
    datasets: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, tuple[int, int, int], int]:
        return (self.model, self.input_size, self.num_classes)

    @property
    def method_text(self) -> str:
        """How the latency was measured, as the measurement line words it."""
        return (
            f"the median of {self.repeats} timed passes after {self.warmup} warm-up ones, "
            f"{self.threads} torch thread{'s' if self.threads != 1 else ''}, on {self.cpu} "
            f"with torch {self.torch}"
        )


@dataclass(frozen=True)
class ModelRow:
    """One row of the Models section.

    Attributes:
        model: Architecture.
        roles: ``teacher`` and/or ``student``, in that order.
        datasets: Where the board uses it, as ``name`` or ``name@size``.
        profile: Its cost, or None when it could not be measured.
        teacher_acc: (teacher label, mean teacher test accuracy in points) per dataset and
            checkpoint it teaches from; empty for students.
        problem: Why there is no profile ("" when there is one).
    """

    model: str
    roles: tuple[str, ...]
    datasets: tuple[str, ...]
    profile: Profile | None
    teacher_acc: tuple[tuple[str, float], ...] = ()
    problem: str = ""


@dataclass(frozen=True)
class ModelsTable:
    """The Models section of a board.

    Attributes:
        rows: One per distinct model, input shape and classes (or per model and dataset when
            the shape is unknown); teachers first.
        cells: (dataset, teacher, student) of each cell → (teacher row, student row).
        profiles: What models.csv holds after this build.
    """

    rows: tuple[ModelRow, ...]
    cells: dict[tuple[str, str, str], tuple[ModelRow | None, ModelRow | None]]
    profiles: tuple[Profile, ...] = field(default=())

    def pair(self, cell: Sequence[str]) -> tuple[ModelRow | None, ModelRow | None]:
        """(teacher row, student row) of a cell (dataset, teacher, student)."""
        return self.cells.get(tuple(cell), (None, None))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Use:
    """A model as the runs use it."""

    model: str
    role: str
    dataset: str
    image_size: int | None

    @property
    def token(self) -> str:
        """``dataset`` or ``dataset@size``, as models.csv's datasets column names it."""
        return self.dataset if self.image_size is None else f"{self.dataset}@{self.image_size}"


def model_costs(
    runs: pd.DataFrame,
    folder: str | Path,
    *,
    phase: str,
    reprofile: bool = False,
    data_root: str | Path | None = None,
    repeats: int = REPEATS,
) -> ModelsTable:
    """The Models section of a board, reusing ``folder``'s models.csv.

    Args:
        runs: The runs table the board was built from.
        folder: The suite folder (its models.csv is read, not written).
        phase: The board's phase; its runs name the models.
        reprofile: Ignore models.csv and measure every model again.
        data_root: Where on-disk datasets live, for input shapes models.csv does not know.
        repeats: Timed passes per batch size of a model measured now.

    Returns:
        The table; write ``table.profiles`` with :func:`write_models_csv`.

    Raises:
        LeaderboardError: models.csv exists but cannot be read.
    """
    cached = [] if reprofile else read_models_csv(Path(folder) / MODELS_FILE)
    chosen = runs[runs["phase"] == phase]
    uses, cell_uses = _uses(chosen)
    shapes, problems = _shapes({(u.dataset, u.image_size) for u in uses}, cached, data_root)

    def key_of(use: _Use) -> tuple:
        """The profile's key (model, input size, classes), or (model, token) when the input
        shape is unknown."""
        shape = shapes[(use.dataset, use.image_size)]
        return (use.model, *shape) if shape is not None else (use.model, use.token)

    groups: dict[tuple, list[_Use]] = defaultdict(list)
    for use in uses:
        groups[key_of(use)].append(use)
    profiled = {p.key: p for p in cached}
    shaped = [k for k in groups if len(k) == 3]  # (model, input size, classes)
    missing = [k for k in shaped if k not in profiled]
    measured, failed = _measure(missing, repeats) if missing else ({}, {})
    profiled.update(measured)
    profiles = {
        k: replace(profiled[k], datasets=tuple(sorted({u.token for u in groups[k]})))
        for k in shaped
        if k in profiled
    }
    accuracy = _teacher_accuracy(chosen)
    rows = {}
    for key, group in groups.items():
        first = group[0]
        rows[key] = ModelRow(
            model=first.model,
            roles=tuple(r for r in ROLE_ORDER if any(u.role == r for u in group)),
            datasets=tuple(sorted({u.token for u in group})),
            profile=profiles.get(key),
            teacher_acc=_accuracy_of(group, accuracy),
            problem=""
            if key in profiles
            else failed.get(key) or problems.get((first.dataset, first.image_size), ""),
        )
    cells: dict[tuple[str, str, str], tuple[ModelRow | None, ModelRow | None]] = {
        cell: (rows[key_of(t)] if t else None, rows[key_of(s)])
        for cell, (t, s) in cell_uses.items()
    }
    return ModelsTable(
        rows=tuple(sorted(rows.values(), key=_row_order)),
        cells=cells,
        profiles=tuple(profiles[k] for k in sorted(profiles)),
    )


def _uses(runs: pd.DataFrame) -> tuple[list[_Use], dict[tuple[str, str, str], tuple]]:
    """Every (model, role, dataset, image size) the runs use, and each cell's (teacher use,
    student use), keyed by (dataset, teacher, student) as the board's cells are."""
    uses: set[_Use] = set()
    cells: dict[tuple[str, str, str], tuple[_Use | None, _Use]] = {}
    for row in runs.itertuples(index=False):
        size = None if math.isnan(row.image_size) else int(row.image_size)
        student = _Use(row.student, "student", row.dataset, size)
        teacher = _Use(_arch(row.teacher), "teacher", row.dataset, size) if row.teacher else None
        uses.update(u for u in (student, teacher) if u is not None)
        cells.setdefault((row.dataset, row.teacher, row.student), (teacher, student))
    return sorted(uses, key=lambda u: (u.model, u.role, u.token)), cells


def _arch(teacher: str) -> str:
    """A teacher column's architecture (``resnet20@ep4`` → ``resnet20``)."""
    return teacher.split("@", 1)[0]


def _shapes(
    wanted: set[tuple[str, int | None]], cached: Sequence[Profile], data_root: str | Path | None
) -> tuple[dict[tuple, Shape | None], dict[tuple, str]]:
    """Input shape and classes per (dataset, image size): from models.csv when it names the
    dataset, else from the dataset itself; why not, where neither works."""
    from_cache = {token: (p.input_size, p.num_classes) for p in cached for token in p.datasets}
    shapes: dict[tuple, Shape | None] = {}
    problems: dict[tuple, str] = {}
    for dataset, size in sorted(wanted, key=lambda w: (w[0], w[1] or 0)):
        token = dataset if size is None else f"{dataset}@{size}"
        if token in from_cache:
            shapes[(dataset, size)] = from_cache[token]
            continue
        shapes[(dataset, size)], problem = _dataset_shape(dataset, size, data_root)
        if problem:
            problems[(dataset, size)] = f"input shape unknown: {problem}"
    return shapes, problems


def _dataset_shape(
    dataset: str, size: int | None, data_root: str | Path | None
) -> tuple[Shape | None, str]:
    """(input shape, classes) of a dataset at an image size, or None and why it cannot load
    here (an unregistered name, files not under the data root)."""
    # bench.data brings torch: loaded only when models.csv lacks this dataset's shape.
    from bench.data import DataError, load_dataset

    try:
        info = load_dataset(dataset, root=data_root, image_size=size).info
    except RegistryError as exc:
        return None, _short(exc)
    except DataError as exc:
        return None, f"{_short(exc)}; pass --data-root DIR, the folder holding its files"
    return (tuple(int(s) for s in info.input_size), int(info.num_classes)), ""  # type: ignore[return-value]


def _short(exc: Exception) -> str:
    """The first sentence of an error (a registry's list of every name is noise here)."""
    if isinstance(exc, UnknownNameError):
        return f"unknown {exc.kind} {exc.name!r}"
    text = str(exc).strip()
    first = text.splitlines()[0].rstrip(":") if text else type(exc).__name__
    return first.split(". ", 1)[0]


def _measure(
    keys: Sequence[tuple[str, tuple[int, int, int], int]], repeats: int
) -> tuple[dict[tuple, Profile], dict[tuple, str]]:
    """Profiles of models built with random weights, timed with :data:`THREADS` threads."""
    # torch and timm load only when a model is profiled, not when models.csv is reused.
    import torch

    from bench.analysis.profile import cpu_name, profile_model
    from bench.models import create_model

    cpu, version = cpu_name(), torch.__version__.split("+")[0]
    measured, failed = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for model, input_size, classes in keys:
            key = (model, input_size, classes)
            try:
                built = create_model(
                    model, classes, image_size=input_size[1], in_chans=input_size[0]
                )
                profile = profile_model(
                    built,
                    model,
                    input_size,
                    batch_sizes=BATCH_SIZES,
                    repeats=repeats,
                    warmup=WARMUP,
                )
            except (RegistryError, RuntimeError, ValueError) as exc:
                # An architecture unknown here, or one that cannot take this input: listed.
                failed[key] = f"not measured: {_short(exc)}"
                continue
            measured[key] = Profile(
                model=model,
                input_size=input_size,
                num_classes=classes,
                params=profile.params,
                flops=profile.flops,
                # At models.csv's precision, so a rebuild from it writes the same pages.
                latency_ms={b: round(ms, 4) for b, ms in profile.latency_ms.items()},
                threads=THREADS,
                repeats=repeats,
                warmup=WARMUP,
                cpu=cpu,
                torch=version,
            )
    finally:
        torch.set_num_threads(threads)
    return measured, failed


def _teacher_accuracy(runs: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    """Mean teacher test accuracy in points per (teacher architecture, dataset token,
    teacher label) over the finished runs."""
    finished = runs[(runs["status"] == "FINISHED") & (runs["teacher"] != "")]
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for row in finished.itertuples(index=False):
        if math.isnan(row.teacher_test_acc):
            continue
        size = None if math.isnan(row.image_size) else int(row.image_size)
        token = _Use(row.teacher, "teacher", row.dataset, size).token
        values[(_arch(row.teacher), token, row.teacher)].append(row.teacher_test_acc)
    return {k: 100.0 * sum(v) / len(v) for k, v in values.items()}


def _accuracy_of(
    group: Sequence[_Use], accuracy: Mapping[tuple[str, str, str], float]
) -> tuple[tuple[str, float], ...]:
    """(label, accuracy) of a row's teachers: the teacher label, with the dataset when the
    row serves several."""
    tokens = {u.token for u in group if u.role == "teacher"}
    found = sorted(
        ((k, v) for k, v in accuracy.items() if k[0] == group[0].model and k[1] in tokens),
        key=lambda item: (item[0][1], len(item[0][2]), item[0][2]),  # ep2 before ep16
    )
    several = len(tokens) > 1
    return tuple(
        (f"{label} on {token}" if several else label, acc) for (_, token, label), acc in found
    )


def _row_order(row: ModelRow) -> tuple:
    first = ROLE_ORDER.index(row.roles[0]) if row.roles else len(ROLE_ORDER)
    return (first, row.model, row.datasets)


# --------------------------------------------------------------------------------------------
# models.csv
# --------------------------------------------------------------------------------------------


def read_models_csv(path: str | Path) -> list[Profile]:
    """The profiles in a models.csv (none when the file does not exist).

    Raises:
        LeaderboardError: The file lacks a column or holds a malformed value; the message
            names the line and says how to fix it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise LeaderboardError(
            f"{path}: not a models.csv ({exc}); delete it or pass --reprofile."
        ) from None
    except UnicodeDecodeError as exc:
        raise LeaderboardError(
            f"{not_utf8(path, exc)}, or delete it and pass --reprofile"
        ) from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LeaderboardError(
            f"{path}: missing column(s) {', '.join(missing)}; delete the file or pass "
            "--reprofile to measure the models again."
        )
    profiles = []
    for line, row in enumerate(table.itertuples(index=False), start=2):
        try:
            profiles.append(_profile_of(row._asdict()))
        except ValueError as exc:
            raise LeaderboardError(
                f"{path}, line {line}: {exc}; fix the value, or delete the row to measure the "
                "model again."
            ) from None
    return profiles


def _profile_of(row: Mapping[str, str]) -> Profile:
    parts = row["input_size"].lower().split("x")
    if len(parts) != 3:
        raise ValueError(f"input_size {row['input_size']!r} is not CxHxW")
    return Profile(
        model=row["model"],
        input_size=tuple(int(p) for p in parts),  # type: ignore[arg-type]
        num_classes=int(row["num_classes"]),
        params=int(row["params"]),
        flops=int(row["flops"]),
        latency_ms={b: float(row[f"latency_ms_batch{b}"]) for b in BATCH_SIZES},
        threads=int(row["threads"]),
        repeats=int(row["repeats"]),
        warmup=int(row["warmup"]),
        cpu=row["cpu"],
        torch=row["torch"],
        datasets=tuple(t for t in row["datasets"].split(";") if t),
    )


def write_models_csv(profiles: Sequence[Profile], path: str | Path) -> None:
    """Write profiles as models.csv, one row each, in the order given."""
    rows = [
        {
            "model": p.model,
            "input_size": "x".join(str(s) for s in p.input_size),
            "num_classes": p.num_classes,
            "params": p.params,
            "flops": p.flops,
            **{f"latency_ms_batch{b}": f"{p.latency_ms[b]:.4f}" for b in BATCH_SIZES},
            "threads": p.threads,
            "repeats": p.repeats,
            "warmup": p.warmup,
            "cpu": p.cpu,
            "torch": p.torch,
            "datasets": ";".join(p.datasets),
        }
        for p in profiles
    ]
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False, lineterminator="\n")


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

HEADER = (
    "model",
    "role",
    "input",
    "classes",
    "params",
    "MFLOPs",
    *(f"ms at batch {b}" for b in BATCH_SIZES),
    "teacher test acc. (%)",
)


def row_cells(row: ModelRow) -> list[str]:
    """A row's cells as text, in :data:`HEADER` order."""
    p = row.profile
    shape = ("×".join(str(s) for s in p.input_size), str(p.num_classes)) if p else ("?", "?")
    return [
        row.model,
        ", ".join(row.roles),
        *shape,
        f"{p.params:,}" if p else fmt.DASH,
        f"{p.flops / 1e6:.2f}" if p else fmt.DASH,
        *(f"{p.latency_ms[b]:.2f}" if p else fmt.DASH for b in BATCH_SIZES),
        teacher_accuracy_text(row),
    ]


def teacher_accuracy_text(row: ModelRow) -> str:
    """``98.05``; a teacher used at several checkpoints or on several datasets lists each."""
    if not row.teacher_acc:
        return "" if "teacher" not in row.roles else fmt.DASH
    if len(row.teacher_acc) == 1:
        return f"{row.teacher_acc[0][1]:.2f}"
    return ", ".join(f"{label}: {acc:.2f}" for label, acc in row.teacher_acc)


def measurement_text(table: ModelsTable, *, markdown: bool = False) -> str:
    """How the numbers were measured: one sentence per quantity (what comes from models.csv
    escaped for Markdown when ``markdown``)."""
    text = fmt.md if markdown else str
    groups: dict[str, list[str]] = defaultdict(list)
    for row in table.rows:
        if row.profile is not None:
            groups[text(row.profile.method_text)].append(text(row.model))
    if len(groups) == 1:
        latency = next(iter(groups))
    else:
        latency = "; ".join(f"{', '.join(models)}: {text}" for text, models in groups.items())
    return (
        "Parameters: every parameter (buffers such as BatchNorm statistics excluded). FLOPs: "
        "one forward pass on one input, counting convolutions and matrix products with a "
        "multiply-add as 2 FLOPs (PyTorch's FlopCounterMode, as the runs' student_flops). "
        "Latency: CPU wall time of one forward pass in eval mode under torch.inference_mode, "
        f"random weights and inputs, {latency}; kept in {MODELS_FILE} (`kdbench leaderboard "
        "--reprofile` measures again). Every method of a cell distils into the same student, "
        "so these costs are per model; the methods table's cost is the cost of training. Cell "
        "headings show parameters and latency at batch 1, teacher → student."
    )


def problem_lines(table: ModelsTable) -> list[str]:
    """One line per model without a cost, with the reason."""
    return [
        f"{row.model} ({', '.join(row.datasets)}): {row.problem}"
        for row in table.rows
        if row.profile is None
    ]


def models_markdown(table: ModelsTable) -> list[str]:
    """The README's Models section."""
    if not table.rows:
        return []
    rows = [[fmt.md(c) for c in row_cells(r)] for r in table.rows]
    align = ["l", "l", "r", "r", "r", "r", *("r" for _ in BATCH_SIZES), "r"]
    lines = ["## Models", "", *fmt.markdown_table(list(HEADER), rows, align=align), ""]
    lines += [measurement_text(table, markdown=True), ""]
    problems = problem_lines(table)
    if problems:
        lines += ["Not measured:", "", *(f"- {fmt.md(p)}" for p in problems), ""]
    return lines


def cell_cost(table: ModelsTable | None, cell: Sequence[str]) -> str:
    """``272k → 78k params, 1.34 → 0.45 ms at batch 1`` (teacher → student); the student's
    alone in a cell without a teacher; empty when neither was measured."""
    if table is None:
        return ""
    teacher, student = table.pair(cell)
    sides = [r for r in (teacher, student) if r is not None]
    if not any(r.profile for r in sides):
        return ""

    def params(r: ModelRow) -> str:
        return fmt.count(r.profile.params) if r.profile else fmt.DASH

    def latency(r: ModelRow) -> str:
        return f"{r.profile.latency_ms[1]:.2f}" if r.profile else fmt.DASH

    return (
        f"{' → '.join(params(r) for r in sides)} params, "
        f"{' → '.join(latency(r) for r in sides)} ms at batch 1"
    )
