"""From a runs table to a leaderboard: per-cell statistics, verdicts and the main table.

A *cell* is one (dataset, teacher, student); an *entry* is one ``method@version`` (split by
params when a method was run with several settings in the same cell). Scores are the chosen
metric in percentage points. The statistics are those of :mod:`bench.leaderboard.stats`:

* Per cell and entry: n seeds, mean, sd, t-interval; each entry against the reference
  (``kd``) and against the baseline (``ce``, the student alone) with the cell test (paired t
  when the seeds match, else Welch; or exact Mann-Whitney), Holm-corrected over the family of
  all entries compared with that baseline in that cell; a mark only with ≥ 3 seeds a side.
* Across cells: average ranks and the Friedman test over the entries that cover every cell;
  pairwise Wilcoxon signed-rank tests on the cell means over the cells both entries have,
  Holm-corrected over all pairs; the Wilcoxon-Holm critical-difference groups; stratified
  bootstrap intervals of the mean gain over ``ce`` and ``kd`` and of the probability of
  improvement over ``kd``. Nothing is imputed.

The baseline and the reference are declared, not guessed: each is one entry, the method at
the version the installed code runs with its default params unless the settings name others
(:mod:`bench.entry_spec`). When no finished run has that setting, the leaderboard says so at
the top and computes nothing against it; it never falls back to another setting. Entries of a
method version other than the current one (old runs still in the store) are kept apart as
*retired*: summarised, but left out of the ranks, the Friedman test and every Holm family.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from bench.entry_spec import (
    EntrySpec,
    EntrySpecError,
    normalized,
    parse_entry_spec,
    same_settings,
    value_text,
)
from bench.leaderboard import stats
from bench.leaderboard.runs import LeaderboardError

#: Metrics a leaderboard may rank by (all "higher is better", stored as fractions).
RANKABLE_METRICS = ("test_acc", "test_top5", "macro_f1", "val_acc")

#: How a note that the reader must not miss begins (a missing baseline or reference); the
#: command line repeats such notes as warnings.
WARNING = "⚠ "

#: Per-run metrics summarised per cell besides the ranked one (means over seeds).
SIDE_METRICS = (
    "test_acc",
    "test_top5",
    "val_acc",
    "macro_f1",
    "ece",
    "agreement",
    "train_seconds",
    "extra_params",
    "student_params",
    "student_flops",
)


@dataclass(frozen=True)
class Settings:
    """How a leaderboard is computed; every field is recorded in the outputs.

    Attributes:
        phase: Which runs count (``final``: fresh seeds on the test split).
        metric: The ranked metric, one of :data:`RANKABLE_METRICS`.
        baseline: The entry of the student trained alone, in the text form of
            :mod:`bench.entry_spec` (``ce``: ce at its current version, default params).
        reference: The entry every other is measured against first (``kd``: vanilla KD at
            its current version and default params; ``kd@1[temperature=8.0]`` another).
        alpha: Family-wise significance level.
        cell_test: Within-cell test, ``t`` (paired t when seeds match, else Welch) or
            ``mannwhitney`` (exact Mann-Whitney U).
        confidence: Coverage of the per-cell t-intervals and the bootstrap intervals.
        n_boot: Bootstrap replicates.
        bootstrap_seed: Seed of every bootstrap draw.
        bootstrap_over_cells: Also resample cells (not only seeds within cells).
    """

    phase: str = "final"
    metric: str = "test_acc"
    baseline: str = "ce"
    reference: str = "kd"
    alpha: float = 0.05
    cell_test: Literal["t", "mannwhitney"] = "t"
    confidence: float = 0.95
    n_boot: int = 2000
    bootstrap_seed: int = 0
    bootstrap_over_cells: bool = False

    def __post_init__(self) -> None:
        if self.metric not in RANKABLE_METRICS:
            raise LeaderboardError(
                f"metric {self.metric!r} cannot rank methods; use one of "
                f"{', '.join(RANKABLE_METRICS)}."
            )
        if self.cell_test not in ("t", "mannwhitney"):
            raise LeaderboardError(f"cell test {self.cell_test!r} is not 't' or 'mannwhitney'.")
        if not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise LeaderboardError("alpha and confidence must lie strictly between 0 and 1.")
        if self.n_boot < 100:
            raise LeaderboardError(f"n_boot must be at least 100, got {self.n_boot}.")
        for role in ("baseline", "reference"):
            try:
                parse_entry_spec(getattr(self, role))
            except EntrySpecError as exc:
                raise LeaderboardError(f"{role}: {exc}.") from None

    @property
    def baseline_spec(self) -> EntrySpec:
        return parse_entry_spec(self.baseline)

    @property
    def reference_spec(self) -> EntrySpec:
        return parse_entry_spec(self.reference)

    @property
    def baseline_method(self) -> str:
        """The baseline's method name (CSV columns are named after it: ``gain_vs_ce``)."""
        return self.baseline_spec.method

    @property
    def reference_method(self) -> str:
        """The reference's method name (``gain_vs_kd``, ``verdict_vs_kd``)."""
        return self.reference_spec.method

    @property
    def cell_test_name(self) -> str:
        if self.cell_test == "t":
            return "paired t-test when both sides have the same seeds, Welch's t-test otherwise"
        return "exact Mann-Whitney U test"


@dataclass(frozen=True)
class MethodFacts:
    """What the installed code says about a method.

    Attributes:
        version: The version a suite runs now.
        defaults: Its params' defaults, by name.
        fields: Its params' annotations, by name (to type the params an entry names); empty
            when unknown.
    """

    version: int
    defaults: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, Any] = field(default_factory=dict)


