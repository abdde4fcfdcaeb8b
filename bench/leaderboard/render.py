"""Writing a leaderboard's outputs into its folder.

=================  ============================================================================
file               what it holds
=================  ============================================================================
README.md          verdict, main table and its column legend, notes, per-cell tables,
                   significant pairs, how to read it
results.csv        every run (the source; see :mod:`bench.leaderboard.runs` for the columns)
summary.csv        the main table, one row per method@version, all numbers unrounded
cells.csv          one row per cell and method: seeds, statistics, verdicts, run keys
pairwise.csv       every pair of methods: Wilcoxon signed-rank across cells, Holm-corrected
figures/*.svg      critical-difference diagram, gain intervals, per-cell gain heatmap
index.html         the static page (opens from disk)
published_         with a published.csv in the folder: each published number beside kdbench's
comparison.csv     mean, deviations over one point flagged (:mod:`bench.leaderboard.published`)
study.csv,         for a study suite (``study:`` in suite.yaml): accuracy against what the
figures/study.png  study varies (:mod:`bench.leaderboard.study`)
models.csv         with the Models section: each teacher's and student's parameters, FLOPs and
                   CPU latency (:mod:`bench.leaderboard.models`)
compression.csv    for a suite whose students were compressed: each pruned or int8 variant
                   (:mod:`bench.leaderboard.compression`)
=================  ============================================================================

Nothing written depends on the clock or on where the runs came from, so rebuilding from
``results.csv`` gives the same files, latencies included while models.csv keeps them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bench.leaderboard import formatting as fmt
from bench.leaderboard import stats
from bench.leaderboard.aggregate import Leaderboard
from bench.leaderboard.compression import (
    COMPRESSION_FILE,
    CompressionSummary,
    compression_markdown,
    compression_table,
    summarize,
    write_compression_csv,
)
from bench.leaderboard.figures import FIGURES, svg_size, write_figures
from bench.leaderboard.html import render_html
from bench.leaderboard.models import (
    MODELS_FILE,
    ModelsTable,
    cell_cost,
    models_markdown,
    write_models_csv,
)
from bench.leaderboard.published import (
    COMPARISON_FILE,
    PublishedRow,
    comparison_frame,
    published_comparison,
    published_markdown,
)
from bench.leaderboard.runs import write_results_csv
from bench.leaderboard.study import (
    StudyResult,
    StudySpec,
    study_markdown,
    study_points,
    write_study,
)

OUTPUT_FILES = (
    "README.md",
    "results.csv",
    "summary.csv",
    "cells.csv",
    "pairwise.csv",
    "index.html",
    *(f"figures/{name}" for name in FIGURES),
)

_FLOAT_FORMAT = "%.10g"


def write_outputs(
    board: Leaderboard,
    runs: pd.DataFrame,
    folder: str | Path,
    *,
    mlflow_url: str | None = None,
    study: StudySpec | None = None,
    models: ModelsTable | None = None,
    compression: pd.DataFrame | None = None,
) -> list[Path]:
    """Write every output file of a leaderboard.

    Args:
        board: The leaderboard built from ``runs``.
        runs: The runs table it was built from (written as results.csv).
        folder: The suite folder (created if needed). A published.csv there is compared.
        mlflow_url: MLflow UI base URL for links in index.html, or None.
        study: What a study suite varies, for its table and figure; None for others.
        models: The Models section (written to models.csv too), or None for none.
        compression: Measurements of compressed students, one row per child run
            (:mod:`bench.leaderboard.compression`), or None.

    Returns:
        The paths written: :data:`OUTPUT_FILES` in order, then the published comparison,
        the study's files, models.csv and compression.csv when there are any.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra: list[Path] = []
    published = published_comparison(board, folder)
    if published is not None:
        comparison_frame(published).to_csv(
            folder / COMPARISON_FILE, index=False, float_format=_FLOAT_FORMAT, lineterminator="\n"
        )
        extra.append(folder / COMPARISON_FILE)
    study_result = None
    if study is not None:
        s = board.settings
        study_result = study_points(
            runs,
            study,
            metric=s.metric,
            phase=s.phase,
            baseline=s.baseline_method,
            confidence=s.confidence,
        )
        extra += write_study(study_result, folder)
    if models is not None:
        write_models_csv(models.profiles, folder / MODELS_FILE)
        extra.append(folder / MODELS_FILE)
    compressed = _write_compression(board, runs, compression, folder)
    if compressed is not None:
        extra.append(folder / COMPRESSION_FILE)
    write_results_csv(runs, folder / "results.csv")
    summary_frame(board).to_csv(
        folder / "summary.csv", index=False, float_format=_FLOAT_FORMAT, lineterminator="\n"
    )
    cells_frame(board).to_csv(
        folder / "cells.csv", index=False, float_format=_FLOAT_FORMAT, lineterminator="\n"
    )
    pairwise_frame(board).to_csv(
        folder / "pairwise.csv", index=False, float_format=_FLOAT_FORMAT, lineterminator="\n"
    )
    figures = write_figures(board, folder / "figures")
    (folder / "README.md").write_text(
        render_markdown(
            board,
            published=published,
            study=study_result,
            models=models,
            compression=compressed,
        ),
        encoding="utf-8",
    )
    (folder / "index.html").write_text(
        render_html(
            board,
            mlflow_url=mlflow_url,
            models=models,
            compression=compressed,
            figure_sizes={name: svg_size(path) for name, path in figures.items()},
        ),
        encoding="utf-8",
    )
    return [folder / name for name in OUTPUT_FILES] + extra


