"""Leaderboards end to end: runs table → statistics → README, CSVs, figures, page.

Synthetic runs tables with known effects check the verdicts against scipy; malformed CSVs
check the error messages; a real SQLite MLflow store written by bench.tracking.Tracker checks
the MLflow path.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from bench.leaderboard.aggregate import Settings, build_leaderboard
from bench.leaderboard.cli import add_leaderboard_arguments, leaderboard_from_runs, leaderboard_main
from bench.leaderboard.render import OUTPUT_FILES
from bench.leaderboard.runs import (
    COLUMNS,
    LeaderboardError,
    read_results_csv,
    runs_frame,
    write_results_csv,
)

# --------------------------------------------------------------------------------------------
# Synthetic runs
# --------------------------------------------------------------------------------------------

TEACHERS = ("resnet56", "wrn_40_2", "vgg13")


def cells(n: int) -> list[tuple[str, str, str]]:
    """n cells: datasets d0, d1, … each with the three teacher → student pairs."""
    pairs = [(t, "resnet20") for t in TEACHERS]
    return [(f"d{i // 3}", *pairs[i % 3]) for i in range(n)]


def synthetic_records(
    effects: dict[str, float],
    *,
    n_cells: int = 12,
    seeds: int = 5,
    noise: float = 0.002,
    rng_seed: int = 0,
    seeds_in: dict[tuple[int, str], int] | None = None,
) -> list[dict]:
    """One finished run per (cell, method, seed): accuracy = cell level + effect + noise.

    Effects and noise are fractions (0.01 = one point). ``seeds_in[(cell, method)]`` gives
    that cell fewer seeds.
    """
    rng = np.random.default_rng(rng_seed)
    records = []
    for c, (dataset, teacher, student) in enumerate(cells(n_cells)):
        level = 0.85 + 0.1 * rng.random()
        for method, effect in effects.items():
            for seed in range(seeds_in.get((c, method), seeds) if seeds_in else seeds):
                acc = float(np.clip(level + effect + rng.normal(0, noise), 0, 1))
                records.append(
                    {
                        "run_key": f"{dataset}-{teacher}-{method}-{seed}",
                        "dataset": dataset,
                        "teacher": teacher,
                        "student": student,
                        "method": method,
                        "method_version": 1,
                        "params": {} if method == "ce" else {"temperature": 4.0},
                        "seed": seed,
                        "phase": "final",
                        "status": "FINISHED",
                        "outcome": "ok",
                        "test_acc": acc,
                        "test_top5": min(1.0, acc + 0.04),
                        "val_acc": acc - 0.01,
                        "teacher_test_acc": 0.97,
                        "agreement": 0.9 if method != "ce" else math.nan,
                        "macro_f1": acc - 0.005,
                        "ece": 0.03,
                        "train_seconds": 10.0 if method == "ce" else 15.0,
                        "student_params": 22_000,
                        "extra_params": 0 if method in ("ce", "kd") else 500,
                    }
                )
    return records


def synthetic(effects: dict[str, float], **kwargs) -> pd.DataFrame:
    return runs_frame(synthetic_records(effects, **kwargs))


def cell_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Cell × method table of seed means in points, computed independently of the package."""
    runs = runs.assign(points=runs["test_acc"] * 100)
    return runs.pivot_table(
        index=["dataset", "teacher", "student"], columns="method", values="points", aggfunc="mean"
    )


def holm_by_hand(pvalues: list[float]) -> list[float]:
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for step, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - step) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def main_table(readme: str) -> str:
    """The Markdown main table of a README."""
    section = readme.split("## Methods", 1)[1].split("\n\n")[1]
    assert section.startswith("| rank |")
    return section