def installed_methods(names: Iterable[str]) -> dict[str, MethodFacts]:
    """Version and default params of each of ``names`` that is registered (kdbench's methods
    and the plugins loaded so far); names that are not registered are left out."""
    from bench.plugins import get_method
    from bench.registry import RegistryError

    out = {}
    for name in sorted(set(names)):
        try:
            cls = get_method(name)
        except (RegistryError, KeyError):
            continue
        out[name] = MethodFacts(int(cls.version), _defaults(cls.Params), cls.Params.fields())
    return out


def _defaults(params: Any) -> dict[str, Any]:
    return {
        f.name: f.default
        for f in dataclasses.fields(params)
        if f.default is not dataclasses.MISSING
    }


@dataclass(frozen=True)
class Anchor:
    """The baseline or the reference: the setting looked for and the entry that has it.

    Attributes:
        role: ``baseline`` or ``reference``.
        spec: As the settings name it.
        version: The version looked for: the named one, else the installed one, else (for a
            method that is not installed) the highest with finished runs; None without any.
        params: The whole setting looked for: the named params over the method's defaults.
        named_params: Whether the settings named params other than the defaults.
        entry: The entry used, or None when no finished run has that setting.
        others: The method's other entries with finished runs (for the message when
            ``entry`` is None).
    """

    role: str
    spec: EntrySpec
    version: int | None
    params: tuple[tuple[str, Any], ...]
    named_params: bool
    entry: str | None
    others: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return self.spec.method

    @property
    def wanted(self) -> str:
        """The entry looked for, e.g. ``kd@1``."""
        return self.method if self.version is None else f"{self.method}@{self.version}"

    @property
    def label(self) -> str:
        """How column headers name it: the entry used (``kd@1[temperature=4.0]``), else the
        entry looked for with ``(no runs)``."""
        return self.entry if self.entry is not None else f"{self.wanted} (no runs)"

    @property
    def setting(self) -> str:
        """The params in words: ``its default params (alpha=0.9, temperature=4.0)``, or
        ``temperature=8.0 as named, the other params at their defaults (alpha=0.9)``."""
        if not self.named_params:
            listed = ", ".join(f"{k}={value_text(v)}" for k, v in self.params)
            return f"its default params ({listed})" if listed else "no params"
        named = dict(self.spec.params)
        given = ", ".join(f"{k}={value_text(v)}" for k, v in self.params if k in named)
        rest = ", ".join(f"{k}={value_text(v)}" for k, v in self.params if k not in named)
        return f"{given} as named" + (
            f", the other params at their defaults ({rest})" if rest else ""
        )

    @property
    def description(self) -> str:
        """``kd@1[temperature=4.0]: kd version 1 with its default params (…)``."""
        head = f"`{self.label}`" if self.entry else f"`{self.wanted}`"
        version = "" if self.version is None else f" version {self.version}"
        return f"{head}: {self.method}{version} with {self.setting}"


class Cell(NamedTuple):
    """One (dataset, teacher, student); teacher is "" for cells without one."""

    dataset: str
    teacher: str
    student: str

    @property
    def label(self) -> str:
        pair = f"{self.teacher} → {self.student}" if self.teacher else self.student
        return f"{self.dataset}: {pair}"

    @property
    def short(self) -> str:
        return f"{self.teacher}→{self.student}" if self.teacher else self.student

    @property
    def slug(self) -> str:
        return "-".join(_slug(p) for p in (self.dataset, self.teacher or "none", self.student))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


@dataclass(frozen=True)
class Seed:
    """One finished run inside a cell."""

    seed: int
    value: float
    run_key: str
    mlflow_run_id: str
    mlflow_experiment_id: str


@dataclass(frozen=True)
class CellResult:
    """One entry in one cell.

    Attributes:
        cell: The cell.
        entry: ``method@version`` (with params when split).
        method: Method name.
        seeds: Finished runs, ordered by seed; values in points.
        summary: Seed statistics of the ranked metric, in points.
        side: Per-cell means of :data:`SIDE_METRICS` (raw units; NaN when not logged).
        vs_reference: Test against the reference's seeds in this cell (None for the
            reference itself or when the reference has no runs here).
        vs_reference_p_holm: Holm-adjusted p-value within the cell's reference family.
        vs_reference_verdict: The verdict (None as for ``vs_reference``).
        vs_baseline: As ``vs_reference``, against the baseline.
        vs_baseline_p_holm: Holm-adjusted p-value within the cell's baseline family.
        vs_baseline_verdict: The verdict.
        problems: One line per run of this entry and cell that did not finish (refused,
            failed, still running), with its reason.
    """

    cell: Cell
    entry: str
    method: str
    seeds: tuple[Seed, ...]
    summary: stats.CellSummary
    side: dict[str, float]
    vs_reference: stats.Comparison | None = None
    vs_reference_p_holm: float = math.nan
    vs_reference_verdict: stats.Verdict | None = None
    vs_baseline: stats.Comparison | None = None
    vs_baseline_p_holm: float = math.nan
    vs_baseline_verdict: stats.Verdict | None = None
    problems: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return self.summary.n

    @property
    def run_keys(self) -> tuple[str, ...]:
        return tuple(s.run_key for s in self.seeds)


@dataclass(frozen=True)
class Across:
    """An entry against another across cells: the oriented Wilcoxon-Holm record."""

    other: str
    n_cells: int
    wins: int
    ties: int
    losses: int
    median_diff: float
    pvalue: float
    p_holm: float
    test: str
    verdict: stats.Verdict


