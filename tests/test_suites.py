"""The shipped study and reproduction suites, and the leaderboard parts they need: published
numbers beside kdbench's, study tables and figures, and smoke runs of whole suites on tiny
files in the real formats (CIFAR-100's pickles, an ImageFolder tree) through a real sweep."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pickle
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.leaderboard.cli import add_leaderboard_arguments, leaderboard_from_runs, leaderboard_main
from bench.leaderboard.published import COMPARISON_FILE, read_published
from bench.leaderboard.runs import LeaderboardError, runs_frame
from bench.leaderboard.study import StudySpec, study_points, teacher_epoch
from bench.suite.expand import plan_trials
from bench.suite.load import load_suite
from bench.sweep.cli import add_sweep_arguments, sweep_main
from bench.sweep.driver import SweepOptions, run_sweep

LEADERBOARDS = Path(__file__).resolve().parents[1] / "leaderboards"
CRD = LEADERBOARDS / "cifar100-crd"


def run(method: str, seed: int, acc: float, **extra) -> dict:
    """One finished run of a synthetic runs table (accuracies are fractions)."""
    record = {
        "dataset": "cifar100",
        "teacher": "resnet56",
        "student": "resnet20",
        "method": method,
        "method_version": 1,
        "params": {},
        "seed": seed,
        "phase": "final",
        "status": "FINISHED",
        "outcome": "ok",
        "test_acc": acc,
        "val_acc": acc,
        "teacher_test_acc": 0.72 if method != "ce" else math.nan,
    }
    record.update(extra)
    if record["method"] == "ce":
        record["teacher"] = ""
    record["run_key"] = f"{record['teacher']}-{method}-{json.dumps(record['params'])}-{seed}"
    return record


# --------------------------------------------------------------------------------------------
# Published numbers
# --------------------------------------------------------------------------------------------

PUBLISHED = """\
dataset,teacher,student,method,top1,source
cifar100,resnet56,resnet20,teacher,72.34,"Tian et al., ICLR 2020, Table 1"
cifar100,resnet56,resnet20,ce,69.06,"Tian et al., ICLR 2020, Table 1"
cifar100,resnet56,resnet20,kd,70.66,"Tian et al., ICLR 2020, Table 1"
cifar100,resnet56,resnet20,crd,71.16,"Tian et al., ICLR 2020, Table 1"
"""


def published_runs() -> pd.DataFrame:
    # ce: mean 70.56 (1.5 above 69.06: flagged); kd: mean 71.06 (0.4 above 70.66: not flagged)
    ce = [run("ce", s, a) for s, a in enumerate([0.7046, 0.7056, 0.7066])]
    kd = [run("kd", s, a) for s, a in enumerate([0.7096, 0.7106, 0.7116])]
    return runs_frame(ce + kd)


def test_published_numbers_sit_beside_kdbench_means_and_deviations_over_a_point_are_flagged(
    tmp_path,
):
    (tmp_path / "published.csv").write_text(PUBLISHED)
    leaderboard_from_runs(published_runs(), tmp_path, name="crd")
    table = pd.read_csv(tmp_path / COMPARISON_FILE)
    by_method = table.set_index("method")
    assert by_method.loc["ce", "kdbench_mean"] == pytest.approx(70.56)
    assert by_method.loc["ce", "deviation"] == pytest.approx(1.5)
    assert by_method.loc["kd", "deviation"] == pytest.approx(0.4)
    assert by_method.loc["kd", "kdbench_n"] == 3 and by_method.loc["kd", "entry"] == "kd@1"
    assert by_method.loc["teacher", "kdbench_mean"] == pytest.approx(72.0)  # logged by kd runs
    assert by_method["flagged"].tolist() == [False, True, False, False]
    readme = (tmp_path / "README.md").read_text()
    assert "## Published numbers" in readme
    assert "| cifar100: resnet56 → resnet20 | `ce` | 69.06 | 70.56 ± 0.10 (3) | ⚠ +1.50 |" in readme
    assert "| `kd` | 70.66 | 71.06 ± 0.10 (3) | +0.40 |" in readme
    assert "| `crd` | 71.16 | not run |" in readme


def test_a_leaderboard_without_published_numbers_has_no_such_section(tmp_path):
    leaderboard_from_runs(published_runs(), tmp_path, name="plain")
    assert not (tmp_path / COMPARISON_FILE).exists()
    assert "Published numbers" not in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("top1,source", "accuracy,source"), "missing column(s) top1"),
        (("kd,70.66", "kd,seventy"), "published.csv:4: column 'top1' is 'seventy', not a number"),
        (("kd,70.66", "kd,0.7066"), None),
        (("kd,70.66", "kd,170.66"), "published.csv:4: column 'top1' is 170.66"),
        (("crd,71.16", "kd,71.16"), "is listed on lines [4, 5]"),
        (
            (
                '"Tian et al., ICLR 2020, Table 1"\ncifar100,resnet56,resnet20,crd',
                '""\ncifar100,resnet56,resnet20,crd',
            ),
            "published.csv:4: column 'source' is empty",
        ),
    ],
)
def test_a_malformed_published_csv_names_its_line_and_column(tmp_path, change, expected):
    path = tmp_path / "published.csv"
    path.write_text(PUBLISHED.replace(*change))
    if expected is None:  # a fraction is a valid (if unlikely) percentage
        assert read_published(path)["top1"].tolist()[2] == pytest.approx(0.7066)
        return
    with pytest.raises(LeaderboardError) as caught:
        read_published(path)
    assert expected in str(caught.value)


def test_the_crd_suite_lists_its_13_pairs_and_the_published_numbers_cite_their_tables():
    suite = load_suite(CRD)
    pairs = {(p.teacher, p.student) for p in suite.pairs}
    assert len(pairs) == 13 and len(suite.seeds) == 5
    lr = {(p.teacher, p.student): (p.recipe or suite.recipe).lr for p in suite.pairs}
    slow = {s for (_, s), value in lr.items() if value == 0.01}
    assert slow == {"mobile_half", "ShuffleV1", "ShuffleV2"}
    recipe = suite.recipe
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.schedule) == (240, 64, 0.05, "step")
    assert recipe.milestones == (0.625, 0.75, 0.875) and recipe.weight_decay == 5e-4
    assert suite.teacher_recipe == recipe
    published = read_published(CRD / "published.csv")
    methods = {m.name for m in suite.methods} | {"teacher"}
    assert set(published["method"]) <= methods
    assert {
        (t, s) for t, s in zip(published["teacher"], published["student"], strict=True)
    } == pairs
    counts = Counter(published["method"])
    # CRD's Tables 1-2: 13 pairs each for the teacher, the student, KD, ..., CRD; FSP only on
    # the 6 same-family pairs it can serve.
    assert counts["kd"] == counts["crd"] == counts["ce"] == counts["teacher"] == 13
    assert counts["fsp"] == 6
    crd_rows = published[published["method"] == "crd"]
    assert crd_rows["source"].str.contains(r"ICLR 2020 \(CRD\), Table [12]").all()
    row = published[(published["method"] == "kd") & (published["student"] == "resnet8x4")]
    assert row["top1"].item() == 73.33


def test_the_crd_dry_run_prints_the_trial_matrix_and_the_teachers(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = parser.parse_args([str(CRD), "--dry-run", "--tracking-uri", uri])
    assert sweep_main(args) == 0
    out = capsys.readouterr().out
    suite = load_suite(CRD)
    teacherless = len({p.student for p in suite.pairs}) * 5  # ce, once per student
    expected = 13 * (len(suite.methods) - 1) * 5 + teacherless
    assert f"{expected} trials = 1 dataset(s) × 13 pair(s) × {len(suite.methods)} method" in out
    assert "kd 65 (0 done)" in out and "crd 65 (0 done)" in out and "ce 45 (0 done)" in out
    assert "teachers: 6 (0 cached)" in out
    for teacher in ("wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50"):
        assert f"  {teacher} on cifar100 (seed 0), 240 epochs: to train" in out
    assert not (tmp_path / "mlflow.db").exists()


# --------------------------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------------------------


def temperature_runs() -> pd.DataFrame:
    records = [run("ce", s, 0.90 + 0.01 * s) for s in range(3)]
    for temperature, level in ((1.0, 0.92), (4.0, 0.95), (16.0, 0.93)):
        records += [
            run("kd", s, level + 0.002 * s, params={"temperature": temperature}) for s in range(3)
        ]
    return runs_frame(records)


def test_a_temperature_study_summarises_each_value_over_its_seeds(tmp_path):
    (tmp_path / "suite.yaml").write_text(
        "name: temps\nstudy: {parameter: temperature, method: kd, reference: 16.0}\n"
    )
    runs = temperature_runs()
    runs.to_csv(tmp_path / "runs.csv", index=False)
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    args = parser.parse_args(["--from-csv", str(tmp_path / "runs.csv"), str(tmp_path), "--quiet"])
    assert leaderboard_main(args) == 0
    study = pd.read_csv(tmp_path / "study.csv")
    assert study["value"].tolist() == [1.0, 4.0, 16.0]
    assert study["mean"].tolist() == pytest.approx([92.2, 95.2, 93.2])
    assert study["sd"].tolist() == pytest.approx([0.2] * 3)
    assert study["ce_mean"].tolist() == pytest.approx([91.0] * 3)
    assert study["gain_vs_ce"].tolist() == pytest.approx([1.2, 4.2, 2.2])
    assert study["n"].tolist() == [3, 3, 3] and len(study["run_keys"][0].split(";")) == 3
    # The study names which kd setting the main table's "gain over kd" compares with.
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("entry")
    assert set(summary["reference_entry"]) == {"kd@1[temperature=16.0]"}
    assert math.isnan(summary.loc["kd@1[temperature=16.0]", "gain_vs_kd"])
    assert summary.loc["kd@1[temperature=4.0]", "gain_vs_kd"] == pytest.approx(2.0)
    png = (tmp_path / "figures" / "study.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    readme = (tmp_path / "README.md").read_text()
    assert "![kd against temperature](figures/study.png)" in readme
    assert "| 4 | 95.20 ± 0.20 (3) |" in readme and "| +4.20 |" in readme


def test_an_early_stopped_teacher_study_reads_the_epoch_from_the_teacher_name():
    assert teacher_epoch("resnet20@ep4") == 4 and teacher_epoch("resnet20") is None
    records = [run("ce", s, 0.90) for s in range(2)]
    for epoch, (acc, teacher_acc) in {1: (0.91, 0.50), 8: (0.94, 0.98)}.items():
        records += [
            run("kd", s, acc, teacher=f"resnet20@ep{epoch}", teacher_test_acc=teacher_acc)
            for s in range(2)
        ]
    result = study_points(runs_frame(records), StudySpec("teacher_epoch"))
    assert [p.x for p in result.points] == [1.0, 8.0]
    assert [p.summary.mean for p in result.points] == pytest.approx([91.0, 94.0])
    assert [p.teacher for p in result.points] == pytest.approx([50.0, 98.0])
    assert result.baseline.mean == pytest.approx(90.0)
    with pytest.raises(LeaderboardError, match="no teacher named <arch>@ep<k>"):
        study_points(temperature_runs(), StudySpec("teacher_epoch"))
    with pytest.raises(LeaderboardError, match="no finished 'dkd' run"):
        study_points(temperature_runs(), StudySpec("temperature", "dkd"))


@pytest.mark.parametrize(
    ("folder", "parameter", "points"),
    [
        ("digits-temperature", "temperature", [1.0, 2.0, 4.0, 8.0, 16.0, 64.0]),
        ("digits-teacher-epochs", "teacher_epoch", [1.0, 2.0, 4.0, 8.0]),
    ],
)
def test_the_digits_studies_vary_one_thing_and_their_committed_results_show_it(
    folder, parameter, points
):
    suite = load_suite(LEADERBOARDS / folder)
    assert suite.study.parameter == parameter and len(suite.seeds) == 5
    committed = LEADERBOARDS / folder / "study.csv"
    if not committed.exists():
        pytest.skip(f"{folder} has no committed results yet")
    study = pd.read_csv(committed)
    assert study["value"].tolist() == points
    assert (study["n"] == 5).all()
    keys = {t.key for t in plan_trials(suite)}
    assert {k for cell in study["run_keys"] for k in cell.split(";")} <= keys


def test_the_disjoint_teachers_suite_splits_the_digits_between_two_teachers():
    suite = load_suite(LEADERBOARDS / "digits-disjoint-teachers")
    multi = next(m for m in suite.methods if m.name == "multi_teacher")
    assert dict(multi.params) == {"label_sets": "disjoint", "teachers": ("resnet20",)}
    assert {m.name for m in suite.methods} == {"ce", "kd", "multi_teacher"}
    from methods.multi_teacher import class_groups

    assert class_groups(10, 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_the_compression_suite_compresses_every_student_and_its_results_cover_them():
    suite = load_suite(LEADERBOARDS / "digits-compression")
    compress = suite.compress
    assert compress.methods == ("ce", "kd", "dkd", "dist") and compress.int8
    assert compress.sparsities == (0.3, 0.5, 0.7, 0.9)
    committed = LEADERBOARDS / "digits-compression" / "compression.csv"
    if not committed.exists():
        pytest.skip("digits-compression has no committed results yet")
    table = pd.read_csv(committed, keep_default_na=False)
    keys = {t.key for t in plan_trials(suite)}
    assert set(table["run_key"]) == keys  # every student of the suite, nothing else
    assert Counter(table["variant"]) == dict.fromkeys(compress.variants, len(keys))
    pruned = table[table["variant"].str.startswith("pruned-")]
    requested = pruned["variant"].str.removeprefix("pruned-").astype(float)
    assert (pruned["sparsity"] - requested).abs().max() < 1e-3
    sizes = table.groupby("variant")["size_bytes"].mean()
    assert sizes["int8"] < 0.35 * sizes["fp32"] and sizes["pruned-0.9"] < sizes["pruned-0.3"]


# --------------------------------------------------------------------------------------------
# Smoke runs of whole suites on tiny files
# --------------------------------------------------------------------------------------------

TRUST_CIFAR = '''\
"""Accept the tiny CIFAR-100 files of this test in place of the official release: torchvision
checks every file against the official MD5 sums, on the driver and on every Ray worker."""

from torchvision.datasets import CIFAR100

CIFAR100.train_list = [["train", "{train}"]]
CIFAR100.test_list = [["test", "{test}"]]
CIFAR100.meta = {{**CIFAR100.meta, "md5": "{meta}"}}
'''


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_tiny_cifar100(root: Path, per_class: int = 2, test_per_class: int = 1) -> Path:
    """CIFAR-100 in torchvision's python-pickle layout, a few images per class; returns a
    plugin file that makes torchvision accept these files (their checksums)."""
    rng = np.random.default_rng(0)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for split, count in (("train", per_class), ("test", test_per_class)):
        labels = [c for c in range(100) for _ in range(count)]
        images = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        entry = {
            "data": images,
            "fine_labels": labels,
            "coarse_labels": [c // 5 for c in labels],
            "filenames": [f"{split}_{i}.png" for i in range(len(labels))],
            "batch_label": split,
        }
        (base / split).write_bytes(pickle.dumps(entry))
    meta = {
        "fine_label_names": [f"class{c:02d}" for c in range(100)],
        "coarse_label_names": [f"super{c}" for c in range(20)],
    }
    (base / "meta").write_bytes(pickle.dumps(meta))
    plugin = root / "trust_tiny_cifar100.py"
    plugin.write_text(
        TRUST_CIFAR.format(
            train=_md5(base / "train"), test=_md5(base / "test"), meta=_md5(base / "meta")
        )
    )
    return plugin


@pytest.mark.slow  # ~50 s: 13 pairs of tiny CIFAR-100 files through a real sweep
def test_the_crd_suite_runs_end_to_end_on_tiny_cifar100_files(tmp_path):
    """The committed suite, cut down without editing it: two of its pairs (one per table, the
    second with its own learning rate), three of its methods (fsp refuses the cross-family
    pair), one seed, one epoch; then the leaderboard with the published numbers."""
    import dataclasses

    folder = tmp_path / "cifar100-crd"
    folder.mkdir()
    for name in ("suite.yaml", "published.csv"):
        shutil.copy(CRD / name, folder / name)
    plugin = write_tiny_cifar100(folder / "data")
    suite = load_suite(folder)
    assert suite.datasets[0].data_root == str(folder / "data")
    keep_pairs = {("resnet56", "resnet20"), ("vgg13", "mobile_half")}
    one_epoch = suite.with_recipes(epochs=1)
    small = dataclasses.replace(
        one_epoch,
        pairs=tuple(p for p in one_epoch.pairs if (p.teacher, p.student) in keep_pairs),
        methods=tuple(m for m in suite.methods if m.name in ("ce", "kd", "fsp")),
        seeds=(0,),
        resources=dataclasses.replace(suite.resources, cpu=1.0, gpu=0.0),
        teacher_resources=dataclasses.replace(suite.teacher_resources, cpu=1.0, gpu=0.0),
    )
    trials = plan_trials(small)
    assert Counter(t.method for t in trials) == {"ce": 2, "kd": 2, "fsp": 2}
    assert {t.config.recipe.lr for t in trials if t.config.student == "mobile_half"} == {0.01}
    assert {t.config.recipe.epochs for t in trials} == {1}
    assert {t.config.teacher.recipe.epochs for t in trials if t.config.teacher} == {1}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    report = run_sweep(
        small,
        SweepOptions(tracking_uri=uri, plugins=(str(plugin),), progress_interval=60.0),
    )
    assert sorted(report.finished) != [] and len(report.failed) == 1
    refused = next(t for t in trials if t.key in report.failed)
    assert (refused.method, refused.config.student) == ("fsp", "mobile_half")

    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    args = parser.parse_args([str(folder), "--tracking-uri", uri, "--quiet"])
    assert leaderboard_main(args) == 0
    results = pd.read_csv(folder / "results.csv")
    assert len(results) == 6
    outcome = results.set_index(["method", "student"])["outcome"]
    assert outcome[("fsp", "mobile_half")] == "refused" and outcome[("kd", "resnet20")] == "ok"
    comparison = pd.read_csv(folder / COMPARISON_FILE)
    ran = comparison[comparison["kdbench_n"] > 0]
    assert {(r.teacher, r.student, r.method) for r in ran.itertuples()} >= {
        ("resnet56", "resnet20", "kd"),
        ("resnet56", "resnet20", "ce"),
        ("vgg13", "mobile_half", "kd"),
        ("vgg13", "mobile_half", "teacher"),
    }
    # One epoch on two random images per class: chance level, far from the paper.
    kd = ran[(ran["method"] == "kd") & (ran["student"] == "resnet20")].iloc[0]
    assert kd["kdbench_mean"] < 10 and kd["flagged"]
    assert "## Published numbers" in (folder / "README.md").read_text()


def write_tiny_image_folder(root: Path, per_class: int = 12) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, count in (("train", per_class), ("test", 4)):
        for name, colour in (("HP", (200, 80, 150)), ("SSA", (90, 60, 200))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                noise = rng.integers(-30, 30, (24, 24, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{k}.png")


def test_the_transfer_suite_starts_from_local_checkpoints_and_trains_only_the_head(tmp_path):
    import torch

    from bench.models import create_model

    folder = tmp_path / "imagefolder-transfer"
    folder.mkdir()
    shutil.copy(LEADERBOARDS / "imagefolder-transfer" / "suite.yaml", folder / "suite.yaml")
    write_tiny_image_folder(folder / "data")
    (folder / "checkpoints").mkdir()
    torch.manual_seed(5)
    pretrained = create_model("resnet8x4", 100, image_size=32)  # another task's classifier
    torch.save(pretrained.state_dict(), folder / "checkpoints" / "student-pretrained.pt")
    torch.save(
        create_model("resnet32x4", 2, image_size=32).state_dict(),
        folder / "checkpoints" / "teacher.pt",
    )
    suite = load_suite(folder).with_recipes(epochs=1, batch_size=8)
    trials = [t for t in plan_trials(suite) if t.seed == 0]
    assert all(t.config.recipe.trainable == ("head",) for t in trials)
    assert all(t.config.teacher.recipe.trainable == () for t in trials if t.config.teacher)

    from bench.trial.compose import execute, prepare_trial
    from bench.trial.device import pick_device

    kd = next(t for t in trials if t.method == "kd")
    result = execute(prepare_trial(kd.config, pick_device()))
    assert result.status == "FINISHED", result.error
    assert 0 <= result.test_acc <= 1 and result.teacher_test_acc == pytest.approx(0.5)

    # The frozen part is the pretrained network, bit for bit, BatchNorm statistics included.
    from bench.finetune import prepare_student

    student = create_model("resnet8x4", 2, image_size=32)
    prepare_student(student, kd.config)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    assert torch.equal(
        before["layer1.0.conv1.weight"], pretrained.state_dict()["layer1.0.conv1.weight"]
    )
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.5)
    student.train()
    x = torch.randn(8, 3, 32, 32)
    torch.nn.functional.cross_entropy(student(x), torch.tensor([0, 1] * 4)).backward()
    optimizer.step()
    after = student.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == ["fc.bias", "fc.weight"]


def test_the_mnist_suite_distils_a_convolutional_teacher_into_an_mlp_at_four_temperatures():
    from bench.models import MODELS

    suite = load_suite(LEADERBOARDS / "mnist")
    (pair,) = suite.pairs
    assert MODELS.get(pair.teacher).family != "mlp" and MODELS.get(pair.student).family == "mlp"
    temperatures = sorted(dict(m.params)["temperature"] for m in suite.methods if m.name == "kd")
    assert temperatures == [1.0, 4.0, 16.0, 64.0]
    assert {m.name for m in suite.methods} == {"ce", "kd"} and len(suite.seeds) == 5
    assert suite.datasets[0].name == "mnist" and suite.study.parameter == "temperature"