def build(tmp_path: Path, runs: pd.DataFrame, name: str = "synthetic", **settings):
    board = leaderboard_from_runs(runs, tmp_path, name=name, settings=Settings(**settings))
    summary = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False)
    return board, summary, (tmp_path / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Acceptance: verdicts
# --------------------------------------------------------------------------------------------


def test_one_point_better_in_every_cell_is_first_marked_better_with_scipys_pvalue(tmp_path):
    effects = {"ce": -0.02, "kd": 0.0, "good": 0.01, "same_a": 0.0, "same_b": 0.0}
    runs = synthetic(effects)
    board, summary, readme = build(tmp_path, runs)

    first = board.entries[0]
    assert (first.entry, first.rank) == ("good@1", 1)
    assert summary.loc[0, "entry"] == "good@1"

    # Independent check: Wilcoxon over the 12 cell means, Holm over all pairs of methods.
    means = cell_means(runs)
    methods = list(effects)
    pairs = list(itertools.combinations(methods, 2))
    raw = [scipy.stats.wilcoxon(means[a] - means[b]).pvalue for a, b in pairs]
    adjusted = dict(zip(pairs, holm_by_hand(raw), strict=True))
    p_scipy = raw[pairs.index(("kd", "good"))]
    assert p_scipy == pytest.approx(2 / 2**12)  # all 12 differences positive, exact test
    assert first.vs_reference.pvalue == pytest.approx(p_scipy, rel=1e-12)
    assert first.vs_reference.p_holm == pytest.approx(adjusted[("kd", "good")], rel=1e-12)
    row = summary.set_index("entry").loc["good@1"]
    assert float(row["wilcoxon_vs_kd_p_holm"]) == pytest.approx(adjusted[("kd", "good")], rel=1e-8)
    assert row["verdict_vs_kd"] == "▲"
    assert first.vs_reference.verdict.text.startswith("▲ better")
    assert (first.wtl_reference.wins, first.wtl_reference.losses) == (12, 0)
    assert first.gain_vs_reference.estimate == pytest.approx(
        float((means["good"] - means["kd"]).mean()), abs=1e-9
    )
    assert first.gain_vs_reference.low < first.gain_vs_reference.estimate
    assert first.gain_vs_reference.low > 0.8 and first.gain_vs_reference.high < 1.2
    good_line = next(line for line in main_table(readme).splitlines() if "`good@1`" in line)
    assert good_line.startswith("| 1 |") and "▲ better" in good_line
    # The verdict at the top names the winner, the test and its Holm p-value (scipy's).
    gain = float((means["good"] - means["kd"]).mean())
    p_ce = adjusted[("ce", "kd")]
    assert (
        f"**Verdict.** Better than `kd@1` across cells: `good@1` ({gain:+.2f} points, higher in "
        f"12 of 12 cells, p_holm = {adjusted[('kd', 'good')]:.2g}), by the exact Wilcoxon "
        "signed-rank test on cell means, Holm-corrected over 10 pairs of methods (α = 0.05). "
        f"Worse than `kd@1`: `ce@1` (p_holm = {p_ce:.2g}).\n"
    ) in readme
    # kd is worse than good and better than ce: the records are read from each side.
    kd = board.entry("kd@1")
    assert kd.vs_baseline.verdict.mark == "▲"
    assert board.entry("ce@1").vs_reference.verdict.mark == "▼"
    assert board.entry("same_a@1").vs_reference.verdict.mark == "≈"


def test_all_methods_equal_marks_no_method_better(tmp_path):
    effects = dict.fromkeys(("ce", "kd", "a", "b", "c"), 0.0)
    board, summary, readme = build(tmp_path, synthetic(effects, noise=0.003, rng_seed=1))
    assert set(summary["verdict_vs_kd"]) <= {"≈", ""}
    assert set(summary["verdict_vs_ce"]) <= {"≈", ""}
    assert not any(p.verdict.significant for p in board.pairwise)
    assert "▲" not in main_table(readme) and "▼" not in main_table(readme)
    verdict = next(line for line in readme.splitlines() if line.startswith("**Verdict.**"))
    assert verdict.startswith(
        "**Verdict.** No method is better than `kd@1` across 12 cells by the exact Wilcoxon "
        "signed-rank test on cell means, Holm-corrected over 10 pairs of methods (α = 0.05)"
    )
    cell_verdicts = pd.read_csv(tmp_path / "cells.csv", keep_default_na=False)["verdict_vs_kd"]
    marked = cell_verdicts.isin(["▲", "▼"]).sum()
    assert marked <= 2, f"{marked} of {len(cell_verdicts)} within-cell comparisons marked"


def test_two_seeds_in_a_cell_reads_insufficient_not_a_verdict(tmp_path):
    effects = {"ce": -0.02, "kd": 0.0, "good": 0.01}
    runs = synthetic(effects, seeds_in={(0, "good"): 2})
    board, _, readme = build(tmp_path, runs)
    cell0 = board.cells[0]
    result = board.result(cell0, "good@1")
    assert result.n == 2
    assert result.vs_reference_verdict.mark is None
    assert result.vs_reference_verdict.text == ("insufficient seeds (n=2 vs 5; need ≥ 3 per side)")
    table = pd.read_csv(tmp_path / "cells.csv", keep_default_na=False)
    row = table[(table["dataset"] == cell0.dataset) & (table["teacher"] == cell0.teacher)]
    assert row.set_index("entry").loc["good@1", "verdict_vs_kd"] == "insufficient"
    assert "insufficient seeds (n=2 vs 5; need ≥ 3 per side)" in readme
    assert "Insufficient seeds: 1 method-cell result has fewer than 3 seeds" in readme
    # The other 11 cells still count: 11 wins, 1 without a verdict.
    wtl = board.entry("good@1").wtl_reference
    assert (wtl.wins, wtl.ties, wtl.losses, wtl.insufficient) == (11, 0, 0, 1)


def test_four_cells_read_insufficient_cells_even_for_a_clear_winner(tmp_path):
    effects = {"ce": -0.02, "kd": 0.0, "good": 0.01}
    board, summary, readme = build(tmp_path, synthetic(effects, n_cells=4))
    good = board.entry("good@1")
    assert good.rank == 1
    assert good.vs_reference.verdict.mark is None
    assert good.vs_reference.verdict.text == "insufficient cells (N=4; Wilcoxon needs ≥ 6)"
    assert set(summary["verdict_vs_kd"]) <= {"insufficient", ""}
    assert "Insufficient cells: only 4 cells" in readme
    assert "▲" not in main_table(readme)
    assert main_table(readme).count("insufficient cells (N=4; Wilcoxon needs ≥ 6)") == 2
    assert (
        "**Verdict.** Nothing is established against `kd@1`: 4 cells, and the across-cell "
        "Wilcoxon signed-rank test needs 6 to reach α = 0.05. Within single cells only (t-test "
        "on the seeds, Holm-corrected within the cell), better than `kd@1`: `good@1` in 4 of 4 "
        "cells.\n"
    ) in readme


def test_too_few_cells_for_holm_over_all_pairs_reads_insufficient(tmp_path):
    # 6 methods → 15 pairs; with 6 cells the smallest Holm p is 15 · 2/2**6 = 0.47.
    effects = {"ce": -0.02, "kd": 0.0, "good": 0.01, "a": 0.0, "b": 0.0, "c": 0.0}
    board, summary, readme = build(tmp_path, synthetic(effects, n_cells=6))
    good = board.entry("good@1").vs_reference
    assert good.p_holm == pytest.approx(15 * 2 / 2**6)
    assert good.verdict.text == "insufficient cells (N=6 for 15 Holm-corrected pairs; needs ≥ 10)"
    assert set(summary["verdict_vs_kd"]) <= {"insufficient", ""}
    assert "at least 0.47, so no across-cell verdict can be ▲ or ▼" in readme
    assert "≈" not in main_table(readme)
    assert (
        "**Verdict.** Nothing is established against `kd@1`: with 6 cells, 15 Holm-corrected "
        "pairs of methods cannot reach α = 0.05; the across-cell test needs 10 cells."
    ) in readme
    # 10 cells are enough: the same method is then marked better.
    board = build_leaderboard(synthetic(effects, n_cells=10))
    assert board.entry("good@1").vs_reference.verdict.mark == "▲"


# --------------------------------------------------------------------------------------------
# Coverage, baselines, failures
# --------------------------------------------------------------------------------------------


def test_partial_coverage_is_compared_on_common_cells_and_not_ranked(tmp_path):
    records = synthetic_records({"ce": -0.02, "kd": 0.0, "other": 0.005, "half": 0.01})
    records = [r for r in records if not (r["method"] == "half" and r["dataset"] in ("d2", "d3"))]
    runs = runs_frame(records)
    board, summary, readme = build(tmp_path, runs)
    half = board.entry("half@1")
    assert (half.coverage, half.rank) == (6, None)
    assert math.isnan(half.avg_rank)
    assert board.entries[-1].entry == "half@1"  # unranked entries follow the ranked ones
    means = cell_means(runs).dropna()
    assert len(means) == 6
    assert half.gain_vs_reference.estimate == pytest.approx(
        float((means["half"] - means["kd"]).mean()), abs=1e-9
    )
    assert half.vs_reference.n_cells == 6
    assert half.vs_reference.pvalue == pytest.approx(
        scipy.stats.wilcoxon(means["half"] - means["kd"]).pvalue
    )
    assert board.friedman.n_methods == 3  # ce, kd, other: the entries covering every cell
    assert "6/12" in readme and "Partial coverage: half@1 does not cover every cell" in readme
    assert summary.set_index("entry").loc["half@1", "rank"] == ""


def test_teacherless_runs_join_every_teachers_cell_and_refusals_show_their_reason(tmp_path):
    records = synthetic_records({"kd": 0.0, "at": 0.002}, n_cells=3)
    from bench.plugins import get_method

    at_version = get_method("at").version  # a current version: retired ones are shown apart
    for record in records:
        if record["method"] == "at":
            record["method_version"] = at_version
    for seed in range(4):
        records.append(
            {
                **records[0],
                "run_key": f"ce-{seed}",
                "method": "ce",
                "teacher": "",
                "seed": seed,
                "params": {},
                "test_acc": 0.8 + 0.001 * seed,
            }
        )
    records.append(
        {
            **records[0],
            "run_key": "at-refused",
            "method": "at",
            "method_version": at_version,
            "teacher": "vgg13",
            "seed": 9,
            "status": "FAILED",
            "outcome": "refused",
            "test_acc": math.nan,
            "error": "at does not support this pair: no spatial stages to align",
        }
    )
    runs = runs_frame(records)
    board, _, readme = build(tmp_path, runs)
    assert len(board.cells) == 3
    for cell in board.cells:
        ce = board.result(cell, "ce@1")
        assert ce.run_keys == ("ce-0", "ce-1", "ce-2", "ce-3")
        assert ce.summary.mean == pytest.approx(80.15)
    vgg = next(c for c in board.cells if c.teacher == "vgg13")
    assert board.result(vgg, f"at@{at_version}").problems == (
        "seed 9: refused: at does not support this pair: no spatial stages to align",
    )
    assert "refused: at does not support this pair" in readme
    assert "Methods that use no teacher (ce)" in readme
    assert "1 refused" in readme
    out = read_results_csv(tmp_path / "results.csv")
    assert len(out) == len(records)  # each run once, however many cells it joins
    assert board.n_used == len(records) - 1  # the refused run is listed, not used


def test_phase_and_bootstrap_seed_are_honoured_and_recorded(tmp_path):
    records = synthetic_records({"ce": -0.01, "kd": 0.0, "good": 0.005}, n_cells=6)
    tune = [{**r, "run_key": r["run_key"] + "-tune", "phase": "tune"} for r in records[:5]]
    runs = runs_frame(records + tune)
    first = build_leaderboard(runs, Settings(bootstrap_seed=7))
    again = build_leaderboard(runs, Settings(bootstrap_seed=7))
    other = build_leaderboard(runs, Settings(bootstrap_seed=8))
    g1, g2, g3 = (b.entry("good@1").gain_vs_reference for b in (first, again, other))
    assert g1 == g2
    assert g1.estimate == g3.estimate and (g1.low, g1.high) != (g3.low, g3.high)
    assert first.n_used == len(records)
    assert any("5 runs of other phases" in n for n in first.notes)
    _, summary, readme = build(tmp_path, runs, bootstrap_seed=7)
    assert set(summary["bootstrap_seed"]) == {7}
    assert "seed 7" in readme
    with pytest.raises(LeaderboardError, match=r"no run of phase 'nope'.*final, tune"):
        build_leaderboard(runs, Settings(phase="nope"))


def test_same_method_with_two_param_settings_in_a_cell_becomes_two_rows(tmp_path):
    records = synthetic_records({"ce": -0.01, "kd": 0.0}, n_cells=6)
    kd_t8 = [
        {**r, "run_key": r["run_key"] + "-t8", "params": {"temperature": 8.0}}
        for r in records
        if r["method"] == "kd"
    ]
    board = build_leaderboard(runs_frame(records + kd_t8))
    names = {e.entry for e in board.entries}
    assert names == {"ce@1", "kd@1[temperature=4.0]", "kd@1[temperature=8.0]"}
    assert board.reference_entry in names - {"ce@1"}


# --------------------------------------------------------------------------------------------
# results.csv: errors, round trip, CLI
# --------------------------------------------------------------------------------------------


def write_csv(path: Path, runs: pd.DataFrame, edit=None) -> Path:
    write_results_csv(runs, path)
    if edit is not None:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table = edit(table)
        table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def small_runs() -> pd.DataFrame:
    return synthetic({"ce": -0.01, "kd": 0.0, "good": 0.005}, n_cells=3, seeds=3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop(columns=["val_acc"]), r"header row is missing column\(s\) 'val_acc'"),
        (
            lambda t: t.assign(test_acc=t["test_acc"].where(t.index != 2, "0.9x")),
            r"row 3 \(line 4\), column 'test_acc': '0\.9x' is not a number",
        ),
        (
            lambda t: t.assign(run_key=t["run_key"].where(t.index != 4, t["run_key"][1])),
            r"row 5 \(line 6\), column 'run_key': '.*' already appears in row 2 \(line 3\)",
        ),
        (
            lambda t: t.assign(test_acc=t["test_acc"].where(t.index != 0, "93.5")),
            r"row 1 \(line 2\), column 'test_acc': 93\.5 is outside \[0, 1\].*percentage",
        ),
        (
            lambda t: t.assign(seed=t["seed"].where(t.index != 6, "")),
            r"row 7 \(line 8\), column 'seed': '' is not an integer",
        ),
        (
            lambda t: t.assign(status=t["status"].where(t.index != 3, "DONE")),
            r"row 4 \(line 5\), column 'status': 'DONE' is not one of",
        ),
        (
            lambda t: t.assign(params=t["params"].where(t.index != 1, "temperature=4")),
            r"row 2 \(line 3\), column 'params': not valid JSON",
        ),
        (
            lambda t: t.assign(image_size=t["image_size"].where(t.index != 5, "16.5")),
            r"row 6 \(line 7\), column 'image_size': '16\.5' is not an image size",
        ),
    ],
    ids=[
        "missing-column",
        "non-numeric",
        "duplicate-key",
        "percent",
        "no-seed",
        "status",
        "params",
        "image-size",
    ],
)
def test_malformed_csv_errors_name_row_and_column(tmp_path, small_runs, edit, message):
    path = write_csv(tmp_path / "results.csv", small_runs, edit)
    with pytest.raises(LeaderboardError, match=message):
        read_results_csv(path)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    return parser.parse_args(argv)


