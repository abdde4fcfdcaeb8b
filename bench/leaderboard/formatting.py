"""How numbers and verdicts read in every output (Markdown, HTML, figure labels), and how text
from run data (method entries, params, model and dataset names, failure reasons, notes) is
written into Markdown: :func:`md` and :func:`md_code`, so that it reads as itself and never as
markup."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from bench.leaderboard import stats
from bench.leaderboard.aggregate import (
    Across,
    CellResult,
    EntrySummary,
    Leaderboard,
    cells_needed,
    holm_floor,
)

DASH = "—"

METRIC_NAMES = {
    "test_acc": "test top-1 accuracy",
    "test_top5": "test top-5 accuracy",
    "macro_f1": "test macro-F1",
    "val_acc": "validation top-1 accuracy",
}


def metric_name(board: Leaderboard) -> str:
    return METRIC_NAMES[board.settings.metric]


def number(x: float, digits: int = 2) -> str:
    return DASH if x is None or math.isnan(x) else f"{x:.{digits}f}"


def signed(x: float, digits: int = 2) -> str:
    return DASH if math.isnan(x) else f"{x:+.{digits}f}"


def pvalue(p: float) -> str:
    if math.isnan(p):
        return DASH
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}"


def interval(ci: stats.BootstrapCI, digits: int = 2) -> str:
    """``+1.03 [+0.62, +1.45]``."""
    if math.isnan(ci.estimate):
        return DASH
    return f"{signed(ci.estimate, digits)} [{signed(ci.low, digits)}, {signed(ci.high, digits)}]"


def probability(ci: stats.BootstrapCI) -> str:
    return DASH if math.isnan(ci.estimate) else f"{ci.estimate:.2f}"


def mean_sd_n(result: CellResult | None) -> str:
    """``93.41 ± 0.45 (5)``; one seed has no spread; no seed is a dash."""
    if result is None or result.n == 0:
        return DASH
    s = result.summary
    if result.n == 1:
        return f"{s.mean:.2f} (1)"
    return f"{s.mean:.2f} ± {s.sd:.2f} ({s.n})"


def t_interval(result: CellResult | None) -> str:
    if result is None or result.n < 2:
        return DASH
    return f"[{result.summary.ci_low:.2f}, {result.summary.ci_high:.2f}]"


def cell_verdict(verdict: stats.Verdict | None, comparison: stats.Comparison | None) -> str:
    """A per-cell verdict with the difference in means, e.g. ``▲ +1.02 (p_holm = 0.004)``."""
    if verdict is None:
        return DASH
    if verdict.mark is None or comparison is None:
        return verdict.text
    text = verdict.text
    for head in ("▲ better ", "▼ worse ", "≈ no significant difference ", "≈ no test possible "):
        if text.startswith(head):
            text = text[len(head) :]
    return f"{verdict.mark} {signed(comparison.diff)} {text}"


def across_verdict(across: Across | None) -> str:
    return DASH if across is None else across.verdict.text


def wtl(counts: stats.WinTieLoss, *, compared: bool) -> str:
    """``3/8/1`` wins/ties/losses, with the insufficient cells counted apart."""
    if not compared:
        return DASH
    text = f"{counts.wins}/{counts.ties}/{counts.losses}"
    if counts.insufficient:
        text += f" (+{counts.insufficient} insufficient)"
    return text


def seeds(entry: EntrySummary) -> str:
    if entry.seeds_max == 0:
        return "0"
    if entry.seeds_min == entry.seeds_max:
        return str(entry.seeds_min)
    return f"{entry.seeds_min}–{entry.seeds_max}"


def count(x: float) -> str:
    """Parameters and FLOPs: 950, 12.3k, 4.56M, 1.2G."""
    if math.isnan(x):
        return DASH
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def cost(entry: EntrySummary, baseline: str | None) -> str:
    """Train time relative to the baseline, and the parameters the method adds."""
    parts = []
    if not math.isnan(entry.time_ratio) and baseline and entry.entry != baseline:
        parts.append(f"×{entry.time_ratio:.2f} time")
    elif not math.isnan(entry.train_seconds):
        parts.append(f"{entry.train_seconds:.1f} s/run")
    if not math.isnan(entry.extra_params) and entry.extra_params > 0:
        parts.append(f"+{count(entry.extra_params)} params")
    return ", ".join(parts) or DASH


def coverage(entry: EntrySummary, n_cells: int) -> str:
    return f"{entry.coverage}/{n_cells}"


def rank(entry: EntrySummary) -> str:
    return DASH if entry.rank is None else str(entry.rank)


#: What Markdown (CommonMark with GitHub's extensions) would read as markup in inline text: a
#: backslash, raw HTML or an autolink (``<`` before a letter, ``/``, ``!`` or ``?``), a link or
#: image (``](``, ``][``), emphasis and strikethrough (``*``, ``~``, ``_`` at a word's edge;
#: ``mobile_half`` stays as it is), and a heading or quote at the start of a line.
_MARKUP = re.compile(
    r"\\|<(?=[A-Za-z/!?])|\](?=[(\[])|[*~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|^[#>]"
)


def md(text: object, *, code_spans: bool = False) -> str:
    """Text from run data as Markdown inline text that renders as itself: markup characters
    escaped with a backslash, line breaks as spaces. Ordinary names (``kd@1[temperature=4.0]``,
    ``wrn_40_2``, ``digits: resnet20 → resnet8``) come out unchanged.

    Args:
        text: The text (anything, written with ``str``).
        code_spans: Keep backticks, for kdbench's own text that quotes names in code spans (the
            notes); else a backtick is escaped too.
    """
    out = _MARKUP.sub(lambda m: "\\" + m.group(0), " ".join(str(text).splitlines()))
    return out if code_spans else out.replace("`", "\\`")


def md_code(text: object) -> str:
    r"""Text from run data as a Markdown code span (``\`kd@1\```), which shows it verbatim; a
    backtick inside gets a longer fence, so it cannot end the span."""
    body = " ".join(str(text).splitlines())
    runs = [len(r) for r in re.findall(r"`+", body)]
    if not runs:
        return f"`{body}`"
    fence = "`" * (max(runs) + 1)
    return f"{fence} {body} {fence}"


def markdown_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    """A Markdown table as lines: header, alignment rule (``l`` or ``r`` per column), rows.

    A ``|`` inside a cell is escaped and a line break becomes a space, so no cell can split
    the table.
    """
    rule = {"l": ":---", "r": "---:"}

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(header), "|" + "|".join(rule[a] for a in align) + "|", *(line(r) for r in rows)]


