"""What a leaderboard compares with, and which runs it counts.

The baseline and the reference are declared entries (each method's default setting unless the
suite names another), named in every column that compares with them; ranks break ties on one
stated quantity; runs of a method version the suite no longer runs are shown apart; and one
run key never stands for two different results. Runs tables are built by hand, so that every
number asserted can be checked on paper; the MLflow cases use a real SQLite store.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.leaderboard.aggregate import Settings, build_leaderboard
from bench.leaderboard.cli import add_leaderboard_arguments, leaderboard_main
from bench.leaderboard.render import OUTPUT_FILES
from bench.leaderboard.runs import runs_frame, write_results_csv
from bench.plugins import get_method
from bench.suite.load import parse_suite
from bench.suite.schema import SuiteError

KD = get_method("kd").version
CE = get_method("ce").version
DKD = get_method("dkd").version
TEACHERS = ("resnet56", "wrn_40_2", "vgg13")
SEED_OFFSETS = (-0.001, 0.0, 0.001)  # three seeds whose mean is the cell's level exactly


def run(method: str, cell: int, seed: int, acc: float, **extra) -> dict:
    """One finished run of ``method`` in cell ``cell`` (dataset d0, teacher by index)."""
    version = extra.pop("version", {"ce": CE, "kd": KD, "dkd": DKD}.get(method, 1))
    params = extra.pop("params", {})
    phase = extra.pop("phase", "final")
    key = f"{method}@{version}-{sorted(params.items())}-{cell}-{seed}"
    return {
        "run_key": key,
        "dataset": "d0",
        "teacher": TEACHERS[cell],
        "student": "resnet20",
        "method": method,
        "method_version": version,
        "params": params,
        "seed": seed,
        "phase": phase,
        "status": "FINISHED",
        "outcome": "ok",
        "test_acc": acc,
        "val_acc": acc,
        "teacher_test_acc": 0.97,
        "train_seconds": 10.0,
        **extra,
    }


def entry_runs(method: str, levels: list[float], **extra) -> list[dict]:
    """Three seeds per cell at each cell's level (a fraction), seed means exactly the level."""
    return [
        run(method, c, s, level + offset, **extra)
        for c, level in enumerate(levels)
        for s, offset in enumerate(SEED_OFFSETS)
    ]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    return parser.parse_args(argv)


def build_folder(tmp_path: Path, records: list[dict], suite: str, *argv: str):
    """Write the runs as a results.csv and build the suite folder's leaderboard from it with
    the command line; returns (exit status, folder)."""
    csv = tmp_path / "runs.csv"
    write_results_csv(runs_frame(records), csv)
    folder = tmp_path / "board"
    folder.mkdir(exist_ok=True)
    (folder / "suite.yaml").write_text(suite, encoding="utf-8")
    status = leaderboard_main(parse(["--from-csv", str(csv), str(folder), "--quiet", *argv]))
    return status, folder


def main_header(readme: str) -> str:
    return next(line for line in readme.splitlines() if line.startswith("| rank |"))


# --------------------------------------------------------------------------------------------
# A tune suite with kd at T ∈ {1, 4, 8}: the reference is kd's default (T = 4)
# --------------------------------------------------------------------------------------------

#: Cell levels (fractions): kd at T = 8 is the worst setting, below the student alone; its
#: entry name ``kd@…[temperature=8.0]`` is the largest string and all have as many runs.
TUNE_LEVELS = {
    "ce": [0.900, 0.880, 0.860],
    4.0: [0.915, 0.895, 0.875],  # ce + 1.5 points in every cell
    1.0: [0.905, 0.885, 0.865],  # ce + 0.5
    8.0: [0.890, 0.870, 0.850],  # ce - 1.0
}
TUNE_SUITE = "name: tuned\nphase: tune\n"


def tune_records(default_as_empty: bool = False) -> list[dict]:
    records = entry_runs("ce", TUNE_LEVELS["ce"], phase="tune")
    for t in (1.0, 4.0, 8.0):
        # Runs recorded before resolved params were written out hold {} at the defaults.
        params = {} if default_as_empty and t == 4.0 else {"temperature": t}
        records += entry_runs("kd", TUNE_LEVELS[t], params=params, phase="tune")
    return records