def test_cli_reports_a_malformed_csv_and_exits_2(tmp_path, small_runs, capsys):
    edit = lambda t: t.assign(test_acc=t["test_acc"].where(t.index != 2, "n/a"))  # noqa: E731
    path = write_csv(tmp_path / "bad.csv", small_runs, edit)
    assert leaderboard_main(parse(["--from-csv", str(path), str(tmp_path / "out")])) == 2
    err = capsys.readouterr().err
    assert "bad.csv, row 3 (line 4), column 'test_acc': 'n/a' is not a number" in err
    assert not (tmp_path / "out").exists()


def test_a_tune_suite_is_ranked_by_validation_accuracy(tmp_path, small_runs):
    folder = tmp_path / "tuned"
    folder.mkdir()
    (folder / "suite.yaml").write_text("name: tuned\nphase: tune\n", encoding="utf-8")
    path = write_csv(tmp_path / "runs.csv", small_runs, lambda t: t.assign(phase="tune"))
    assert leaderboard_main(parse(["--from-csv", str(path), str(folder), "--quiet"])) == 0
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# Leaderboard: tuned")
    assert "phase “tune”" in readme and "validation top-1 accuracy" in readme
    cells = pd.read_csv(folder / "cells.csv")
    kd = small_runs[small_runs["method"] == "kd"]
    first = kd[kd["dataset"] == "d0"].groupby("teacher")["val_acc"].mean() * 100
    got = cells[(cells["entry"] == "kd@1") & (cells["dataset"] == "d0")].set_index("teacher")
    assert got["mean"].to_dict() == pytest.approx(first.to_dict())