def _quoting(markdown: bool) -> tuple[Callable[[object], str], Callable[[str], str]]:
    """How names and kdbench's text around them are written: for Markdown, escaped (names as
    :func:`md_code` spans, text through :func:`md`); else with plain backticks, which the page
    turns into ``<code>`` after escaping everything for HTML."""
    if markdown:
        return md_code, lambda text: md(text, code_spans=True)
    return (lambda name: f"`{name}`"), (lambda text: text)


def how_to_read(board: Leaderboard, *, markdown: bool = False) -> list[str]:
    """The "how to read this" paragraph, one sentence per item (for the README when
    ``markdown``, names escaped; else for the page)."""
    s = board.settings
    code, text = _quoting(markdown)
    base, ref = code(board.baseline.label), code(board.reference.label)
    need = stats.wilcoxon_min_cells(s.alpha)
    pct = f"{s.confidence:.0%}"
    metric = METRIC_NAMES[s.metric]
    lines = [
        f"Scores are {metric} in percent, one run per seed, phase “{s.phase}”. "
        "A cell is one dataset with one teacher → student pair.",
        f"The baseline is {text(board.baseline.description)} (the student trained alone); the "
        f"reference is {text(board.reference.description)} (vanilla KD). Each is that one "
        "setting, as the suite declares it (`leaderboard:` in suite.yaml) or else the "
        "method's defaults; the columns that compare with them name them.",
        f"Gains are in percentage points over {base} and over {ref}: the mean over the "
        f"cells both entries have of the difference in seed means, with a {pct} stratified "
        f"bootstrap interval ({s.n_boot} replicates, seed {s.bootstrap_seed}; seeds resampled "
        "within each cell"
        + ("; cells resampled too" if s.bootstrap_over_cells else "")
        + "). An interval that excludes 0 is not a significance test; the verdict columns are.",
        f"“vs {ref} across cells” is a Wilcoxon signed-rank test on the cell means over the "
        f"cells both have, Holm-corrected over all pairs of methods: ▲ better, ▼ worse, "
        f"≈ no significant difference at α = {s.alpha:g}. With fewer than {need} cells the test "
        "cannot reach significance and the table says “insufficient cells” instead.",
        f"W/T/L counts the cells where the within-cell test against {ref} says ▲ / ≈ / ▼. "
        f"The within-cell test is the {s.cell_test_name}, Holm-corrected over all methods "
        f"compared with the same baseline in the same cell; a cell with fewer than "
        f"{stats.MIN_SEEDS} seeds on a side gets no verdict (“insufficient seeds”).",
        f"P(> {ref}) is the chance that a random run of the method beats a random run of "
        f"{ref} on a random common cell (0.5: neither tends to win).",
        "Rank orders the methods that cover every cell by their average rank over the cells "
        f"(1 = best; Friedman test in the notes); equal average ranks are ordered by the "
        f"higher mean {metric} over the cells, then by name. Methods with partial coverage "
        "follow, unranked, by name. "
        f"Coverage is cells with a finished run / all cells. Cost is train time relative to "
        f"{base} (geometric mean over cells) and the parameters the method adds.",
    ]
    if board.retired:
        lines.append(
            "Retired versions are runs of a method version the suite no longer runs: shown "
            "apart with their gains, never ranked, and left out of every test."
        )
    return lines


