"""Study suites: accuracy against what the suite varies (a method parameter, or the training
epochs of an early-stopped teacher), as a table, a CSV and a figure (``figures/study.png``).

A suite declares its study with ``study: {parameter: temperature, method: kd}`` or
``study: {parameter: teacher_epoch, method: kd}`` (see :mod:`bench.suite`). The points come
straight from the runs table: for every value of the parameter, the finished runs of the
method in the leaderboard's phase, summarised over seeds (mean, sd, t-interval); the student
trained alone (the baseline method) is the reference line, and the teacher's own accuracy is
shown where the runs logged it. Early-stopped teachers are the cells whose teacher is named
``<arch>@ep<k>`` (:func:`teacher_epoch`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.leaderboard import stats
from bench.leaderboard.figures import draw_study, save_png
from bench.leaderboard.formatting import md, md_code
from bench.leaderboard.runs import LeaderboardError

STUDY_FILE = "study.csv"
STUDY_FIGURE = "study.png"
TEACHER_EPOCH = "teacher_epoch"
_EPOCH_SUFFIX = re.compile(r"@ep(\d+)$")


@dataclass(frozen=True)
class StudySpec:
    """What a study varies (the suite's ``study:`` section).

    Attributes:
        parameter: A parameter of ``method`` or ``teacher_epoch``.
        method: The method whose accuracy is plotted.
        reference: The parameter value whose entry is the leaderboard's reference (the
            "gain over kd" column) when ``method`` is the reference method; None: the
            reference method's default setting.
    """

    parameter: str
    method: str = "kd"
    reference: object = None

    @property
    def reference_entry(self) -> str | None:
        """The reference as the leaderboard names it (``kd[temperature=4.0]``), or None."""
        if self.reference is None or self.parameter == TEACHER_EPOCH:
            return None
        return f"{self.method}[{self.parameter}={self.reference}]"

    @property
    def axis_label(self) -> str:
        if self.parameter == TEACHER_EPOCH:
            return "teacher's training epochs"
        return self.parameter


@dataclass(frozen=True)
class StudyPoint:
    """The method's accuracy at one value of the studied parameter (points).

    Attributes:
        x: The value.
        summary: Seeds of the method there: n, mean, sd, t-interval, in points.
        teacher: Mean teacher accuracy logged by those runs, in points (NaN when none).
        run_keys: The runs behind the point.
    """

    x: float
    summary: stats.CellSummary
    teacher: float
    run_keys: tuple[str, ...]


@dataclass(frozen=True)
class StudyResult:
    """The study's points and its reference line.

    Attributes:
        spec: What varies.
        metric: The metric plotted (a results.csv column).
        points: One per value, sorted by value.
        baseline: The baseline method's seeds (the student alone), or None without runs.
        baseline_method: Its name.
    """

    spec: StudySpec
    metric: str
    points: tuple[StudyPoint, ...]
    baseline: stats.CellSummary | None
    baseline_method: str


def teacher_epoch(teacher: str) -> int | None:
    """The epoch of an early-stopped teacher named ``<arch>@ep<k>``; None otherwise."""
    match = _EPOCH_SUFFIX.search(teacher or "")
    return int(match.group(1)) if match else None


def study_points(
    runs: pd.DataFrame,
    spec: StudySpec,
    *,
    metric: str = "test_acc",
    phase: str = "final",
    baseline: str = "ce",
    confidence: float = 0.95,
) -> StudyResult:
    """Summarise a study's runs.

    Args:
        runs: The checked runs table (one row per run; fractions in [0, 1]).
        spec: What varies.
        metric: The accuracy column to plot.
        phase: Which runs count.
        baseline: The method drawn as the reference line.
        confidence: Coverage of the t-intervals.

    Returns:
        The points, sorted by value.

    Raises:
        LeaderboardError: No finished run of the method, or none with the parameter.
    """
    done = runs[(runs["status"] == "FINISHED") & (runs["phase"] == phase)]
    chosen = done[done["method"] == spec.method]
    if chosen.empty:
        raise LeaderboardError(
            f"study: no finished {spec.method!r} run in phase {phase!r}; the study section "
            "names a method the suite did not run (or its runs did not finish)."
        )
    xs = [_x_of(row, spec) for row in chosen.itertuples(index=False)]
    chosen = chosen.assign(_x=xs)
    chosen = chosen[chosen["_x"].notna()]
    if chosen.empty:
        where = "no teacher named <arch>@ep<k>" if spec.parameter == TEACHER_EPOCH else "none"
        raise LeaderboardError(
            f"study: {spec.method} runs have no value of {spec.parameter!r} ({where}); check "
            "the suite's study section."
        )
    points = []
    for x, group in chosen.groupby("_x", sort=True):
        teacher = group["teacher_test_acc"].astype(float)
        points.append(
            StudyPoint(
                x=float(x),
                summary=stats.cell_summary(group[metric].astype(float) * 100, confidence),
                teacher=float(teacher.mean() * 100) if teacher.notna().any() else math.nan,
                run_keys=tuple(group["run_key"]),
            )
        )
    alone = done[done["method"] == baseline].drop_duplicates("run_key")
    line = (
        stats.cell_summary(alone[metric].astype(float) * 100, confidence)
        if not alone.empty
        else None
    )
    return StudyResult(spec, metric, tuple(points), line, baseline)


def _x_of(row: Any, spec: StudySpec) -> float | None:
    if spec.parameter == TEACHER_EPOCH:
        epoch = teacher_epoch(str(row.teacher))
        return float(epoch) if epoch is not None else None
    value = json.loads(row.params or "{}").get(spec.parameter)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def study_frame(result: StudyResult) -> pd.DataFrame:
    """study.csv: one row per value, numbers in points."""
    rows = []
    base = result.baseline
    for p in result.points:
        s = p.summary
        rows.append(
            {
                "parameter": result.spec.parameter,
                "value": p.x,
                "method": result.spec.method,
                "n": s.n,
                "mean": s.mean,
                "sd": s.sd,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                f"{result.baseline_method}_mean": base.mean if base else math.nan,
                f"gain_vs_{result.baseline_method}": s.mean - base.mean if base else math.nan,
                "teacher_acc": p.teacher,
                "run_keys": ";".join(p.run_keys),
            }
        )
    return pd.DataFrame(rows)


def study_markdown(result: StudyResult) -> list[str]:
    """The README section of a study: a table and the figure."""
    spec, base = result.spec, result.baseline
    name = result.baseline_method
    # Run data, escaped for Markdown and for this hand-made table.
    method, axis, plain_name = (
        md(t).replace("|", "\\|") for t in (spec.method, spec.axis_label, name)
    )
    has_teacher = any(not math.isnan(p.teacher) for p in result.points)
    header = f"| {axis} | {method}: mean ± sd (n) | 95% t-interval | gain over {plain_name}"
    header += " | teacher |" if has_teacher else " |"
    rule = "|---:|---:|---:|---:|" + ("---:|" if has_teacher else "")
    lines = [
        "## Study",
        "",
        f"{result.metric} in percent of {md_code(spec.method)} against {axis}"
        + (
            f"; the student alone ({md_code(name)}): {_mean_sd(base)}."
            if base is not None
            else f"; no {md_code(name)} run to compare with."
        ),
        "",
        f"![{method} against {axis}](figures/{STUDY_FIGURE})",
        "",
        header,
        rule,
    ]
    for p in result.points:
        s = p.summary
        interval = "" if math.isnan(s.ci_low) else f"[{s.ci_low:.2f}, {s.ci_high:.2f}]"
        gain = f"{s.mean - base.mean:+.2f}" if base is not None else ""
        row = f"| {_value(p.x)} | {_mean_sd(s)} | {interval} | {gain} |"
        if has_teacher:
            row += f" {p.teacher:.2f} |" if not math.isnan(p.teacher) else " |"
        lines.append(row)
    lines += [
        "",
        f"Every number traces to its runs: [{STUDY_FILE}]({STUDY_FILE}) lists the run keys "
        "of each point.",
        "",
    ]
    return lines


def _mean_sd(s: stats.CellSummary) -> str:
    sd = "" if math.isnan(s.sd) else f" ± {s.sd:.2f}"
    return f"{s.mean:.2f}{sd} ({s.n})"


def _value(x: float) -> str:
    return f"{x:g}"


def write_study(result: StudyResult, folder: str | Path) -> list[Path]:
    """Write study.csv and figures/study.png into a suite folder."""
    folder = Path(folder)
    study_frame(result).to_csv(
        folder / STUDY_FILE, index=False, float_format="%.10g", lineterminator="\n"
    )
    figure = folder / "figures" / STUDY_FIGURE
    figure.parent.mkdir(parents=True, exist_ok=True)
    save_png(draw_study(result), figure)
    return [folder / STUDY_FILE, figure]
