"""Published numbers beside kdbench's own: ``published.csv`` in a suite folder.

A reproduction suite (``leaderboards/cifar100-crd``) keeps the accuracies the literature
reports for its cells in ``published.csv``; the leaderboard shows them next to the mean over
kdbench's seeds and flags every difference larger than :data:`DEVIATION_FLAG` points. A suite
without the file gets no such section. Columns:

===========  =================================================================================
column       meaning
===========  =================================================================================
dataset      dataset name, as in results.csv
teacher      teacher architecture (kdbench's model name)
student      student architecture
method       kdbench method name; ``ce`` for the student trained alone, ``teacher`` for the
             teacher's own accuracy
top1         the published top-1 accuracy, in percent
source       where the number is printed: paper and table
===========  =================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.leaderboard.aggregate import Cell, CellResult, Leaderboard
from bench.leaderboard.formatting import md, md_code
from bench.leaderboard.runs import LeaderboardError
from bench.textfile import not_utf8

PUBLISHED_FILE = "published.csv"
COMPARISON_FILE = "published_comparison.csv"
COLUMNS = ("dataset", "teacher", "student", "method", "top1", "source")
#: Differences larger than this many points are flagged.
DEVIATION_FLAG = 1.0
TEACHER = "teacher"


@dataclass(frozen=True)
class PublishedRow:
    """One published number and kdbench's counterpart.

    Attributes:
        cell: The (dataset, teacher, student) it belongs to.
        method: kdbench method name, or ``teacher``.
        published: The published top-1 in percent.
        source: Paper and table.
        mean: kdbench's mean over seeds in percent (NaN when kdbench has no finished run).
        sd: Its standard deviation over seeds (NaN below two seeds).
        n: Finished seeds behind ``mean`` (for the teacher: the runs that logged its accuracy).
        entry: The leaderboard entry compared (``method@version``), or "".
    """

    cell: Cell
    method: str
    published: float
    source: str
    mean: float = math.nan
    sd: float = math.nan
    n: int = 0
    entry: str = ""

    @property
    def deviation(self) -> float:
        """kdbench minus published, in points (NaN when kdbench has no number)."""
        return self.mean - self.published

    @property
    def flagged(self) -> bool:
        return not math.isnan(self.deviation) and abs(self.deviation) > DEVIATION_FLAG


def read_published(path: str | Path) -> pd.DataFrame:
    """Read and check a published.csv.

    Raises:
        LeaderboardError: A missing column, an empty cell, a non-numeric or out-of-range
            ``top1``, or one cell and method listed twice; naming the line and column.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise LeaderboardError(f"{path}: cannot read it as CSV ({exc}).") from None
    except UnicodeDecodeError as exc:
        raise LeaderboardError(not_utf8(path, exc)) from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LeaderboardError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must be "
            f"{','.join(COLUMNS)}."
        )
    values = []
    for i, row in table.iterrows():
        line = int(i) + 2
        for column in COLUMNS:
            if not str(row[column]).strip():
                raise LeaderboardError(f"{path}:{line}: column {column!r} is empty.")
        try:
            top1 = float(row["top1"])
        except ValueError:
            raise LeaderboardError(
                f"{path}:{line}: column 'top1' is {row['top1']!r}, not a number (percent)."
            ) from None
        if not 0 < top1 <= 100:
            raise LeaderboardError(
                f"{path}:{line}: column 'top1' is {top1}; give a percentage in (0, 100]."
            )
        values.append(top1)
    table = table.assign(top1=values)
    duplicated = table.duplicated(["dataset", "teacher", "student", "method"], keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        lines = [int(i) + 2 for i in table.index[duplicated]]
        raise LeaderboardError(
            f"{path}: {first['method']} on {first['teacher']} -> {first['student']} "
            f"({first['dataset']}) is listed on lines {lines}; keep one number per cell and method."
        )
    return table


def compare_published(board: Leaderboard, published: pd.DataFrame) -> list[PublishedRow]:
    """Pair every published number with kdbench's mean in the same cell, in file order."""
    rows = []
    for record in published.itertuples(index=False):
        cell = Cell(record.dataset, record.teacher, record.student)
        row = PublishedRow(cell, record.method, float(record.top1), record.source)
        if record.method == TEACHER:
            rows.append(_with_teacher(board, row))
        else:
            result = _result_of(board, cell, record.method)
            if result is not None:
                row = PublishedRow(
                    cell,
                    record.method,
                    row.published,
                    row.source,
                    result.summary.mean,
                    result.summary.sd,
                    result.n,
                    result.entry,
                )
            rows.append(row)
    return rows


def _with_teacher(board: Leaderboard, row: PublishedRow) -> PublishedRow:
    acc = board.teacher_acc.get(row.cell, math.nan)
    n = sum(r.n for (c, _), r in board.results.items() if c == row.cell)
    if math.isnan(acc):
        return row
    return PublishedRow(row.cell, row.method, row.published, row.source, acc, math.nan, n)


def _result_of(board: Leaderboard, cell: Cell, method: str) -> CellResult | None:
    """The cell's result of ``method``: the leaderboard's baseline or reference, else the
    current entry with the most finished seeds (then the highest version); a retired version
    only when the method has no current one."""
    candidates = [r for (c, _), r in board.results.items() if c == cell and r.method == method]
    candidates = [r for r in candidates if r.n > 0]
    retired = {e.entry for e in board.retired}
    candidates = [r for r in candidates if r.entry not in retired] or candidates
    if not candidates:
        return None
    for picked in (board.baseline_entry, board.reference_entry):
        for r in candidates:
            if r.entry == picked:
                return r
    return max(candidates, key=lambda r: (r.n, r.entry))


def comparison_frame(rows: list[PublishedRow]) -> pd.DataFrame:
    """published_comparison.csv: one row per published number with kdbench's beside it."""
    return pd.DataFrame(
        [
            {
                "dataset": r.cell.dataset,
                "teacher": r.cell.teacher,
                "student": r.cell.student,
                "method": r.method,
                "entry": r.entry,
                "published": r.published,
                "kdbench_mean": r.mean,
                "kdbench_sd": r.sd,
                "kdbench_n": r.n,
                "deviation": r.deviation,
                "flagged": r.flagged,
                "source": r.source,
            }
            for r in rows
        ],
        columns=[
            "dataset",
            "teacher",
            "student",
            "method",
            "entry",
            "published",
            "kdbench_mean",
            "kdbench_sd",
            "kdbench_n",
            "deviation",
            "flagged",
            "source",
        ],
    )


def published_markdown(rows: list[PublishedRow]) -> list[str]:
    """The README section: published and kdbench side by side, deviations flagged."""
    if not rows:
        return []
    flagged = sum(r.flagged for r in rows)
    compared = sum(not math.isnan(r.mean) for r in rows)
    lines = [
        "## Published numbers",
        "",
        f"{len(rows)} published numbers from [{PUBLISHED_FILE}]({PUBLISHED_FILE}); kdbench has "
        f"{compared} of them. ⚠ marks a kdbench mean more than {DEVIATION_FLAG:g} point from "
        f"the published one ({flagged} here). Published numbers are single runs or means of "
        "unstated seeds; kdbench's are means over its seeds (sd, n).",
        "",
        "| cell | method | published | kdbench mean ± sd (n) | difference | source |",
        "|:---|:---|---:|---:|---:|:---|",
    ]
    for r in rows:
        ours = "not run" if math.isnan(r.mean) else _mean_sd_n(r)
        diff = "" if math.isnan(r.deviation) else f"{r.deviation:+.2f}"
        if r.flagged:
            diff = f"⚠ {diff}"
        cell = md(r.cell.label).replace("|", "/")
        lines.append(
            f"| {cell} | {md_code(r.method).replace('|', '/')} | {r.published:.2f} | {ours} | "
            f"{diff} | {md(r.source).replace('|', '/')} |"
        )
    return [*lines, ""]


def _mean_sd_n(r: PublishedRow) -> str:
    sd = "" if math.isnan(r.sd) else f" ± {r.sd:.2f}"
    return f"{r.mean:.2f}{sd} ({r.n})"


def published_comparison(board: Leaderboard, folder: str | Path) -> list[PublishedRow] | None:
    """The comparison for a suite folder, or None when it has no published.csv."""
    path = Path(folder) / PUBLISHED_FILE
    if not path.is_file():
        return None
    return compare_published(board, read_published(path))