@pytest.mark.parametrize("default_as_empty", [False, True], ids=["written-out", "empty-params"])
def test_a_tune_suite_measures_gain_over_kd_against_its_default_temperature(
    tmp_path, default_as_empty
):
    status, folder = build_folder(tmp_path, tune_records(default_as_empty), TUNE_SUITE)
    assert status == 0
    t4, t8 = f"kd@{KD}[temperature=4.0]", f"kd@{KD}[temperature=8.0]"
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False).set_index("entry")
    assert set(summary["reference_entry"]) == {t4}
    # By hand: kd at T = 4 is 1.5 points above ce in each cell, T = 8 one point below ce.
    assert float(summary.loc[f"ce@{CE}", "gain_vs_kd"]) == pytest.approx(-1.5, abs=1e-9)
    assert float(summary.loc[t8, "gain_vs_kd"]) == pytest.approx(-2.5, abs=1e-9)
    assert float(summary.loc[f"kd@{KD}[temperature=1.0]", "gain_vs_kd"]) == pytest.approx(-1.0)
    assert summary.loc[t4, "gain_vs_kd"] == ""  # the reference itself
    readme = (folder / "README.md").read_text(encoding="utf-8")
    header = main_header(readme)
    assert f"gain over `{t4}` [95% CI]" in header and f"W/T/L vs `{t4}`" in header
    assert f"| vs `{t4}` | vs `ce@{CE}` |" in readme  # the cell tables' columns
    # The student alone is 1.5 points below kd's default, never "+1 over kd" (against T = 8).
    ce_row = next(line for line in readme.splitlines() if f"| `ce@{CE}` | 3/3 |" in line)
    assert "| -1.50 [" in ce_row and "+1.00" not in ce_row
    assert f"the reference is `{t4}`: kd version {KD} with its default params" in readme
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert f"Gain vs {t4}</button>" in page
    assert f"reference: kd → {t4}" in page


def test_without_a_run_at_kds_default_setting_nothing_is_compared_and_it_says_so(tmp_path, capsys):
    records = [r for r in tune_records() if r["params"].get("temperature") != 4.0]
    status, folder = build_folder(tmp_path, records, TUNE_SUITE)
    assert status == 0
    warning = capsys.readouterr().err
    assert f"warning: No reference: `kd@{KD}`: kd version {KD} with its default params" in warning
    assert "alpha=0.9, temperature=4.0" in warning and "none is used in its place" in warning
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert readme.count("⚠ No reference") == 1
    assert f"`kd@{KD}[temperature=1.0]`, `kd@{KD}[temperature=8.0]`; none is used" in readme
    assert f"gain over `kd@{KD} (no runs)` [95% CI]" in main_header(readme)
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False)
    assert set(summary["reference_entry"]) == {""}
    assert set(summary["gain_vs_kd"]) == {""}  # no gain against a stand-in


# --------------------------------------------------------------------------------------------
# A reference the suite names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "declared",
    [
        "leaderboard: {reference: 'kd[temperature=8.0]'}",
        f"leaderboard:\n  reference: {{method: kd, version: {KD}, params: {{temperature: 8}}}}",
    ],
    ids=["text", "mapping"],
)
def test_a_reference_named_by_the_suite_is_the_one_used(tmp_path, declared):
    status, folder = build_folder(tmp_path, tune_records(), TUNE_SUITE + declared + "\n")
    assert status == 0
    t8 = f"kd@{KD}[temperature=8.0]"
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False).set_index("entry")
    assert set(summary["reference_entry"]) == {t8}
    assert float(summary.loc[f"ce@{CE}", "gain_vs_kd"]) == pytest.approx(1.0, abs=1e-9)
    assert float(summary.loc[f"kd@{KD}[temperature=4.0]", "gain_vs_kd"]) == pytest.approx(2.5)
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert f"gain over `{t8}` [95% CI]" in main_header(readme)
    assert (
        f"the reference is `{t8}`: kd version {KD} with temperature=8.0 as named, the other "
        "params at their defaults (alpha=0.9)" in readme
    )


def test_the_command_line_overrides_the_suites_reference(tmp_path):
    suite = TUNE_SUITE + "leaderboard: {reference: 'kd[temperature=8.0]'}\n"
    status, folder = build_folder(
        tmp_path, tune_records(), suite, "--reference", "kd[temperature=1]"
    )
    assert status == 0
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False)
    assert set(summary["reference_entry"]) == {f"kd@{KD}[temperature=1.0]"}


