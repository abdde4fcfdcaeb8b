"""A suite's compression post-stage end to end, on local Ray with real MLflow and tiny models:
the sweep compresses each finished student of the selected methods once (also when its trials
were all done earlier), reports a student that cannot be quantised without stopping the
others, and the leaderboard turns the child runs into compression.csv and a section that
rebuilds from the CSVs alone."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections import Counter, defaultdict

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from torch import nn

from bench.analysis import COMPRESSED_KEY_TAG, VARIANT_TAG
from bench.leaderboard.cli import add_leaderboard_arguments, leaderboard_main
from bench.leaderboard.compression import read_compression_csv
from bench.leaderboard.runs import LeaderboardError, read_results_csv
from bench.models import create_model
from bench.suite.expand import plan_trials
from bench.suite.load import load_suite
from bench.sweep.cli import add_sweep_arguments, sweep_main

SUITE = """\
name: squeeze
datasets: [digits]
pairs:
  - {teacher: test_resnet_wide, student: test_resnet_narrow}
  - {teacher: test_resnet_wide, student: test_vgg}
methods: [ce, tf_kd]  # no teacher to train: a quicker sweep
seeds: [0]
recipe:
  student: {epochs: 1, batch_size: 128, augment: false}
  teacher: {epochs: 1}
resources: {cpu: 1}
compress: {methods: [tf_kd], sparsities: [0.5], int8: true}
"""


def sweep(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    return sweep_main(parser.parse_args(list(argv)))


def leaderboard(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_leaderboard_arguments(parser)
    return leaderboard_main(parser.parse_args(list(argv)))


def children(uri: str) -> dict[str, dict[str, list]]:
    """Run key → variant → its compression child runs."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("squeeze")
    found = client.search_runs([experiment.experiment_id], "tags.`kdbench.kind` = 'compress'")
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in found:
        out[run.data.tags[COMPRESSED_KEY_TAG]][run.data.tags[VARIANT_TAG]].append(run)
    return out


