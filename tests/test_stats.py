"""Tests of the leaderboard statistics on tiny inputs whose answers can be checked by hand."""

import math

import numpy as np
import pytest
import scipy.stats

from bench.leaderboard.stats import (
    BETTER,
    SAME,
    WORSE,
    PairComparison,
    Verdict,
    average_ranks,
    cell_summary,
    compare_to_baseline,
    critical_difference_groups,
    friedman,
    holm,
    holm_reject,
    mark,
    mean_gain,
    probability_of_improvement,
    probability_of_improvement_ci,
    stratified_bootstrap_ci,
    verdict,
    wilcoxon_min_cells,
    wilcoxon_pairwise,
    win_tie_loss,
)

# ------------------------------------------------------------------------------- cell_summary


def test_cell_summary_four_seeds():
    s = cell_summary([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; sd = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3) = 1.290994;
    # t(0.975, df=3) = 3.182446, half width = 3.182446 * 1.290994 / 2 = 2.054260.
    assert s.n == 4
    assert s.mean == 2.5
    assert s.sd == pytest.approx(1.290994, abs=1e-6)
    assert s.ci_low == pytest.approx(2.5 - 2.054260, abs=1e-5)
    assert s.ci_high == pytest.approx(2.5 + 2.054260, abs=1e-5)


def test_cell_summary_drops_nan_seeds():
    s = cell_summary([1.0, math.nan, 3.0])
    # Two seeds left: mean 2, sd sqrt(2); t(0.975, df=1) = 12.706205, half = 12.706205.
    assert (s.n, s.mean) == (2, 2.0)
    assert s.sd == pytest.approx(math.sqrt(2))
    assert s.ci_low == pytest.approx(2 - 12.706205, abs=1e-5)
    assert s.ci_high == pytest.approx(2 + 12.706205, abs=1e-5)


def test_cell_summary_one_and_zero_seeds_give_nan_spread():
    one = cell_summary([5.0])
    assert (one.n, one.mean) == (1, 5.0)
    assert math.isnan(one.sd) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = cell_summary([math.nan])
    assert none.n == 0 and math.isnan(none.mean)


def test_cell_summary_rejects_inf_with_advice():
    with pytest.raises(ValueError, match="use NaN for a failed seed"):
        cell_summary([1.0, math.inf])


# ------------------------------------------------------------------------ compare_to_baseline

METHOD = [91.2, 90.8, 91.5, 91.0]
BASELINE = [90.1, 90.6, 89.9]


def test_welch_matches_scipy_without_seeds():
    c = compare_to_baseline(METHOD, BASELINE)
    ref = scipy.stats.ttest_ind(METHOD, BASELINE, equal_var=False)
    assert c.test == "Welch t-test"
    assert c.statistic == pytest.approx(ref.statistic)
    assert c.pvalue == pytest.approx(ref.pvalue)
    # 364.5 / 4 - 270.6 / 3 = 91.125 - 90.2
    assert c.diff == pytest.approx(0.925)
    assert (c.n_method, c.n_baseline) == (4, 3)


def test_paired_test_aligns_runs_by_seed():
    c = compare_to_baseline(
        [90.2, 91.0, 92.5],
        [90.0, 91.0, 90.1],
        method_seeds=[2, 0, 1],
        baseline_seeds=[0, 1, 2],
    )
    # By seed 0, 1, 2: method 91.0, 92.5, 90.2 against 90.0, 91.0, 90.1, so d = 1.0, 1.5, 0.1:
    # mean 0.86667, sd 0.70946, t = 0.86667 / (0.70946 / sqrt(3)) = 2.1158.
    ref = scipy.stats.ttest_rel([91.0, 92.5, 90.2], [90.0, 91.0, 90.1])
    assert c.test == "paired t-test"
    assert c.statistic == pytest.approx(2.1158, abs=1e-4)
    assert c.statistic == pytest.approx(ref.statistic)
    assert c.pvalue == pytest.approx(ref.pvalue)


def test_different_seeds_fall_back_to_welch():
    c = compare_to_baseline(METHOD, BASELINE, method_seeds=[0, 1, 2, 3], baseline_seeds=[0, 1, 2])
    assert c.test == "Welch t-test"
    assert c.pvalue == pytest.approx(
        scipy.stats.ttest_ind(METHOD, BASELINE, equal_var=False).pvalue
    )


def test_failed_seed_breaks_pairing_and_is_not_counted():
    c = compare_to_baseline(
        [91.0, math.nan, 92.0, 91.5],
        [90.0, 90.5, 90.2, 90.4],
        method_seeds=[0, 1, 2, 3],
        baseline_seeds=[0, 1, 2, 3],
    )
    assert c.test == "Welch t-test"
    assert (c.n_method, c.n_baseline) == (3, 4)


def test_mann_whitney_exact():
    c = compare_to_baseline([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], test="mannwhitney")
    # U = 0; of the C(6, 3) = 20 equally likely orderings, 2 are this extreme -> p = 0.1.
    assert c.test == "exact Mann-Whitney U"
    assert c.statistic == 0.0
    assert c.pvalue == pytest.approx(0.1)
    assert c.diff == -3.0


def test_one_seed_side_has_no_t_test_p_value():
    c = compare_to_baseline([91.0], BASELINE)
    assert math.isnan(c.pvalue) and c.n_method == 1


def test_compare_rejects_unknown_test_and_duplicate_seeds():
    with pytest.raises(ValueError, match="unknown test 'wilcoxon'"):
        compare_to_baseline(METHOD, BASELINE, test="wilcoxon")
    with pytest.raises(ValueError, match="a seed appears twice"):
        compare_to_baseline(METHOD, BASELINE, method_seeds=[0, 0, 1, 2])


# ------------------------------------------------------------------------------------ holm


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04; running max -> 0.03, 0.06, 0.06.
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])


