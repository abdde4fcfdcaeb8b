"""The leaderboard's verdicts on simulated tables: false-verdict rates at alpha, and power.

Tables are drawn as a leaderboard is shaped (12 cells × 4 methods × 5 seeds, method 0 the
reference), with cell effects and seed noise but no method effect, so every ▲ or ▼ on them is
false. Holm promises that the share of families with any false mark stays at most alpha; the
rule used here is that the 99% Clopper-Pearson lower bound of the measured share must not
exceed alpha (and, so that a test marking nothing at all cannot pass, its upper bound must
reach alpha / 2).
"""

import math

import numpy as np
import pytest
import scipy.stats

from bench.leaderboard import stats
from bench.leaderboard.calibration import (
    CELL_TESTS,
    cell_power_floor,
    cell_pvalues,
    cell_truth,
    cell_verdicts,
    family_false_rate,
    main,
    null_tables,
    power,
    rate,
    shifted,
    table_power_floor,
    table_truth,
    table_verdicts,
)

ALPHA = 0.05
DRAWS, CELLS, METHODS, SEEDS = 250, 12, 4, 5
PAIRS = METHODS * (METHODS - 1) // 2


@pytest.fixture(scope="module")
def null() -> np.ndarray:
    return null_tables(np.random.default_rng(7), DRAWS, CELLS, METHODS, SEEDS)


# ------------------------------------------------------------------------ false verdicts


@pytest.mark.parametrize("name", list(CELL_TESTS))
def test_per_cell_holm_keeps_the_family_false_rate_at_alpha(null, name):
    test, paired = CELL_TESTS[name]
    marks = cell_verdicts(null, alpha=ALPHA, test=test, paired=paired)
    false = family_false_rate(marks)
    assert false.trials == DRAWS * CELLS
    assert false.low <= ALPHA
    assert false.high >= ALPHA / 2


def test_across_cell_wilcoxon_holm_keeps_the_family_false_rate_at_alpha(null):
    false = family_false_rate(table_verdicts(null, alpha=ALPHA))
    assert false.trials == DRAWS
    assert false.low <= ALPHA
    assert false.high >= ALPHA / 2


def test_per_cell_families_are_not_corrected_across_cells(null):
    # Holm runs within a cell: over 12 null cells some false mark is the rule, not the
    # exception (about 1 - 0.95**12 = 46 %), which is why the README says to read W/T/L counts
    # with it in mind.
    anywhere = family_false_rate(cell_verdicts(null, alpha=ALPHA), family_ndim=2)
    assert 0.3 < anywhere.rate < 0.6


# ------------------------------------------------------------------------------------ power


def test_per_cell_power_at_three_seed_sds(null):
    shift = 3.0
    marks = cell_verdicts(shifted(null, 1, shift), alpha=ALPHA)
    truth = cell_truth([0.0, shift, 0.0, 0.0])
    floor = cell_power_floor(shift, SEEDS, METHODS - 1, alpha=ALPHA)
    found = power(marks, truth)
    assert found.trials == DRAWS * CELLS
    # Bonferroni's paired-t power, a lower bound that Holm meets almost exactly here.
    assert floor == pytest.approx(0.735, abs=1e-3)
    assert found.high >= floor
    assert found.low >= 0.70
    assert cell_power_floor(shift, stats.MIN_SEEDS - 1, METHODS - 1) == 0.0
    # The other two methods still get a false mark in at most alpha of the cells.
    assert family_false_rate(marks, truth).low <= ALPHA


def test_across_cell_power_at_one_seed_sd(null):
    shift = 1.0
    marks = table_verdicts(shifted(null, 1, shift), alpha=ALPHA)
    truth = table_truth([0.0, shift, 0.0, 0.0])
    floor = table_power_floor(shift, CELLS, SEEDS, PAIRS, alpha=ALPHA)
    # Pair (0, 1), method 1 against the reference: one test per table, independent draws.
    found = power(marks[:, :1], truth[:1])
    assert found.trials == DRAWS
    assert found.low >= floor
    assert found.rate >= 0.9
    assert family_false_rate(marks, truth).low <= ALPHA


# ------------------------------------------------------------ what the leaderboard runs


def test_cell_pvalues_are_those_of_compare_to_baseline():
    tables = shifted(null_tables(np.random.default_rng(1), 2, 3, 3, 5), 1, 1.5)
    method, reference = tables[:, :, 1:, :], np.broadcast_to(tables[:, :, :1, :], (2, 3, 2, 5))
    seeds = np.arange(5)
    for name, (test, paired) in CELL_TESTS.items():
        vectorised = cell_pvalues(method, reference, test=test, paired=paired)
        one_by_one = [
            stats.compare_to_baseline(
                x,
                y,
                method_seeds=seeds if paired else None,
                baseline_seeds=seeds if paired else None,
                test=test,
            ).pvalue
            for x, y in zip(method.reshape(-1, 5), reference.reshape(-1, 5), strict=True)
        ]
        np.testing.assert_allclose(vectorised.ravel(), one_by_one, rtol=1e-12, err_msg=name)