def _write_compression(
    board: Leaderboard, runs: pd.DataFrame, measured: pd.DataFrame | None, folder: Path
) -> CompressionSummary | None:
    """compression.csv and its summary; without compressed students, none (and a
    compression.csv left from an earlier build is removed, so the folder stays consistent)."""
    path = folder / COMPRESSION_FILE
    table = compression_table(board, runs, measured) if measured is not None else None
    if table is None or table.empty:
        path.unlink(missing_ok=True)
        return None
    write_compression_csv(table, path)
    return summarize(table, board.settings.confidence)


# --------------------------------------------------------------------------------------------
# CSV tables
# --------------------------------------------------------------------------------------------


def summary_frame(board: Leaderboard) -> pd.DataFrame:
    """The main table with every number unrounded, one row per method@version, the retired
    versions last (``retired`` true, no rank).

    Columns named ``…_<baseline>`` and ``…_<reference>`` use the method names of the settings
    (``ce`` and ``kd`` by default); ``baseline_entry`` and ``reference_entry`` name the entries
    they are (empty when missing). Verdict columns hold ▲, ▼, ≈, or ``insufficient``.
    """
    s = board.settings
    base, ref = s.baseline_method, s.reference_method
    retired = {e.entry for e in board.retired}
    rows = []
    for e in (*board.entries, *board.retired):
        row = {
            "rank": e.rank if e.rank is not None else pd.NA,
            "method": e.method,
            "method_version": e.version,
            "entry": e.entry,
            "coverage": e.coverage,
            "n_cells": len(board.cells),
            "avg_rank": e.avg_rank,
        }
        for name, ci in (
            (f"gain_vs_{base}", e.gain_vs_baseline),
            (f"gain_vs_{ref}", e.gain_vs_reference),
        ):
            row.update({name: ci.estimate, f"{name}_low": ci.low, f"{name}_high": ci.high})
        row.update(
            {
                f"p_improvement_vs_{ref}": e.p_improvement.estimate,
                f"p_improvement_vs_{ref}_low": e.p_improvement.low,
                f"p_improvement_vs_{ref}_high": e.p_improvement.high,
            }
        )
        for name, across in ((ref, e.vs_reference), (base, e.vs_baseline)):
            row.update(
                {
                    f"wilcoxon_vs_{name}_cells": across.n_cells if across else pd.NA,
                    f"wilcoxon_vs_{name}_p": across.pvalue if across else math.nan,
                    f"wilcoxon_vs_{name}_p_holm": across.p_holm if across else math.nan,
                    f"verdict_vs_{name}": _mark(across.verdict) if across else "",
                    f"verdict_vs_{name}_text": across.verdict.text if across else "",
                }
            )
        for name, counts in ((ref, e.wtl_reference), (base, e.wtl_baseline)):
            row.update(
                {
                    f"wins_vs_{name}": counts.wins,
                    f"ties_vs_{name}": counts.ties,
                    f"losses_vs_{name}": counts.losses,
                    f"insufficient_vs_{name}": counts.insufficient,
                }
            )
        row.update(
            {
                "seeds_min": e.seeds_min,
                "seeds_max": e.seeds_max,
                "n_runs": e.n_runs,
                "n_not_finished": e.n_problems,
                f"time_ratio_vs_{base}": e.time_ratio,
                "train_seconds_mean": e.train_seconds,
                "extra_params_median": e.extra_params,
            }
        )
        row.update({f"mean_{m}": v for m, v in e.side.items()})
        row.update(
            {
                "retired": e.entry in retired,
                "baseline_entry": board.baseline_entry or "",
                "reference_entry": board.reference_entry or "",
                "metric": s.metric,
                "phase": s.phase,
                "alpha": s.alpha,
                "bootstrap_seed": s.bootstrap_seed,
                "n_boot": s.n_boot,
                "bootstrap_over_cells": s.bootstrap_over_cells,
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def cells_frame(board: Leaderboard) -> pd.DataFrame:
    """One row per (cell, method@version): seeds, statistics in points, verdicts, run keys."""
    s = board.settings
    rows = []
    for (cell, entry), r in board.results.items():
        row = {
            "dataset": cell.dataset,
            "teacher": cell.teacher,
            "student": cell.student,
            "entry": entry,
            "method": r.method,
            "n": r.n,
            "mean": r.summary.mean,
            "sd": r.summary.sd,
            "ci_low": r.summary.ci_low,
            "ci_high": r.summary.ci_high,
        }
        for name, comp, p_holm, verdict in (
            (s.reference_method, r.vs_reference, r.vs_reference_p_holm, r.vs_reference_verdict),
            (s.baseline_method, r.vs_baseline, r.vs_baseline_p_holm, r.vs_baseline_verdict),
        ):
            row.update(
                {
                    f"diff_vs_{name}": comp.diff if comp else math.nan,
                    f"test_vs_{name}": comp.test if comp else "",
                    f"p_vs_{name}": comp.pvalue if comp else math.nan,
                    f"p_holm_vs_{name}": p_holm,
                    f"verdict_vs_{name}": _mark(verdict) if verdict else "",
                    f"verdict_vs_{name}_text": verdict.text if verdict else "",
                }
            )
        row.update({f"mean_{m}": v for m, v in r.side.items()})
        row.update(
            {
                "seeds": ";".join(str(x.seed) for x in r.seeds),
                "values": ";".join(f"{x.value:.10g}" for x in r.seeds),
                "run_keys": ";".join(r.run_keys),
                "not_finished": " | ".join(r.problems),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def pairwise_frame(board: Leaderboard) -> pd.DataFrame:
    """Every pair of methods (a, b): Wilcoxon signed-rank test of a − b over common cells."""
    rows = [
        {
            "a": p.a,
            "b": p.b,
            "n_cells": p.n_cells,
            "n_nonzero": p.n_nonzero,
            "wins": p.wins,
            "ties": p.ties,
            "losses": p.losses,
            "median_diff": p.median_diff,
            "statistic": p.statistic,
            "pvalue": p.pvalue,
            "p_holm": p.p_holm,
            "test": p.test,
            "verdict": _mark(p.verdict),
            "verdict_text": p.verdict.text,
        }
        for p in board.pairwise
    ]
    columns = ["a", "b", "n_cells", "n_nonzero", "wins", "ties", "losses", "median_diff"]
    columns += ["statistic", "pvalue", "p_holm", "test", "verdict", "verdict_text"]
    return pd.DataFrame(rows, columns=columns)


def _mark(verdict: stats.Verdict) -> str:
    return verdict.mark if verdict.mark is not None else "insufficient"


# --------------------------------------------------------------------------------------------
# README.md
# --------------------------------------------------------------------------------------------


def render_markdown(
    board: Leaderboard,
    *,
    published: list[PublishedRow] | None = None,
    study: StudyResult | None = None,
    models: ModelsTable | None = None,
    compression: CompressionSummary | None = None,
) -> str:
    """The suite folder's README: main table first, then the evidence behind it (with the
    study's table and figure, the compressed students, published numbers beside kdbench's,
    and the models' costs, when given)."""
    s = board.settings
    lines = [
        f"# Leaderboard: {fmt.md(board.name)}",
        "",
        f"{board.n_used} finished runs of phase “{s.phase}” ({board.n_runs} in "
        f"[results.csv](results.csv)) · {len(board.cells)} cells · {len(board.entries)} "
        f"methods · {fmt.metric_name(board)} in percent. The same tables, sortable and with "
        "a drill-down per cell: [index.html](index.html).",
        "",
        f"**Verdict.** {fmt.verdict_line(board, markdown=True)}",
        "",
    ]
    if board.notes:
        lines += [*(f"- {fmt.md(n, code_spans=True)}" for n in board.notes), ""]
    lines += ["## Methods", "", *main_table_markdown(board), ""]
    lines += [*legend_markdown(board), ""]
    lines += _retired_markdown(board)
    if board.cd_groups:
        groups = "; ".join(
            "{" + ", ".join(fmt.md(entry) for entry in g) + "}" for g in board.cd_groups
        )
        lines += [
            f"Not separated by the Wilcoxon–Holm test (critical-difference groups): {groups}.",
            "",
        ]
    lines += [f"![{title}](figures/{name})" for name, title in FIGURES.items()]
    lines += [""]
    if study is not None:
        lines += study_markdown(study)
    if compression is not None:
        lines += compression_markdown(compression)
    if published:
        lines += published_markdown(published)
    if models is not None:
        lines += models_markdown(models)
    lines += ["## How to read this", "", " ".join(fmt.how_to_read(board, markdown=True)), ""]
    lines += ["## Cells", ""]
    for cell in board.cells:
        lines += _cell_markdown(board, cell, cell_cost(models, cell))
    lines += _pairs_markdown(board)
    lines += [
        "## Settings",
        "",
        f"Within-cell test: {s.cell_test_name}; Holm over all methods compared with the same "
        f"baseline in a cell; α = {s.alpha:g}. Across cells: Friedman on the methods covering "
        "every cell, Wilcoxon signed-rank tests (exact up to "
        f"{stats.WILCOXON_EXACT_MAX_N} non-tied cells) Holm-corrected over all pairs. "
        f"Bootstrap: {s.n_boot} replicates, seed {s.bootstrap_seed}, "
        + ("seeds within cells and cells" if s.bootstrap_over_cells else "seeds within cells")
        + ". Every number traces to run keys: cells.csv lists them per cell and method, "
        "results.csv has one row per run.",
        "",
    ]
    return "\n".join(lines)


#: The README's methods table: (column key of :func:`fmt.column_definitions`, header).
_MARKDOWN_COLUMNS = (
    ("rank", "rank"),
    ("method", "method"),
    ("coverage", "coverage"),
    ("gain_baseline", "gain over {base} [{pct} CI]"),
    ("gain_reference", "gain over {ref} [{pct} CI]"),
    ("across", "vs {ref} across cells"),
    ("wtl", "W/T/L vs {ref}"),
    ("p_improvement", "P(> {ref})"),
    ("avg_rank", "avg rank"),
    ("seeds", "seeds"),
    ("cost", "cost"),
)


def _markdown_header(board: Leaderboard) -> list[str]:
    base, ref = fmt.md_code(board.baseline.label), fmt.md_code(board.reference.label)
    pct = f"{board.settings.confidence:.0%}"
    return [h.format(base=base, ref=ref, pct=pct) for _, h in _MARKDOWN_COLUMNS]


def legend_markdown(board: Leaderboard) -> list[str]:
    """What every column of the README's methods table holds, one bullet per column."""
    definitions = fmt.column_definitions(board, markdown=True)
    return [
        f"- **{header}**: {definitions[key]}"
        for (key, _), header in zip(_MARKDOWN_COLUMNS, _markdown_header(board), strict=True)
    ]


def main_table_markdown(board: Leaderboard) -> list[str]:
    """The main table as Markdown lines (also what the project README shows)."""
    header = _markdown_header(board)
    rows = []
    for e in board.entries:
        compared = board.reference_entry is not None and e.entry != board.reference_entry
        rows.append(
            [
                fmt.rank(e),
                fmt.md_code(e.entry),
                fmt.coverage(e, len(board.cells)),
                fmt.interval(e.gain_vs_baseline),
                fmt.interval(e.gain_vs_reference),
                fmt.across_verdict(e.vs_reference),
                fmt.wtl(e.wtl_reference, compared=compared),
                fmt.probability(e.p_improvement),
                fmt.number(e.avg_rank),
                fmt.seeds(e),
                fmt.cost(e, board.baseline_entry),
            ]
        )
    return fmt.markdown_table(
        header, rows, align=["r", "l", "r", "r", "r", "l", "r", "r", "r", "r", "l"]
    )


def _retired_markdown(board: Leaderboard) -> list[str]:
    """Entries of method versions the suite no longer runs, apart from the ranked table."""
    if not board.retired:
        return []
    return [
        "### Retired versions",
        "",
        "Runs of a method version the suite no longer runs (the store still holds them). "
        "Not ranked and left out of every test; their gains are shown for the record.",
        "",
        *fmt.markdown_table(
            fmt.retired_header(board, markdown=True),
            fmt.retired_rows(board, markdown=True),
            align=["l", "l", "r", "r", "r", "r"],
        ),
        "",
    ]


def _cell_markdown(board: Leaderboard, cell, cost: str = "") -> list[str]:
    s = board.settings
    teacher = board.teacher_acc.get(cell, math.nan)
    title = f"### {fmt.md(cell.label)}"
    details = [] if math.isnan(teacher) else [f"teacher {teacher:.2f}%"]
    details += [cost] if cost else []
    if details:
        title += f" ({'; '.join(details)})"
    header = [
        "method",
        "mean ± sd (n)",
        f"{s.confidence:.0%} t-interval",
        f"vs {fmt.md_code(board.reference.label)}",
        f"vs {fmt.md_code(board.baseline.label)}",
        "did not finish",
    ]
    rows = []
    for e in board.entries:
        r = board.result(cell, e.entry)
        if r is None:
            continue
        rows.append(
            [
                fmt.md_code(e.entry),
                fmt.mean_sd_n(r),
                fmt.t_interval(r),
                fmt.cell_verdict(r.vs_reference_verdict, r.vs_reference),
                fmt.cell_verdict(r.vs_baseline_verdict, r.vs_baseline),
                fmt.md("; ".join(r.problems)),
            ]
        )
    return [title, "", *fmt.markdown_table(header, rows, align=["l", "r", "r", "l", "l", "l"]), ""]


def _pairs_markdown(board: Leaderboard) -> list[str]:
    if not board.pairwise:
        return []
    significant = [p for p in board.pairwise if p.verdict.significant]
    lines = ["## Pairwise comparisons across cells", ""]
    if not significant:
        lines += [
            f"No pair of methods differs significantly across cells ({len(board.pairwise)} "
            "Wilcoxon signed-rank tests, Holm-corrected); all pairs are in pairwise.csv.",
            "",
        ]
        return lines
    lines += [
        f"Pairs that differ significantly ({len(significant)} of {len(board.pairwise)}, "
        "Wilcoxon signed-rank on cell means, Holm-corrected); all pairs are in pairwise.csv.",
        "",
    ]
    rows = []
    for p in significant:
        better, worse = (p.a, p.b) if p.verdict.mark == stats.BETTER else (p.b, p.a)
        w, lo = (p.wins, p.losses) if better == p.a else (p.losses, p.wins)
        median = p.median_diff if better == p.a else -p.median_diff
        rows.append(
            [
                fmt.md_code(better),
                fmt.md_code(worse),
                f"{w}/{p.ties}/{lo}",
                fmt.signed(median),
                fmt.pvalue(p.p_holm),
            ]
        )
    header = ["better", "than", "wins/ties/losses", "median gain", "p (Holm)"]
    return lines + fmt.markdown_table(header, rows, align=["l", "l", "r", "r", "r"]) + [""]