@dataclass(frozen=True)
class EntrySummary:
    """One row of the main table.

    Attributes:
        entry: ``method@version``.
        method: Method name.
        version: Method version.
        rank: Position by average rank among entries that cover every cell (1 = best), or
            None for entries with partial coverage.
        avg_rank: Average rank over all cells (NaN when not ranked).
        coverage: Cells with at least one finished seed.
        gain_vs_baseline: Mean gain over the baseline in points, bootstrap interval, over
            the cells both have.
        gain_vs_reference: The same against the reference.
        p_improvement: Probability that a run of this entry beats a run of the reference on
            a random common cell, with its bootstrap interval.
        vs_reference: Wilcoxon-Holm comparison with the reference across cells (None for the
            reference itself or without reference).
        vs_baseline: The same with the baseline.
        wtl_reference: Per-cell verdicts against the reference, counted.
        wtl_baseline: Per-cell verdicts against the baseline, counted.
        seeds_min: Fewest finished seeds in a covered cell.
        seeds_max: Most finished seeds in a covered cell.
        n_runs: Finished runs that entered the statistics.
        n_problems: Runs of the phase that did not finish (failed, refused, running).
        time_ratio: Geometric mean over common cells of mean train time / the baseline's.
        train_seconds: Mean train time per finished run.
        extra_params: Median parameters the method adds.
        side: Mean over covered cells of the per-cell means of :data:`SIDE_METRICS`.
    """

    entry: str
    method: str
    version: int
    rank: int | None
    avg_rank: float
    coverage: int
    gain_vs_baseline: stats.BootstrapCI
    gain_vs_reference: stats.BootstrapCI
    p_improvement: stats.BootstrapCI
    vs_reference: Across | None
    vs_baseline: Across | None
    wtl_reference: stats.WinTieLoss
    wtl_baseline: stats.WinTieLoss
    seeds_min: int
    seeds_max: int
    n_runs: int
    n_problems: int
    time_ratio: float
    train_seconds: float
    extra_params: float
    side: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Leaderboard:
    """Everything the outputs show.

    Attributes:
        name: Suite name.
        settings: How it was computed.
        cells: All cells, sorted.
        entries: Main-table rows in display order (ranked entries first).
        results: (cell, entry) → result, for every entry with runs in that cell.
        pairwise: Wilcoxon-Holm record for every pair of entries.
        friedman: Friedman test over the ranked entries.
        cd_groups: Critical-difference groups over the ranked entries.
        baseline: The baseline: the setting looked for and the entry used.
        reference: The reference, likewise.
        notes: Honesty statements and exclusions, shown above the tables.
        teacher_acc: Teacher test accuracy per cell in points (NaN when unknown).
        n_runs: Rows of the runs table.
        n_used: Finished runs of the phase that entered the statistics.
        retired: Entries of a method version other than the one the suite runs now, shown
            apart: never ranked, never in a Holm family (their gains are still computed).
        current_versions: Method → the version counted as current.
    """

    name: str
    settings: Settings
    cells: tuple[Cell, ...]
    entries: tuple[EntrySummary, ...]
    results: dict[tuple[Cell, str], CellResult]
    pairwise: tuple[stats.PairComparison, ...]
    friedman: stats.FriedmanResult
    cd_groups: tuple[tuple[str, ...], ...]
    baseline: Anchor
    reference: Anchor
    notes: tuple[str, ...]
    teacher_acc: dict[Cell, float]
    n_runs: int
    n_used: int
    retired: tuple[EntrySummary, ...] = ()
    current_versions: dict[str, int] = field(default_factory=dict)

    @property
    def ranked(self) -> tuple[EntrySummary, ...]:
        return tuple(e for e in self.entries if e.rank is not None)

    @property
    def baseline_entry(self) -> str | None:
        """The entry used as the baseline (None when no finished run has its setting)."""
        return self.baseline.entry

    @property
    def reference_entry(self) -> str | None:
        """The entry used as the reference (None when no finished run has its setting)."""
        return self.reference.entry

    def entry(self, name: str) -> EntrySummary:
        for e in (*self.entries, *self.retired):
            if e.entry == name:
                return e
        raise KeyError(name)

    def result(self, cell: Cell, entry: str) -> CellResult | None:
        return self.results.get((cell, entry))


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def build_leaderboard(
    runs: pd.DataFrame,
    settings: Settings | None = None,
    *,
    name: str = "leaderboard",
    methods: Mapping[str, MethodFacts] | None = None,
) -> Leaderboard:
    """Compute a leaderboard from a checked runs table.

    Args:
        runs: Table from :mod:`bench.leaderboard.runs` (one row per run, all phases and
            statuses; only finished runs of ``settings.phase`` enter the statistics).
        settings: How to compute it (defaults: :class:`Settings`).
        name: Suite name shown in the outputs.
        methods: Current version and default params of the methods (default: the installed
            code's, :func:`installed_methods`). A method missing here counts its highest
            version with runs as current, and only the params it names as its setting.

    Returns:
        The leaderboard.

    Raises:
        LeaderboardError: When no finished run of the phase exists, or one entry has the
            same seed twice in a cell (runs of different recipes mixed in one experiment).
    """
    settings = settings or Settings()
    notes: list[str] = []
    phase_runs = _phase_runs(runs, settings.phase)
    facts = dict(methods) if methods is not None else installed_methods(set(runs["method"]))
    table = _with_entries(phase_runs, notes, facts)
    table = _place_teacherless(table, notes)
    finished = table[table["status"] == "FINISHED"]
    if finished.empty:
        raise LeaderboardError(
            f"no FINISHED run in phase {settings.phase!r} ({len(phase_runs)} runs of that phase "
            "did not finish); nothing to rank yet."
        )
    cells = tuple(
        sorted({Cell(*c) for c in table[["dataset", "teacher", "student"]].itertuples(index=False)})
    )
    baseline = _anchor(table, settings.baseline_spec, facts, "baseline")
    reference = _anchor(table, settings.reference_spec, facts, "reference")
    current_versions = _current_versions(table, facts)
    anchors = {a.entry for a in (baseline, reference) if a.entry is not None}
    all_entries = sorted(set(table["entry"]), key=_entry_sort_key)
    retired = [
        e
        for e in all_entries
        if e not in anchors and _version_of(table, e) != current_versions[_method_of(e)]
    ]
    entry_names = [e for e in all_entries if e not in retired]
    results = _cell_results(
        table, cells, all_entries, settings, baseline.entry, reference.entry, set(entry_names)
    )
    teacher_acc = _teacher_accuracy(finished, cells)
    scores = np.array(
        [[_cell_mean(results, c, e) for e in all_entries] for c in cells], dtype=float
    ).reshape(len(cells), len(all_entries))
    coverage = {e: int(np.sum(~np.isnan(scores[:, j]))) for j, e in enumerate(all_entries)}
    # Only current entries are ranked and tested against each other across cells.
    scores = scores[:, [all_entries.index(e) for e in entry_names]]
    complete = [entry_names.index(e) for e in entry_names if coverage[e] == len(cells)]
    friedman = stats.friedman(scores[:, complete])
    # A rank among fewer than two methods says nothing.
    ranked = [entry_names[j] for j in complete] if len(complete) >= 2 else []
    avg = stats.average_ranks(scores[:, complete]) if ranked else np.array([])
    avg_rank = dict(zip(ranked, avg.tolist(), strict=True))
    order = _pairwise_order(entry_names, baseline.entry, reference.entry)
    pairwise = tuple(
        stats.wilcoxon_pairwise(
            scores[:, [entry_names.index(e) for e in order]], order, alpha=settings.alpha
        )
        if len(order) >= 2
        else []
    )
    pairwise = _unresolvable_as_insufficient(pairwise, settings.alpha)
    cd_groups: tuple[tuple[str, ...], ...] = ()
    if ranked:
        in_ranked = [p for p in pairwise if p.a in avg_rank and p.b in avg_rank]
        cd_groups = tuple(stats.critical_difference_groups(avg_rank, in_ranked))
    summaries = {
        e: _entry_summary(
            e,
            table,
            results,
            cells,
            settings,
            baseline.entry,
            reference.entry,
            pairwise,
            avg_rank,
            coverage,
        )
        for e in all_entries
    }
    current = _rank([summaries[e] for e in entry_names], settings.metric)
    old = [summaries[e] for e in retired]
    notes = (
        _anchor_notes(baseline, reference, settings.phase)
        + _honesty_notes(settings, cells, results, current, friedman, pairwise)
        + _retired_notes(old, current_versions)
        + notes
    )
    notes += _exclusion_notes(runs, phase_runs, settings)
    return Leaderboard(
        name=name,
        settings=settings,
        cells=cells,
        entries=tuple(current),
        results=results,
        pairwise=pairwise,
        friedman=friedman,
        cd_groups=cd_groups,
        baseline=baseline,
        reference=reference,
        notes=tuple(notes),
        teacher_acc=teacher_acc,
        n_runs=len(runs),
        n_used=int(finished["run_key"].nunique()),
        retired=tuple(old),
        current_versions=current_versions,
    )