def test_holm_caps_at_one_and_skips_nan():
    # m = 2: 0.6 * 2 = 1.2 -> 1; 0.7 * 1 = 0.7, raised to the running max 1.
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0])
    # The NaN stays NaN and m = 2: 0.01 * 2 = 0.02, 0.04 * 1 = 0.04.
    np.testing.assert_allclose(holm([0.01, math.nan, 0.04]), [0.02, math.nan, 0.04])
    assert np.isnan(holm([math.nan])).all()


def test_holm_reject():
    np.testing.assert_array_equal(holm_reject([0.01, 0.04, 0.03], 0.05), [True, False, False])
    np.testing.assert_array_equal(holm_reject([0.001, math.nan], 0.05), [True, False])


def test_holm_rejects_bad_p_values():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        holm([0.5, 1.5])


# ------------------------------------------------------------------------ marks and verdicts


def test_mark():
    assert mark(0.5, 0.01) == BETTER
    assert mark(-0.5, 0.01) == WORSE
    assert mark(0.5, 0.05) == SAME  # strict: p must be below alpha
    assert mark(0.5, math.nan) == SAME
    assert mark(0.5, 0.02, alpha=0.01) == SAME


def test_verdict_two_seeds_is_insufficient():
    v = verdict(1.2, 0.001, 2, 5)
    assert v.mark is None and v.insufficient
    assert v.text == "insufficient seeds (n=2 vs 5; need ≥ 3 per side)"


def test_verdict_wording():
    assert verdict(1.2, 0.012, 3, 3) == Verdict(BETTER, "▲ better (p_holm = 0.012)")
    assert verdict(-1.2, 0.0041, 5, 5) == Verdict(WORSE, "▼ worse (p_holm = 0.0041)")
    assert verdict(0.3, 0.41, 5, 5) == Verdict(SAME, "≈ no significant difference (p_holm = 0.41)")
    assert verdict(0.0, math.nan, 5, 5).text == "≈ no test possible (p undefined)"


def test_win_tie_loss():
    verdicts = [
        verdict(1, 0.01, 5, 5),
        verdict(1, 0.01, 5, 5),
        verdict(-1, 0.2, 5, 5),
        verdict(-1, 0.001, 5, 5),
        verdict(1, 0.001, 2, 5),
    ]
    wtl = win_tie_loss(verdicts)
    assert (wtl.wins, wtl.ties, wtl.losses, wtl.insufficient) == (2, 1, 1, 1)


# -------------------------------------------------------------------------- ranks, Friedman


def test_average_ranks_with_ties_and_incomplete_row():
    scores = [
        [0.9, 0.8, 0.8],  # ranks 1, 2.5, 2.5
        [0.7, 0.9, 0.8],  # ranks 3, 1, 2
        [math.nan, 0.5, 0.4],  # incomplete: dropped
    ]
    np.testing.assert_allclose(average_ranks(scores), [2.0, 1.75, 2.25])
    assert np.isnan(average_ranks([[math.nan, 1.0]])).all()