def test_cell_verdicts_are_the_leaderboards_holm_family_marks():
    tables = null_tables(np.random.default_rng(2), 20, 4, 4, 5)
    tables = shifted(shifted(tables, 1, 4.0), 2, -4.0)
    marks = cell_verdicts(tables, alpha=ALPHA)
    seeds = list(range(5))
    for d, c in np.ndindex(20, 4):
        cell = tables[d, c]
        comps = [
            stats.compare_to_baseline(cell[m], cell[0], method_seeds=seeds, baseline_seeds=seeds)
            for m in (1, 2, 3)
        ]
        p_holm = stats.holm([comp.pvalue for comp in comps])
        expected = [
            stats.verdict(comp.diff, p, comp.n_method, comp.n_baseline, alpha=ALPHA).mark
            for comp, p in zip(comps, p_holm, strict=True)
        ]
        signs = {stats.BETTER: 1, stats.WORSE: -1, stats.SAME: 0}
        assert marks[d, c].tolist() == [0] + [signs[e] for e in expected]
    assert (marks[:, :, 1] == 1).any() and (marks[:, :, 2] == -1).any()


def test_cell_verdicts_give_no_mark_below_the_minimum_seeds():
    tables = shifted(null_tables(np.random.default_rng(3), 5, 4, 2, stats.MIN_SEEDS - 1), 1, 50)
    assert not cell_verdicts(tables).any()


def test_table_verdicts_follow_the_pair_order_and_the_minimum_cells():
    tables = shifted(null_tables(np.random.default_rng(4), 3, 12, 3, 5), 2, 10.0)
    marks = table_verdicts(tables)
    # Pairs (0, 1), (0, 2), (1, 2): method 2 is worse for neither and better than both.
    assert marks[:, 1].tolist() == [-1, -1, -1]
    assert marks[:, 2].tolist() == [-1, -1, -1]
    assert table_truth([0.0, 0.0, 10.0]).tolist() == [0, -1, -1]
    too_few = stats.wilcoxon_min_cells(ALPHA) - 1
    assert not table_verdicts(tables[:, :too_few]).any()


# ------------------------------------------------------------------------- the pieces


def test_null_tables_have_the_stated_spread_and_seed_correlation():
    x = null_tables(np.random.default_rng(5), 4000, 1, 2, 2, cell_sd=3.0, seed_corr=0.6)
    assert x.shape == (4000, 1, 2, 2)
    # Two seeds of one method differ by seed noise alone (the cell effect cancels): sd √2.
    a, b = x[:, 0, 0, 0] - x[:, 0, 0, 1], x[:, 0, 1, 0] - x[:, 0, 1, 1]
    assert a.std() == pytest.approx(math.sqrt(2), abs=0.05)
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(0.6, abs=0.05)
    with pytest.raises(ValueError, match="seeds must be at least 2"):
        null_tables(np.random.default_rng(5), 1, 1, 2, 1)
    with pytest.raises(TypeError, match=r"numpy\.random\.Generator"):
        null_tables(5, 1, 1, 2, 2)  # type: ignore[arg-type]


def test_rate_bounds_are_clopper_pearson():
    # Zero of 100: the one-sided 99% upper bound solves (1 - p)^100 = 0.01.
    none = rate(0, 100)
    assert (none.rate, none.low) == (0.0, 0.0)
    assert none.high == pytest.approx(1 - 0.01 ** (1 / 100))
    every = rate(100, 100)
    assert every.low == pytest.approx(0.01 ** (1 / 100))
    assert every.high == 1.0


def test_family_false_rate_counts_families_with_any_wrong_mark():
    marks = np.array([[1, 0], [0, 0], [0, -1], [-1, 0]])
    # Rows are families; method 0 is truly better, method 1 is not different.
    false = family_false_rate(marks, np.array([1, 0]))
    assert (false.hits, false.trials) == (2, 4)  # row 2 (a mark on a null) and row 3 (sign)
    assert power(marks, np.array([1, 0])).hits == 1
    with pytest.raises(ValueError, match="nothing to find"):
        power(marks, 0)


def test_table_power_floor_matches_scipys_exact_wilcoxon():
    shift, seeds, tests = 1.0, 5, 6
    sd = math.sqrt(2 / seeds)
    for cells in (12, 20):
        # The most negative differences that still leave p < alpha / tests in the worst case
        # (the negatives on the largest ranks).
        most = -1
        while most + 1 < cells:
            signs = np.r_[np.ones(cells - most - 1), -np.ones(most + 1)]
            if not scipy.stats.wilcoxon(np.arange(1, cells + 1) * signs).pvalue < ALPHA / tests:
                break
            most += 1
        expected = scipy.stats.binom.cdf(most, cells, scipy.stats.norm.cdf(-shift / sd))
        assert table_power_floor(shift, cells, seeds, tests) == pytest.approx(expected)
    # With 12 cells only all-positive differences are sure to be marked: Φ(1 / sd)^12.
    assert table_power_floor(1.0, 12, 5, 6) == pytest.approx(scipy.stats.norm.cdf(1 / sd) ** 12)


def test_cli_prints_the_table_and_refuses_bad_options(capsys):
    assert main(["--draws", "10", "--cells", "6", "--methods", "3"]) == 0
    out = capsys.readouterr().out
    assert "10 tables of 6 cells × 3 methods × 5 seeds" in out
    assert "across cells, Wilcoxon + Holm (3 pairs)" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["--seeds", "1"])
    assert exit_info.value.code == 2
    assert "seeds must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--alpha", "1.5"])
    assert exit_info.value.code == 2
    assert "alpha must lie strictly between 0 and 1" in capsys.readouterr().err