def retired_rows(board: Leaderboard, *, markdown: bool = False) -> list[list[str]]:
    """The “Retired versions” table's rows: entry, the version current now, coverage, gains
    over the baseline and the reference, seeds (names escaped for Markdown when
    ``markdown``)."""
    n_cells = len(board.cells)
    code, _ = _quoting(markdown)
    return [
        [
            code(e.entry),
            code(f"{e.method}@{board.current_versions.get(e.method, e.version)}"),
            coverage(e, n_cells),
            interval(e.gain_vs_baseline),
            interval(e.gain_vs_reference),
            seeds(e),
        ]
        for e in board.retired
    ]


def retired_header(board: Leaderboard, *, markdown: bool = False) -> list[str]:
    pct = f"{board.settings.confidence:.0%}"
    code, _ = _quoting(markdown)
    return [
        "retired entry",
        "current version",
        "coverage",
        f"gain over {code(board.baseline.label)} [{pct} CI]",
        f"gain over {code(board.reference.label)} [{pct} CI]",
        "seeds",
    ]


# --------------------------------------------------------------------------------------------
# The verdict and the column legend (the page and the README say the same)
# --------------------------------------------------------------------------------------------

#: Per-run metrics the page's methods table shows when any run logged them:
#: (label, metric, first sort direction, what it is).
SIDE_COLUMNS = (
    (
        "Top-5",
        "test_top5",
        "descending",
        "top-5 accuracy on the test split (%), the mean over the covered cells of the seed means.",
    ),
    (
        "Macro-F1",
        "macro_f1",
        "descending",
        "F1 score of each class on the test split, averaged over the classes with equal "
        "weight (%); mean over the covered cells.",
    ),
    (
        "ECE",
        "ece",
        "ascending",
        "expected calibration error on the test split (%): the test images are put in 15 "
        "equal-width bins of the student's top probability, and ECE is the average over the "
        "bins, weighted by their share of images, of |accuracy − mean top probability|. "
        "Lower is better calibrated; mean over the covered cells.",
    ),
    (
        "Agreement",
        "agreement",
        "descending",
        "share of test images on which the student's top-1 prediction equals the teacher's "
        "(%); — for methods trained without a teacher. Mean over the covered cells.",
    ),
)