def test_outputs_rebuilt_from_results_csv_are_identical(tmp_path):
    runs = synthetic({"ce": -0.01, "kd": 0.0, "good": 0.006, "bad": -0.004}, n_cells=6)
    first, second = tmp_path / "first", tmp_path / "second"
    leaderboard_from_runs(runs, first, name="digits", settings=Settings(n_boot=500))
    argv = ["--from-csv", str(first / "results.csv"), str(second), "--name", "digits"]
    assert leaderboard_main(parse([*argv, "--n-boot", "500", "--quiet"])) == 0
    for name in OUTPUT_FILES:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        assert a == b, f"{name} differs after the rebuild"
    assert read_results_csv(second / "results.csv").equals(runs)


def test_150_runs_give_every_output_in_under_30_seconds(tmp_path):
    methods = ("ce", "kd", "dkd", "at", "fitnet", "rkd", "crd", "ls", "vid", "tf_kd")
    effects = {m: 0.002 * i for i, m in enumerate(methods)}
    runs = synthetic(effects, n_cells=3, seeds=5)
    assert len(runs) == 150
    started = time.perf_counter()
    leaderboard_from_runs(runs, tmp_path, name="digits")
    elapsed = time.perf_counter() - started
    assert elapsed < 30, f"{elapsed:.1f} s"
    for name in OUTPUT_FILES:
        assert (tmp_path / name).stat().st_size > 500, name
    svg = (tmp_path / "figures" / "cd_diagram.svg").read_text(encoding="utf-8")
    assert "<svg" in svg and "crd@1" in svg  # text stays text in the SVG