def test_friedman_by_hand():
    # Method 0 always best, 2 always worst over N = 4 cells: rank sums 4, 8, 12;
    # chi2 = 12 / (4 * 3 * 4) * (16 + 64 + 144) - 3 * 4 * 4 = 56 - 48 = 8; p = exp(-8 / 2).
    scores = [[3.0, 2.0, 1.0], [5.0, 4.0, 0.0], [9.0, 8.0, 7.0], [1.0, 0.5, 0.2]]
    res = friedman(scores)
    assert res.statistic == pytest.approx(8.0)
    assert res.pvalue == pytest.approx(math.exp(-4))
    assert (res.n_cells, res.n_methods, res.insufficient) == (4, 3, None)


def test_friedman_matches_scipy_on_complete_rows():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(9, 4))
    scores[2, 1] = math.nan
    res = friedman(scores)
    complete = np.delete(scores, 2, axis=0)
    ref = scipy.stats.friedmanchisquare(*complete.T)
    assert res.n_cells == 8
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue)


def test_friedman_insufficient():
    two_methods = friedman([[1.0, 2.0], [2.0, 3.0], [3.0, 1.0]])
    assert two_methods.insufficient == "insufficient methods (k=2; Friedman needs ≥ 3)"
    assert math.isnan(two_methods.pvalue)
    one_cell = friedman([[1.0, 2.0, 3.0], [1.0, math.nan, 2.0]])
    assert one_cell.insufficient == "insufficient cells (N=1 complete; Friedman needs ≥ 2)"


# ---------------------------------------------------------------------- Wilcoxon pairwise


def _two_methods(diffs):
    base = np.linspace(70.0, 80.0, len(diffs))
    return np.column_stack([base, base + np.asarray(diffs)])


def test_wilcoxon_min_cells():
    assert wilcoxon_min_cells(0.05) == 6  # 2 / 2**6 = 0.03125 < 0.05 <= 2 / 2**5 = 0.0625
    assert wilcoxon_min_cells(0.01) == 8  # 2 / 2**8 = 0.0078 < 0.01 <= 2 / 2**7 = 0.0156


def test_wilcoxon_twelve_cells_one_better_everywhere():
    rng = np.random.default_rng(0)
    kd = rng.normal(75.0, 3.0, size=12)
    new = kd + 1.0 + rng.normal(0.0, 0.05, size=12)
    (r,) = wilcoxon_pairwise(np.column_stack([kd, new]), ["kd", "new"])
    # All 12 differences kd - new are negative: exact two-sided p = 2 / 2**12 = 2 / 4096.
    assert r.pvalue == pytest.approx(2 / 4096)
    assert r.pvalue == pytest.approx(scipy.stats.wilcoxon(kd, new).pvalue)
    assert r.p_holm == pytest.approx(2 / 4096)  # one pair: nothing to correct
    assert (r.n_cells, r.wins, r.ties, r.losses, r.test) == (12, 0, 0, 12, "exact")
    assert r.statistic == 0.0
    assert r.median_diff == pytest.approx(-1.0, abs=0.1)
    assert r.verdict.mark == WORSE  # kd is worse than new


