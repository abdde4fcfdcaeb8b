"""How often the leaderboard's verdicts are wrong, and how often they find a real effect.

Draws tables of seed scores shaped like a leaderboard, with no true difference between methods
or with one method shifted by a known amount, runs on them the verdicts a leaderboard prints,
and counts. It is pure statistics (numpy and scipy); randomness comes in explicitly as a
`numpy.random.Generator`, so one generator seed always gives the same numbers.

Shapes:

* A *table* is an array of shape (cells, methods, seeds): one score per cell, method and seed.
  A batch of tables has shape (draws, cells, methods, seeds).
* Method 0 is the reference every per-cell test compares with (``kd`` on a leaderboard). The
  leaderboard runs a second family per cell against the baseline (``ce``); it is the same test
  with another column as the reference, so its rates are the same.

The model behind `null_tables`, for draw d, cell c, method m and seed s::

    score = cell[d, c] + shared[d, c, s] + own[d, c, m, s]

``cell`` ~ N(0, cell_sd²) is how hard a (dataset, teacher, student) cell is, the same for every
method; ``shared`` ~ N(0, seed_corr · seed_sd²) is what a seed (its data order and
initialisation) does to every method of a cell; ``own`` ~ N(0, (1 - seed_corr) · seed_sd²) is
each run's own noise. A run's score thus varies by seed_sd around its cell's mean, and two
methods' scores under one seed correlate by seed_corr. There is no method effect and no
method × cell interaction: every "▲" or "▼" on such a table is false. Every test of the
leaderboard compares methods within a cell, so the cell effects cancel; they are drawn so that
a test that failed to cancel them would show it. `shifted` adds a method effect, in the same
units, to every cell of one method.

The verdicts are those of :mod:`bench.leaderboard.stats` with the leaderboard's settings:

* Per cell (`cell_verdicts`): every other method against method 0 by the test
  `stats.compare_to_baseline` runs (paired t when the seeds match, Welch otherwise, or exact
  Mann-Whitney), the same scipy test applied along the seed axis of all cells at once, which
  gives compare_to_baseline's p-values in a fraction of the time; `stats.holm` over the cell's
  family; `stats.verdict` for the mark (none below `stats.MIN_SEEDS` seeds a side).
* Across cells (`table_verdicts`): `stats.wilcoxon_pairwise` on the cell means, all pairs of
  methods Holm-corrected together.

A *family* is one set of tests Holm corrects together: one cell's comparisons with the
reference, or all pairs of one table. `family_false_rate` is the share of families with at
least one false "▲" or "▼" (the family-wise error rate Holm promises to keep at alpha);
`power` is the share of true differences marked with the right sign. `cell_power_floor` and
`table_power_floor` are exact lower bounds on that power, from the Bonferroni step of Holm.

Run ``python -m bench.leaderboard.calibration`` for the numbers at the default shape (12 cells,
4 methods, 5 seeds, 2000 draws, generator seed 0); ``--help`` lists the options. The README
quotes its output.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike

from bench.leaderboard import stats

_SIGNS = {stats.BETTER: 1, stats.WORSE: -1, stats.SAME: 0, None: 0}

#: The cell tests of `stats.compare_to_baseline`, by the name the CLI shows.
CELL_TESTS = {
    "paired t": ("t", True),
    "Welch t": ("t", False),
    "Mann-Whitney": ("mannwhitney", False),
}


@dataclass(frozen=True)
class Rate:
    """A share counted over Monte Carlo draws, with exact binomial bounds.

    Attributes:
        hits: How many trials counted.
        trials: How many trials there were.
        rate: hits / trials.
        low: One-sided Clopper-Pearson lower bound at `confidence` (0 when hits = 0).
        high: One-sided Clopper-Pearson upper bound at `confidence` (1 when hits = trials).
        confidence: Level of each bound.
    """

    hits: int
    trials: int
    rate: float
    low: float
    high: float
    confidence: float


def rate(hits: int, trials: int, confidence: float = 0.99) -> Rate:
    """The share hits / trials with its one-sided Clopper-Pearson bounds.

    Args:
        hits: Number of successes, 0 ≤ hits ≤ trials.
        trials: Number of trials, ≥ 1.
        confidence: Level of each one-sided bound, in (0, 1).

    Returns:
        The rate and its bounds.
    """
    if trials < 1 or not 0 <= hits <= trials:
        raise ValueError(f"rate: need 0 ≤ hits ≤ trials and trials ≥ 1, got {hits}/{trials}.")
    _check_fraction(confidence, "confidence")
    tail = 1 - confidence
    low = 0.0 if hits == 0 else float(scipy.stats.beta.ppf(tail, hits, trials - hits + 1))
    high = (
        1.0 if hits == trials else float(scipy.stats.beta.ppf(confidence, hits + 1, trials - hits))
    )
    return Rate(hits, trials, hits / trials, low, high, confidence)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def null_tables(
    rng: np.random.Generator,
    draws: int,
    cells: int,
    methods: int,
    seeds: int,
    *,
    cell_sd: float = 2.0,
    seed_sd: float = 1.0,
    seed_corr: float = 0.0,
) -> np.ndarray:
    """Leaderboard-shaped tables with no difference between methods (see the module docstring).

    Args:
        rng: Source of randomness, e.g. numpy.random.default_rng(0).
        draws: Number of tables.
        cells: Cells per table.
        methods: Methods per table, the reference (method 0) included.
        seeds: Seeds per cell and method.
        cell_sd: Standard deviation of the cell effects, shared by all methods of a cell.
        seed_sd: Standard deviation of one run's score around its cell's mean.
        seed_corr: Correlation of two methods' scores under the same seed, in [0, 1).

    Returns:
        Scores of shape (draws, cells, methods, seeds).
    """
    _check_rng(rng)
    for name, value in (("draws", draws), ("cells", cells), ("methods", methods)):
        if value < 1:
            raise ValueError(f"null_tables: {name} must be at least 1, got {value}.")
    if seeds < 2:
        raise ValueError(f"null_tables: seeds must be at least 2 for any test, got {seeds}.")
    if cell_sd < 0 or seed_sd <= 0 or not 0 <= seed_corr < 1:
        raise ValueError(
            f"null_tables: need cell_sd ≥ 0, seed_sd > 0 and 0 ≤ seed_corr < 1, got "
            f"cell_sd={cell_sd}, seed_sd={seed_sd}, seed_corr={seed_corr}."
        )
    cell = rng.normal(0.0, cell_sd, size=(draws, cells, 1, 1))
    shared = rng.normal(0.0, seed_sd * math.sqrt(seed_corr), size=(draws, cells, 1, seeds))
    own = rng.normal(0.0, seed_sd * math.sqrt(1 - seed_corr), size=(draws, cells, methods, seeds))
    return cell + shared + own


def shifted(tables: ArrayLike, method: int, shift: float) -> np.ndarray:
    """The tables with one method's scores raised by `shift` in every cell.

    Args:
        tables: Scores of shape (draws, cells, methods, seeds).
        method: Index of the method to shift.
        shift: Amount added to each of its scores (in the scores' units: with the default
            seed_sd = 1 of `null_tables`, in seed standard deviations).

    Returns:
        A new array of the same shape.
    """
    out = _tables(tables, "shifted").copy()
    out[:, :, method, :] += shift
    return out


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------


def cell_verdicts(
    tables: ArrayLike,
    *,
    alpha: float = 0.05,
    test: str = "t",
    paired: bool = True,
) -> np.ndarray:
    """The per-cell marks of every method against method 0, as the leaderboard gives them.

    Args:
        tables: Scores of shape (draws, cells, methods, seeds); seed s of one method is
            paired with seed s of method 0.
        alpha: Family-wise significance level of each cell's Holm family.
        test: "t" or "mannwhitney", the `test` of `stats.compare_to_baseline`.
        paired: With "t", whether the seeds match (paired t-test) or not (Welch's t-test).

    Returns:
        Marks of shape (draws, cells, methods): +1 for ▲ (better than method 0), -1 for ▼,
        0 for ≈ or too few seeds; column 0 is always 0.
    """
    x = _tables(tables, "cell_verdicts")
    draws, cells, methods, seeds = x.shape
    method, reference = x[:, :, 1:, :], np.broadcast_to(x[:, :, :1, :], x[:, :, 1:, :].shape)
    pvalues = cell_pvalues(method, reference, test=test, paired=paired)
    diffs = method.mean(axis=-1) - reference.mean(axis=-1)
    marks = np.zeros((draws, cells, methods), dtype=np.int8)
    for d, c in np.ndindex(draws, cells):
        for m, (diff, p) in enumerate(zip(diffs[d, c], stats.holm(pvalues[d, c]), strict=True)):
            marks[d, c, m + 1] = _SIGNS[stats.verdict(diff, p, seeds, seeds, alpha=alpha).mark]
    return marks


def cell_pvalues(
    method: np.ndarray, reference: np.ndarray, *, test: str = "t", paired: bool = True
) -> np.ndarray:
    """Raw p-values of `stats.compare_to_baseline`'s test, over the last axis of many cells.

    Args:
        method: Scores of shape (..., seeds).
        reference: Scores of the same shape; seed s is paired with the method's seed s.
        test: "t" or "mannwhitney".
        paired: With "t", paired t-test (True) or Welch's t-test (False).

    Returns:
        Two-sided p-values of shape (...).
    """
    with warnings.catch_warnings():
        # As in compare_to_baseline: constant inputs give NaN, which Holm leaves unmarked.
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "mannwhitney":
            res = scipy.stats.mannwhitneyu(
                method, reference, alternative="two-sided", method="exact", axis=-1
            )
        elif test == "t" and paired:
            res = scipy.stats.ttest_rel(method, reference, axis=-1)
        elif test == "t":
            res = scipy.stats.ttest_ind(method, reference, equal_var=False, axis=-1)
        else:
            raise ValueError(f"cell_pvalues: unknown test {test!r}; use 't' or 'mannwhitney'.")
    return np.asarray(res.pvalue, dtype=float)


def table_verdicts(tables: ArrayLike, *, alpha: float = 0.05) -> np.ndarray:
    """The across-cell marks of every pair of methods, as the leaderboard gives them.

    Args:
        tables: Scores of shape (draws, cells, methods, seeds); each method's cell mean over
            the seeds enters `stats.wilcoxon_pairwise`.
        alpha: Family-wise significance level over all pairs of a table.

    Returns:
        Marks of shape (draws, pairs), pairs (a, b) with a < b in the order of
        `itertools.combinations(range(methods), 2)`: +1 when the table marks a better than b
        (▲), -1 when worse, 0 for ≈ or too few cells.
    """
    means = _tables(tables, "table_verdicts").mean(axis=-1)
    draws, _, methods = means.shape
    names = [str(m) for m in range(methods)]
    marks = np.zeros((draws, methods * (methods - 1) // 2), dtype=np.int8)
    for d in range(draws):
        for k, pair in enumerate(stats.wilcoxon_pairwise(means[d], names, alpha=alpha)):
            marks[d, k] = _SIGNS[pair.verdict.mark]
    return marks


def cell_truth(effects: ArrayLike) -> np.ndarray:
    """The true signs behind `cell_verdicts`: each method's effect against method 0's.

    Args:
        effects: Shift of each method, shape (methods,).

    Returns:
        Shape (methods,): sign(effects[m] - effects[0]).
    """
    e = np.asarray(effects, dtype=float)
    return np.sign(e - e[0]).astype(np.int8)


def table_truth(effects: ArrayLike) -> np.ndarray:
    """The true signs behind `table_verdicts`.

    Args:
        effects: Shift of each method, shape (methods,).

    Returns:
        Shape (pairs,): sign(effects[a] - effects[b]) for each pair (a, b), a < b, in the
        order of `table_verdicts`.
    """
    e = np.asarray(effects, dtype=float)
    return np.array([np.sign(e[a] - e[b]) for a, b in combinations(range(e.size), 2)], np.int8)


# --------------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------------


def family_false_rate(
    marks: ArrayLike, truth: ArrayLike = 0, *, family_ndim: int = 1, confidence: float = 0.99
) -> Rate:
    """Share of families with at least one false "▲" or "▼".

    A mark is false when the true difference is zero, or has the other sign.

    Args:
        marks: Marks of +1, -1 or 0, e.g. (draws, cells, methods) from `cell_verdicts` or
            (draws, methods, methods) from `table_verdicts`.
        truth: True signs broadcastable to `marks` (`cell_truth`, `table_truth`); 0, the
            default, means no true difference anywhere.
        family_ndim: How many trailing axes of `marks` hold the tests of one family: 1 for
            `cell_verdicts` (a family per draw and cell) and for `table_verdicts` (a family per
            draw); 2 for `cell_verdicts` read as one family per table.
        confidence: Level of each one-sided bound of the rate.

    Returns:
        The family-wise false rate over all families of `marks`.
    """
    m = np.asarray(marks)
    if not 1 <= family_ndim < m.ndim:
        raise ValueError(
            f"family_false_rate: family_ndim must be between 1 and {m.ndim - 1} for marks of "
            f"shape {m.shape}, got {family_ndim}."
        )
    false = (m != 0) & (m != np.asarray(truth))
    families = false.reshape(*m.shape[: m.ndim - family_ndim], -1).any(axis=-1)
    return rate(int(families.sum()), families.size, confidence)


def power(marks: ArrayLike, truth: ArrayLike, *, confidence: float = 0.99) -> Rate:
    """Share of the true differences that got the right mark.

    Args:
        marks: Marks of +1, -1 or 0, as for `family_false_rate`.
        truth: True signs broadcastable to `marks`, with at least one non-zero.
        confidence: Level of each one-sided bound.

    Returns:
        Over every test whose truth is non-zero, the share marked with the true sign. The
        bounds treat the tests as independent: pass one test per family (e.g. one pair of
        `table_verdicts`) when the tests of a family depend on each other.
    """
    m = np.asarray(marks)
    t = np.broadcast_to(np.asarray(truth), m.shape)
    real = t != 0
    if not real.any():
        raise ValueError("power: truth has no non-zero difference; there is nothing to find.")
    return rate(int((m[real] == t[real]).sum()), int(real.sum()), confidence)


def cell_power_floor(
    shift: float, seeds: int, tests: int, *, alpha: float = 0.05, seed_corr: float = 0.0
) -> float:
    """A lower bound on the per-cell power of the paired t-test with Holm.

    Holm marks every test whose raw p-value is below alpha / tests (its first step), so the
    power is at least the probability that a paired t-test of `seeds` pairs, shifted by
    `shift` seed standard deviations, ends in the upper tail beyond the two-sided alpha / tests
    quantile: a noncentral t probability with noncentrality
    shift · √(seeds / (2 · (1 - seed_corr))).

    Args:
        shift: True difference in seed standard deviations (> 0).
        seeds: Seeds per method, paired.
        tests: Size of the Holm family (methods - 1).
        alpha: Family-wise level.
        seed_corr: Correlation of two methods' scores under one seed, as in `null_tables`.

    Returns:
        The bound, in [0, 1]; 0 below `stats.MIN_SEEDS` seeds, where no mark is given.
    """
    if seeds < stats.MIN_SEEDS:
        return 0.0
    df = seeds - 1
    critical = scipy.stats.t.ppf(1 - alpha / (2 * tests), df)
    noncentrality = shift * math.sqrt(seeds / (2 * (1 - seed_corr)))
    return float(scipy.stats.nct.sf(critical, df, noncentrality))


def table_power_floor(
    shift: float,
    cells: int,
    seeds: int,
    tests: int,
    *,
    alpha: float = 0.05,
    seed_corr: float = 0.0,
) -> float:
    """A lower bound on the across-cell power of the exact Wilcoxon test with Holm.

    With j of the `cells` differences negative, the negative rank sum is at most the sum of
    the j largest ranks. For the largest j whose worst case still gives an exact two-sided
    p-value below alpha / tests, Holm's first step marks the pair whenever at most j
    differences are negative; each is negative with probability Φ(-shift / sd) independently,
    sd = √(2 · (1 - seed_corr) / seeds) being the spread of a difference of cell means.

    Args:
        shift: True difference in seed standard deviations (> 0).
        cells: Cells per table, at most `stats.WILCOXON_EXACT_MAX_N` (the exact test).
        seeds: Seeds per cell and method.
        tests: Size of the Holm family (the number of pairs).
        alpha: Family-wise level.
        seed_corr: Correlation of two methods' scores under one seed, as in `null_tables`.

    Returns:
        The bound, in [0, 1]; 0 when even all-positive differences cannot be marked.
    """
    if not 1 <= cells <= stats.WILCOXON_EXACT_MAX_N:
        raise ValueError(
            f"table_power_floor: cells must be 1 … {stats.WILCOXON_EXACT_MAX_N} (the exact "
            f"Wilcoxon test), got {cells}."
        )
    # counts[w] = how many sign patterns give a negative rank sum of w under the null.
    counts = np.zeros(cells * (cells + 1) // 2 + 1)
    counts[0] = 1
    for r in range(1, cells + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    cdf = np.cumsum(counts) / 2.0**cells
    negatives = -1
    for j in range(cells + 1):
        worst = sum(range(cells - j + 1, cells + 1))
        if worst >= cells * (cells + 1) / 4 or not 2 * cdf[worst] < alpha / tests:
            break
        negatives = j
    if negatives < 0:
        return 0.0
    sd = math.sqrt(2 * (1 - seed_corr) / seeds)
    return float(scipy.stats.binom.cdf(negatives, cells, scipy.stats.norm.cdf(-shift / sd)))


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One row of the calibration report.

    Attributes:
        what: What was measured.
        measured: The rate.
        floor: The exact lower bound for a power row, None for a false-verdict row.
    """

    what: str
    measured: Rate
    floor: float | None = None


def report(
    rng: np.random.Generator,
    *,
    draws: int = 2000,
    cells: int = 12,
    methods: int = 4,
    seeds: int = 5,
    cell_shifts: Sequence[float] = (2.0, 3.0),
    table_shifts: Sequence[float] = (0.5, 1.0),
    alpha: float = 0.05,
    seed_corr: float = 0.0,
) -> list[Line]:
    """False-verdict rates and power at one leaderboard shape.

    Args:
        rng: Source of randomness.
        draws: Tables per measurement.
        cells: Cells per table.
        methods: Methods per table, the reference included.
        seeds: Seeds per cell and method.
        cell_shifts: Effects (seed SDs, method 1 in every cell) whose per-cell power is shown.
        table_shifts: Effects whose across-cell power is shown.
        alpha: The leaderboard's level.
        seed_corr: As in `null_tables`.

    Returns:
        The rows, false-verdict rates first.
    """
    _check_fraction(alpha, "alpha")
    if methods < 2:
        raise ValueError(f"report: need at least 2 methods to compare, got {methods}.")
    null = null_tables(rng, draws, cells, methods, seeds, seed_corr=seed_corr)
    pairs = methods * (methods - 1) // 2
    lines = []
    for name, (test, paired) in CELL_TESTS.items():
        marks = cell_verdicts(null, alpha=alpha, test=test, paired=paired)
        lines.append(
            Line(f"per cell, {name} + Holm ({methods - 1} tests)", family_false_rate(marks))
        )
        if name == "paired t":
            lines.append(
                Line(
                    f"  any of the {cells} cells of a table",
                    family_false_rate(marks, family_ndim=2),
                )
            )
    lines.append(
        Line(
            f"across cells, Wilcoxon + Holm ({pairs} pairs)",
            family_false_rate(table_verdicts(null, alpha=alpha)),
        )
    )
    effects = np.zeros(methods)
    for shift in cell_shifts:
        effects[1] = shift
        marks = cell_verdicts(shifted(null, 1, shift), alpha=alpha)
        lines.append(
            Line(
                f"per cell, paired t: method +{shift:g} seed SD",
                power(marks, cell_truth(effects)),
                cell_power_floor(shift, seeds, methods - 1, alpha=alpha, seed_corr=seed_corr),
            )
        )
    for shift in table_shifts:
        effects[1] = shift
        marks = table_verdicts(shifted(null, 1, shift), alpha=alpha)
        lines.append(
            Line(
                f"across cells: method +{shift:g} seed SD",
                # Pair (0, 1) only: the pairs of one table share its data.
                power(marks[:, :1], table_truth(effects)[:1]),
                table_power_floor(shift, cells, seeds, pairs, alpha=alpha, seed_corr=seed_corr),
            )
        )
    return lines


def format_report(lines: Sequence[Line]) -> str:
    """The rows of `report` as a plain-text table."""
    width = max(len(line.what) for line in lines)
    out = [f"{'':{width}}  {'rate':>6}  {'99% bounds':>15}  {'of':>6}  {'floor':>5}"]
    for line in lines:
        r = line.measured
        floor = "" if line.floor is None else f"{line.floor:.3f}"
        out.append(
            f"{line.what:{width}}  {r.rate:6.3f}  [{r.low:.3f}, {r.high:.3f}]  {r.trials:6d}"
            f"  {floor:>5}".rstrip()
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the calibration report; exit status 2 on bad options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.leaderboard.calibration",
        description="False-verdict rates and power of the leaderboard's tests on simulated "
        "tables (method 0 is the reference; effects are added to method 1).",
    )
    parser.add_argument("--draws", type=int, default=2000, help="tables per measurement")
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--methods", type=int, default=4, help="the reference included")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-corr", type=float, default=0.0, help="in [0, 1)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="random generator seed")
    args = parser.parse_args(argv)
    try:
        lines = report(
            np.random.default_rng(args.seed),
            draws=args.draws,
            cells=args.cells,
            methods=args.methods,
            seeds=args.seeds,
            alpha=args.alpha,
            seed_corr=args.seed_corr,
        )
    except ValueError as e:
        parser.error(str(e))
    print(
        f"alpha = {args.alpha:g}; {args.draws} tables of {args.cells} cells × {args.methods} "
        f"methods × {args.seeds} seeds (seed correlation {args.seed_corr:g}); generator seed "
        f"{args.seed}"
    )
    print(format_report(lines))
    return 0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_fraction(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}.")


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "pass numpy.random.default_rng(seed)."
        )


def _tables(tables: ArrayLike, caller: str) -> np.ndarray:
    x = np.asarray(tables, dtype=float)
    if x.ndim != 4:
        raise ValueError(
            f"{caller}: expected tables of shape (draws, cells, methods, seeds), got {x.shape}."
        )
    return x


if __name__ == "__main__":
    sys.exit(main())