def test_a_declared_reference_without_runs_is_reported_not_replaced(tmp_path, capsys):
    suite = TUNE_SUITE + "leaderboard: {reference: 'kd[temperature=2.0]'}\n"
    status, folder = build_folder(tmp_path, tune_records(), suite)
    assert status == 0
    err = capsys.readouterr().err
    assert f"warning: No reference: `kd@{KD}`: kd version {KD} with temperature=2.0 as named" in err
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False)
    assert set(summary["reference_entry"]) == {""} and set(summary["gain_vs_kd"]) == {""}


def test_a_malformed_leaderboard_section_exits_2_naming_the_key(tmp_path, capsys):
    suite = TUNE_SUITE + "leaderboard: {refrence: kd}\n"
    status, _ = build_folder(tmp_path, tune_records(), suite)
    assert status == 2
    assert "leaderboard.refrence: unknown key. Did you mean 'reference'?" in capsys.readouterr().err
    status, _ = build_folder(
        tmp_path, tune_records(), TUNE_SUITE + "leaderboard: {reference: kd@x}\n"
    )
    assert status == 2
    assert "leaderboard.reference: version 'x' is not a whole number" in capsys.readouterr().err
    status, _ = build_folder(
        tmp_path, tune_records(), TUNE_SUITE, "--reference", "kd[temprature=4]"
    )
    assert status == 2
    assert (
        "reference kd[temprature=4]: kd has no param 'temprature'. Did you mean 'temperature'?"
        in capsys.readouterr().err
    )


SUITE = """\
name: tiny
phase: tune
datasets: [digits]
pairs:
  - {teacher: test_resnet_wide, student: test_resnet_narrow}
methods:
  - ce
  - {name: kd, search: {temperature: [1.0, 4.0, 8.0]}}
seeds: [0]
tune: {budget: 3}
"""


def suite_problem(leaderboard: str) -> str:
    with pytest.raises(SuiteError) as caught:
        parse_suite(SUITE + leaderboard + "\n", source="s.yaml")
    return str(caught.value)


def test_the_suite_validates_the_entries_its_leaderboard_names():
    suite = parse_suite(SUITE + "leaderboard: {baseline: ce, reference: 'kd[temperature=8]'}\n")
    assert suite.leaderboard.reference.text == "kd[temperature=8.0]"  # typed as the field
    assert suite.leaderboard.baseline.text == "ce"
    assert parse_suite(SUITE).leaderboard is None
    assert "s.yaml:11: leaderboard.refrence: unknown key 'refrence'. Did you mean 'reference'?" in (
        suite_problem("leaderboard: {refrence: kd}")
    )
    assert "leaderboard.reference: unknown method of this suite 'kdd'. Did you mean 'kd'?" in (
        suite_problem("leaderboard: {reference: kdd}")
    )
    assert "unknown parameter of kd 'temprature'. Did you mean 'temperature'?" in (
        suite_problem("leaderboard: {reference: 'kd[temprature=4.0]'}")
    )
    assert "leaderboard.reference.parms: unknown key 'parms'. Did you mean 'params'?" in (
        suite_problem("leaderboard: {reference: {method: kd, parms: {}}}")
    )
    assert f"kd is at version {KD} here" in suite_problem(
        f"leaderboard: {{reference: kd@{KD + 1}}}"
    )
    assert (
        "the suite runs kd at no such setting (temperature=2.0); it runs kd with "
        "temperature=1.0; temperature=4.0; temperature=8.0"
        in suite_problem("leaderboard: {reference: 'kd[temperature=2.0]'}")
    )
    study = "study: {parameter: temperature, method: kd, reference: 4.0}\n"
    assert "study.reference: the reference is named twice" in suite_problem(
        study + "leaderboard: {reference: kd}"
    )


# --------------------------------------------------------------------------------------------
# Ties in average rank
# --------------------------------------------------------------------------------------------