def test_wilcoxon_six_positive_cells_is_significant():
    (r,) = wilcoxon_pairwise(_two_methods([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), ["a", "b"])
    # b - a > 0 in all 6 cells, so a loses everywhere: p = 2 / 2**6 = 0.03125 < 0.05.
    assert r.pvalue == pytest.approx(0.03125)
    assert r.verdict == Verdict(WORSE, "▼ worse (p_holm = 0.031)")


def test_wilcoxon_four_cells_is_insufficient():
    (r,) = wilcoxon_pairwise(_two_methods([1.0, 2.0, 3.0, 4.0]), ["a", "b"])
    assert r.pvalue == pytest.approx(0.125)  # 2 / 2**4
    assert r.verdict == Verdict(None, "insufficient cells (N=4; Wilcoxon needs ≥ 6)")


def test_wilcoxon_zero_differences_are_dropped():
    # Six cells, one tied: N = 5 non-zero differences cannot reach p < 0.05.
    (r,) = wilcoxon_pairwise(_two_methods([0.0, 0.2, 0.3, 0.4, 0.5, 0.6]), ["a", "b"])
    assert (r.n_cells, r.n_nonzero, r.ties) == (6, 5, 1)
    assert r.pvalue == pytest.approx(0.0625)  # 2 / 2**5
    assert r.verdict.text == "insufficient cells (N=5 non-tied of 6; Wilcoxon needs ≥ 6)"


def test_wilcoxon_tied_magnitudes_use_the_asymptotic_test():
    diffs = np.array([1.0, 1.0, -2.0, 3.0, 3.0, 4.0, 5.0])
    (r,) = wilcoxon_pairwise(_two_methods(diffs), ["a", "b"])
    ref = scipy.stats.wilcoxon(-diffs, method="asymptotic")
    assert r.test == "asymptotic"
    assert r.pvalue == pytest.approx(ref.pvalue)


def test_wilcoxon_pairwise_holm_over_pairs_and_missing_cells():
    base = np.arange(8, dtype=float)
    scores = np.column_stack([base + 2.0, base + 1.0, base + 1.0 + 0.01 * (-1) ** np.arange(8)])
    scores[0, 0] = math.nan  # method "a" misses one cell
    rows = {(r.a, r.b): r for r in wilcoxon_pairwise(scores, ["a", "b", "c"])}
    assert list(rows) == [("a", "b"), ("a", "c"), ("b", "c")]
    ab, ac, bc = rows[("a", "b")], rows[("a", "c")], rows[("b", "c")]
    # a - b = +1 in the 7 common cells (tied magnitudes, so asymptotic); a - c likewise.
    assert (ab.n_cells, ab.wins) == (7, 7)
    # b - c alternates -0.01, +0.01: signs balance, p is large.
    assert (bc.n_cells, bc.wins, bc.losses) == (8, 4, 4)
    np.testing.assert_allclose(
        [ab.p_holm, ac.p_holm, bc.p_holm], holm([ab.pvalue, ac.pvalue, bc.pvalue])
    )
    assert (ab.verdict.mark, ac.verdict.mark, bc.verdict.mark) == (BETTER, BETTER, SAME)


def test_wilcoxon_pairwise_checks_names():
    with pytest.raises(ValueError, match="need 2 distinct names"):
        wilcoxon_pairwise(np.zeros((6, 2)), ["kd"])


# ----------------------------------------------------------- critical-difference groups


def _pair(a, b, significant):
    v = Verdict(BETTER, "▲") if significant else Verdict(SAME, "≈")
    p = 0.01 if significant else 0.5
    return PairComparison(a, b, 10, 10, 5, 0, 5, 0.0, 1.0, p, p, "exact", v)


def test_critical_difference_groups_chain():
    ranks = {"a": 1.2, "b": 1.8, "c": 2.5, "d": 3.5}
    separated = {("a", "c"), ("a", "d"), ("b", "d")}
    pairs = [
        _pair(x, y, (x, y) in separated) for i, x in enumerate("abcd") for y in "abcd"[i + 1 :]
    ]
    # In rank order a b c d: a joins b only; b joins c; c joins d.
    assert critical_difference_groups(ranks, pairs) == [("a", "b"), ("b", "c"), ("c", "d")]


def test_critical_difference_groups_from_scores():
    base = np.linspace(60.0, 80.0, 12)
    noise = 0.01 * np.arange(1, 13) * (-1) ** np.arange(12)
    scores = np.column_stack([base + 3.0 + 0.001 * np.arange(12), base + noise, base])
    names = ["best", "b", "c"]
    pairs = wilcoxon_pairwise(scores, names)
    ranks = dict(zip(names, average_ranks(scores), strict=True))
    # "best" wins all 12 cells against both others; b and c differ by alternating noise.
    # b and c each win 6 cells against the other: both rank 2.5 and the tie is broken by name.
    assert ranks == {"best": 1.0, "b": 2.5, "c": 2.5}
    assert critical_difference_groups(ranks, pairs) == [("b", "c")]


def test_critical_difference_groups_needs_every_pair():
    with pytest.raises(ValueError, match="not in the pairwise table"):
        critical_difference_groups({"a": 1.0, "b": 2.0, "c": 3.0}, [_pair("a", "b", False)])


# ------------------------------------------------------------------------------- bootstrap


def _cells(rng, n_cells, n_seeds, gain):
    method = [rng.normal(70.0 + c + gain, 1.0, size=n_seeds) for c in range(n_cells)]
    baseline = [rng.normal(70.0 + c, 1.0, size=n_seeds) for c in range(n_cells)]
    return method, baseline


def test_mean_gain_by_hand_and_nan_cells_dropped():
    method = [[2.0, 4.0], [5.0], [math.nan]]
    baseline = [[1.0], [1.0, 3.0], [1.0]]
    # Cell gains 3 - 1 = 2 and 5 - 2 = 3; the third cell has no method seed left.
    assert mean_gain(method, baseline) == pytest.approx(2.5)


def test_bootstrap_is_reproducible_and_depends_on_the_seed():
    method, baseline = _cells(np.random.default_rng(1), n_cells=5, n_seeds=4, gain=0.5)
    a = stratified_bootstrap_ci(method, baseline, np.random.default_rng(7), n_boot=500)
    b = stratified_bootstrap_ci(method, baseline, np.random.default_rng(7), n_boot=500)
    c = stratified_bootstrap_ci(method, baseline, np.random.default_rng(8), n_boot=500)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.estimate == c.estimate == pytest.approx(mean_gain(method, baseline))
    assert a.low < a.estimate < a.high
    assert a.n_cells == 5


def test_bootstrap_width_shrinks_with_more_seeds():
    rng = np.random.default_rng(2)
    few = stratified_bootstrap_ci(*_cells(rng, 5, 3, 0.5), np.random.default_rng(0))
    many = stratified_bootstrap_ci(*_cells(rng, 5, 30, 0.5), np.random.default_rng(0))
    # The width scales roughly like 1 / sqrt(seeds): 30 seeds should be ~3x narrower than 3.
    assert many.high - many.low < 0.5 * (few.high - few.low)


def test_bootstrap_single_seeds_and_resampled_cells():
    method, baseline = [[2.0], [4.0]], [[1.0], [1.0]]
    # One seed per side: no seed uncertainty, the interval collapses on the gain (1 + 3) / 2.
    fixed = stratified_bootstrap_ci(method, baseline, np.random.default_rng(0), n_boot=200)
    assert (fixed.estimate, fixed.low, fixed.high) == (2.0, 2.0, 2.0)
    # Resampling the two cells gives means of {1, 3}, {1, 1}, {3, 3}: replicates in {1, 2, 3}.
    drawn = stratified_bootstrap_ci(
        method, baseline, np.random.default_rng(0), n_boot=200, over_cells=True
    )
    assert (drawn.low, drawn.high) == (1.0, 3.0)


def test_bootstrap_over_cells_widens_heterogeneous_gains():
    rng = np.random.default_rng(4)
    method = [rng.normal(70.0 + 2.0 * c, 0.5, size=5) for c in range(6)]  # gain 0, 2, 4, ...
    baseline = [rng.normal(70.0, 0.5, size=5) for _ in range(6)]
    within = stratified_bootstrap_ci(method, baseline, np.random.default_rng(0))
    across = stratified_bootstrap_ci(method, baseline, np.random.default_rng(0), over_cells=True)
    assert across.high - across.low > 2 * (within.high - within.low)


def test_bootstrap_requires_a_generator():
    with pytest.raises(TypeError, match="default_rng"):
        stratified_bootstrap_ci([[1.0]], [[0.0]], 0)


def test_probability_of_improvement_by_hand():
    x = [[1.0, 3.0], [2.0]]
    y = [[2.0, 2.0], [2.0, 1.0]]
    # Cell 1: 3 beats both 2s, 1 loses to both -> 2 / 4 = 0.5.
    # Cell 2: 2 ties 2 (1/2) and beats 1 (1) -> 1.5 / 2 = 0.75. Mean: 0.625.
    assert probability_of_improvement(x, y) == pytest.approx(0.625)
    u = [
        scipy.stats.mannwhitneyu(a, b).statistic / (len(a) * len(b))
        for a, b in zip(x, y, strict=True)
    ]
    assert probability_of_improvement(x, y) == pytest.approx(np.mean(u))
    assert probability_of_improvement(y, x) == pytest.approx(1 - 0.625)


def test_probability_of_improvement_ci():
    x, y = _cells(np.random.default_rng(5), n_cells=6, n_seeds=5, gain=2.0)
    res = probability_of_improvement_ci(x, y, np.random.default_rng(0), n_boot=500)
    assert res.estimate == pytest.approx(probability_of_improvement(x, y))
    assert 0.5 < res.low <= res.estimate <= res.high <= 1.0


# ------------------------------------------------------------------- equal methods, noise


def test_pure_noise_marks_no_method_better():
    rng = np.random.default_rng(0)
    n_cells, names = 15, ["ce", "kd", "m1", "m2", "m3"]
    cell_level = rng.normal(75.0, 5.0, size=(n_cells, 1))
    seeds = cell_level[:, :, None] + rng.normal(0.0, 1.0, size=(n_cells, len(names), 5))

    pairs = wilcoxon_pairwise(seeds.mean(axis=2), names)
    assert not any(r.verdict.significant for r in pairs)

    kd = names.index("kd")
    for m in range(len(names)):
        if m == kd:
            continue
        comparisons = [compare_to_baseline(seeds[c, m], seeds[c, kd]) for c in range(n_cells)]
        p_adj = holm([c.pvalue for c in comparisons])
        verdicts = [
            verdict(c.diff, p, c.n_method, c.n_baseline)
            for c, p in zip(comparisons, p_adj, strict=True)
        ]
        assert win_tie_loss(verdicts).ties == n_cells