def conv_linear_weights(name: str) -> int:
    model = create_model(name, 10)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The suite swept with compression of tf_kd's students, then again with ce's added (its
    trials all done by then); the captured output of each sweep."""
    root = tmp_path_factory.mktemp("squeeze")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    folder = root / "squeeze"
    folder.mkdir()
    (folder / "suite.yaml").write_text(SUITE)
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_worker_niceness", "0")  # see test_cluster.py
    capture = {}
    with_ce = SUITE.replace("methods: [tf_kd]", "methods: [ce, tf_kd]")
    try:
        for step, text in (("tf_kd", SUITE), ("ce", with_ce)):
            (folder / "suite.yaml").write_text(text)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = sweep(str(folder), "--tracking-uri", uri)
            capture[step] = (code, out.getvalue(), err.getvalue())
    finally:
        mp.undo()
    trials = {t.key: t for t in plan_trials(load_suite(folder))}
    return uri, folder, trials, capture


def test_the_post_stage_compresses_each_student_once_and_reports_a_refusal(swept, capsys):
    uri, folder, trials, capture = swept
    by_role = {(t.method, t.config.student): key for key, t in trials.items()}
    narrow = conv_linear_weights("test_resnet_narrow")

    # First sweep: the trials ran, then tf_kd's two students were compressed; test_vgg cannot
    # be quantised (FX cannot trace it), so its pruned variant is recorded and int8 reported.
    code, out, err = capture["tf_kd"]
    assert code == 1, out + err
    assert "(pruning at sparsity 0.5 and int8 quantization of the tf_kd students)" in out
    assert "2 compressed now (5 child runs), 0 already done, 1 failed" in out
    assert "int8 not recorded: QuantizationError: cannot quantise test_vgg to int8" in out
    assert f"[{by_role['tf_kd', 'test_vgg']}]" in out

    # Second sweep, ce added: every trial was done, so nothing ran but ce's students were
    # compressed; tf_kd's resnet was not touched again, and test_vgg's int8 is still refused.
    code, out, err = capture["ce"]
    assert "nothing to run" in err
    assert code == 1
    assert "2 compressed now (5 child runs), 1 already done, 2 failed" in out

    recorded = children(uri)
    assert set(recorded) == set(trials)
    for (method, student), key in by_role.items():
        variants = recorded[key]
        expected = {"fp32", "pruned-0.5"} | ({"int8"} if student == "test_resnet_narrow" else set())
        assert set(variants) == expected, (method, student)
        assert all(len(runs) == 1 for runs in variants.values()), (method, student)
        run = {v: runs[0] for v, runs in variants.items()}
        assert all(r.info.status == "FINISHED" for r in run.values())
        fp32, pruned = run["fp32"].data.metrics, run["pruned-0.5"].data.metrics
        assert fp32["sparsity"] == 0.0
        assert fp32["size_bytes"] > pruned["size_bytes"]
        assert 0.0 <= pruned["test_acc"] <= 1.0 and pruned["latency_ms_batch1"] > 0
        if student == "test_resnet_narrow":
            assert abs(pruned["sparsity"] - 0.5) <= 1 / narrow
            int8 = run["int8"].data.metrics
            assert int8["size_bytes"] < 0.5 * fp32["size_bytes"]
            assert abs(int8["test_acc"] - fp32["test_acc"]) <= 0.05
            assert int8["test_acc_change"] == pytest.approx(int8["test_acc"] - fp32["test_acc"])

    # A third sweep records nothing; the dry run says what is done and what is left.
    before = sum(len(runs) for variants in recorded.values() for runs in variants.values())
    assert sweep(str(folder), "--tracking-uri", uri) == 1
    after = children(uri)
    assert sum(len(runs) for v in after.values() for runs in v.values()) == before == 10
    assert "0 compressed now (0 child runs), 2 already done, 2 failed" in capsys.readouterr().out
    assert sweep(str(folder), "--tracking-uri", uri, "--dry-run") == 0
    matrix = capsys.readouterr().out
    assert "4 students; 2 done, 2 to compress now" in matrix
    assert f"to compress  {by_role['ce', 'test_vgg']}" in matrix
    assert f"done         {by_role['tf_kd', 'test_resnet_narrow']}" in matrix


def test_the_leaderboard_shows_the_compressed_students_and_rebuilds_from_the_csvs(swept, tmp_path):
    uri, folder, trials, _ = swept
    assert leaderboard(str(folder), "--tracking-uri", uri, "--quiet") == 0
    table = read_compression_csv(folder / "compression.csv")
    assert len(table) == 10
    assert list(table.columns[:11]) == [
        "run_key", "dataset", "entry", "method", "teacher", "student", "seed", "variant",
        "sparsity", "test_acc", "size_bytes",
    ]  # fmt: skip
    assert list(table.columns[11:]) == [
        "latency_ms_batch1", "latency_ms_batch64", "threads", "mlflow_run_id",
    ]  # fmt: skip
    assert Counter(table["entry"]) == {"ce@1": 5, "tf_kd@1": 5}
    assert set(table["teacher"]) == {""}  # neither method uses the pair's teacher
    runs = read_results_csv(folder / "results.csv").set_index("run_key")
    fp32 = table[table["variant"] == "fp32"].set_index("run_key")
    for key, row in fp32.iterrows():  # the student as trained is the trial's own result
        assert row["test_acc"] == pytest.approx(runs.loc[key, "test_acc"], abs=1e-9)
        assert row["student"] == trials[key].config.student

    readme = (folder / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Compression") :]
    narrow = table[table["student"] == "test_resnet_narrow"].set_index(["entry", "variant"])
    base = narrow.xs("fp32", level="variant")["test_acc"]
    int8 = narrow.xs("int8", level="variant")["test_acc"]
    for entry in ("ce@1", "tf_kd@1"):
        drop = (int8[entry] - base[entry]) * 100
        accuracy = int8[entry] * 100
        assert f"| `{entry}` | int8 | 0.00 | {accuracy:.2f} (1) | {drop:+.2f} |" in section
    assert "### digits: test_resnet_narrow" in section and "### digits: test_vgg" in section
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert '<section id="compression">' in html and 'href="compression.csv"' in html

    rebuilt = tmp_path / "rebuilt"
    argv = ["--from-csv", str(folder / "results.csv"), str(rebuilt), "--name", "squeeze"]
    assert leaderboard(*argv, "--quiet") == 0
    for name in ("compression.csv", "README.md", "index.html"):
        assert (rebuilt / name).read_bytes() == (folder / name).read_bytes(), name

    bad = tmp_path / "bad"
    bad.mkdir()
    frame = pd.read_csv(folder / "compression.csv", dtype=str, keep_default_na=False)
    frame.loc[3, "size_bytes"] = "12 kB"
    frame.to_csv(bad / "compression.csv", index=False)
    with pytest.raises(LeaderboardError, match=r"row 4 \(line 5\), column 'size_bytes'"):
        read_compression_csv(bad / "compression.csv")