def test_page_is_self_contained_and_links_runs_when_a_server_is_known(tmp_path):
    records = synthetic_records({"ce": -0.01, "kd": 0.0}, n_cells=2, seeds=3)
    for i, r in enumerate(records):
        r.update(mlflow_run_id=f"run{i:03d}", mlflow_experiment_id="7")
    runs = runs_frame(records)
    board = build_leaderboard(runs)
    from bench.leaderboard.html import render_html

    offline = render_html(board)
    assert "http" not in offline  # nothing to fetch: opens from disk without a network
    assert "<script src" not in offline and "<link" not in offline
    online = render_html(board, mlflow_url="http://head:5000/")
    kd0 = next(i for i, r in enumerate(records) if r["method"] == "kd")
    assert f'href="http://head:5000/#/experiments/7/runs/run{kd0:03d}"' in online
    assert "http://head:5000/#/compare-runs?runs=" in online
    assert 'src="figures/cd_diagram.svg"' in online


def test_readme_and_page_define_every_column_of_the_methods_table(tmp_path):
    _, _, readme = build(tmp_path, synthetic({"ce": -0.01, "kd": 0.0, "a": 0.004}, n_cells=3))
    header = main_table(readme).splitlines()[0].strip("| ").split(" | ")
    legend = readme.split("\n\n", readme.count("\n\n"))  # paragraphs
    bullets = next(p for p in legend if p.startswith("- **rank**")).splitlines()
    assert [b.split("**")[1] for b in bullets] == header
    assert header[3] == "gain over `ce@1` [95% CI]"
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    table = page.split('<table id="main"', 1)[1].split("</thead>", 1)[0]
    columns = re.findall(r'<button type="button">(.*?)</button>', table)
    dl = page.split('<dl class="legend" id="legend">', 1)[1].split("</dl>", 1)[0]
    terms = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", dl))
    assert list(terms) == columns  # every column, in order, and nothing else
    assert columns[-5:] == ["Top-5", "Macro-F1", "ECE", "Agreement", "Cost"]
    assert "15 equal-width bins" in terms["ECE"]
    assert "teacher&#x27;s" in terms["Agreement"]
    assert "<code>method@version</code>" in terms["Method"] and "version" in terms["Method"]
    # The verdict comes first on the page as in the README.
    assert page.index('id="verdict"') < page.index('id="notes"')
    assert "Nothing is established against <code>kd@1</code>: 3 cells" in page