def side_columns(board: Leaderboard) -> list[tuple[str, str, str, str]]:
    """The :data:`SIDE_COLUMNS` some entry of ``board`` has a value for."""
    return [
        column
        for column in SIDE_COLUMNS
        if any(not math.isnan(e.side.get(column[1], math.nan)) for e in board.entries)
    ]


def column_definitions(board: Leaderboard, *, markdown: bool = False) -> dict[str, str]:
    """What each column of the methods table holds, keyed ``rank``, ``method``, ``coverage``,
    ``gain_baseline``, ``gain_reference``, ``across``, ``wtl``, ``p_improvement``,
    ``avg_rank``, ``seeds``, ``cost``, and each side column's metric (``ece``, …). Names are
    code spans (escaped for Markdown when ``markdown``; plain backticks for the page)."""
    s = board.settings
    code, _ = _quoting(markdown)
    base, ref = code(board.baseline.label), code(board.reference.label)
    metric = METRIC_NAMES[s.metric]
    pct = f"{s.confidence:.0%}"
    gain = (
        "in points of {metric}: the mean over the cells both have of the difference in seed "
        f"means, with a {pct} bootstrap interval (seeds resampled within cells"
        + (", cells resampled too" if s.bootstrap_over_cells else "")
        + ")."
    ).replace("{metric}", metric)
    need = stats.wilcoxon_min_cells(s.alpha)
    texts = {
        "rank": "position by average rank among the methods that cover every cell (1 = best; "
        f"equal average ranks by the higher mean {metric}, then by name); — for partial coverage.",
        "method": "`method@version`: the method's registered name and its `version`, which "
        "the method's author bumps whenever its behaviour changes (runs of two versions are "
        "never pooled); `[name=value]` after it names the parameters when one version ran "
        "with several settings.",
        "coverage": "cells with at least one finished run / all cells (a cell is one dataset "
        "with one teacher → student pair).",
        "gain_baseline": f"gain over {base}, the student trained alone, {gain}",
        "gain_reference": f"gain over {ref}, the reference (vanilla KD), {gain}",
        "across": f"Wilcoxon signed-rank test of the cell means against {ref} over the cells "
        f"both have, Holm-corrected over all pairs of methods: ▲ better, ▼ worse, ≈ no "
        f"significant difference at α = {s.alpha:g}, with the corrected p-value; "
        f"“insufficient cells” when too few cells could reach significance (at least {need}).",
        "wtl": f"cells where the within-cell test against {ref} says ▲ better / ≈ no "
        f"difference / ▼ worse ({s.cell_test_name}; Holm over the methods of the cell); cells "
        f"with fewer than {stats.MIN_SEEDS} seeds on a side are counted apart as insufficient.",
        "p_improvement": f"probability that a random run of the method beats a random run of "
        f"{ref} on a random common cell (0.5: neither tends to win).",
        "avg_rank": "the method's rank in each cell (1 = highest mean), averaged over the "
        "cells; — for partial coverage.",
        "seeds": "finished seeds per covered cell (fewest–most when they differ).",
        "cost": f"training time relative to {base} (geometric mean over the common cells of "
        "the mean seconds per run), and the parameters the method adds for training "
        f"(connectors, heads, memory); {base} itself shows its seconds per run.",
    }
    for _, metric_key, _, text in SIDE_COLUMNS:
        texts[metric_key] = text
    return texts


