"""Statistics behind the leaderboards.

Small pure functions on numpy arrays. Conventions shared by every function here:

* Scores are "higher is better" (accuracies).
* A *cell* is one (dataset, teacher, student, method) combination; its values are one score
  per seed.
* NaN means *missing*: a seed that failed, or a cell a method has not been run on. Each
  function documents how it treats NaN. Infinite scores are rejected as invalid input.
* Randomness is passed in explicitly as a `numpy.random.Generator`; nothing here touches
  global random state, so the same generator seed gives the same numbers.
* A claim that one method is better than another is only ever made through a `Verdict`,
  which refuses to mark a difference when there are too few seeds or cells for the test to
  be able to show one.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike

BETTER = "▲"
WORSE = "▼"
SAME = "≈"

#: Fewest seeds per side for which a per-cell difference may be marked. With two seeds a side
#: the Welch test has about one degree of freedom and the exact Mann-Whitney U test cannot go
#: below p = 1/3, so any mark would be noise.
MIN_SEEDS = 3

#: Above this many non-zero differences the Wilcoxon p-value uses the normal approximation.
WILCOXON_EXACT_MAX_N = 50


# --------------------------------------------------------------------------------------------
# Result records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellSummary:
    """Seed statistics of one cell.

    Attributes:
        n: Number of finite seed values.
        mean: Mean over seeds (NaN when n = 0).
        sd: Sample standard deviation, ddof=1 (NaN when n < 2).
        ci_low: Lower end of the t-interval for the mean (NaN when n < 2).
        ci_high: Upper end of the t-interval for the mean (NaN when n < 2).
    """

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """A method's seeds against a baseline's seeds within one cell.

    Attributes:
        test: Which test produced the p-value: "paired t-test", "Welch t-test" or
            "exact Mann-Whitney U".
        statistic: The t statistic (method minus baseline) or the U statistic of the method.
        pvalue: Two-sided, uncorrected p-value; NaN when the test is undefined (too few
            values, or no variance at all).
        diff: mean(method) - mean(baseline).
        n_method: Number of method values used.
        n_baseline: Number of baseline values used.
    """

    test: str
    statistic: float
    pvalue: float
    diff: float
    n_method: int
    n_baseline: int


@dataclass(frozen=True)
class Verdict:
    """What a leaderboard may say about a difference.

    Attributes:
        mark: BETTER ("▲"), WORSE ("▼"), SAME ("≈"), or None when there is too little data
            for the test to be able to show a difference.
        text: The words to print, e.g. "▲ better (p_holm = 0.012)" or
            "insufficient seeds (n=2 vs 5; need ≥ 3 per side)".
    """

    mark: str | None
    text: str

    @property
    def insufficient(self) -> bool:
        """True when the data cannot support any claim."""
        return self.mark is None

    @property
    def significant(self) -> bool:
        """True when the verdict claims a difference (▲ or ▼)."""
        return self.mark in (BETTER, WORSE)


@dataclass(frozen=True)
class WinTieLoss:
    """Counts of cell verdicts against one baseline.

    Attributes:
        wins: Cells marked ▲.
        ties: Cells marked ≈.
        losses: Cells marked ▼.
        insufficient: Cells with too few seeds to be marked.
    """

    wins: int
    ties: int
    losses: int
    insufficient: int


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test across cells.

    Attributes:
        statistic: Friedman chi-square statistic (NaN when insufficient or all ranks tie).
        pvalue: p-value from the chi-square approximation (NaN likewise).
        n_cells: Number of complete cells used (rows without NaN).
        n_methods: Number of methods.
        insufficient: Why the test was not run, or None when it was.
    """

    statistic: float
    pvalue: float
    n_cells: int
    n_methods: int
    insufficient: str | None