def test_equal_average_ranks_are_ordered_by_mean_score_alone():
    # Two cells. kd: 90, 80; other: 80.5, 90.5; ce: 70, 70 (points). Cell 0 ranks kd, other,
    # ce; cell 1 other, kd, ce: kd and other both average 1.5, ce 3. Mean scores: other 85.5,
    # kd 85.0, so other is first. (Mixing "gain over kd" (+0.5 for other) with kd's own gain
    # over ce (+15) would have put kd first.)
    levels = {"kd": [0.90, 0.80], "other": [0.805, 0.905], "ce": [0.70, 0.70]}
    records = [r for m, lv in levels.items() for r in entry_runs(m, lv)]
    board = build_leaderboard(runs_frame(records), Settings(n_boot=200))
    got = [(e.entry, e.rank, e.avg_rank) for e in board.entries]
    assert got == [("other@1", 1, 1.5), (f"kd@{KD}", 2, 1.5), (f"ce@{CE}", 3, 3.0)]
    assert board.entry("other@1").side["test_acc"] == pytest.approx(0.855)
    assert board.entry(f"kd@{KD}").side["test_acc"] == pytest.approx(0.85)
    from bench.leaderboard.formatting import how_to_read

    assert (
        "equal average ranks are ordered by the higher mean test top-1 accuracy over the "
        "cells, then by name" in " ".join(how_to_read(board))
    )


# --------------------------------------------------------------------------------------------
# Retired versions
# --------------------------------------------------------------------------------------------


def test_a_version_the_suite_no_longer_runs_is_shown_apart_and_never_ranked(tmp_path):
    levels = [0.90, 0.88, 0.86]
    records = entry_runs("ce", levels) + entry_runs("kd", [x + 0.01 for x in levels])
    records += entry_runs("dkd", [x + 0.005 for x in levels])  # the current version
    old = DKD - 1
    records += entry_runs("dkd", [x + 0.05 for x in levels], version=old)  # best everywhere
    # A method that is not installed: its highest recorded version counts as current.
    records += entry_runs("fancy", [x + 0.002 for x in levels], version=2)
    records += entry_runs("fancy", [x + 0.04 for x in levels], version=1)
    status, folder = build_folder(tmp_path, records, "name: retired\n")
    assert status == 0
    summary = pd.read_csv(folder / "summary.csv", keep_default_na=False).set_index("entry")
    retired = {f"dkd@{old}", "fancy@1"}
    is_retired = summary["retired"].astype(str) == "True"
    assert set(summary.index[is_retired]) == retired
    assert (summary.loc[sorted(retired), "rank"] == "").all()
    ranks = summary.loc[~is_retired, "rank"].astype(int)
    assert ranks.to_dict() == {f"kd@{KD}": 1, f"dkd@{DKD}": 2, "fancy@2": 3, f"ce@{CE}": 4}
    # The retired entries keep their gains (5 and 4 points over ce, by hand) ...
    assert float(summary.loc[f"dkd@{old}", "gain_vs_ce"]) == pytest.approx(5.0, abs=1e-9)
    assert float(summary.loc["fancy@1", "gain_vs_ce"]) == pytest.approx(4.0, abs=1e-9)
    # ... but enter no test: not in the pairwise table nor in any cell's Holm family.
    pairwise = pd.read_csv(folder / "pairwise.csv")
    assert not (set(pairwise["a"]) | set(pairwise["b"])) & retired
    assert len(pairwise) == 6  # the 4 current entries: 6 pairs
    cells = pd.read_csv(folder / "cells.csv", keep_default_na=False).set_index("entry")
    assert set(cells.loc[f"dkd@{old}", "verdict_vs_kd"]) == {""}
    readme = (folder / "README.md").read_text(encoding="utf-8")
    methods = readme.split("## Methods", 1)[1].split("### Retired versions", 1)
    assert f"`dkd@{old}`" not in methods[0].split("\n\n")[1]  # not in the ranked table
    assert f"| `dkd@{old}` | `dkd@{DKD}` | 3/3 | +5.00 [" in methods[1]
    assert "| `fancy@1` | `fancy@2` | 3/3 | +4.00 [" in methods[1]
    assert f"Retired versions: `dkd@{old}`, `fancy@1` are not the version the suite runs" in readme
    page = (folder / "index.html").read_text(encoding="utf-8")
    assert '<section id="retired"><h2>Retired versions</h2>' in page
    assert page.index('id="retired"') > page.index('id="main"')