def verdict_line(board: Leaderboard, *, markdown: bool = False) -> str:
    """One sentence: which methods beat the reference across cells, by which test and with
    which p-value, or that nothing is established and why (the page's and the README's first
    line)."""
    s = board.settings
    code, _ = _quoting(markdown)
    ref = code(board.reference.label)
    if board.reference_entry is None:
        return (
            f"Nothing is compared with {ref}: it has no finished run in phase “{s.phase}”, "
            "so no method can be said to beat it."
        )
    across = [(e, e.vs_reference) for e in board.entries if e.vs_reference is not None]
    if not across:
        return f"Nothing to compare: {ref} is the only method."
    better = sorted(
        ((e, a) for e, a in across if a.verdict.mark == stats.BETTER), key=lambda x: x[1].p_holm
    )
    worse = sorted(
        ((e, a) for e, a in across if a.verdict.mark == stats.WORSE), key=lambda x: x[1].p_holm
    )
    tests = sum(not math.isnan(p.pvalue) for p in board.pairwise)
    how = _across_test(across, tests, s.alpha)
    if better:
        items = "; ".join(
            f"{code(e.entry)} ({signed(e.gain_vs_reference.estimate)} points, higher in "
            f"{a.wins} of {a.n_cells} cells, {_p_holm(a.p_holm)})"
            for e, a in better
        )
        line = f"Better than {ref} across cells: {items}, by the {how}."
    else:
        line = _why_none(board, across, tests, how, code) + _single_cells(board, code)
    if worse:
        names = ", ".join(f"{code(e.entry)} ({_p_holm(a.p_holm)})" for e, a in worse)
        line += f" Worse than {ref}: {names}."
    return line


def _p_holm(p: float) -> str:
    """``p_holm = 0.004``, or ``p_holm < 0.0001``."""
    text = pvalue(p)
    return f"p_holm {text}" if text.startswith("<") else f"p_holm = {text}"


def _across_test(across: list[tuple[EntrySummary, Across]], tests: int, alpha: float) -> str:
    kinds = {a.test for _, a in across if a.test}
    exact = "exact " if kinds == {"exact"} else ""
    return (
        f"{exact}Wilcoxon signed-rank test on cell means, Holm-corrected over "
        f"{tests} pair{'s' if tests != 1 else ''} of methods (α = {alpha:g})"
    )


def _why_none(
    board: Leaderboard,
    across: list[tuple[EntrySummary, Across]],
    tests: int,
    how: str,
    code: Callable[[object], str],
) -> str:
    """Why no method is better than the reference across cells."""
    s = board.settings
    ref = code(board.reference.label)
    n = len(board.cells)
    need = stats.wilcoxon_min_cells(s.alpha)
    cells = f"{n} cell{'s' if n != 1 else ''}"
    if n < need:
        return (
            f"Nothing is established against {ref}: {cells}, and the across-cell Wilcoxon "
            f"signed-rank test needs {need} to reach α = {s.alpha:g}."
        )
    if holm_floor(board.pairwise) >= s.alpha:
        return (
            f"Nothing is established against {ref}: with {cells}, {tests} Holm-corrected "
            f"pairs of methods cannot reach α = {s.alpha:g}; the across-cell test needs "
            f"{cells_needed(tests, s.alpha)} cells."
        )
    if all(a.verdict.insufficient for _, a in across):
        return (
            f"Nothing is established against {ref}: no method has {need} cells with a mean "
            f"different from {ref}'s, the fewest the across-cell Wilcoxon signed-rank test "
            "needs."
        )
    ahead = [(e, a) for e, a in across if not a.verdict.insufficient and a.median_diff > 0]
    if not ahead:
        return f"No method is better than {ref} across {cells} by the {how}."
    e, a = min(ahead, key=lambda x: x[1].p_holm)
    return (
        f"No method is better than {ref} across {cells} by the {how}; the closest, "
        f"{code(e.entry)}, has {_p_holm(a.p_holm)}."
    )


def _single_cells(board: Leaderboard, code: Callable[[object], str]) -> str:
    """The within-cell wins over the reference, as weaker evidence."""
    n = len(board.cells)
    # Most cells won first; equal counts keep the table's order.
    winners = sorted(
        (e for e in board.entries if e.wtl_reference.wins), key=lambda e: -e.wtl_reference.wins
    )
    if not winners:
        return ""
    shown = ", ".join(f"{code(e.entry)} in {e.wtl_reference.wins} of {n}" for e in winners[:4])
    more = f" and {len(winners) - 4} more" if len(winners) > 4 else ""
    test = "t-test" if board.settings.cell_test == "t" else "exact Mann-Whitney U test"
    return (
        f" Within single cells only ({test} on the seeds, Holm-corrected within the cell), "
        f"better than {code(board.reference.label)}: {shown}{more} "
        f"cell{'s' if n != 1 else ''}."
    )