@dataclass(frozen=True)
class PairComparison:
    """Wilcoxon signed-rank comparison of methods `a` and `b` across cells.

    Differences are always a - b, so wins count the cells where `a` scores higher and the
    verdict's ▲ means `a` is better than `b`.

    Attributes:
        a: First method name.
        b: Second method name.
        n_cells: Cells where both methods have a score.
        n_nonzero: Of those, cells where the scores differ; this is the N of the test.
        wins: Cells where a > b.
        ties: Cells where a == b.
        losses: Cells where a < b.
        median_diff: Median of a - b over the common cells (NaN when there are none).
        statistic: Two-sided Wilcoxon statistic, the smaller of the positive and negative
            rank sums (NaN when n_nonzero = 0).
        pvalue: Uncorrected two-sided p-value (NaN when n_nonzero = 0).
        p_holm: Holm-adjusted p-value over all pairs of the table.
        test: "exact" or "asymptotic", how the p-value was computed ("" when not computed).
        verdict: What may be claimed.
    """

    a: str
    b: str
    n_cells: int
    n_nonzero: int
    wins: int
    ties: int
    losses: int
    median_diff: float
    statistic: float
    pvalue: float
    p_holm: float
    test: str
    verdict: Verdict


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap interval.

    Attributes:
        estimate: The statistic on the observed data.
        low: Lower percentile of the bootstrap replicates.
        high: Upper percentile of the bootstrap replicates.
        n_cells: Number of cells that entered the estimate.
    """

    estimate: float
    low: float
    high: float
    n_cells: int


# --------------------------------------------------------------------------------------------
# Within one cell
# --------------------------------------------------------------------------------------------


def cell_summary(values: ArrayLike, confidence: float = 0.95) -> CellSummary:
    """Summarise the seeds of one cell.

    The interval is mean ± t_{(1+confidence)/2, n-1} · sd / √n.

    Args:
        values: Scores of shape (n_seeds,). NaN entries (failed seeds) are dropped.
        confidence: Coverage of the t-interval, in (0, 1).

    Returns:
        The summary. With no finite value every number is NaN; with one value only the mean
        is defined (sd and interval are NaN, not zero: one seed says nothing about spread).
    """
    _check_fraction(confidence, "confidence")
    x = _finite_1d(values, "values")
    n = x.size
    if n == 0:
        return CellSummary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return CellSummary(n, mean, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half_width = float(scipy.stats.t.ppf((1 + confidence) / 2, df=n - 1)) * sd / math.sqrt(n)
    return CellSummary(n, mean, sd, mean - half_width, mean + half_width)


def compare_to_baseline(
    method: ArrayLike,
    baseline: ArrayLike,
    *,
    method_seeds: ArrayLike | None = None,
    baseline_seeds: ArrayLike | None = None,
    test: Literal["t", "mannwhitney"] = "t",
) -> Comparison:
    """Two-sided test of a method's seed scores against a baseline's within one cell.

    Which test:

    * ``test="t"`` (default). When both seed lists are given and, after dropping NaN
      values, name exactly the same seeds, the runs are paired by seed (same data order and
      initialisation) and the paired t-test is used: pairing removes the seed-to-seed
      variation both runs share. Otherwise Welch's t-test is used, which does not assume
      equal variances (KD methods often change the spread across seeds).
    * ``test="mannwhitney"``: the exact Mann-Whitney U test, free of the normality
      assumption; it ignores pairing. With tied scores its exact p-value does not correct
      for the ties.

    Args:
        method: The method's scores, shape (n,). NaN entries (failed seeds) are dropped.
        baseline: The baseline's scores, shape (m,). NaN entries are dropped.
        method_seeds: Seed of each method score, shape (n,), or None if unknown.
        baseline_seeds: Seed of each baseline score, shape (m,), or None if unknown.
        test: "t" or "mannwhitney", see above.

    Returns:
        The comparison. Its p-value is NaN when the test is undefined: fewer than two values
        (pairs for the paired test) on a side for the t-tests, an empty side for
        Mann-Whitney, or no variance at all with equal means. With no variance and
        different means the t statistic is ±inf and the p-value 0.

    Raises:
        ValueError: On an unknown test, mismatched seed lengths, or a seed listed twice.
    """
    x, x_seeds = _values_and_seeds(method, method_seeds, "method")
    y, y_seeds = _values_and_seeds(baseline, baseline_seeds, "baseline")
    diff = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    if test == "mannwhitney":
        if x.size == 0 or y.size == 0:
            return Comparison("exact Mann-Whitney U", math.nan, math.nan, diff, x.size, y.size)
        res = scipy.stats.mannwhitneyu(x, y, alternative="two-sided", method="exact")
        return Comparison(
            "exact Mann-Whitney U", float(res.statistic), float(res.pvalue), diff, x.size, y.size
        )
    if test != "t":
        raise ValueError(
            f"compare_to_baseline: unknown test {test!r}; use 't' (paired or Welch t-test) "
            "or 'mannwhitney' (exact Mann-Whitney U)."
        )
    if x_seeds is not None and y_seeds is not None and _same_seeds(x_seeds, y_seeds):
        x, y = x[np.argsort(x_seeds)], y[np.argsort(y_seeds)]
        name, run = "paired t-test", scipy.stats.ttest_rel
    else:
        name, run = "Welch t-test", functools.partial(scipy.stats.ttest_ind, equal_var=False)
    if x.size < 2 or y.size < 2:
        return Comparison(name, math.nan, math.nan, diff, x.size, y.size)
    with warnings.catch_warnings():
        # Constant inputs make scipy warn and return NaN or ±inf, which is what we document.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = run(x, y)
    return Comparison(name, float(res.statistic), float(res.pvalue), diff, x.size, y.size)


# --------------------------------------------------------------------------------------------
# Multiple comparisons and verdicts
# --------------------------------------------------------------------------------------------


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm step-down adjusted p-values.

    With the m defined p-values sorted ascending, p_(1) ≤ … ≤ p_(m), the adjusted value of
    p_(i) is max_{j ≤ i} min(1, (m - j + 1) · p_(j)): monotone in p and capped at 1.
    Example: [0.01, 0.04, 0.03] → [0.03, 0.06, 0.06].

    Args:
        pvalues: Raw p-values of one family, shape (m,). NaN entries (tests that could not
            be run) stay NaN and do not count toward m.

    Returns:
        Adjusted p-values, shape (m,), in the input order.

    Raises:
        ValueError: If the input is not 1-D or holds a value outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"holm: expected a 1-D array of p-values, got shape {p.shape}.")
    defined = np.flatnonzero(~np.isnan(p))
    if np.any((p[defined] < 0) | (p[defined] > 1)):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p[defined].tolist()}.")
    adjusted = np.full(p.shape, math.nan)
    m = defined.size
    if m == 0:
        return adjusted
    order = defined[np.argsort(p[defined], kind="stable")]
    step_down = p[order] * (m - np.arange(m))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(step_down))
    return adjusted


def holm_reject(pvalues: ArrayLike, alpha: float = 0.05) -> np.ndarray:
    """Which hypotheses of a family Holm's procedure rejects at family-wise level alpha.

    Args:
        pvalues: Raw p-values, shape (m,); NaN entries are never rejected and do not count
            toward m.
        alpha: Family-wise error rate.

    Returns:
        Boolean array, shape (m,): True where the Holm-adjusted p-value is < alpha.
    """
    _check_fraction(alpha, "alpha")
    return holm(pvalues) < alpha


def mark(diff: float, p_adjusted: float, alpha: float = 0.05) -> str:
    """The mark for a difference: ▲ or ▼ only when the corrected p-value is below alpha.

    Args:
        diff: Method minus baseline (any summary whose sign gives the direction).
        p_adjusted: Multiplicity-corrected p-value; NaN means no test, hence ≈.
        alpha: Significance level; the comparison is strict (p < alpha).

    Returns:
        "▲" when p_adjusted < alpha and diff > 0, "▼" when p_adjusted < alpha and diff < 0,
        otherwise "≈" (also for a NaN diff or p-value).
    """
    if not p_adjusted < alpha:
        return SAME
    if diff > 0:
        return BETTER
    if diff < 0:
        return WORSE
    return SAME


def verdict(
    diff: float,
    p_adjusted: float,
    n_method: int,
    n_baseline: int,
    *,
    alpha: float = 0.05,
    min_seeds: int = MIN_SEEDS,
) -> Verdict:
    """The verdict for one cell's comparison, refusing to mark when seeds are too few.

    Args:
        diff: mean(method) - mean(baseline), e.g. `Comparison.diff`.
        p_adjusted: The comparison's p-value after correction within its family.
        n_method: Seeds of the method (`Comparison.n_method`).
        n_baseline: Seeds of the baseline (`Comparison.n_baseline`).
        alpha: Significance level.
        min_seeds: Fewest seeds a side needs before any mark is given.

    Returns:
        Verdict(None, "insufficient seeds (n=… vs …; need ≥ … per side)") when a side has
        fewer than `min_seeds` seeds; otherwise the mark of `mark` with its wording.
    """
    if min(n_method, n_baseline) < min_seeds:
        return Verdict(
            None,
            f"insufficient seeds (n={n_method} vs {n_baseline}; need ≥ {min_seeds} per side)",
        )
    return _marked_verdict(mark(diff, p_adjusted, alpha), p_adjusted)


def win_tie_loss(verdicts: Iterable[Verdict]) -> WinTieLoss:
    """Count cell verdicts of one method against one baseline.

    Args:
        verdicts: One verdict per cell.

    Returns:
        Wins (▲), ties (≈), losses (▼) and insufficient cells (no mark).
    """
    marks = [v.mark for v in verdicts]
    return WinTieLoss(
        wins=marks.count(BETTER),
        ties=marks.count(SAME),
        losses=marks.count(WORSE),
        insufficient=marks.count(None),
    )


# --------------------------------------------------------------------------------------------
# Across cells: ranks, Friedman, pairwise Wilcoxon-Holm, critical-difference groups
# --------------------------------------------------------------------------------------------


def average_ranks(scores: ArrayLike) -> np.ndarray:
    """Average rank of each method over the complete cells.

    Within a cell the best score gets rank 1; tied scores share the average of their ranks
    (e.g. [0.9, 0.8, 0.8] → [1, 2.5, 2.5]).

    Args:
        scores: Shape (n_cells, n_methods), one summary score (e.g. the seed mean) per cell
            and method. Rows with any NaN are dropped, so that every rank is taken over the
            same set of methods (and the same cells as `friedman`).

    Returns:
        Shape (n_methods,): mean rank per method, all NaN when no row is complete.
    """
    complete = _complete_rows(_scores_matrix(scores, "average_ranks"))
    if complete.shape[0] == 0:
        return np.full(complete.shape[1], math.nan)
    return scipy.stats.rankdata(-complete, axis=1).mean(axis=0)


def friedman(scores: ArrayLike) -> FriedmanResult:
    """Friedman test that all methods rank alike across cells.

    Only complete cells (rows without NaN) are used, as the test needs every method ranked
    in every cell. The test is run when there are at least 3 methods (with 2, the pairwise
    Wilcoxon test answers the same question with more power, and scipy refuses) and at
    least 2 complete cells. The p-value uses the chi-square approximation.

    Args:
        scores: Shape (n_cells, n_methods), higher is better; NaN marks a missing cell.

    Returns:
        The result; statistic and p-value are NaN with a reason in `insufficient` when the
        rule above is not met, and NaN without a reason when every cell ranks all methods
        equal.
    """
    complete = _complete_rows(_scores_matrix(scores, "friedman"))
    n_cells, n_methods = complete.shape
    reason = None
    if n_methods < 3:
        reason = f"insufficient methods (k={n_methods}; Friedman needs ≥ 3)"
    elif n_cells < 2:
        reason = f"insufficient cells (N={n_cells} complete; Friedman needs ≥ 2)"
    if reason is not None:
        return FriedmanResult(math.nan, math.nan, n_cells, n_methods, reason)
    with warnings.catch_warnings():
        # All-tied rows make the statistic 0/0; scipy warns and returns NaN, as documented.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = scipy.stats.friedmanchisquare(*complete.T)
    return FriedmanResult(float(res.statistic), float(res.pvalue), n_cells, n_methods, None)


def wilcoxon_min_cells(alpha: float = 0.05) -> int:
    """Fewest non-zero differences for which the exact two-sided Wilcoxon test can give p < alpha.

    The smallest exact two-sided p-value with N differences is 2 / 2**N (all signs equal),
    so N must satisfy 2**(1 - N) < alpha: 6 for alpha = 0.05 (p = 0.03125; with 5 it is
    0.0625).

    Args:
        alpha: Significance level.

    Returns:
        The smallest such N.
    """
    _check_fraction(alpha, "alpha")
    n = 1
    while 2.0 ** (1 - n) >= alpha:
        n += 1
    return n


def wilcoxon_pairwise(
    scores: ArrayLike, names: Sequence[str], alpha: float = 0.05
) -> list[PairComparison]:
    """Wilcoxon signed-rank test for every pair of methods, Holm-corrected over all pairs.

    For a pair (a, b) the test uses the cells where both have a score. Zero differences are
    discarded before ranking (zero_method="wilcox"): a cell where both methods score the same
    says nothing about which is better, and the test's N is the number of non-zero
    differences. The p-value is exact when N ≤ 50 and the absolute differences have no ties,
    otherwise asymptotic (normal approximation with tie correction, no continuity
    correction). Holm's correction runs over all pairs with a defined p-value.

    Honesty rule: when N < `wilcoxon_min_cells(alpha)` (6 at alpha = 0.05) the exact test can
    never reach significance, so the verdict is "insufficient cells (N=…; Wilcoxon needs
    ≥ 6)" whatever the p-value. Otherwise ▲/▼ follow `mark` with the Holm p-value and the
    direction of the signed-rank sum (positive ranks minus negative ranks of a - b).

    Args:
        scores: Shape (n_cells, n_methods), one summary score per cell and method, higher is
            better; NaN marks a cell the method has no score for.
        names: Method names, length n_methods, in column order.
        alpha: Family-wise significance level.

    Returns:
        One record per pair (a, b) with a before b in `names` order.

    Raises:
        ValueError: If `names` does not match the number of columns or repeats a name.
    """
    s = _scores_matrix(scores, "wilcoxon_pairwise")
    names = list(names)
    if len(names) != s.shape[1] or len(set(names)) != len(names):
        raise ValueError(
            f"wilcoxon_pairwise: need {s.shape[1]} distinct names, one per column of scores, "
            f"got {names}."
        )
    min_cells = wilcoxon_min_cells(alpha)
    tests = [_signed_rank_test(s[:, i], s[:, j]) for i, j in combinations(range(s.shape[1]), 2)]
    p_holm = holm([t["pvalue"] for t in tests])
    records = []
    for (i, j), t, p_adj in zip(combinations(range(s.shape[1]), 2), tests, p_holm, strict=True):
        direction = t.pop("direction")
        if t["n_nonzero"] < min_cells:
            shown = f"N={t['n_nonzero']}"
            if t["n_nonzero"] != t["n_cells"]:
                shown += f" non-tied of {t['n_cells']}"
            pair_verdict = Verdict(
                None, f"insufficient cells ({shown}; Wilcoxon needs ≥ {min_cells})"
            )
        else:
            pair_verdict = _marked_verdict(mark(direction, p_adj, alpha), p_adj)
        records.append(
            PairComparison(a=names[i], b=names[j], p_holm=float(p_adj), verdict=pair_verdict, **t)
        )
    return records


def critical_difference_groups(
    avg_ranks: Mapping[str, float], pairwise: Sequence[PairComparison]
) -> list[tuple[str, ...]]:
    """Groups of methods not significantly different, as bars on a critical-difference diagram.

    This is the Wilcoxon-Holm variant of the diagram (Ismail Fawaz et al., 2019): instead of
    one Nemenyi critical distance, two methods are joined unless their pairwise Wilcoxon-Holm
    verdict says ▲ or ▼. Pairs with insufficient cells are therefore joined: the data cannot
    tell them apart. A bar spans a run of methods that are adjacent in rank order, so each
    group is a maximal such run in which every pair is joined; groups may overlap, and a
    method alone in no group is significantly different from its neighbours.

    Args:
        avg_ranks: Average rank per method name (rank 1 = best), e.g.
            dict(zip(names, average_ranks(scores))).
        pairwise: The table from `wilcoxon_pairwise` over the same methods; its alpha is
            the one applied.

    Returns:
        Groups of two or more names, each in rank order (best first), ordered by their best
        member's rank.

    Raises:
        ValueError: If a rank is NaN or a pair of methods is missing from `pairwise`.
    """
    if any(math.isnan(r) for r in avg_ranks.values()):
        raise ValueError(
            f"critical_difference_groups: average ranks contain NaN ({dict(avg_ranks)}); "
            "they come from complete cells, so at least one cell must have every method."
        )
    order = sorted(avg_ranks, key=lambda name: (avg_ranks[name], name))
    verdicts = {frozenset((r.a, r.b)): r.verdict for r in pairwise}
    missing = [(a, b) for a, b in combinations(order, 2) if frozenset((a, b)) not in verdicts]
    if missing:
        raise ValueError(
            f"critical_difference_groups: pairs {missing} are not in the pairwise table; "
            "build it with wilcoxon_pairwise over the same methods."
        )

    def joined(a: str, b: str) -> bool:
        return not verdicts[frozenset((a, b))].significant

    groups: list[tuple[str, ...]] = []
    last_end = 0
    for start in range(len(order)):
        end = start
        while end + 1 < len(order) and all(
            joined(order[k], order[end + 1]) for k in range(start, end + 1)
        ):
            end += 1
        # The run's end never moves left as the start moves right, so a run is maximal
        # exactly when it reaches further than the previous one.
        if end > start and end > last_end:
            groups.append(tuple(order[start : end + 1]))
        last_end = max(last_end, end)
    return groups


# --------------------------------------------------------------------------------------------
# Aggregate gains with stratified bootstrap intervals
# --------------------------------------------------------------------------------------------
#
# Cells are passed as two parallel sequences, x_per_cell[i] and y_per_cell[i] holding the
# seed scores of the two methods on cell i (1-D arrays, lengths may differ). Resampling is
# stratified: seeds are drawn with replacement within each cell and each method
# independently, so the cells (the benchmark's design) stay fixed; `over_cells=True` also
# draws the cells with replacement, each drawn copy with its own seed resample, to ask how
# the aggregate would move on a different set of cells. Independent resampling ignores any
# pairing by seed, which makes the interval wider, not narrower.


def mean_gain(
    method_per_cell: Sequence[ArrayLike], baseline_per_cell: Sequence[ArrayLike]
) -> float:
    """Mean over cells of mean(method seeds) - mean(baseline seeds).

    Args:
        method_per_cell: n_cells 1-D arrays of the method's seed scores (lengths may differ).
        baseline_per_cell: n_cells 1-D arrays of the baseline's seed scores, same cell order.
            NaN seeds are dropped; a cell left with an empty side is dropped.

    Returns:
        The aggregate gain, NaN when no cell is left.
    """
    cells = _cell_pairs(method_per_cell, baseline_per_cell, "mean_gain")
    return _aggregate(cells, _mean_difference)


def stratified_bootstrap_ci(
    method_per_cell: Sequence[ArrayLike],
    baseline_per_cell: Sequence[ArrayLike],
    rng: np.random.Generator,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    over_cells: bool = False,
) -> BootstrapCI:
    """Percentile bootstrap interval for `mean_gain`, resampling seeds within each cell.

    Args:
        method_per_cell: n_cells 1-D arrays of the method's seed scores.
        baseline_per_cell: n_cells 1-D arrays of the baseline's seed scores, same cell order.
            NaN seeds are dropped; a cell left with an empty side is dropped. A side with one
            seed contributes no seed uncertainty.
        rng: Source of randomness, e.g. numpy.random.default_rng(0).
        n_boot: Number of bootstrap replicates.
        ci: Coverage of the interval, in (0, 1).
        over_cells: Also resample the cells themselves.

    Returns:
        Estimate (`mean_gain`) with the interval; all NaN when no cell is left.
    """
    cells = _cell_pairs(method_per_cell, baseline_per_cell, "stratified_bootstrap_ci")
    return _bootstrap(cells, _mean_difference, rng, n_boot, ci, over_cells)


def probability_of_improvement(
    x_per_cell: Sequence[ArrayLike], y_per_cell: Sequence[ArrayLike]
) -> float:
    """Probability that a random run of X beats a random run of Y on a random cell.

    Per cell, P(X > Y) + ½·P(X = Y) over all (x seed, y seed) pairs, i.e. the Mann-Whitney
    U of X divided by n_x · n_y; then the mean over cells, each cell weighing the same.

    Args:
        x_per_cell: n_cells 1-D arrays of X's seed scores (lengths may differ).
        y_per_cell: n_cells 1-D arrays of Y's seed scores, same cell order.
            NaN seeds are dropped; a cell left with an empty side is dropped.

    Returns:
        A probability in [0, 1]; 0.5 means neither tends to beat the other. NaN when no cell
        is left.
    """
    cells = _cell_pairs(x_per_cell, y_per_cell, "probability_of_improvement")
    return _aggregate(cells, _beats)


def probability_of_improvement_ci(
    x_per_cell: Sequence[ArrayLike],
    y_per_cell: Sequence[ArrayLike],
    rng: np.random.Generator,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    over_cells: bool = False,
) -> BootstrapCI:
    """Percentile bootstrap interval for `probability_of_improvement`.

    Args:
        x_per_cell: n_cells 1-D arrays of X's seed scores.
        y_per_cell: n_cells 1-D arrays of Y's seed scores, same cell order. NaN seeds are
            dropped; a cell left with an empty side is dropped.
        rng: Source of randomness, e.g. numpy.random.default_rng(0).
        n_boot: Number of bootstrap replicates.
        ci: Coverage of the interval, in (0, 1).
        over_cells: Also resample the cells themselves.

    Returns:
        Estimate with the interval; all NaN when no cell is left.
    """
    cells = _cell_pairs(x_per_cell, y_per_cell, "probability_of_improvement_ci")
    return _bootstrap(cells, _beats, rng, n_boot, ci, over_cells)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_Cell = tuple[np.ndarray, np.ndarray]
# Maps seed arrays of shape (..., n_x) and (..., n_y) to one value per leading index.
_CellStatistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _check_fraction(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}.")


def _finite_1d(values: ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of seed scores, got shape {x.shape}.")
    if np.isinf(x).any():
        raise ValueError(f"{name}: infinite score in {x.tolist()}; use NaN for a failed seed.")
    return x[~np.isnan(x)]


def _values_and_seeds(
    values: ArrayLike, seeds: ArrayLike | None, name: str
) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of seed scores, got shape {x.shape}.")
    if np.isinf(x).any():
        raise ValueError(f"{name}: infinite score in {x.tolist()}; use NaN for a failed seed.")
    keep = ~np.isnan(x)
    if seeds is None:
        return x[keep], None
    s = np.asarray(seeds)
    if s.shape != x.shape:
        raise ValueError(
            f"{name}_seeds: shape {s.shape} does not match {name} scores {x.shape}; "
            "give one seed per score."
        )
    if np.unique(s).size != s.size:
        raise ValueError(f"{name}_seeds: a seed appears twice in {s.tolist()}.")
    return x[keep], s[keep]


def _same_seeds(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None or a.size == 0:
        return False
    return a.size == b.size and set(a.tolist()) == set(b.tolist())


def _format_p(p: float) -> str:
    return "p undefined" if math.isnan(p) else f"p_holm = {p:.2g}"


def _marked_verdict(symbol: str, p_adjusted: float) -> Verdict:
    if symbol == BETTER:
        return Verdict(BETTER, f"▲ better ({_format_p(p_adjusted)})")
    if symbol == WORSE:
        return Verdict(WORSE, f"▼ worse ({_format_p(p_adjusted)})")
    if math.isnan(p_adjusted):
        return Verdict(SAME, "≈ no test possible (p undefined)")
    return Verdict(SAME, f"≈ no significant difference ({_format_p(p_adjusted)})")


def _scores_matrix(scores: ArrayLike, caller: str) -> np.ndarray:
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2:
        raise ValueError(
            f"{caller}: expected scores of shape (n_cells, n_methods), got shape {s.shape}."
        )
    if np.isinf(s).any():
        raise ValueError(f"{caller}: scores contain inf; use NaN for a missing cell.")
    return s


def _complete_rows(s: np.ndarray) -> np.ndarray:
    return s[~np.isnan(s).any(axis=1)]


def _signed_rank_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Wilcoxon signed-rank test of a - b on the rows where both are defined."""
    both = ~np.isnan(a) & ~np.isnan(b)
    d = a[both] - b[both]
    nonzero = d[d != 0]
    result = {
        "n_cells": int(d.size),
        "n_nonzero": int(nonzero.size),
        "wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "losses": int((d < 0).sum()),
        "median_diff": float(np.median(d)) if d.size else math.nan,
        "statistic": math.nan,
        "pvalue": math.nan,
        "test": "",
        "direction": 0.0,
    }
    if nonzero.size == 0:
        return result
    magnitudes = np.abs(nonzero)
    exact = nonzero.size <= WILCOXON_EXACT_MAX_N and np.unique(magnitudes).size == nonzero.size
    method = "exact" if exact else "asymptotic"
    res = scipy.stats.wilcoxon(nonzero, zero_method="wilcox", method=method)
    ranks = scipy.stats.rankdata(magnitudes)
    result.update(
        statistic=float(res.statistic),
        pvalue=float(res.pvalue),
        test=method,
        direction=float(ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()),
    )
    return result