def test_rebuilding_from_results_csv_keeps_every_output_identical(tmp_path):
    records = tune_records()
    records += entry_runs(
        "kd", [0.93, 0.91, 0.89], params={"temperature": 4.0}, phase="tune", version=KD - 1
    )
    suite = TUNE_SUITE + "leaderboard: {reference: 'kd[temperature=1.0]'}\n"
    status, first = build_folder(tmp_path, records, suite)
    assert status == 0
    second = tmp_path / "second"
    second.mkdir()
    (second / "suite.yaml").write_text(suite, encoding="utf-8")
    argv = ["--from-csv", str(first / "results.csv"), str(second), "--quiet"]
    assert leaderboard_main(parse(argv)) == 0
    for name in OUTPUT_FILES:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


# --------------------------------------------------------------------------------------------
# One run key, one result (MLflow)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite MLflow store with three experiments of ce and kd runs (one cell, 3 seeds):
    ``conflict`` (kd's seed 0 recorded twice with different accuracies), ``identical`` (the
    same, with equal results) and ``replicate`` (a second, different run tagged as a
    replicate)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    ids: dict[str, list[str]] = {}

    def log(experiment: str, method: str, seed: int, acc: float, **tags) -> str:
        run = client.create_run(
            experiment,
            tags={
                "kdbench.run_key": f"{method}-{seed}",
                "kdbench.dataset": "digits",
                "kdbench.teacher": "" if method == "ce" else "resnet20",
                "kdbench.student": "resnet8",
                "kdbench.method": method,
                "kdbench.method_version": str({"ce": CE, "kd": KD}[method]),
                "kdbench.seed": str(seed),
                "kdbench.phase": "final",
                "kdbench.outcome": "ok",
                **tags,
            },
        )
        for name, value in (("test_acc", acc), ("final_val_acc", acc), ("train_seconds", 1.0)):
            client.log_metric(run.info.run_id, name, value)
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    for name in ("conflict", "identical", "replicate"):
        experiment = client.create_experiment(name)
        for seed in range(3):
            log(experiment, "ce", seed, 0.80 + 0.01 * seed)
            log(experiment, "kd", seed, 0.84 + 0.01 * seed)
        again = {"conflict": 0.90, "identical": 0.84, "replicate": 0.90}[name]
        tags = {"kdbench.replicate": "true"} if name == "replicate" else {}
        ids[name] = [
            r.info.run_id
            for r in client.search_runs([experiment], "tags.`kdbench.run_key` = 'kd-0'")
        ]
        ids[name].append(log(experiment, "kd", 0, again, **tags))
    return uri, ids


def board_from(store, experiment: str, tmp_path: Path) -> int:
    uri, _ = store
    folder = tmp_path / experiment
    folder.mkdir()
    argv = [str(folder), "--tracking-uri", uri, "--experiment", experiment, "--quiet"]
    return leaderboard_main(parse(argv))


def test_two_finished_runs_of_one_key_with_different_results_fail_naming_both(
    store, tmp_path, capsys
):
    assert board_from(store, "conflict", tmp_path) == 2
    err = capsys.readouterr().err
    first, second = store[1]["conflict"]
    assert (
        f"run key kd-0 has two FINISHED runs with different results: MLflow run {first} "
        f"(test_acc=0.84, val_acc=0.84) and MLflow run {second} (test_acc=0.9, val_acc=0.9)" in err
    )
    assert not (tmp_path / "conflict" / "README.md").exists()


def test_identical_duplicates_use_the_first_run_and_say_which(store, tmp_path, capsys):
    assert board_from(store, "identical", tmp_path) == 0
    first, second = store[1]["identical"]
    err = capsys.readouterr().err
    assert (
        f"run key kd-0 was recorded twice; using MLflow run {first} (FINISHED, the first of "
        f"its FINISHED runs, which have identical results), ignoring {second} (FINISHED)" in err
    )
    results = pd.read_csv(tmp_path / "identical" / "results.csv", keep_default_na=False)
    assert len(results) == 6
    assert results.set_index("run_key").loc["kd-0", "mlflow_run_id"] == first


def test_replicates_are_not_leaderboard_entries(store, tmp_path, capsys):
    assert board_from(store, "replicate", tmp_path) == 0
    assert "1 replicate run (tagged kdbench.replicate=true) left out" in capsys.readouterr().err
    results = pd.read_csv(tmp_path / "replicate" / "results.csv", keep_default_na=False)
    _, replicate = store[1]["replicate"]
    assert replicate not in set(results["mlflow_run_id"])
    kd = results[results["method"] == "kd"].sort_values("seed")
    assert np.allclose(kd["test_acc"], [0.84, 0.85, 0.86])
