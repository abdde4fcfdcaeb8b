"""The leaderboard's Models section: costs of the teachers and students, cached in models.csv.

A tiny board on digits at 8x8: ``test_resnet_wide`` teaches ``test_resnet_narrow`` (the
student alone, ``ce``, and ``kd``, three seeds). Parameters and FLOPs are counted by hand.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
import pytest

from bench.leaderboard.cli import add_leaderboard_arguments, leaderboard_from_runs, leaderboard_main
from bench.leaderboard.runs import read_results_csv, runs_frame, write_results_csv

TEACHER, STUDENT = "test_resnet_wide", "test_resnet_narrow"
# test_resnet_narrow, widths 8/8/16/32, 10 classes (3x3 convolutions without bias, BN weight
# and bias, 1x1 projections where width or stride change):
#   stem 3*8*9 + 16 = 232; layer1 2 * (8*8*9 + 16) = 1,184;
#   layer2 8*16*9 + 32 + 16*16*9 + 32 + 8*16 + 32 = 3,680;
#   layer3 16*32*9 + 64 + 32*32*9 + 64 + 16*32 + 64 = 14,528; fc 32*10 + 10 = 330.
STUDENT_PARAMS = 232 + 1_184 + 3_680 + 14_528 + 330  # 19,954
# Multiply-adds on one 3x8x8 input: stem 216 * 64; layer1 2 * 576 * 64 at 8x8;
# layer2 (1,152 + 2,304 + 128) * 16 at 4x4; layer3 (4,608 + 9,216 + 512) * 4 at 2x2; fc 320.
STUDENT_FLOPS = 2 * (216 * 64 + 2 * 576 * 64 + 3_584 * 16 + 14_336 * 4 + 320)  # 405,120
# test_resnet_wide is resnet8's shape (widths 16/16/32/64), the same sums twice as wide.
TEACHER_PARAMS = 464 + 4_672 + 14_528 + 57_728 + 650  # 78,042


def records(image_size: int | None = 8, dataset: str = "digits") -> list[dict]:
    out = []
    for method, level in (("ce", 0.90), ("kd", 0.92)):
        for seed in range(3):
            out.append(
                {
                    "run_key": f"{method}-{seed}",
                    "dataset": dataset,
                    "teacher": TEACHER if method == "kd" else "",
                    "student": STUDENT,
                    "method": method,
                    "method_version": 1,
                    "params": {},
                    "seed": seed,
                    "phase": "final",
                    "image_size": image_size,
                    "status": "FINISHED",
                    "test_acc": level + 0.01 * seed,
                    "val_acc": level,
                    "teacher_test_acc": 0.95 if method == "kd" else None,
                    "train_seconds": 1.0,
                }
            )
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    return parser.parse_args(argv)


def models_csv(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "models.csv").set_index("model")


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    leaderboard_from_runs(runs_frame(records()), folder, name="tiny")
    return folder


def test_models_section_lists_the_teacher_and_the_student_with_counted_costs(board):
    table = models_csv(board)
    assert sorted(table.index) == [STUDENT, TEACHER]
    assert table.loc[STUDENT, "params"] == STUDENT_PARAMS == 19_954
    assert table.loc[STUDENT, "flops"] == STUDENT_FLOPS == 405_120
    assert table.loc[TEACHER, "params"] == TEACHER_PARAMS == 78_042
    for model in (STUDENT, TEACHER):
        row = table.loc[model]
        assert (row["input_size"], row["num_classes"], row["datasets"]) == ("3x8x8", 10, "digits@8")
        assert 0 < row["latency_ms_batch1"] < row["latency_ms_batch64"]
        assert (row["threads"], row["repeats"]) == (1, 10)
    readme = (board / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Models\n", 1)[1].split("\n## ", 1)[0]
    assert f"| {TEACHER} | teacher | 3×8×8 | 10 | 78,042 | 1.56 |" in section
    assert f"| {STUDENT} | student | 3×8×8 | 10 | 19,954 | 0.41 |" in section
    assert section.split(f"| {TEACHER} |", 1)[1].splitlines()[0].endswith("| 95.00 |")
    assert "median of 10 timed passes after 3 warm-up ones, 1 torch thread, on " in section
    latency = table.loc[STUDENT, "latency_ms_batch1"]
    heading = next(line for line in readme.splitlines() if line.startswith("### digits:"))
    assert heading.startswith(f"### digits: {TEACHER} → {STUDENT} (teacher 95.00%; 78k → 20k ")
    assert heading.endswith(f" → {latency:.2f} ms at batch 1)")
    html = (board / "index.html").read_text(encoding="utf-8")
    assert '<section id="models">' in html
    assert re.search(r'<td data-sort="19954(\.0)?"[^>]*>19,954</td>', html)


def test_models_csv_is_reused_until_reprofile_measures_again(board, tmp_path):
    folder = tmp_path / "again"
    folder.mkdir()
    sentinel = models_csv(board).reset_index()
    sentinel.loc[sentinel["model"] == STUDENT, "latency_ms_batch1"] = 12345.0
    sentinel.to_csv(folder / "models.csv", index=False)
    argv = ["--from-csv", str(board / "results.csv"), str(folder), "--quiet"]
    assert leaderboard_main(parse(argv)) == 0
    assert models_csv(folder).loc[STUDENT, "latency_ms_batch1"] == 12345.0
    assert "| 19,954 | 0.41 | 12345.00 |" in (folder / "README.md").read_text(encoding="utf-8")
    assert leaderboard_main(parse([*argv, "--reprofile"])) == 0
    assert models_csv(folder).loc[STUDENT, "latency_ms_batch1"] < 1000
    assert "12345" not in (folder / "README.md").read_text(encoding="utf-8")


def test_a_results_csv_without_image_size_takes_the_suites_then_the_datasets_size(tmp_path):
    old = tmp_path / "old.csv"
    write_results_csv(runs_frame(records(image_size=None)), old)
    table = pd.read_csv(old, dtype=str).drop(columns=["image_size"])
    table.to_csv(old, index=False)
    suite = tmp_path / "suite"
    suite.mkdir()
    recipe = "recipe:\n  student: {epochs: 2, image_size: 8}\n"
    (suite / "suite.yaml").write_text(f"name: tiny\n{recipe}", encoding="utf-8")
    assert leaderboard_main(parse(["--from-csv", str(old), str(suite), "--quiet"])) == 0
    assert set(models_csv(suite)["input_size"]) == {"3x8x8"}
    assert set(read_results_csv(suite / "results.csv")["image_size"]) == {8}
    plain = tmp_path / "plain"  # no suite.yaml: digits' own 32x32
    assert leaderboard_main(parse(["--from-csv", str(old), str(plain), "--quiet"])) == 0
    assert set(models_csv(plain)["input_size"]) == {"3x32x32"}
    assert read_results_csv(plain / "results.csv")["image_size"].isna().all()


def test_a_dataset_that_cannot_load_lists_its_models_without_a_cost(tmp_path):
    leaderboard_from_runs(runs_frame(records(dataset="nosuch")), tmp_path, name="unknown")
    readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert f"| {STUDENT} | student | ? | ? | — | — | — | — |  |" in readme
    assert f"- {STUDENT} (nosuch@8): input shape unknown: unknown dataset 'nosuch'" in readme
    assert models_csv(tmp_path).empty