@pytest.mark.parametrize("length", [4, 120])
def test_figures_hold_their_labels_at_any_method_name_length(length):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from bench.leaderboard.figures import (
        draw_cd_diagram,
        draw_gain_heatmap,
        draw_gains,
        matplotlib_rc,
    )

    name = ("distillation_with_a_long_name_" * 5)[:length]
    effects = {"ce": -0.01, "kd": 0.0, name: 0.004, "b": -0.002}
    board = build_leaderboard(synthetic(effects, n_cells=3, seeds=3), Settings(n_boot=200))
    assert f"{name}@1" in {e.entry for e in board.entries}
    widths = {}
    for draw in (draw_cd_diagram, draw_gains, draw_gain_heatmap):
        # matplotlib warns when its layout gives up ("axes sizes collapsed to zero").
        with matplotlib_rc(), warnings.catch_warnings():
            warnings.simplefilter("error")
            fig = draw(board)
            renderer = FigureCanvasAgg(fig).get_renderer()
            fig.draw(renderer)
            drawn = fig.get_tightbbox(renderer)  # every artist drawn, text included (inches)
        width, height = fig.get_size_inches()
        assert drawn.x0 >= 0 and drawn.y0 >= 0, draw.__name__
        assert drawn.x1 <= width and drawn.y1 <= height, (draw.__name__, drawn, width)
        for ax in (a for a in fig.axes if a.get_label() != "<colorbar>"):
            box = ax.get_position()
            assert box.width * width > 0.3 and box.height * height > 0.3, draw.__name__
        widths[draw.__name__] = width
    if length > 100:
        # 120 characters at 9 pt are about 9 inches: the figures grew to hold them.
        assert min(widths.values()) > 9, widths


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_suite(tmp_path_factory):
    """A real SQLite MLflow store written through bench.tracking.Tracker, and a suite folder."""
    from bench.config import Recipe, TeacherSpec, TrialConfig, run_key
    from bench.tracking import Tracker

    root = tmp_path_factory.mktemp("mlflow-suite")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    suite = root / "leaderboards" / "tiny"
    suite.mkdir(parents=True)
    (suite / "suite.yaml").write_text("name: tiny\nexperiment: tiny-exp\n", encoding="utf-8")
    tracker = Tracker(uri, experiment="tiny-exp")
    recipe = Recipe(epochs=1, image_size=16)
    teacher = TeacherSpec(arch="resnet56", recipe=recipe)
    # Method classes carrying what the tracker reads (version, knowledge, and the module whose
    # helper imports make the shared code: none here).
    from bench.plugins import get_method

    kinds = {
        "ce": type("Ce", (), {"version": get_method("ce").version, "knowledge": "none"}),
        "kd": type("Kd", (), {"version": get_method("kd").version, "knowledge": "logits"}),
    }
    accuracy = {("ce", s): 0.80 + 0.01 * s for s in range(3)}
    accuracy.update({("kd", s): 0.84 + 0.01 * s for s in range(3)})
    logged = {}
    for (method, seed), acc in accuracy.items():
        config = TrialConfig(
            dataset="digits",
            student="resnet20",
            method=method,
            seed=seed,
            recipe=recipe,
            teacher=None if method == "ce" else teacher,
            params=(("temperature", 4.0),) if method == "kd" else (),
        )
        key = run_key(config, kinds[method].version)
        with tracker.trial_run(config, key, kinds[method]) as run:
            run.finish(_result(acc, teacher=method == "kd"))
        logged[key] = run.run_id
    # A failed attempt of a key that later finished: the finished run must win.
    retried = next(iter(logged))
    config = TrialConfig(dataset="digits", student="resnet20", method="ce", seed=0, recipe=recipe)
    with pytest.raises(RuntimeError), tracker.trial_run(config, retried, kinds["ce"]):
        raise RuntimeError("node lost")
    return SimpleNamespace(
        uri=uri, suite=suite, logged=logged, retried=retried, kd=f"kd@{kinds['kd'].version}"
    )