def _phase_runs(runs: pd.DataFrame, phase: str) -> pd.DataFrame:
    selected = runs[runs["phase"] == phase]
    if selected.empty:
        present = sorted(set(runs["phase"]))
        raise LeaderboardError(
            f"no run of phase {phase!r} among {len(runs)} runs (phases present: "
            f"{', '.join(present) or 'none'}); pass --phase {present[0] if present else 'final'}."
        )
    return selected


def _setting_of(
    method: str, version: int, params_text: str, facts: Mapping[str, MethodFacts]
) -> dict[str, Any]:
    """A run's whole setting: its recorded params over the method's defaults, where the
    installed code is that version (a run recorded before defaults were written out has
    ``{}`` for them; the defaults of another version are not known)."""
    known = facts.get(method)
    defaults = known.defaults if known is not None and known.version == version else {}
    return {**defaults, **json.loads(params_text or "{}")}


def _with_entries(
    runs: pd.DataFrame, notes: list[str], facts: Mapping[str, MethodFacts]
) -> pd.DataFrame:
    """Adds the entry label (``method@version``) and each run's whole setting (column
    ``setting``, comparable text); a method@version run with several settings is split into
    one entry per setting, named by the params that vary (``kd@1[temperature=4.0]``)."""
    table = runs.copy()
    table["entry"] = [
        f"{m}@{v}" for m, v in zip(table["method"], table["method_version"], strict=True)
    ]
    full = [
        _setting_of(m, int(v), p, facts)
        for m, v, p in zip(table["method"], table["method_version"], table["params"], strict=True)
    ]
    table["setting"] = [json.dumps(normalized(p)) for p in full]
    variants = table.groupby("entry")["setting"].nunique()
    split = sorted(entry for entry, count in variants.items() if count > 1)
    for entry in split:
        rows = (table["entry"] == entry).to_numpy()
        params = [p for p, row in zip(full, rows, strict=True) if row]
        varying = sorted(
            {k for p in params for k in p if len({repr(normalized(q.get(k))) for q in params}) > 1}
        )
        table.loc[rows, "entry"] = [
            f"{entry}[{', '.join(f'{k}={p.get(k)}' for k in varying)}]" for p in params
        ]
        notes.append(
            f"{entry} was run with several settings of {', '.join(varying)}; "
            "each setting is its own row."
        )
    return table