def _cell_pairs(
    x_per_cell: Sequence[ArrayLike], y_per_cell: Sequence[ArrayLike], caller: str
) -> list[_Cell]:
    if len(x_per_cell) != len(y_per_cell):
        raise ValueError(
            f"{caller}: {len(x_per_cell)} cells for the first method but {len(y_per_cell)} "
            "for the second; pass one array per cell for both, in the same cell order."
        )
    cells = []
    for i, (x, y) in enumerate(zip(x_per_cell, y_per_cell, strict=True)):
        xf = _finite_1d(x, f"{caller}: cell {i}, first method")
        yf = _finite_1d(y, f"{caller}: cell {i}, second method")
        if xf.size and yf.size:
            cells.append((xf, yf))
    return cells


def _mean_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1) - y.mean(axis=-1)


def _beats(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xs, ys = x[..., :, None], y[..., None, :]
    return (xs > ys).mean(axis=(-2, -1)) + 0.5 * (xs == ys).mean(axis=(-2, -1))


def _aggregate(cells: list[_Cell], statistic: _CellStatistic) -> float:
    if not cells:
        return math.nan
    return float(np.mean([statistic(x, y) for x, y in cells]))


def _resampled_statistic(
    cell: _Cell, statistic: _CellStatistic, size: int, rng: np.random.Generator
) -> np.ndarray:
    """The cell statistic on `size` independent seed resamples, shape (size,)."""
    x, y = cell
    xb = x[rng.integers(0, x.size, size=(size, x.size))]
    yb = y[rng.integers(0, y.size, size=(size, y.size))]
    return statistic(xb, yb)


def _bootstrap(
    cells: list[_Cell],
    statistic: _CellStatistic,
    rng: np.random.Generator,
    n_boot: int,
    ci: float,
    over_cells: bool,
) -> BootstrapCI:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
            "pass numpy.random.default_rng(seed)."
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}.")
    _check_fraction(ci, "ci")
    if not cells:
        return BootstrapCI(math.nan, math.nan, math.nan, 0)
    n_cells = len(cells)
    per_cell = np.empty((n_boot, n_cells))
    if over_cells:
        picks = rng.integers(0, n_cells, size=(n_boot, n_cells))
        for c, cell in enumerate(cells):
            drawn = picks == c
            per_cell[drawn] = _resampled_statistic(cell, statistic, int(drawn.sum()), rng)
    else:
        for c, cell in enumerate(cells):
            per_cell[:, c] = _resampled_statistic(cell, statistic, n_boot, rng)
    replicates = per_cell.mean(axis=1)
    low, high = np.quantile(replicates, [(1 - ci) / 2, (1 + ci) / 2])
    return BootstrapCI(_aggregate(cells, statistic), float(low), float(high), n_cells)