def _result(acc: float, *, teacher: bool) -> SimpleNamespace:
    """What bench.trial.compose.TrialResult reports at the end of a finished trial."""
    return SimpleNamespace(
        test_acc=acc,
        test_top5=1.0,
        val_acc=acc - 0.01,
        teacher_test_acc=0.95 if teacher else math.nan,
        agreement=0.9 if teacher else math.nan,
        train_seconds=2.0,
        student_params=22_924,
        extra_params=0,
        outcome="ok",
        error=None,
        status="FINISHED",
    )


def test_leaderboard_from_a_real_mlflow_store(mlflow_suite, capsys):
    s = mlflow_suite
    args = parse([str(s.suite), "--tracking-uri", s.uri, "--mlflow-url", "http://127.0.0.1:5000"])
    assert leaderboard_main(args) == 0
    captured = capsys.readouterr()
    assert f"run key {s.retried} was recorded twice" in captured.err
    runs = read_results_csv(s.suite / "results.csv")
    assert len(runs) == 6
    assert dict(zip(runs["run_key"], runs["mlflow_run_id"], strict=True)) == s.logged
    assert set(runs["status"]) == {"FINISHED"}
    kd = runs[runs["method"] == "kd"]
    assert {f"kd@{v}" for v in kd["method_version"]} == {s.kd}
    assert set(kd["teacher"]) == {"resnet56"}
    assert json.loads(kd["params"].iloc[0]) == {"temperature": 4.0}
    assert set(runs.loc[runs["method"] == "ce", "teacher"]) == {""}
    assert sorted(runs["test_acc"]) == pytest.approx([0.80, 0.81, 0.82, 0.84, 0.85, 0.86])
    assert set(runs["image_size"]) == {16}  # the recipe's, from the runs' MLflow params
    readme = (s.suite / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# Leaderboard: tiny")
    assert "### digits: resnet56 → resnet20 (teacher 95.00%; " in readme
    kd_row = next(line for line in readme.splitlines() if line.startswith(f"| `{s.kd}` | 85.00"))
    assert "▲ +4.00" in kd_row  # paired by seed: the same +4 points on every seed
    html = (s.suite / "index.html").read_text(encoding="utf-8")
    assert (
        "http://127.0.0.1:5000/#/experiments/" in html and s.logged[kd["run_key"].iloc[0]] in html
    )
    for name in OUTPUT_FILES:
        assert (s.suite / name).is_file(), name


def test_unknown_experiment_names_the_ones_that_exist(mlflow_suite, tmp_path, capsys):
    folder = tmp_path / "other"
    folder.mkdir()
    assert leaderboard_main(parse([str(folder), "--tracking-uri", mlflow_suite.uri])) == 2
    err = capsys.readouterr().err
    assert "no MLflow experiment 'other'" in err and "tiny-exp" in err


def test_results_csv_documents_every_column():
    from bench.leaderboard import runs as runs_module

    documented = runs_module.__doc__
    for column in COLUMNS:
        assert f"\n{column} " in documented, column


# --------------------------------------------------------------------------------------------
# Per-run metrics
# --------------------------------------------------------------------------------------------


def test_macro_prf_by_hand_and_against_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    from bench.trial.metrics import macro_prf

    labels, predictions = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # Class 0: P 1/2, R 1/2; class 1: P 2/3, R 1, F1 0.8; class 2 never predicted: all 0.
    got = macro_prf(np.array(predictions), np.array(labels))
    assert got.precision == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert got.recall == pytest.approx(0.5)
    assert got.f1 == pytest.approx((0.5 + 0.8) / 3)
    assert macro_prf(np.array(predictions), np.array(labels), num_classes=4).recall == 0.375

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 7))
    y = rng.integers(0, 7, size=200)
    p, r, f, _ = precision_recall_fscore_support(
        y, logits.argmax(1), average="macro", zero_division=0
    )
    got = macro_prf(logits, y)
    assert (got.precision, got.recall, got.f1) == pytest.approx((p, r, f))
    with pytest.raises(ValueError, match=r"class index 7 is outside 0\.\.6"):
        macro_prf(np.array([7, 0]), np.array([0, 0]), num_classes=7)


def test_expected_calibration_error_by_hand():
    from bench.trial.metrics import expected_calibration_error

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 0])  # right, wrong, right, wrong
    # Two bins: all four in (0.5, 1]: accuracy 0.5, mean confidence 0.75.
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.25)
    # Ten bins: one sample per bin, gaps 0.1, 0.6, 0.3, 0.8 (0.7 belongs to (0.6, 0.7]).
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.45)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2])) == 0.0
    with pytest.raises(ValueError, match="softmax"):
        expected_calibration_error(np.array([[2.0, -1.0]]), np.array([0]))


def test_count_flops_counts_multiply_adds_twice_and_keeps_training_mode():
    import torch
    from torch import nn

    from bench.trial.metrics import count_flops

    assert count_flops(nn.Linear(10, 5), (10,)) == 2 * 10 * 5
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    )
    model.train()
    conv = 2 * (8 * 8 * 8) * (3 * 3 * 3)  # one multiply-add per output and kernel weight
    assert count_flops(model, (3, 8, 8)) == conv + 2 * 512 * 10
    assert model.training
    assert torch.is_grad_enabled()