def _anchor(
    table: pd.DataFrame, spec: EntrySpec, facts: Mapping[str, MethodFacts], role: str
) -> Anchor:
    """The entry with exactly the setting ``spec`` names (its params over the defaults of the
    version looked for), or an anchor without entry: never another setting instead."""
    known = facts.get(spec.method)
    done = table[(table["method"] == spec.method) & (table["status"] == "FINISHED")]
    version = spec.version
    if version is None:
        version = known.version if known is not None else _highest(done["method_version"])
    current = known is not None and known.version == version
    defaults = known.defaults if known is not None and current else {}
    named = _typed(spec, known.fields if known is not None and current else {}, role)
    wanted = {**defaults, **named}
    entries = sorted(set(done["entry"]), key=_entry_sort_key)
    matching = sorted(
        {
            e
            for e, v, s in zip(done["entry"], done["method_version"], done["setting"], strict=True)
            if v == version and same_settings(_setting_from_key(s), wanted)
        }
    )
    if len(matching) > 1:  # cannot happen: entries are split by setting
        raise LeaderboardError(f"{role} {spec.text}: several entries match: {matching}.")
    return Anchor(
        role=role,
        spec=spec,
        version=version,
        params=tuple(sorted(wanted.items())),
        named_params=bool(spec.params) and (known is None or not same_settings(wanted, defaults)),
        entry=matching[0] if matching else None,
        others=tuple(e for e in entries if e not in matching),
    )


def _typed(spec: EntrySpec, fields: Mapping[str, Any], role: str) -> dict[str, Any]:
    """The params ``spec`` names, each of its field's type (``temperature=8`` is 8.0) when the
    fields are known.

    Raises:
        LeaderboardError: A param the method does not have, or a value that does not fit.
    """
    from bench.api.params import ParamError, coerce_value

    if not fields:
        return dict(spec.params)
    out = {}
    for name, raw in spec.params:
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise LeaderboardError(
                f"{role} {spec.text}: {spec.method} has no param {name!r}.{hint} Its params: "
                f"{', '.join(fields) or 'none'}."
            )
        try:
            out[name] = coerce_value(raw, fields[name], where=f"{role} {spec.text}: {name}")
        except ParamError as exc:
            raise LeaderboardError(str(exc)) from None
    return out


def _setting_from_key(key: str) -> dict[str, Any]:
    """The setting back from the ``setting`` column's text (pairs of name and value)."""
    return {k: v for k, v in json.loads(key)}


def _highest(versions: pd.Series) -> int | None:
    return int(versions.max()) if len(versions) else None


def _current_versions(table: pd.DataFrame, facts: Mapping[str, MethodFacts]) -> dict[str, int]:
    """The version of each method counted as current: the installed code's, else the highest
    recorded."""
    out = {}
    for method, versions in table.groupby("method")["method_version"]:
        known = facts.get(str(method))
        out[str(method)] = known.version if known is not None else int(versions.max())
    return out


def _version_of(table: pd.DataFrame, entry: str) -> int:
    return int(table.loc[table["entry"] == entry, "method_version"].iloc[0])


def _place_teacherless(table: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Runs without a teacher join every teacher's cell of their dataset and student.

    Only where the same entry has no run of its own with that teacher, so no run is counted
    twice in one cell.
    """
    teacherless = table["teacher"] == ""
    if not teacherless.any():
        return table
    teachers = (
        table[~teacherless].groupby(["dataset", "student"])["teacher"].agg(lambda t: sorted(set(t)))
    )
    own = set(
        table[~teacherless][["dataset", "teacher", "student", "entry"]].itertuples(index=False)
    )
    placed = [table[~teacherless]]
    shared = set()
    for (dataset, student, entry), group in table[teacherless].groupby(
        ["dataset", "student", "entry"]
    ):
        targets = [
            t
            for t in teachers.get((dataset, student), [])
            if (dataset, t, student, entry) not in own
        ]
        if not targets:
            placed.append(group)
            continue
        for teacher in targets:
            placed.append(group.assign(teacher=teacher))
        shared.add(entry.split("@")[0])
    if shared:
        notes.append(
            f"Methods that use no teacher ({', '.join(sorted(shared))}) are run once per dataset "
            "and student; the same runs appear in every teacher's cell of that student."
        )
    return pd.concat(placed, ignore_index=True)


def _entry_sort_key(entry: str) -> tuple[str, int, str]:
    method, _, rest = entry.partition("@")
    version, _, variant = rest.partition("[")
    return (method, int(version) if version.isdigit() else 0, variant)


def _pairwise_order(
    entries: Sequence[str], baseline: str | None, reference: str | None
) -> list[str]:
    """Others, then the reference, then the baseline: every record reads "row vs baseline"."""
    tail = [e for e in (reference, baseline) if e is not None]
    return [e for e in entries if e not in tail] + tail


def _cell_results(
    table: pd.DataFrame,
    cells: Sequence[Cell],
    entries: Sequence[str],
    settings: Settings,
    baseline: str | None,
    reference: str | None,
    compared: set[str],
) -> dict[tuple[Cell, str], CellResult]:
    """Every (cell, entry) result; the entries in ``compared`` (the current ones) are tested
    against the baseline and the reference, Holm-corrected together within each cell."""
    grouped = {
        key: group for key, group in table.groupby(["dataset", "teacher", "student", "entry"])
    }
    results: dict[tuple[Cell, str], CellResult] = {}
    for cell in cells:
        plain = {}
        for entry in entries:
            group = grouped.get((*cell, entry))
            if group is not None:
                plain[entry] = _plain_result(cell, entry, group, settings)
        versus = {"reference": reference, "baseline": baseline}
        family = {e: r for e, r in plain.items() if e in compared}
        comparisons: dict[str, dict[str, tuple]] = {}
        for role, against in versus.items():
            comparisons[role] = _family(family, against, settings)
        for entry, result in plain.items():
            changes = {}
            for role in versus:
                if entry in comparisons[role]:
                    comp, p_holm, verdict = comparisons[role][entry]
                    changes[f"vs_{role}"] = comp
                    changes[f"vs_{role}_p_holm"] = p_holm
                    changes[f"vs_{role}_verdict"] = verdict
            results[(cell, entry)] = dataclasses.replace(result, **changes)
    return results


def _plain_result(cell: Cell, entry: str, group: pd.DataFrame, settings: Settings) -> CellResult:
    metric = settings.metric
    done = group[group["status"] == "FINISHED"].sort_values(["seed", "run_key"])
    seen: dict[int, str] = {}
    for seed, key in zip(done["seed"], done["run_key"], strict=True):
        if seed in seen:
            raise LeaderboardError(
                f"{cell.label}, {entry}: seed {seed} has two finished runs ({seen[seed]} and "
                f"{key}) with the same method, params and seed; they differ in something else "
                "(e.g. the recipe). Keep one: remove the stale rows from results.csv and "
                "rebuild with --from-csv, or sweep into a fresh experiment."
            )
        seen[seed] = key
    seeds = tuple(
        Seed(
            int(r.seed),
            float(getattr(r, metric)) * 100.0,
            r.run_key,
            r.mlflow_run_id,
            r.mlflow_experiment_id,
        )
        for r in done.itertuples(index=False)
        if not math.isnan(getattr(r, metric))
    )
    values = np.array([s.value for s in seeds], dtype=float)
    side = {m: _nanmean(done[m]) for m in SIDE_METRICS}
    problems = tuple(
        _problem_line(r) for r in group[group["status"] != "FINISHED"].itertuples(index=False)
    )
    return CellResult(
        cell=cell,
        entry=entry,
        method=str(group["method"].iloc[0]),
        seeds=seeds,
        summary=stats.cell_summary(values, settings.confidence),
        side=side,
        problems=problems,
    )


def _nanmean(values: pd.Series) -> float:
    x = values.to_numpy(dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def _problem_line(run: Any) -> str:
    outcome = run.outcome or run.status.lower()
    reason = (run.error or "").strip().splitlines()
    first = reason[0] if reason else "no reason recorded"
    if run.status == "RUNNING":
        return f"seed {run.seed}: still running"
    return f"seed {run.seed}: {outcome}: {first}"


def _family(
    plain: dict[str, CellResult], against: str | None, settings: Settings
) -> dict[str, tuple[stats.Comparison | None, float, stats.Verdict]]:
    """Every entry of one cell against one baseline, Holm-corrected together."""
    if against is None or against not in plain or plain[against].n == 0:
        return {
            e: (None, math.nan, stats.Verdict(None, f"no {against} runs in this cell"))
            for e in plain
            if e != against and against is not None
        }
    base = plain[against]
    comps = {}
    for entry, result in plain.items():
        if entry == against or result.n == 0:
            continue
        comps[entry] = stats.compare_to_baseline(
            [s.value for s in result.seeds],
            [s.value for s in base.seeds],
            method_seeds=[s.seed for s in result.seeds],
            baseline_seeds=[s.seed for s in base.seeds],
            test=settings.cell_test,
        )
    names = list(comps)
    p_holm: np.ndarray | list[float] = stats.holm([comps[e].pvalue for e in names]) if names else []
    out: dict[str, tuple[stats.Comparison | None, float, stats.Verdict]] = {}
    for entry, p in zip(names, p_holm, strict=True):
        c = comps[entry]
        out[entry] = (
            c,
            float(p),
            stats.verdict(c.diff, float(p), c.n_method, c.n_baseline, alpha=settings.alpha),
        )
    return out


def _method_of(entry: str | None) -> str:
    return (entry or "").split("@")[0]


def _cell_mean(results: dict, cell: Cell, entry: str) -> float:
    r = results.get((cell, entry))
    return r.summary.mean if r is not None and r.n else math.nan


def _teacher_accuracy(finished: pd.DataFrame, cells: Sequence[Cell]) -> dict[Cell, float]:
    out = {}
    for cell in cells:
        rows = finished[
            (finished["dataset"] == cell.dataset)
            & (finished["teacher"] == cell.teacher)
            & (finished["student"] == cell.student)
        ]
        out[cell] = _nanmean(rows["teacher_test_acc"]) * 100.0
    return out


def _oriented(
    pairwise: Sequence[stats.PairComparison], entry: str, other: str | None
) -> Across | None:
    """The pairwise record of ``entry`` against ``other``, read from ``entry``'s side."""
    if other is None or other == entry:
        return None
    for p in pairwise:
        if (p.a, p.b) == (entry, other):
            return Across(
                other,
                p.n_cells,
                p.wins,
                p.ties,
                p.losses,
                p.median_diff,
                p.pvalue,
                p.p_holm,
                p.test,
                p.verdict,
            )
        if (p.a, p.b) == (other, entry):
            return Across(
                other,
                p.n_cells,
                p.losses,
                p.ties,
                p.wins,
                -p.median_diff,
                p.pvalue,
                p.p_holm,
                p.test,
                _flipped(p.verdict),
            )
    return None


def _flipped(verdict: stats.Verdict) -> stats.Verdict:
    """The same verdict read from the other method's side (▲ becomes ▼)."""
    if verdict.mark == stats.BETTER:
        return stats.Verdict(stats.WORSE, verdict.text.replace("▲ better", "▼ worse", 1))
    if verdict.mark == stats.WORSE:
        return stats.Verdict(stats.BETTER, verdict.text.replace("▼ worse", "▲ better", 1))
    return verdict


def _bootstrap_rng(seed: int, entry: str, against: str, what: int) -> np.random.Generator:
    """One stream per (entry, baseline, statistic): adding a method moves no other interval."""
    return np.random.default_rng(
        [seed, zlib.crc32(entry.encode()), zlib.crc32(against.encode()), what]
    )


def _per_cell_values(
    results: dict, cells: Sequence[Cell], entry: str, against: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    xs, ys = [], []
    for cell in cells:
        x, y = results.get((cell, entry)), results.get((cell, against))
        if x is not None and y is not None and x.n and y.n:
            xs.append(np.array([s.value for s in x.seeds]))
            ys.append(np.array([s.value for s in y.seeds]))
    return xs, ys


_NO_CI = stats.BootstrapCI(math.nan, math.nan, math.nan, 0)


def _gain(
    results: dict[tuple[Cell, str], CellResult],
    cells: Sequence[Cell],
    entry: str,
    against: str | None,
    settings: Settings,
    what: int = 0,
) -> stats.BootstrapCI:
    """Mean gain (what=0) or probability of improvement (what=1) with its interval."""
    if against is None or entry == against:
        return _NO_CI
    xs, ys = _per_cell_values(results, cells, entry, against)
    if not xs:
        return _NO_CI
    rng = _bootstrap_rng(settings.bootstrap_seed, entry, against, what)
    run = stats.stratified_bootstrap_ci if what == 0 else stats.probability_of_improvement_ci
    return run(
        xs,
        ys,
        rng,
        n_boot=settings.n_boot,
        ci=settings.confidence,
        over_cells=settings.bootstrap_over_cells,
    )


def _entry_summary(
    entry: str,
    table: pd.DataFrame,
    results: dict,
    cells: Sequence[Cell],
    settings: Settings,
    baseline: str | None,
    reference: str | None,
    pairwise: Sequence[stats.PairComparison],
    avg_rank: dict[str, float],
    coverage: dict[str, int],
) -> EntrySummary:
    mine = [results[(c, entry)] for c in cells if (c, entry) in results]
    covered = [r for r in mine if r.n]
    rows = table[table["entry"] == entry]
    method = str(rows["method"].iloc[0])
    version = int(rows["method_version"].iloc[0])
    ns = [r.n for r in covered]
    ratios = []
    if baseline is not None:
        for r in covered:
            b = results.get((r.cell, baseline))
            if b is not None and b.n:
                t, tb = r.side["train_seconds"], b.side["train_seconds"]
                if t > 0 and tb > 0:
                    ratios.append(math.log(t / tb))
    finished = rows[rows["status"] == "FINISHED"]
    return EntrySummary(
        entry=entry,
        method=method,
        version=version,
        rank=None,
        avg_rank=avg_rank.get(entry, math.nan),
        coverage=coverage[entry],
        gain_vs_baseline=_gain(results, cells, entry, baseline, settings),
        gain_vs_reference=_gain(results, cells, entry, reference, settings),
        p_improvement=_gain(results, cells, entry, reference, settings, what=1),
        vs_reference=_oriented(pairwise, entry, reference),
        vs_baseline=_oriented(pairwise, entry, baseline),
        wtl_reference=stats.win_tie_loss(
            r.vs_reference_verdict for r in covered if r.vs_reference is not None
        ),
        wtl_baseline=stats.win_tie_loss(
            r.vs_baseline_verdict for r in covered if r.vs_baseline is not None
        ),
        seeds_min=min(ns) if ns else 0,
        seeds_max=max(ns) if ns else 0,
        n_runs=len({key for r in covered for key in r.run_keys}),
        n_problems=sum(len(r.problems) for r in mine),
        time_ratio=math.exp(float(np.mean(ratios))) if ratios else math.nan,
        train_seconds=_nanmean(finished["train_seconds"]),
        extra_params=float(np.nanmedian(finished["extra_params"]))
        if finished["extra_params"].notna().any()
        else math.nan,
        side={
            m: _nanmean(pd.Series([r.side[m] for r in covered], dtype=float)) for m in SIDE_METRICS
        },
    )


def _rank(summaries: list[EntrySummary], metric: str) -> list[EntrySummary]:
    """Entries covering every cell by average rank (1 = best), ties broken by the higher mean
    of ``metric`` over the cells, then by name; the others follow, unranked, by name."""

    def mean_score(s: EntrySummary) -> float:
        value = s.side.get(metric, math.nan)
        return -math.inf if math.isnan(value) else value

    ranked = sorted(
        (s for s in summaries if not math.isnan(s.avg_rank)),
        key=lambda s: (s.avg_rank, -mean_score(s), s.entry),
    )
    partial = sorted((s for s in summaries if math.isnan(s.avg_rank)), key=lambda s: s.entry)
    return [dataclasses.replace(s, rank=i + 1) for i, s in enumerate(ranked)] + partial


# --------------------------------------------------------------------------------------------
# What the outputs must say
# --------------------------------------------------------------------------------------------


def _honesty_notes(
    settings: Settings,
    cells: Sequence[Cell],
    results: dict,
    summaries: Sequence[EntrySummary],
    friedman: stats.FriedmanResult,
    pairwise: Sequence[stats.PairComparison],
) -> list[str]:
    notes = []
    need = stats.wilcoxon_min_cells(settings.alpha)
    tested = sum(not math.isnan(p.pvalue) for p in pairwise)
    if len(cells) < need:
        notes.append(
            f"Insufficient cells: only {len(cells)} cell{'s' if len(cells) != 1 else ''}. "
            f"The Wilcoxon signed-rank test across cells cannot reach p < {settings.alpha:g} "
            f"with fewer than {need}, so no method is declared better or worse than another "
            "across cells; the per-cell verdicts below still hold for their cells."
        )
    elif holm_floor(pairwise) >= settings.alpha:
        enough = cells_needed(tested, settings.alpha)
        notes.append(
            f"Insufficient cells for {tested} pairwise comparisons: with {len(cells)} cells, "
            "even a method that wins in every cell gets a Holm-adjusted p-value of at least "
            f"{holm_floor(pairwise):.2g}, so no across-cell verdict can be ▲ or ▼ and the "
            f"tables say “insufficient cells” instead; {enough} cells would be needed."
        )
    current = {s.entry for s in summaries}
    few = [r for r in results.values() if 0 < r.n < stats.MIN_SEEDS and r.entry in current]
    if few:
        where = sorted({f"{r.entry} on {r.cell.label} (n={r.n})" for r in few})
        shown = "; ".join(where[:6]) + (f"; and {len(where) - 6} more" if len(where) > 6 else "")
        notes.append(
            f"Insufficient seeds: {len(few)} method-cell "
            f"result{'s have' if len(few) > 1 else ' has'} fewer than {stats.MIN_SEEDS} seeds "
            f"({shown}); their within-cell comparisons read "
            "“insufficient seeds” instead of a verdict."
        )
    partial = [s.entry for s in summaries if s.coverage < len(cells)]
    if partial:
        notes.append(
            f"Partial coverage: {', '.join(partial)} "
            f"{'does' if len(partial) == 1 else 'do'} not cover every cell; "
            "left out of the average ranks and the Friedman test, and compared with each other "
            "method only on the cells both have. Nothing is imputed."
        )
    if friedman.insufficient:
        notes.append(f"Friedman test not run: {friedman.insufficient}.")
    elif math.isnan(friedman.pvalue):
        notes.append(
            f"Friedman test over {friedman.n_cells} cells and {friedman.n_methods} methods: "
            "every cell ranks the methods alike (statistic undefined)."
        )
    else:
        notes.append(
            f"Friedman test over {friedman.n_cells} cells and {friedman.n_methods} methods: "
            f"χ² = {friedman.statistic:.2f}, p = {friedman.pvalue:.2g}"
            + (
                " (the methods do not all rank alike)."
                if friedman.pvalue < settings.alpha
                else " (no evidence that the methods rank differently)."
            )
        )
    return notes


def _anchor_notes(baseline: Anchor, reference: Anchor, phase: str) -> list[str]:
    """A missing baseline or reference, said first: nothing is compared with a stand-in."""
    notes = []
    for anchor in (baseline, reference):
        if anchor.entry is not None:
            continue
        if anchor.version is None:
            notes.append(
                f"{WARNING}No {anchor.role}: no finished {anchor.method!r} run in phase "
                f"{phase!r}, so gains over {anchor.method} and verdicts against it are not "
                "computed."
            )
            continue
        others = (
            f" Finished {anchor.method} runs exist as {', '.join(f'`{e}`' for e in anchor.others)}"
            f"; none is used in its place. If one of them is the comparison you mean, name it "
            f"under `leaderboard: {{{anchor.role}: …}}` in suite.yaml (or --{anchor.role})."
            if anchor.others
            else ""
        )
        notes.append(
            f"{WARNING}No {anchor.role}: {anchor.description} has no finished run in phase "
            f"{phase!r}, so gains over {anchor.method} and verdicts against it are not "
            f"computed.{others}"
        )
    return notes


def _retired_notes(retired: Sequence[EntrySummary], current: Mapping[str, int]) -> list[str]:
    if not retired:
        return []
    names = ", ".join(f"`{e.entry}`" for e in retired)
    now = ", ".join(f"`{m}@{current[m]}`" for m in sorted({e.method for e in retired}))
    return [
        f"Retired versions: {names} {'is' if len(retired) == 1 else 'are'} not the version the "
        f"suite runs now ({now}). Listed apart under “Retired versions”, unranked, and left "
        "out of the ranks, the Friedman test and every Holm family; run the suite again to "
        "measure the current version."
    ]


def holm_floor(pairwise: Sequence[stats.PairComparison]) -> float:
    """The smallest Holm-adjusted p-value any pair of this table could have reached.

    Holm multiplies the smallest raw p-value by the number of tests m, and the smallest exact
    two-sided Wilcoxon p-value over N non-tied cells is 2 / 2**N; every adjusted p-value is at
    least m times the smallest raw one.
    """
    tested = [p for p in pairwise if not math.isnan(p.pvalue)]
    if not tested:
        return math.nan
    return min(1.0, len(tested) * 2.0 ** (1 - max(p.n_nonzero for p in tested)))


def cells_needed(tests: int, alpha: float) -> int:
    """Fewest non-tied cells with which the best of ``tests`` Holm-corrected Wilcoxon tests
    could still reach ``alpha`` (all signs equal: raw p = 2 / 2**N, times ``tests``)."""
    n = 1
    while tests * 2.0 ** (1 - n) >= alpha:
        n += 1
    return n


def _unresolvable_as_insufficient(
    pairwise: Sequence[stats.PairComparison], alpha: float
) -> tuple[stats.PairComparison, ...]:
    """When no pair could ever reach significance, "≈" would read as "equal": say why instead."""
    floor = holm_floor(pairwise)
    if not floor >= alpha:
        return tuple(pairwise)
    tested = sum(not math.isnan(p.pvalue) for p in pairwise)
    needed = cells_needed(tested, alpha)

    def insufficient(p: stats.PairComparison) -> stats.Verdict:
        return stats.Verdict(
            None,
            f"insufficient cells (N={p.n_nonzero} for {tested} Holm-corrected pairs; "
            f"needs ≥ {needed})",
        )

    return tuple(
        dataclasses.replace(p, verdict=insufficient(p)) if p.verdict.mark else p for p in pairwise
    )


def _exclusion_notes(runs: pd.DataFrame, phase_runs: pd.DataFrame, settings: Settings) -> list[str]:
    notes = []
    other = len(runs) - len(phase_runs)
    if other:
        notes.append(
            f"{other} run{'s' if other > 1 else ''} of other phases (not {settings.phase!r}) "
            "are listed in results.csv but not in the statistics."
        )
    counts: defaultdict[str, int] = defaultdict(int)
    for status, outcome in zip(phase_runs["status"], phase_runs["outcome"], strict=True):
        if status != "FINISHED":
            counts[outcome or status.lower() if status != "RUNNING" else "still running"] += 1
    if counts:
        parts = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        notes.append(
            f"Runs that did not finish ({parts}) are not in the statistics; the cell tables "
            "list each with its reason."
        )
    return notes
